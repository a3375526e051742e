"""Headless Chromium opens a WebTransport session to the server with nothing
but the certificate hash published at /api/v1/server: no command-line flag,
no trusted certificate."""

import json
import ssl
import urllib.request

import pytest
import trio

from shopcast.server._webtransport import SessionClosed, WebTransportSession, WebTransportStream

PAGE = """<!doctype html><meta charset="utf-8"><title>wt</title><script>
async function run(url, hashHex) {
  const bytes = new Uint8Array(hashHex.match(/../g).map(h => parseInt(h, 16)));
  const wt = new WebTransport(url, {serverCertificateHashes: [{algorithm: "sha-256", value: bytes}]});
  await wt.ready;
  const stream = await wt.createBidirectionalStream();
  const writer = stream.writable.getWriter();
  await writer.write(new TextEncoder().encode("hello from chromium"));
  await writer.close();
  let text = "";
  const reader = stream.readable.getReader();
  for (;;) { const {value, done} = await reader.read(); if (done) break; text += new TextDecoder().decode(value); }
  const dgWriter = wt.datagrams.writable.getWriter();
  const dgReader = wt.datagrams.readable.getReader();
  let datagram = null;
  for (let i = 0; i < 50 && datagram === null; i++) {
    await dgWriter.write(new TextEncoder().encode("dg"));
    const r = await Promise.race([dgReader.read(), new Promise(ok => setTimeout(() => ok(null), 100))]);
    if (r) datagram = new TextDecoder().decode(r.value);
  }
  wt.close({closeCode: 5, reason: "done"});
  return {text, datagram};
}
</script>"""


def fetch_server_info(port: int) -> dict:
    # The test plays the platform: it reads the published hash over HTTPS
    # without trusting the self-signed certificate.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/api/v1/server", context=context, timeout=10) as r:
        return json.load(r)


@pytest.mark.e2e
async def test_chromium_connects_with_published_hash(running_server, chromium, chromium_flags,
                                                     directory_server, tmp_path):
    from playwright.async_api import async_playwright

    app = running_server.app
    closed = []
    session_ended = trio.Event()

    async def echo(session: WebTransportSession) -> None:
        stream = await session.accept_stream()
        assert isinstance(stream, WebTransportStream)
        data = bytearray()
        while chunk := await stream.receive_some():
            data += chunk
        await stream.send_all(b"echo: " + bytes(data))
        await stream.send_eof()
        try:
            while True:
                session.send_datagram(await session.receive_datagram())
        except SessionClosed:
            closed.append((session.close_code, session.close_reason))
            session_ended.set()

    app.quic.session_handlers["/echo"] = echo
    info = await trio.to_thread.run_sync(fetch_server_info, running_server.port)
    assert info["certificate"]["sha256"] == app.certificate.sha256_hex

    def drive() -> dict:
        import asyncio

        async def main() -> dict:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=chromium, args=chromium_flags)
                try:
                    page = await browser.new_page()
                    await page.goto(page_url)
                    return await page.evaluate(
                        "([u, h]) => run(u, h)",
                        [f"https://127.0.0.1:{running_server.port}/echo", info["certificate"]["sha256"]])
                finally:
                    await browser.close()
        return asyncio.run(main())

    (tmp_path / "index.html").write_text(PAGE)
    with directory_server(tmp_path) as page_url:
        result = await trio.to_thread.run_sync(drive)
    assert result == {"text": "echo: hello from chromium", "datagram": "dg"}
    with trio.fail_after(5):
        await session_ended.wait()
    assert closed == [(5, "done")]

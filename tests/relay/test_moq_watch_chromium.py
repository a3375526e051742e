"""Interop: an unmodified ``@moq/watch`` player (npm, pinned in tests/web/package.json,
bundled here with esbuild) plays shopcast rooms in headless Chromium.

The page sets nothing but the element's attributes: ``url="http://127.0.0.1:PORT/moq"``
(so the player fetches ``/certificate.sha256`` over plain HTTP and pins the self-signed
certificate by itself, as with the MoQ reference relay) and ``name`` (the room). The test
checks that frames are decoded and drawn, not merely that a session opened: the pixels of
the element's ``<canvas>`` must show a picture (not blank, not all black, 640x360) and must
change over time; the element's own drawn-frame timestamp must advance, and audio must keep
arriving (and, where the AudioContext runs, decoded samples must play). It does so for the demo room and for a room the Python client publishes while
the browser watches. Screenshots of both playing pages go to test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import trio

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "tests" / "web"
ARTIFACTS = REPO / "test-artifacts"
DEMO_CLIP = REPO / "server" / "media" / "demo.flv"

PLAY_TIMEOUT_S = 20.0
"""How long a page may take from load to its first drawn picture."""
CHANGE_INTERVAL_S = 2.0
"""The gap between the two canvas samples that must differ."""

# Runs in the page: a small summary of the canvas pixels (the element draws on a 2d context,
# so getContext("2d") hands back the very context the player draws with).
CANVAS_SAMPLE = """() => {
  const el = document.querySelector("moq-watch");
  const canvas = el && el.querySelector("canvas");
  const out = {present: !!canvas, width: canvas ? canvas.width : 0, height: canvas ? canvas.height : 0};
  if (el && el.renderer && el.renderer.out && el.renderer.out.timestamp) {
    out.frameTimestampMs = el.renderer.out.timestamp.peek() ?? null;
  }
  if (el && el.broadcast && el.broadcast.out && el.broadcast.out.catalog) {
    out.catalog = el.broadcast.out.catalog.peek() ? true : false;
  }
  const audio = el && el.audio && el.audio.out;
  if (audio) {
    const context = audio.context.peek();
    out.audioContext = context ? context.state : null;
    out.audioBytes = audio.stats.peek()?.bytesReceived ?? 0;
    out.audioTimestampMs = audio.timestamp.peek() ?? null;
  }
  if (!canvas || canvas.width === 0 || canvas.height === 0) return out;
  const {data} = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let hash = 0x811c9dc5, lit = 0, sum = 0;
  const colours = new Set();
  for (let i = 0; i < data.length; i += 4) {
    const r = data[i], g = data[i + 1], b = data[i + 2];
    hash = Math.imul(hash ^ r, 16777619); hash = Math.imul(hash ^ g, 16777619); hash = Math.imul(hash ^ b, 16777619);
    const y = (r * 299 + g * 587 + b * 114) / 1000;
    sum += y;
    if (y > 16) lit++;
    if (colours.size < 4096) colours.add((r >> 4) << 8 | (g >> 4) << 4 | (b >> 4));
  }
  const pixels = data.length / 4;
  return Object.assign(out, {hash: (hash >>> 0).toString(16), litFraction: lit / pixels,
                             meanLuma: sum / pixels, colours: colours.size});
}"""


def _is_picture(sample: dict) -> bool:
    """A decoded frame of the test pattern, not a blank or black canvas."""
    return (sample.get("hash") is not None and sample["litFraction"] > 0.25
            and sample["colours"] >= 16)


def build_bundle(web_dir: str, out_dir: Path) -> None:
    """esbuild tests/web/watch-entry.js (and so @moq/watch, unmodified) into out_dir/watch.js,
    next to a copy of the page."""
    esbuild = os.path.join(web_dir, "node_modules", ".bin", "esbuild")
    result = subprocess.run(
        [esbuild, "watch-entry.js", "--bundle", "--format=esm", "--target=es2022",
         "--log-level=warning", f"--outfile={out_dir / 'watch.js'}"],
        cwd=web_dir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"esbuild failed:\n{result.stdout}\n{result.stderr}"
    shutil.copy(Path(web_dir) / "watch.html", out_dir / "watch.html")


def watch_rooms(chromium: str, flags: list[str], page_url: str, server_port: int,
                rooms: list[str]) -> dict:
    """In one headless Chromium, open the player page for each room in turn; return per room
    the canvas samples, the console log and a screenshot path."""
    import asyncio

    from playwright.async_api import async_playwright

    async def play(browser, room: str) -> dict:
        log: list[str] = []
        page = await browser.new_page(viewport={"width": 800, "height": 480})
        page.on("console", lambda m: log.append(f"console.{m.type}: {m.text}"))
        page.on("pageerror", lambda e: log.append(f"pageerror: {e}"))
        page.on("requestfailed", lambda r: log.append(f"requestfailed: {r.url} {r.failure}"))
        url = f"{page_url}watch.html?url=http://127.0.0.1:{server_port}/moq&name={room}"
        record: dict = {"room": room, "log": log, "samples": []}
        try:
            await page.goto(url)
            started = time.monotonic()
            first = None
            while time.monotonic() - started < PLAY_TIMEOUT_S:
                sample = await page.evaluate(CANVAS_SAMPLE)
                record["samples"].append(sample)
                if _is_picture(sample):
                    first = sample
                    break
                await asyncio.sleep(0.25)
            record["first_picture_s"] = None if first is None else round(time.monotonic() - started, 2)
            if first is not None:
                await asyncio.sleep(CHANGE_INTERVAL_S)
                record["later"] = await page.evaluate(CANVAS_SAMPLE)
                record["first"] = first
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / f"moq-watch-{room}.png"
            await page.screenshot(path=str(shot))
            record["screenshot"] = str(shot)
        finally:
            await page.close()
        return record

    async def main() -> dict:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium, args=flags)
            try:
                return {room: await play(browser, room) for room in rooms}
            finally:
                await browser.close()

    return asyncio.run(main())


def _explain(record: dict) -> str:
    samples = record["samples"]
    tail = samples[-3:] if samples else []
    log = "\n".join(record["log"][-60:])
    return (f"room {record['room']}: first picture after {record.get('first_picture_s')} s; "
            f"last samples {tail}; later {record.get('later')}\nbrowser console:\n{log}")


@pytest.mark.e2e
async def test_moq_watch_plays_demo_and_published_room(
        running_server, chromium, chromium_flags, web_packages, directory_server, tmp_path, nursery):
    from shopcast.client import connect

    app = running_server.app
    port = running_server.port
    sha256 = app.certificate.sha256_hex

    bundle_dir = tmp_path / "web"
    bundle_dir.mkdir()
    await trio.to_thread.run_sync(build_bundle, web_packages, bundle_dir)

    # room1: published by the Python client for as long as the browser watches it.
    host_token = app.tokens.mint(subject="h", role="host", room="room1", ttl_s=600, now=time.time())
    publishing = trio.Event()

    async def publish() -> None:
        async with connect(f"https://127.0.0.1:{port}/moq", token=host_token,
                           certificate_sha256=sha256) as client:
            publishing.set()
            await client.publish_flv("room1", DEMO_CLIP, loops=30)

    nursery.start_soon(publish)
    with trio.fail_after(10):
        await publishing.wait()
        while "room1" not in app.relay.broadcasts:
            await trio.sleep(0.05)

    with directory_server(bundle_dir) as page_url:
        records = await trio.to_thread.run_sync(
            watch_rooms, chromium, chromium_flags, page_url, port, ["demo", "room1"])

    for room in ("demo", "room1"):
        record = records[room]
        print(f"{room}: first picture {record.get('first_picture_s')} s after load; "
              f"first {record.get('first')}; {CHANGE_INTERVAL_S} s later {record.get('later')}")
        assert record.get("first") is not None, f"no decoded picture drawn; {_explain(record)}"
        first, later = record["first"], record["later"]
        assert (first["width"], first["height"]) == (640, 360), _explain(record)
        assert _is_picture(later), f"picture went blank; {_explain(record)}"
        assert later["hash"] != first["hash"], f"canvas did not change in {CHANGE_INTERVAL_S} s; {_explain(record)}"
        # The element's own (public, typed) view of it: the drawn frame's media timestamp
        # advances, AAC keeps arriving, and where the AudioContext runs (Chromium's autoplay
        # policy allows it in these tests) the worklet plays decoded samples.
        assert later["frameTimestampMs"] > first["frameTimestampMs"], _explain(record)
        assert later["audioBytes"] > first["audioBytes"], f"no audio arriving; {_explain(record)}"
        if later["audioContext"] == "running":
            assert (later["audioTimestampMs"] or 0) - (first["audioTimestampMs"] or 0) > 500, \
                f"decoded audio not playing; {_explain(record)}"
        assert Path(record["screenshot"]).stat().st_size > 0

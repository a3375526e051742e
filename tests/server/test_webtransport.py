"""The QUIC endpoint over loopback: a real aioquic client opens WebTransport
sessions and gets streams and datagrams echoed by a handler the test registers."""

import datetime as dt
import time

import pytest
import trio
from aioquic.buffer import encode_uint_var

from shopcast.server._certs import CertificateStore
from shopcast.server._client import CertificateMismatch, open_webtransport
from shopcast.server._config import load_config
from shopcast.server._quic import QuicEndpoint, bind_udp_sockets
from shopcast.server._tokens import ApiKey, TokenAuthority
from shopcast.server._webtransport import (
    CAPSULE_CLOSE_SESSION,
    SessionClosed,
    WebTransportReceiveStream,
    WebTransportSession,
    WebTransportStream,
    decode_capsules_untrusted,
    encode_close_capsule,
)

CONFIG = load_config(environ={})
AUTHORITY = TokenAuthority([ApiKey("k1", "secret-one")])


async def echo_handler(session: WebTransportSession) -> None:
    """Echo bidirectional streams in place, unidirectional ones on a new
    unidirectional stream, and datagrams as datagrams."""

    async def echo_datagrams() -> None:
        while True:
            session.send_datagram(await session.receive_datagram())

    async def echo_stream(stream) -> None:
        data = bytearray()
        while chunk := await stream.receive_some():
            data += chunk
        if isinstance(stream, WebTransportStream):
            await stream.send_all(bytes(data))
            await stream.send_eof()
        else:
            reply = await session.open_uni_stream()
            await reply.send_all(bytes(data))
            await reply.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo_datagrams)
        while True:
            try:
                stream = await session.accept_stream()
            except SessionClosed:
                nursery.cancel_scope.cancel()
                return
            nursery.start_soon(echo_stream, stream)


@pytest.fixture
async def server(tmp_path, nursery):
    store = CertificateStore(tmp_path)
    cert = store.load(dt.datetime.now(dt.timezone.utc))
    endpoint = QuicEndpoint(quic_config=CONFIG.quic, webtransport_config=CONFIG.webtransport,
                            certificate=lambda: cert, tokens=AUTHORITY)
    endpoint.session_handlers["/echo"] = echo_handler
    sockets = bind_udp_sockets(["127.0.0.1"], 0, 1 << 20)
    port = sockets[0].getsockname()[1]
    await nursery.start(endpoint.serve, sockets)
    return endpoint, port, cert


async def read_all(stream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


async def test_bidi_uni_and_datagram_echo(server):
    endpoint, port, cert = server
    async with open_webtransport(f"https://127.0.0.1:{port}/echo",
                                 certificate_sha256=cert.sha256_hex) as session:
        payload = bytes(range(256)) * 2000  # 512 kB: several flow-control windows of frames
        stream = await session.open_bidi_stream()
        await stream.send_all(payload)
        await stream.send_eof()
        assert await read_all(stream) == payload

        uni = await session.open_uni_stream()
        await uni.send_all(b"one way")
        await uni.send_eof()
        reply = await session.accept_stream()
        assert isinstance(reply, WebTransportReceiveStream)
        assert await read_all(reply) == b"one way"

        # Datagrams may be lost even on loopback; send until one echo returns.
        with trio.fail_after(5):
            got = None
            while got is None:
                session.send_datagram(b"ping")
                with trio.move_on_after(0.2):
                    got = await session.receive_datagram()
        assert got == b"ping"
    assert endpoint.stats.sessions_total == 1


async def test_many_streams_in_parallel(server):
    _, port, cert = server
    async with open_webtransport(f"https://127.0.0.1:{port}/echo",
                                 certificate_sha256=cert.sha256_hex) as session:
        results = {}

        async def one(i: int) -> None:
            stream = await session.open_bidi_stream()
            await stream.send_all(f"stream {i}".encode() * 100)
            await stream.send_eof()
            results[i] = await read_all(stream)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
        assert results == {i: f"stream {i}".encode() * 100 for i in range(40)}


async def test_unknown_path_is_refused_with_404(server):
    _, port, cert = server
    with pytest.raises(SessionClosed) as info:
        async with open_webtransport(f"https://127.0.0.1:{port}/nope",
                                     certificate_sha256=cert.sha256_hex):
            pass
    assert info.value.code == 404
    assert '"field": "path"' in info.value.reason


async def test_tokens_in_query(server):
    endpoint, port, cert = server
    seen = []

    async def whoami(session: WebTransportSession) -> None:
        seen.append(session.claims)
    endpoint.session_handlers["/whoami"] = whoami

    good = AUTHORITY.mint(subject="alice", role="viewer", room="demo", ttl_s=60, now=time.time())
    async with open_webtransport(f"https://127.0.0.1:{port}/whoami?token={good}",
                                 certificate_sha256=cert.sha256_hex) as session:
        await session.wait_closed()
    assert seen[0].subject == "alice" and seen[0].room == "demo"

    expired = AUTHORITY.mint(subject="bob", role="viewer", room="demo", ttl_s=1,
                             now=time.time() - 3600)
    for bad, code in ((expired, "token_expired"), (good[:-2] + "xx", "token_bad_signature")):
        with pytest.raises(SessionClosed) as info:
            async with open_webtransport(f"https://127.0.0.1:{port}/whoami?token={bad}",
                                         certificate_sha256=cert.sha256_hex):
                pass
        assert info.value.code == 401 and code in info.value.reason
    assert len(seen) == 1


async def test_server_close_reaches_client_with_reason(server):
    endpoint, port, cert = server

    async def closer(session: WebTransportSession) -> None:
        session.close(7, "bye now")
    endpoint.session_handlers["/close"] = closer
    async with open_webtransport(f"https://127.0.0.1:{port}/close",
                                 certificate_sha256=cert.sha256_hex) as session:
        await session.wait_closed()
        assert (session.close_code, session.close_reason) == (7, "bye now")


async def test_client_close_capsule_ends_server_session(server):
    endpoint, port, cert = server
    ended = trio.Event()
    reasons = []

    async def waiter(session: WebTransportSession) -> None:
        await session.wait_closed()
        reasons.append((session.close_code, session.close_reason))
        ended.set()
    endpoint.session_handlers["/wait"] = waiter
    async with open_webtransport(f"https://127.0.0.1:{port}/wait",
                                 certificate_sha256=cert.sha256_hex) as session:
        session.close(42, "client leaving")
        with trio.fail_after(5):
            await ended.wait()
    assert reasons == [(42, "client leaving")]


async def test_wrong_certificate_pin_is_refused(server):
    _, port, _ = server
    with pytest.raises(CertificateMismatch):
        async with open_webtransport(f"https://127.0.0.1:{port}/echo",
                                     certificate_sha256="00" * 32):
            pass


async def test_a_failing_handler_closes_only_its_session(server):
    endpoint, port, cert = server

    async def broken(session: WebTransportSession) -> None:
        raise RuntimeError("handler bug")
    endpoint.session_handlers["/broken"] = broken
    async with open_webtransport(f"https://127.0.0.1:{port}/echo",
                                 certificate_sha256=cert.sha256_hex) as healthy:
        async with open_webtransport(f"https://127.0.0.1:{port}/broken",
                                     certificate_sha256=cert.sha256_hex) as doomed:
            with trio.fail_after(5):
                await doomed.wait_closed()
            assert doomed.close_reason == "internal server error"
        stream = await healthy.open_bidi_stream()
        await stream.send_all(b"still here")
        await stream.send_eof()
        assert await read_all(stream) == b"still here"


def test_capsules_in_every_chunk_size_and_oversized_ones_refused():
    capsule = encode_close_capsule(7, "bye 👋")
    drain = encode_uint_var(0x78AE) + encode_uint_var(0)
    stream = capsule + drain + capsule  # a DRAIN capsule between two CLOSEs
    for size in range(1, len(stream) + 1):
        buffer, capsules = bytearray(), []
        for start in range(0, len(stream), size):
            buffer += memoryview(stream)[start:start + size]
            capsules += decode_capsules_untrusted(buffer, 1024)
        assert [c.type for c in capsules] == [CAPSULE_CLOSE_SESSION, 0x78AE, CAPSULE_CLOSE_SESSION]
        assert capsules[0].value == (7).to_bytes(4, "big") + "bye 👋".encode()
        assert buffer == b""
    with pytest.raises(ValueError, match="exceeds 1024"):
        decode_capsules_untrusted(bytearray(encode_uint_var(0x2843) + encode_uint_var(4095)), 1024)

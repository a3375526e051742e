"""The QUIC endpoint without sockets: a client endpoint and a server endpoint
joined by an in-memory datagram pipe, driven by trio's autojumping mock clock
(the endpoint reads time only through trio.current_time)."""

import datetime as dt

import pytest
import trio
from aioquic.quic.packet import pull_quic_header
from aioquic.buffer import Buffer

from shopcast.server._certs import CertificateStore
from shopcast.server._client import client_configuration
from shopcast.server._config import load_config
from shopcast.server._quic import (
    SETTING_H3_DATAGRAM_DRAFT04,
    SETTING_WEBTRANSPORT_MAX_SESSIONS_DRAFT07,
    QuicEndpoint,
)
from shopcast.server._tokens import ApiKey, TokenAuthority
from shopcast.server._webtransport import WebTransportSession

ENABLE_WEBTRANSPORT_DRAFT02 = 0x2B603742
SERVER_ADDR = ("10.0.0.1", 4433)


class MemoryPipe:
    """One direction of an in-memory network: sendto hands the datagram to the
    peer endpoint at once, as arriving from ``local_addr``."""

    def __init__(self, local_addr: tuple) -> None:
        self.local_addr = local_addr
        self.peer: QuicEndpoint | None = None
        self.peer_pipe: "MemoryPipe | None" = None
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: tuple) -> bool:
        self.sent.append(data)
        if self.peer is not None:
            self.peer.datagram_received(self.peer_pipe, data, self.local_addr)
        return True

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()


def make_pair(server: QuicEndpoint, client: QuicEndpoint, client_addr: tuple):
    to_server, to_client = MemoryPipe(client_addr), MemoryPipe(SERVER_ADDR)
    to_server.peer, to_server.peer_pipe = server, to_client
    to_client.peer, to_client.peer_pipe = client, to_server
    return to_server


@pytest.fixture
def certificate(tmp_path):
    return CertificateStore(tmp_path).load(dt.datetime.now(dt.timezone.utc))


async def start_endpoints(nursery, certificate, env=None):
    config = load_config(environ=env or {})
    tokens = TokenAuthority([ApiKey("k", "s")])
    server = QuicEndpoint(quic_config=config.quic, webtransport_config=config.webtransport,
                          certificate=lambda: certificate, tokens=tokens)
    client = QuicEndpoint(quic_config=config.quic, webtransport_config=config.webtransport,
                          certificate=lambda: certificate, tokens=tokens)
    client.stop_accepting()
    await nursery.start(server.serve, [])
    await nursery.start(client.serve, [])
    return config, server, client


async def echo(session: WebTransportSession) -> None:
    stream = await session.accept_stream()
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    await stream.send_all(bytes(data))
    await stream.send_eof()
    await session.wait_closed()


async def test_session_settings_and_echo(nursery, autojump_clock, certificate):
    config, server, client = await start_endpoints(nursery, certificate)
    server.session_handlers["/echo"] = echo
    pipe = make_pair(server, client, ("10.0.0.2", 5000))
    driver = client.connect(pipe, SERVER_ADDR, client_configuration("localhost", config, verify=False))
    session = await driver.connect_webtransport("localhost:4433", "/echo")
    # What Chromium needs from aioquic (draft-02), plus the newer code points.
    settings = driver.peer_settings
    assert settings[ENABLE_WEBTRANSPORT_DRAFT02] == 1
    assert settings[SETTING_WEBTRANSPORT_MAX_SESSIONS_DRAFT07] == config.webtransport.max_sessions_per_connection
    assert settings[SETTING_H3_DATAGRAM_DRAFT04] == 1
    assert session.headers["sec-webtransport-http3-draft"] == "draft02"

    stream = await session.open_bidi_stream()
    await stream.send_all(b"x" * 300_000)
    await stream.send_eof()
    received = bytearray()
    while chunk := await stream.receive_some():
        received += chunk
    assert received == b"x" * 300_000
    assert server.stats.sessions_total == 1 and server.stats.handshakes_completed == 1


async def test_idle_connection_times_out_on_the_mock_clock(nursery, autojump_clock, certificate):
    config, server, client = await start_endpoints(nursery, certificate)
    server.session_handlers["/echo"] = echo
    pipe = make_pair(server, client, ("10.0.0.2", 5001))
    driver = client.connect(pipe, SERVER_ADDR, client_configuration("localhost", config, verify=False))
    await driver.connect_webtransport("localhost:4433", "/echo")
    assert server.connection_count == 1
    started = trio.current_time()
    # Cut the network: nothing more arrives anywhere, so both idle timers fire.
    pipe.peer = None
    pipe.peer_pipe.peer = None
    await server.wait_all_closed()
    elapsed = trio.current_time() - started
    assert config.quic.idle_timeout_s <= elapsed <= 3 * config.quic.idle_timeout_s
    assert server.connection_count == 0


async def test_full_inbound_queue_drops_and_counts(nursery, autojump_clock, certificate):
    config, server, client = await start_endpoints(nursery, certificate)
    server.session_handlers["/echo"] = echo
    pipe = make_pair(server, client, ("10.0.0.2", 5002))
    driver = client.connect(pipe, SERVER_ADDR, client_configuration("localhost", config, verify=False))
    await driver.connect_webtransport("localhost:4433", "/echo")
    # Replay one of the client's datagrams far faster than the connection
    # task runs: the queue takes what fits, the rest is counted, and the
    # receive path never waits.
    datagram = pipe.sent[-1]
    flood = config.quic.inbound_queue_packets * 3
    for _ in range(flood):
        server.datagram_received(pipe.peer_pipe, datagram, ("10.0.0.2", 5002))
    # (One slot may already hold the connection task's pending wake-up.)
    assert server.stats.inbound_dropped >= flood - config.quic.inbound_queue_packets - 1
    assert server.connection_count == 1


async def test_small_initial_makes_no_connection_and_unknown_version_is_negotiated(
        nursery, autojump_clock, certificate):
    config, server, client = await start_endpoints(nursery, certificate)
    reply = MemoryPipe(SERVER_ADDR)
    # A client Initial, cut below 1200 bytes: refused without state.
    probe = MemoryPipe(("10.0.0.3", 6000))
    driver = client.connect(probe, SERVER_ADDR, client_configuration("localhost", config, verify=False))
    with trio.fail_after(1):
        while not probe.sent:
            await trio.sleep(0.001)
    initial = probe.sent[0]
    assert len(initial) >= 1200
    server.datagram_received(reply, initial[:1000], ("10.0.0.3", 6000))
    assert server.connection_count == 0 and reply.sent == []
    # The same Initial with an unknown version gets a Version Negotiation packet.
    unknown = initial[:1] + bytes.fromhex("1a2a3a4a") + initial[5:]
    server.datagram_received(reply, unknown, ("10.0.0.3", 6000))
    assert server.stats.version_negotiations == 1
    negotiation = pull_quic_header(Buffer(data=reply.sent[0]), host_cid_length=8)
    assert negotiation.version == 0 and server.connection_count == 0
    driver.close("done")


async def test_connection_limit_refuses_and_counts(nursery, autojump_clock, certificate):
    config, server, client = await start_endpoints(
        nursery, certificate, env={"SHOPCAST_QUIC__MAX_CONNECTIONS": "1"})
    server.session_handlers["/echo"] = echo
    first = make_pair(server, client, ("10.0.0.2", 5003))
    driver = client.connect(first, SERVER_ADDR, client_configuration("localhost", config, verify=False))
    await driver.connect_webtransport("localhost:4433", "/echo")
    second = make_pair(server, client, ("10.0.0.4", 5004))
    client.connect(second, SERVER_ADDR, client_configuration("localhost", config, verify=False))
    with trio.fail_after(5):
        while server.stats.connections_refused == 0:
            await trio.sleep(0.01)
    assert server.connection_count == 1

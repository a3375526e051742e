"""The QUIC endpoint: UDP sockets on trio driving aioquic's sans-IO
QuicConnection, with HTTP/3 and WebTransport on top.

One receive task per socket routes each datagram by connection ID into a
bounded per-connection queue (full: drop and count, never block the socket).
One task per connection owns its QuicConnection: it ingests datagrams, fires
the connection's single timer, turns events into HTTP/3 requests and
WebTransport sessions, and sends what is due with non-blocking ``sendto`` and
one checkpoint per batch. Times are ``trio.current_time()`` so MockClock
tests drive it.
"""

from __future__ import annotations

import json
import math
import socket
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol
from urllib.parse import parse_qsl, urlsplit

import trio
from aioquic.buffer import Buffer
from aioquic.h3.connection import H3_ALPN, ErrorCode, FrameType, H3Connection
from aioquic.h3.events import (
    DataReceived,
    DatagramReceived,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    StopSendingReceived,
    StreamReset,
)
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)

from shopcast.server._certs import Certificate
from shopcast.server._log import get_logger
from shopcast.server._tokens import TokenAuthority, TokenError
from shopcast.server._webtransport import SessionClosed, SessionHandler, WebTransportSession

__all__ = [
    "DatagramTransport",
    "H3Request",
    "H3Response",
    "QuicEndpoint",
    "QuicConnectionDriver",
    "QuicStatistics",
    "UdpTransport",
    "bind_udp_sockets",
    "tcp_port_is_free",
]

log = get_logger("quic")

# Newer WebTransport drafts' settings, advertised beside aioquic's draft-02
# ones. Draft-07's max-sessions and the draft-04 datagram setting are what
# other browser engines look for; draft-13+ settings are left out because a
# server that sends them is refused by clients that speak only older drafts.
SETTING_H3_DATAGRAM_DRAFT04 = 0xFFD277
SETTING_WEBTRANSPORT_MAX_SESSIONS_DRAFT07 = 0xC671706A
WEBTRANSPORT_PROTOCOLS = ("webtransport", "webtransport-h3")
RECEIVE_BUFFER_BYTES = 65536
# Send order of streams never given one: above every moq group (whose send
# orders are below 2**64), so control messages are never stuck behind media.
CONTROL_SEND_ORDER = 1 << 64
# WebTransport session close code for a handler that failed.
SESSION_INTERNAL_ERROR = 1


@dataclass(frozen=True)
class H3Request:
    """An HTTP/3 request that is not a WebTransport CONNECT."""

    headers: tuple[tuple[bytes, bytes], ...]
    """The header list as received, pseudo-headers included (untrusted)."""
    body: bytes
    remote_address: tuple


@dataclass(frozen=True)
class H3Response:
    """What an HTTP/3 handler answers."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


HttpHandler = Callable[[H3Request], Awaitable[H3Response]]


@dataclass
class QuicStatistics:
    """Counters for /metrics; plain integers, cheap to bump on the hot path."""

    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    handshakes_completed: int = 0
    sessions_open: int = 0
    sessions_total: int = 0
    sessions_refused: int = 0
    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    inbound_dropped: int = 0
    undecodable_dropped: int = 0
    version_negotiations: int = 0
    h3_requests: int = 0
    stream_buffer_overflows: int = 0


class _ShopcastH3(H3Connection):
    """aioquic's H3Connection advertising the newer WebTransport settings too."""

    def __init__(self, quic: QuicConnection, *, max_sessions: int) -> None:
        # Set before the base class sends SETTINGS from its constructor.
        self.max_sessions = max_sessions
        super().__init__(quic, enable_webtransport=True)

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        if self._enable_webtransport:
            settings[SETTING_H3_DATAGRAM_DRAFT04] = 1
            settings[SETTING_WEBTRANSPORT_MAX_SESSIONS_DRAFT07] = self.max_sessions
        return settings


def bind_udp_sockets(addresses: list[str], port: int, buffer_bytes: int) -> list[socket.socket]:
    """Bind one non-blocking UDP socket per address ("::" is dual-stack).

    With port 0 the first socket picks the port and the rest reuse it.
    """
    sockets: list[socket.socket] = []
    try:
        for host in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            if family == socket.AF_INET6:
                # "::" serves IPv4 too, so both resolutions of localhost work.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, buffer_bytes)
                except OSError:
                    pass  # the kernel caps it; a smaller buffer still works
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class DatagramTransport(Protocol):
    """Where a connection's datagrams go: a UDP socket, or an in-memory pipe in tests."""

    def sendto(self, data: bytes, addr: tuple) -> bool:
        """Send without blocking; False when the send buffer is full (try again
        after ``wait_writable``). Other failures count as a lost datagram."""

    async def wait_writable(self) -> None:
        """Return when ``sendto`` may succeed again."""


class UdpTransport:
    """A non-blocking UDP socket as a DatagramTransport."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def sendto(self, data: bytes, addr: tuple) -> bool:
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            pass  # unreachable peer and the like: this datagram is lost
        return True

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)


def tcp_port_is_free(addresses: list[str], port: int) -> bool:
    """Whether TCP listeners could bind ``port`` on every address now (the
    same options serve_https uses), so UDP and TCP can share an ephemeral port."""
    for host in addresses:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


class QuicEndpoint:
    """Routes datagrams to connections and owns their tasks.

    ``session_handlers`` maps a WebTransport path (e.g. "/moq") to the async
    function that serves sessions on it; ``http_handler`` answers ordinary
    HTTP/3 requests. ``certificate`` is read for each new connection, so a
    renewed certificate applies to new connections at once.
    """

    def __init__(self, *, quic_config, webtransport_config, certificate: Callable[[], Certificate],
                 tokens: TokenAuthority, http_handler: HttpHandler | None = None,
                 max_body_bytes: int = 1 << 20) -> None:
        self._qc = quic_config
        self._wc = webtransport_config
        self._certificate = certificate
        self._tokens = tokens
        self.http_handler = http_handler
        self.session_handlers: dict[str, SessionHandler] = {}
        self.max_body_bytes = max_body_bytes
        self.stats = QuicStatistics()
        self._routes: dict[bytes, QuicConnectionDriver] = {}
        self._drivers: set[QuicConnectionDriver] = set()
        self._nursery: trio.Nursery | None = None
        self._accepting = True
        self._configuration: QuicConfiguration | None = None
        self._configuration_cert: Certificate | None = None
        self.sockets: list[socket.socket] = []
        # Connections with application data to send, flushed together by one
        # task: writing a frame to many viewers costs one task switch, not
        # one per viewer.
        self._dirty: dict[QuicConnectionDriver, None] = {}
        self._dirty_event = trio.Event()

    # --- lifecycle ----------------------------------------------------------

    async def serve(self, sockets: list[socket.socket], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve QUIC on already-bound UDP sockets.

        Never returns unless cancelled.

        Resource handling: the sockets are closed on exit; every connection
        task runs in this function's nursery and is cancelled with it.

        Error handling: undecodable or unroutable datagrams are dropped and
        counted; a connection that fails is closed alone; socket send errors
        other than a full buffer drop that batch and are counted.
        """
        self.sockets = sockets
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for sock in sockets:
                    nursery.start_soon(self._receive_loop, sock)
                nursery.start_soon(self._flush_loop)
                task_status.started()
                # Without sockets (in-memory tests) the nursery would end at
                # once; keep the endpoint alive until cancelled.
                await trio.sleep_forever()
        finally:
            for sock in sockets:
                sock.close()

    def _mark_dirty(self, driver: "QuicConnectionDriver") -> None:
        self._dirty[driver] = None
        self._dirty_event.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty_event.wait()
            self._dirty_event = trio.Event()
            dirty, self._dirty = self._dirty, {}
            for driver in dirty:
                await driver.flush_now()
            await trio.lowlevel.checkpoint()

    def stop_accepting(self) -> None:
        """Refuse new connections and sessions from now on."""
        self._accepting = False

    def close_all(self, reason: str) -> None:
        """Close every session and connection with ``reason`` (graceful shutdown)."""
        self._accepting = False
        for driver in list(self._drivers):
            driver.close(reason)

    async def wait_all_closed(self) -> None:
        """Return once every connection task has ended."""
        while self._drivers:
            driver = next(iter(self._drivers))
            await driver.finished.wait()

    @property
    def connection_count(self) -> int:
        return len(self._drivers)

    # --- configuration -------------------------------------------------------

    def _server_configuration(self) -> QuicConfiguration:
        cert = self._certificate()
        if self._configuration is None or self._configuration_cert is not cert:
            configuration = QuicConfiguration(
                is_client=False,
                alpn_protocols=H3_ALPN,
                idle_timeout=self._qc.idle_timeout_s,
                max_datagram_frame_size=self._qc.max_datagram_frame_size,
                max_stream_data=self._wc.stream_buffer_bytes,
                max_data=self._wc.stream_buffer_bytes * 16,
            )
            configuration.load_cert_chain(cert.cert_path, cert.key_path)
            self._configuration = configuration
            self._configuration_cert = cert
        return self._configuration

    # --- datagram routing ---------------------------------------------------

    async def _receive_loop(self, sock: socket.socket) -> None:
        transport = UdpTransport(sock)
        batch = self._qc.receive_batch_packets
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(batch):
                try:
                    data, addr = sock.recvfrom(RECEIVE_BUFFER_BYTES)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    # ICMP errors from earlier sends surface here; they
                    # concern one peer, not the socket.
                    continue
                self.datagram_received(transport, data, addr)
            await trio.lowlevel.checkpoint_if_cancelled()

    def datagram_received(self, transport: DatagramTransport, data: bytes, addr: tuple) -> None:
        """Route one datagram from ``addr`` that arrived on ``transport``."""
        stats = self.stats
        stats.datagrams_in += 1
        stats.bytes_in += len(data)
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        except ValueError:
            stats.undecodable_dropped += 1
            return
        driver = self._routes.get(header.destination_cid)
        if driver is not None:
            driver.deliver(data, addr)
            return
        if not self._accepting or self._nursery is None:
            stats.connections_refused += 1
            return
        configuration = self._server_configuration()
        if (header.packet_type != QuicPacketType.VERSION_NEGOTIATION
                and header.version is not None
                and header.version not in configuration.supported_versions):
            stats.version_negotiations += 1
            self._sendto(transport, encode_quic_version_negotiation(
                source_cid=header.destination_cid,
                destination_cid=header.source_cid,
                supported_versions=configuration.supported_versions,
            ), addr)
            return
        # Only a full-size Initial may create state: this bounds what a
        # spoofed small packet can make the server allocate or send.
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            stats.undecodable_dropped += 1
            return
        if len(self._drivers) >= self._qc.max_connections:
            stats.connections_refused += 1
            return
        connection = QuicConnection(
            configuration=configuration,
            original_destination_connection_id=header.destination_cid,
        )
        # aioquic has no configuration for the stream-count limits it grants
        # the peer; set them before the handshake sends transport parameters.
        connection._local_max_streams_bidi.value = self._qc.max_streams_bidi
        connection._local_max_streams_uni.value = self._qc.max_streams_uni
        driver = QuicConnectionDriver(self, transport, connection, addr)
        self._drivers.add(driver)
        self._routes[header.destination_cid] = driver
        self._routes[connection.host_cid] = driver
        stats.connections_open += 1
        stats.connections_total += 1
        self._nursery.start_soon(driver.run)
        driver.deliver(data, addr)

    def connect(self, transport: DatagramTransport, addr: tuple,
                configuration: QuicConfiguration) -> "QuicConnectionDriver":
        """Start a client connection to ``addr`` over ``transport`` (client role)."""
        assert self._nursery is not None, "serve() must be running"
        connection = QuicConnection(configuration=configuration)
        connection.connect(addr, now=trio.current_time())
        driver = QuicConnectionDriver(self, transport, connection, addr)
        self._drivers.add(driver)
        self._routes[connection.host_cid] = driver
        self.stats.connections_open += 1
        self.stats.connections_total += 1
        self._nursery.start_soon(driver.run)
        driver._poke()
        return driver

    def _sendto(self, transport: DatagramTransport, data: bytes, addr: tuple) -> bool:
        if not transport.sendto(data, addr):
            return False
        self.stats.datagrams_out += 1
        self.stats.bytes_out += len(data)
        return True

    async def send_batch(self, transport: DatagramTransport,
                         datagrams: list[tuple[bytes, tuple]], *, checkpoint: bool = True) -> None:
        """Send datagrams without a checkpoint per packet; wait only when the
        send buffer is full."""
        for data, addr in datagrams:
            while not self._sendto(transport, data, addr):
                await transport.wait_writable()
        if checkpoint:
            await trio.lowlevel.checkpoint()

    def _add_route(self, cid: bytes, driver: "QuicConnectionDriver") -> None:
        self._routes[cid] = driver

    def _remove_route(self, cid: bytes) -> None:
        self._routes.pop(cid, None)

    def _forget(self, driver: "QuicConnectionDriver") -> None:
        self._drivers.discard(driver)
        for cid in [cid for cid, d in self._routes.items() if d is driver]:
            del self._routes[cid]
        self.stats.connections_open -= 1


_WAKEUP = object()


@dataclass
class _PendingRequest:
    headers: list[tuple[bytes, bytes]]
    body: bytearray = field(default_factory=bytearray)
    too_large: bool = False


@dataclass
class _ConnectWaiter:
    """A request this client sent: a WebTransport CONNECT or a plain request."""

    target: str
    webtransport: bool = True
    max_body_bytes: int = 4096
    done: trio.Event = field(default_factory=trio.Event)
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    session: WebTransportSession | None = None


class QuicConnectionDriver:
    """Owns one QuicConnection: its inbound queue, its timer, its HTTP/3 layer
    and its WebTransport sessions."""

    def __init__(self, endpoint: QuicEndpoint, transport: DatagramTransport,
                 connection: QuicConnection, addr: tuple) -> None:
        self._endpoint = endpoint
        self._transport = transport
        self.quic = connection
        self.remote_address = addr
        self._h3: _ShopcastH3 | None = None
        self._inbound_send, self._inbound_recv = trio.open_memory_channel[object](
            endpoint._qc.inbound_queue_packets)
        self._wakeup_pending = False
        self._timer_scope: trio.CancelScope | None = None
        self._progress = trio.Event()
        self._sessions: dict[int, WebTransportSession] = {}
        self._stream_session: dict[int, int] = {}
        self._requests: dict[int, _PendingRequest] = {}
        self._connects: dict[int, _ConnectWaiter] = {}
        self._terminated = False
        self._closing: tuple[str, float, list[int]] | None = None
        self._send_order: dict[int, int] = {}
        self._close_reason = "connection closed"
        self.finished = trio.Event()
        self._nursery: trio.Nursery | None = None

    # --- called from the endpoint's receive task ---------------------------

    def deliver(self, data: bytes, addr: tuple) -> None:
        try:
            self._inbound_send.send_nowait((data, addr))
        except trio.WouldBlock:
            self._endpoint.stats.inbound_dropped += 1

    # --- the connection task ----------------------------------------------

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._loop()
                nursery.cancel_scope.cancel()
        finally:
            for session in list(self._sessions.values()):
                session._finish(0, self._close_reason)
            for waiter in self._connects.values():
                waiter.done.set()
            self._sessions.clear()
            self._endpoint._forget(self)
            self.finished.set()

    async def _loop(self) -> None:
        quic = self.quic
        while not self._terminated:
            timer_at = quic.get_timer()
            if self._closing is not None:
                timer_at = min(timer_at or math.inf, self._closing[1])
            item = None
            with trio.move_on_at(timer_at if timer_at is not None else math.inf) as scope:
                # flush_now may move this deadline earlier after sending.
                self._timer_scope = scope
                item = await self._inbound_recv.receive()
            self._timer_scope = None
            now = trio.current_time()
            if item is not None:
                self._ingest(item, now)
                while True:
                    try:
                        self._ingest(self._inbound_recv.receive_nowait(), now)
                    except trio.WouldBlock:
                        break
            timer_at = quic.get_timer()
            if timer_at is not None and now >= timer_at:
                quic.handle_timer(now)
            self._process_events()
            self._close_if_due(now)
            await self._flush()
            progress, self._progress = self._progress, trio.Event()
            progress.set()

    def _ingest(self, item: object, now: float) -> None:
        if item is _WAKEUP:
            self._wakeup_pending = False
            return
        data, addr = item  # type: ignore[misc]
        self.quic.receive_datagram(data, addr, now=now)

    def set_stream_priority(self, stream_id: int, send_order: int) -> None:
        self._send_order[stream_id] = send_order

    def _order_streams(self) -> None:
        # aioquic serves streams round-robin from this list; a stable sort by
        # send order keeps that among equals and puts control streams (no
        # send order) first, then higher priority, then newer groups.
        order = self._send_order
        queue = self.quic._streams_queue
        queue.sort(key=lambda stream: -order.get(stream.stream_id, CONTROL_SEND_ORDER))
        if len(order) > len(queue) * 2 + 64:
            live = {stream.stream_id for stream in queue}
            self._send_order = {k: v for k, v in order.items() if k in live}

    async def _flush(self) -> None:
        if self._send_order:
            self._order_streams()
        datagrams = self.quic.datagrams_to_send(now=trio.current_time())
        if datagrams:
            await self._endpoint.send_batch(self._transport, datagrams)

    async def flush_now(self) -> None:
        """Send what the application queued, from the endpoint's flush task."""
        if self._terminated:
            return
        if self._send_order:
            self._order_streams()
        datagrams = self.quic.datagrams_to_send(now=trio.current_time())
        if datagrams:
            await self._endpoint.send_batch(self._transport, datagrams, checkpoint=False)
        timer_at = self.quic.get_timer()
        scope = self._timer_scope
        if scope is not None and timer_at is not None and timer_at < scope.deadline:
            scope.deadline = timer_at

    def wake(self) -> None:
        """Have queued application data sent soon (by the endpoint's flush task)."""
        self._endpoint._mark_dirty(self)

    def _poke(self) -> None:
        """Make the connection task itself run once more (closing needs it)."""
        if not self._wakeup_pending:
            try:
                self._inbound_send.send_nowait(_WAKEUP)
                self._wakeup_pending = True
            except trio.WouldBlock:
                pass  # the queue is full, so the task is about to run anyway

    @property
    def peer_settings(self) -> dict[int, int] | None:
        """The HTTP/3 SETTINGS the peer sent, once received."""
        return None if self._h3 is None else self._h3.received_settings

    async def wait_progress(self) -> None:
        """Wait until the connection task has run once more (acks processed)."""
        if self._terminated:
            await trio.lowlevel.checkpoint()
            return
        await self._progress.wait()

    def wake_writers(self) -> None:
        progress, self._progress = self._progress, trio.Event()
        progress.set()

    def close(self, reason: str) -> None:
        """Close every session, then the connection, with ``reason``.

        The session-close capsules go out first; the connection closes once
        they are acknowledged or after ``[quic] close_grace_s``, because
        aioquic's close discards stream data still queued.
        """
        sessions = list(self._sessions.values())
        for session in sessions:
            session.close(0, reason)
        self._closing = (reason, trio.current_time() + self._endpoint._qc.close_grace_s,
                         [s.session_id for s in sessions])
        self._poke()

    def _close_if_due(self, now: float) -> None:
        if self._closing is None or self._terminated:
            return
        reason, deadline, stream_ids = self._closing
        if now >= deadline or all(self.stream_backlog_bytes(i) == 0 for i in stream_ids):
            self.quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase=reason)
            self._closing = None

    # --- events --------------------------------------------------------------

    def _process_events(self) -> None:
        stats = self._endpoint.stats
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, ConnectionIdIssued):
                self._endpoint._add_route(event.connection_id, self)
            elif isinstance(event, ConnectionIdRetired):
                self._endpoint._remove_route(event.connection_id)
            elif isinstance(event, ConnectionTerminated):
                self._terminated = True
                if event.reason_phrase:
                    self._close_reason = event.reason_phrase
            elif isinstance(event, ProtocolNegotiated):
                if event.alpn_protocol in H3_ALPN and self._h3 is None:
                    self._h3 = _ShopcastH3(
                        self.quic, max_sessions=self._endpoint._wc.max_sessions_per_connection)
            elif isinstance(event, HandshakeCompleted):
                stats.handshakes_completed += 1
            elif isinstance(event, StreamReset):
                self._on_stream_reset(event.stream_id, event.error_code)
            elif isinstance(event, StopSendingReceived):
                self._on_stop_sending(event.stream_id, event.error_code)
            if self._h3 is not None:
                for h3_event in self._h3.handle_event(event):
                    self._on_h3_event(h3_event)

    def _on_stream_reset(self, stream_id: int, code: int) -> None:
        session_id = self._stream_session.pop(stream_id, None)
        if session_id is not None and session_id in self._sessions:
            self._sessions[session_id]._stream_reset(stream_id, code)
        elif stream_id in self._sessions:
            self._sessions.pop(stream_id)._finish(0, "CONNECT stream reset")
        self._requests.pop(stream_id, None)

    def _on_stop_sending(self, stream_id: int, code: int) -> None:
        session_id = self._stream_session.get(stream_id)
        if session_id is not None and session_id in self._sessions:
            self._sessions[session_id]._stop_sending(stream_id, code)

    def _on_h3_event(self, event: object) -> None:
        if isinstance(event, HeadersReceived):
            self._on_headers(event)
        elif isinstance(event, DataReceived):
            session = self._sessions.get(event.stream_id)
            if session is not None:
                session._connect_stream_data(event.data, event.stream_ended)
                if session.closed.is_set():
                    self._sessions.pop(event.stream_id, None)
                    self._endpoint.stats.sessions_open -= 1
                return
            waiter = self._connects.get(event.stream_id)
            if waiter is not None:
                waiter.body += event.data[:max(0, waiter.max_body_bytes - len(waiter.body))]
                if event.stream_ended:
                    del self._connects[event.stream_id]
                    waiter.done.set()
                return
            pending = self._requests.get(event.stream_id)
            if pending is not None:
                if len(pending.body) + len(event.data) > self._endpoint.max_body_bytes:
                    pending.too_large = True
                else:
                    pending.body += event.data
                if event.stream_ended:
                    self._dispatch_request(event.stream_id)
        elif isinstance(event, WebTransportStreamDataReceived):
            session = self._sessions.get(event.session_id)
            if session is None:
                # Data for a session that is gone (or never was): refuse it.
                self.quic.stop_stream(event.stream_id, ErrorCode.H3_REQUEST_REJECTED)
                return
            self._stream_session[event.stream_id] = event.session_id
            bidi = (event.stream_id & 2) == 0
            session._stream_data(event.stream_id, event.data, event.stream_ended, bidi)
        elif isinstance(event, DatagramReceived):
            session = self._sessions.get(event.stream_id)
            if session is not None:
                session._datagram(event.data)

    def _on_headers(self, event: HeadersReceived) -> None:
        assert self._h3 is not None
        if self.quic.configuration.is_client:
            self._on_connect_response(event)
            return
        pseudo: dict[str, str] = {}
        regular: list[tuple[str, str]] = []
        for name, value in event.headers:
            key = name.decode("latin-1").lower()
            if key.startswith(":"):
                pseudo[key] = value.decode("latin-1")
            else:
                regular.append((key, value.decode("latin-1")))
        if pseudo.get(":method") == "CONNECT" and pseudo.get(":protocol") in WEBTRANSPORT_PROTOCOLS:
            self._on_connect(event.stream_id, pseudo, regular)
            return
        pending = _PendingRequest(list(event.headers))
        self._requests[event.stream_id] = pending
        if event.stream_ended:
            self._dispatch_request(event.stream_id)

    def _respond(self, stream_id: int, status: int, headers: list[tuple[str, str]],
                 body: bytes = b"", end: bool = True) -> None:
        assert self._h3 is not None
        self._h3.send_headers(stream_id, [(b":status", str(status).encode())]
                              + [(k.encode(), v.encode()) for k, v in headers],
                              end_stream=end and not body)
        if body:
            self._h3.send_data(stream_id, body, end_stream=end)
        self.wake()

    def _respond_error(self, stream_id: int, status: int, code: str, message: str,
                       field_name: str | None = None) -> None:
        body = json.dumps({"error": {"code": code, "message": message, "field": field_name}}).encode()
        self._respond(stream_id, status, [("content-type", "application/json")], body)

    def _on_connect(self, stream_id: int, pseudo: dict[str, str],
                    regular: list[tuple[str, str]]) -> None:
        endpoint = self._endpoint
        stats = endpoint.stats
        url = urlsplit(pseudo.get(":path", "/"))
        query = dict(parse_qsl(url.query))
        handler = endpoint.session_handlers.get(url.path)
        if handler is None:
            stats.sessions_refused += 1
            self._respond_error(stream_id, 404, "not_found",
                                f"no WebTransport endpoint at {url.path}", "path")
            return
        if not endpoint._accepting:
            stats.sessions_refused += 1
            self._respond_error(stream_id, 503, "shutting_down", "the server is shutting down")
            return
        if len(self._sessions) >= endpoint._wc.max_sessions_per_connection:
            stats.sessions_refused += 1
            self._respond_error(stream_id, 429, "too_many_sessions",
                                "too many WebTransport sessions on this connection")
            return
        claims = None
        if "token" in query:
            try:
                claims = endpoint._tokens.verify_untrusted(query["token"], now=time.time())
            except TokenError as exc:
                stats.sessions_refused += 1
                self._respond_error(stream_id, 401, f"token_{exc.reason}", str(exc), "token")
                return
        wc = endpoint._wc
        session = WebTransportSession(
            self, stream_id, path=url.path, query=query, headers=dict(regular),
            claims=claims, remote_address=self.remote_address,
            accept_queue=wc.accept_queue_streams, datagram_queue=wc.datagram_queue,
            stream_buffer_bytes=wc.stream_buffer_bytes,
                send_high_water_bytes=wc.send_high_water_bytes, max_capsule_bytes=wc.max_capsule_bytes)
        self._sessions[stream_id] = session
        stats.sessions_open += 1
        stats.sessions_total += 1
        # Chromium's WebTransport over aioquic's draft-02 settings needs this
        # header in the CONNECT response.
        self._respond(stream_id, 200, [("sec-webtransport-http3-draft", "draft02")], end=False)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_session, handler, session)

    async def _run_session(self, handler: SessionHandler, session: WebTransportSession) -> None:
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_cancel_when_closed, session, scope)
                    await handler(session)
                    nursery.cancel_scope.cancel()
            session.close(0, "")
        except Exception as exc:  # noqa: BLE001 - one session's failure stays with it
            if not _only_session_closed(exc):
                log.error("session_handler_failed", path=session.path,
                          peer=str(self.remote_address), exc_info=True)
                session.close(SESSION_INTERNAL_ERROR, "internal server error")
        finally:
            if self._sessions.pop(session.session_id, None) is not None:
                self._endpoint.stats.sessions_open -= 1
            session.close(0, "")

    def _dispatch_request(self, stream_id: int) -> None:
        pending = self._requests.pop(stream_id)
        self._endpoint.stats.h3_requests += 1
        if pending.too_large:
            self._respond_error(stream_id, 413, "body_too_large",
                                f"request body exceeds {self._endpoint.max_body_bytes} bytes", "body")
            return
        handler = self._endpoint.http_handler
        if handler is None:
            self._respond_error(stream_id, 404, "not_found", "no HTTP/3 routes")
            return
        request = H3Request(headers=tuple(pending.headers), body=bytes(pending.body),
                            remote_address=self.remote_address)
        assert self._nursery is not None
        self._nursery.start_soon(self._answer, stream_id, handler, request)

    async def _answer(self, stream_id: int, handler: HttpHandler, request: H3Request) -> None:
        response = await handler(request)
        if not self._terminated:
            self._respond(stream_id, response.status, list(response.headers), response.body)

    # --- client role ----------------------------------------------------------

    async def connect_webtransport(self, authority: str, target: str) -> WebTransportSession:
        """Open a WebTransport session (client role) at ``target`` ("/path?query").

        Raises SessionClosed with the HTTP status as code when the server
        refuses, and the response body as reason.
        """
        while self._h3 is None and not self._terminated:
            await self._handshake_progress()
        if self._h3 is None:
            raise SessionClosed(0, "connection closed before the handshake completed")
        stream_id = self.quic.get_next_available_stream_id()
        self._h3.send_headers(stream_id, [
            (b":method", b"CONNECT"), (b":protocol", b"webtransport"), (b":scheme", b"https"),
            (b":authority", authority.encode()), (b":path", target.encode()),
            (b"origin", f"https://{authority}".encode()),
        ], end_stream=False)
        waiter = _ConnectWaiter(target)
        self._connects[stream_id] = waiter
        self.wake()
        await waiter.done.wait()
        if waiter.session is None:
            raise SessionClosed(waiter.status, waiter.body.decode("utf-8", "replace"))
        return waiter.session

    async def request(self, authority: str, method: str, target: str,
                      headers: list[tuple[str, str]] = (), body: bytes = b"") -> H3Response:
        """Send an HTTP/3 request (client role) and return the whole response."""
        while self._h3 is None and not self._terminated:
            await self._handshake_progress()
        if self._h3 is None:
            raise ConnectionError("connection closed before the handshake completed")
        stream_id = self.quic.get_next_available_stream_id()
        self._h3.send_headers(stream_id, [
            (b":method", method.encode()), (b":scheme", b"https"),
            (b":authority", authority.encode()), (b":path", target.encode()),
        ] + [(k.encode(), v.encode()) for k, v in headers], end_stream=not body)
        if body:
            self._h3.send_data(stream_id, body, end_stream=True)
        waiter = _ConnectWaiter(target, webtransport=False,
                                max_body_bytes=self._endpoint.max_body_bytes)
        self._connects[stream_id] = waiter
        self.wake()
        await waiter.done.wait()
        if waiter.status == 0:
            raise ConnectionError("connection closed before the response arrived")
        return H3Response(waiter.status, tuple(waiter.headers), bytes(waiter.body))

    async def _handshake_progress(self) -> None:
        await self._progress.wait()

    def _on_connect_response(self, event: HeadersReceived) -> None:
        waiter = self._connects.get(event.stream_id)
        if waiter is None:
            return
        status = 0
        for name, value in event.headers:
            if name == b":status":
                status = int(value)
            else:
                waiter.headers.append((name.decode("latin-1"), value.decode("latin-1")))
        waiter.status = status
        if not waiter.webtransport:
            if event.stream_ended:
                del self._connects[event.stream_id]
                waiter.done.set()
            return
        if status == 200:
            url = urlsplit(waiter.target)
            wc = self._endpoint._wc
            response_headers = {name.decode("latin-1"): value.decode("latin-1")
                                for name, value in event.headers if not name.startswith(b":")}
            session = WebTransportSession(
                self, event.stream_id, path=url.path, query=dict(parse_qsl(url.query)),
                headers=response_headers, claims=None, remote_address=self.remote_address,
                accept_queue=wc.accept_queue_streams, datagram_queue=wc.datagram_queue,
                stream_buffer_bytes=wc.stream_buffer_bytes,
                send_high_water_bytes=wc.send_high_water_bytes, max_capsule_bytes=wc.max_capsule_bytes)
            self._sessions[event.stream_id] = session
            waiter.session = session
            del self._connects[event.stream_id]
            waiter.done.set()
        elif event.stream_ended:
            del self._connects[event.stream_id]
            waiter.done.set()

    # --- used by WebTransport sessions and streams ---------------------------

    def open_webtransport_stream(self, session_id: int, *, unidirectional: bool) -> int:
        assert self._h3 is not None
        stream_id = self._h3.create_webtransport_stream(session_id, is_unidirectional=unidirectional)
        if not unidirectional:
            # aioquic marks only peer-opened bidirectional streams as
            # WebTransport; without this the peer's replies on a stream we
            # opened would be parsed as HTTP/3 frames.
            with self._h3._get_or_create_stream(stream_id) as h3_stream:
                h3_stream.frame_type = FrameType.WEBTRANSPORT_STREAM
                h3_stream.session_id = session_id
        self._stream_session[stream_id] = session_id
        self.wake()
        return stream_id

    def send_stream_data(self, stream_id: int, data: bytes, end: bool) -> None:
        self.quic.send_stream_data(stream_id, data, end)
        self.wake()

    def reset_stream(self, stream_id: int, h3_code: int) -> None:
        try:
            self.quic.reset_stream(stream_id, h3_code)
        except (ValueError, AssertionError):
            pass  # already finished or reset
        self.wake()

    def stop_stream(self, stream_id: int, h3_code: int) -> None:
        try:
            self.quic.stop_stream(stream_id, h3_code)
        except (ValueError, AssertionError):
            pass
        self.wake()

    def stream_backlog_bytes(self, stream_id: int) -> int:
        # aioquic keeps unacknowledged bytes in the sender's buffer and offers
        # no public accessor; its length is exactly the send backlog.
        stream = self.quic._streams.get(stream_id)
        if stream is None:
            return 0
        return len(stream.sender._buffer)

    @property
    def datagram_backlog(self) -> int:
        # aioquic queues DATAGRAM frames without bound while congestion
        # control holds them and exposes no count; its queue's length is it.
        return len(self.quic._datagrams_pending)

    def send_webtransport_datagram(self, session_id: int, data: bytes) -> bool:
        assert self._h3 is not None
        if len(data) > self._endpoint._qc.max_datagram_frame_size:
            return False
        self._h3.send_datagram(session_id, data)
        self.wake()
        return True

    def close_webtransport_session(self, session_id: int, capsule: bytes) -> None:
        if self._h3 is None or self._terminated:
            return
        try:
            self._h3.send_data(session_id, capsule, end_stream=True)
        except Exception:  # noqa: BLE001 - stream already ended by the peer
            pass
        if self._sessions.pop(session_id, None) is not None:
            self._endpoint.stats.sessions_open -= 1
        self.wake()

    def end_connect_stream(self, session_id: int) -> None:
        """The peer closed the session: finish our side of the CONNECT stream."""
        if self._sessions.pop(session_id, None) is not None:
            self._endpoint.stats.sessions_open -= 1
        if self._h3 is not None and not self._terminated:
            try:
                self._h3.send_data(session_id, b"", end_stream=True)
            except Exception:  # noqa: BLE001 - already finished
                pass
            self.wake()


def _only_session_closed(exc: BaseException) -> bool:
    """True when ``exc`` is SessionClosed, or a group of nothing else: the
    normal way for a handler to learn that its session ended."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_session_closed(e) for e in exc.exceptions)
    return isinstance(exc, SessionClosed)


async def _cancel_when_closed(session: WebTransportSession, scope: trio.CancelScope) -> None:
    await session.closed.wait()
    scope.cancel()


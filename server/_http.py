"""The HTTPS listener: TCP with TLS, HTTP/2 (h2) or HTTP/1.1 (h11) as ALPN chooses,
both feeding one `Router`; plain HTTP on the same port serves the certificate hash
and redirects everything else to https://.

Every byte read here comes from the network: the drivers enforce the ``[http]`` limits
of the configuration (head and body sizes, header counts, timeouts, connections) and
answer violations with the JSON errors of `_routing`, while other clients are served.
"""

from __future__ import annotations

import http
import logging
import math
import re
import socket
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11
import trio

from ._metrics import Registry
from ._routing import (
    HTTPError,
    Request,
    Response,
    Router,
    check_header_limits_untrusted,
    error_response,
    request_from_head_untrusted,
    request_from_pseudo_headers_untrusted,
)

logger = logging.getLogger("shopcast.http")

#: What ALPN offers, most preferred first.
ALPN_PROTOCOLS = ["h2", "http/1.1"]

# Bytes asked of the socket per read: large enough for a whole request head or a
# TLS record or two, small enough that one connection cannot hog memory.
_RECEIVE_BYTES = 65536
# The first byte of a TLS ClientHello record; anything else is plain HTTP.
_TLS_HANDSHAKE_RECORD = 0x16
# After accept() fails for lack of file descriptors or memory, wait this long before
# trying again rather than spinning (s).
_ACCEPT_RETRY_S = 0.1
# Tries to bind every address to one ephemeral port when port is 0 (count).
_EPHEMERAL_BIND_TRIES = 10
# Response headers that HTTP/2 forbids and that framing, not handlers, decides.
_FRAMING_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "content-length"})
# A Host header we are willing to put into a redirect: a name or IPv4 address, or a
# bracketed IPv6 address, and an optional port.
_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?\Z")


class _HTTPMetrics:
    """The listener's series, resolved once so the drivers only add."""

    def __init__(self, registry: Registry, open_connections: Callable[[], float]) -> None:
        registry.gauge(
            "shopcast_http_connections_open",
            "TCP connections open on the HTTPS port.",
            callback=open_connections,
        )
        accepted = registry.counter(
            "shopcast_http_connections_total",
            "TCP connections accepted, by protocol (h2, http/1.1, plain for unencrypted HTTP).",
            ("protocol",),
        )
        self.accepted_h2 = accepted.labels("h2")
        self.accepted_http11 = accepted.labels("http/1.1")
        self.accepted_plain = accepted.labels("plain")
        self.refused = registry.counter(
            "shopcast_http_connections_refused_total",
            "TCP connections closed at once because max_connections were open.",
        ).labels()
        self.bytes_received = registry.counter(
            "shopcast_http_received_bytes_total", "Bytes received on the HTTPS port, TLS included."
        ).labels()
        self.bytes_sent = registry.counter(
            "shopcast_http_sent_bytes_total", "Bytes sent on the HTTPS port, TLS included."
        ).labels()
        timeouts = registry.counter(
            "shopcast_http_timeouts_total",
            "Connections or streams closed by a timeout, by phase "
            "(handshake, head, body, send, keepalive).",
            ("phase",),
        )
        self.timeouts = {
            phase: timeouts.labels(phase) for phase in ("handshake", "head", "body", "send", "keepalive")
        }
        errors = registry.counter(
            "shopcast_http_protocol_errors_total",
            "Connections closed for malformed input, by protocol.",
            ("protocol",),
        )
        self.errors_h2 = errors.labels("h2")
        self.errors_http11 = errors.labels("http/1.1")
        self.errors_tls = errors.labels("tls")


class _CountingStream(trio.abc.Stream):
    """A TCP stream that counts the bytes through it, below TLS."""

    def __init__(self, transport: trio.SocketStream, metrics: _HTTPMetrics) -> None:
        self.transport = transport
        self._metrics = metrics

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)
        self._metrics.bytes_sent.inc(len(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.transport.receive_some(max_bytes)
        self._metrics.bytes_received.inc(len(data))
        return data

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def aclose(self) -> None:
        await self.transport.aclose()


@dataclass(eq=False)
class _Server:
    """State shared by the accept loops and every connection of one listener."""

    config: Any
    router: Router
    metrics: _HTTPMetrics
    ssl_context: ssl.SSLContext
    alt_svc: str | None
    certificate_sha256: Callable[[], str] | None
    open_connections: int = 0
    draining: bool = False
    #: Cancel scopes of connections waiting for the client; cancelled when draining
    #: starts so that idle connections close at once.
    wakeups: set[trio.CancelScope] = field(default_factory=set)

    def begin_drain(self) -> None:
        self.draining = True
        for scope in list(self.wakeups):
            scope.cancel()

    def https_extra_headers(self) -> tuple[tuple[str, str], ...]:
        return (("alt-svc", self.alt_svc),) if self.alt_svc else ()

    async def plain_http_untrusted(self, request: Request) -> Response:
        """The answer to a request that came without TLS: the certificate hash, or a
        redirect to the same URL over https://."""
        if (
            request.path == "/certificate.sha256"
            and request.method in ("GET", "HEAD")
            and self.certificate_sha256 is not None
        ):
            return Response.text(
                self.certificate_sha256(),
                headers=(("access-control-allow-origin", "*"), ("cache-control", "no-store")),
            )
        host = request.header("host")
        if host is None or not _HOST_RE.match(host):
            return error_response(400, "a plain-HTTP request needs a valid Host header", "host")
        query = urllib.parse.urlencode(request.query)
        location = f"https://{host}{request.path}" + (f"?{query}" if query else "")
        # 308 keeps the method and body, so a POST is not silently turned into a GET.
        return Response(308, (("location", location),))


class _Timeout(Exception):
    """The client was too slow in ``phase``."""

    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


def _client_address(stream: trio.SocketStream) -> tuple[str, int] | None:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return None
    host, port = peer[0], peer[1]
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
    return host.removeprefix("::ffff:") if "." in host else host, port


def _encode_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _has_body(status: int) -> bool:
    return status >= 200 and status not in (204, 304)


def _framed_headers(
    response: Response, *, is_head: bool, extra: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The response headers without framing headers, plus the content-length the body
    (or, for HEAD, the GET body the router measured) has, plus ``extra``."""
    headers = [(n, v) for n, v in response.headers if n not in _FRAMING_HEADERS]
    if _has_body(response.status):
        length = response.header("content-length") if is_head else None
        headers.append(("content-length", length if length is not None else str(len(response.body))))
    headers.extend(extra)
    return headers


# --------------------------------------------------------------------------- HTTP/1.1


class _H11Connection:
    """One HTTP/1.1 connection: requests in sequence (pipelined ones wait their turn),
    each head within header_timeout_s, each body within body_timeout_s, idle
    keep-alive closed after keepalive_timeout_s."""

    def __init__(
        self,
        server: _Server,
        stream: trio.abc.Stream,
        client: tuple[str, int] | None,
        handle: Callable[[Request], Awaitable[Response]],
        extra_headers: tuple[tuple[str, str], ...],
    ) -> None:
        self.server = server
        self.config = server.config
        self.stream = stream
        self.client = client
        self.handle = handle
        self.extra_headers = extra_headers
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_header_bytes)

    async def run(self, first_head_deadline: float) -> None:
        try:
            # The first request's head must be complete by first_head_deadline; a
            # later one may wait keepalive_timeout_s to start, then has header_timeout_s.
            if not await self._wait_for_request(first_head_deadline, first=True):
                return
            head_deadline = first_head_deadline
            while await self._serve_one_untrusted(head_deadline):
                self.conn.start_next_cycle()
                idle_deadline = trio.current_time() + self.config.keepalive_timeout_s
                if not await self._wait_for_request(idle_deadline, first=False):
                    return
                head_deadline = trio.current_time() + self.config.header_timeout_s
        except _Timeout as exc:
            self.server.metrics.timeouts[exc.phase].inc()
            await self._send_error_and_close(408, f"the request {exc.phase} took too long")
        except h11.RemoteProtocolError as exc:
            self.server.metrics.errors_http11.inc()
            status = exc.error_status_hint
            if status == 431:
                message = f"the request head exceeds {self.config.max_header_bytes} bytes"
            else:
                message = f"malformed HTTP/1.1 request: {exc}"
            await self._send_error_and_close(status, message)

    async def _wait_for_request(self, deadline: float, *, first: bool) -> bool:
        """Wait until ``deadline``, and only while not draining, for the first byte of
        the next request; False when the connection should close quietly. The first
        request of a connection that sends nothing in time gets a 408 (_Timeout)."""
        if self.conn.trailing_data[0]:
            return True
        if self.server.draining or self.conn.trailing_data[1]:
            return False
        with trio.move_on_at(deadline) as scope:
            self.server.wakeups.add(scope)
            try:
                data = await self.stream.receive_some(_RECEIVE_BYTES)
            finally:
                self.server.wakeups.discard(scope)
        if scope.cancelled_caught:
            if self.server.draining:
                return False
            if first:
                raise _Timeout("head")
            self.server.metrics.timeouts["keepalive"].inc()
            return False
        self.conn.receive_data(data)
        return bool(data)

    async def _next_event_untrusted(self, deadline: float, phase: str) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_at(deadline):
                self.conn.receive_data(await self.stream.receive_some(_RECEIVE_BYTES))
                continue
            raise _Timeout(phase)

    async def _serve_one_untrusted(self, head_deadline: float) -> bool:
        """Read, route and answer one request; whether the connection stays open."""
        event = await self._next_event_untrusted(head_deadline, "head")
        if isinstance(event, h11.ConnectionClosed):
            return False
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}", 400)
        try:
            check_header_limits_untrusted(
                event.headers,
                max_header_bytes=self.config.max_header_bytes,
                max_header_fields=self.config.max_header_fields,
            )
            self._check_declared_length(event)
        except HTTPError as exc:
            await self._send_response(exc.to_response(), is_head=event.method == b"HEAD", close=True)
            return False
        if self.conn.they_are_waiting_for_100_continue:
            await self._send(self.conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = await self._read_body_untrusted()
        if body is None:
            await self._send_response(
                error_response(413, f"the request body exceeds {self.config.max_body_bytes} bytes", "body"),
                is_head=event.method == b"HEAD",
                close=True,
            )
            return False
        try:
            request = request_from_head_untrusted(
                max_query_fields=self.server.config.max_query_fields,
                method=event.method,
                target=event.target,
                headers=event.headers,
                body=body,
                client=self.client,
                http_version=event.http_version.decode("ascii"),
            )
        except HTTPError as exc:
            response = exc.to_response()
        else:
            response = await self.handle(request)
        await self._send_response(response, is_head=event.method == b"HEAD", close=self.server.draining)
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    def _check_declared_length(self, event: h11.Request) -> None:
        for name, value in event.headers:
            # h11 has already checked that Content-Length is a decimal number.
            if name == b"content-length" and int(value) > self.config.max_body_bytes:
                raise HTTPError(
                    413,
                    "body_too_large",
                    f"the request body of {int(value)} bytes exceeds {self.config.max_body_bytes} bytes",
                    "body",
                )

    async def _read_body_untrusted(self) -> bytes | None:
        """The whole body, or None when it exceeds max_body_bytes."""
        deadline = trio.current_time() + self.config.body_timeout_s
        chunks: list[bytes] = []
        size_bytes = 0
        while True:
            event = await self._next_event_untrusted(deadline, "body")
            if isinstance(event, h11.Data):
                size_bytes += len(event.data)
                if size_bytes > self.config.max_body_bytes:
                    return None
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise h11.RemoteProtocolError("the connection closed inside the request body", 400)

    async def _send(self, data: bytes | None) -> None:
        if not data:
            return
        with trio.move_on_after(self.config.body_timeout_s):
            await self.stream.send_all(data)
            return
        raise _SendTimeout

    async def _send_response(self, response: Response, *, is_head: bool, close: bool) -> None:
        extra = self.extra_headers + ((("connection", "close"),) if close else ())
        headers = _framed_headers(response, is_head=is_head, extra=extra)
        try:
            reason = http.HTTPStatus(response.status).phrase.encode()
        except ValueError:
            reason = b""
        data = self.conn.send(
            h11.Response(status_code=response.status, headers=_encode_headers(headers), reason=reason)
        )
        if response.body and not is_head and _has_body(response.status):
            data += self.conn.send(h11.Data(data=response.body))
        data += self.conn.send(h11.EndOfMessage())
        await self._send(data)

    async def _send_error_and_close(self, status: int, message: str) -> None:
        # h11 lets a server answer from IDLE too, so a broken or slow head still gets
        # its JSON error; after a response has started there is nothing to add.
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        await self._send_response(error_response(status, message), is_head=False, close=True)


class _SendTimeout(Exception):
    """The client did not take our bytes within body_timeout_s."""


# --------------------------------------------------------------------------- HTTP/2


@dataclass(eq=False)
class _H2Stream:
    stream_id: int
    headers: list[tuple[bytes, bytes]]
    is_head: bool
    #: The body must be complete by then, or the stream is answered 408.
    body_deadline: float
    body: list[bytes] = field(default_factory=list)
    body_bytes: int = 0
    #: False once the whole request is in or a response has been decided.
    receiving: bool = True
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class _H2Connection:
    """One HTTP/2 connection: each request handled in its own task, responses sent in
    flow-control-sized chunks by one writer task, so cancelling a stream never cuts a
    TLS record in half."""

    def __init__(
        self,
        server: _Server,
        stream: trio.abc.Stream,
        client: tuple[str, int] | None,
    ) -> None:
        self.server = server
        self.config = server.config
        self.stream = stream
        self.client = client
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.config.h2_max_concurrent_streams,
                # Advisory: hpack's own 64 KiB cap is the hard limit; within it, larger
                # heads get a 431 on their stream rather than a connection error.
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.config.max_header_bytes,
            },
        )
        self.streams: dict[int, _H2Stream] = {}
        self.idle_deadline = math.inf
        self.closing = False
        self.goaway_sent = False
        self.peer_done = False
        self._writer_wakeup = trio.Event()
        self._window_changed = trio.Event()
        self._handlers: trio.Nursery | None = None

    async def run(self, first_request_deadline: float) -> None:
        self.idle_deadline = first_request_deadline
        self.conn.initiate_connection()
        async with trio.open_nursery() as nursery:
            self._handlers = nursery
            nursery.start_soon(self._write_loop)
            self._kick_writer()
            graceful = await self._read_loop_untrusted()
            self.closing = True
            self._kick_writer()
            if not graceful:
                nursery.cancel_scope.cancel()

    def _kick_writer(self) -> None:
        self._writer_wakeup.set()

    async def _write_loop(self) -> None:
        while True:
            data = self.conn.data_to_send()
            if data:
                with trio.move_on_after(self.config.body_timeout_s):
                    await self.stream.send_all(data)
                    continue
                self.server.metrics.timeouts["send"].inc()
                raise _SendTimeout
            if self.closing:
                return
            await self._writer_wakeup.wait()
            self._writer_wakeup = trio.Event()

    def _next_deadline(self) -> float:
        if not self.streams:
            return self.idle_deadline
        return min((s.body_deadline for s in self.streams.values() if s.receiving), default=math.inf)

    async def _read_loop_untrusted(self) -> bool:
        """Feed the client's bytes to h2 until the connection is done; True when it ended
        in order (GOAWAY sent and every stream answered), False to abort."""
        while True:
            if self.server.draining:
                # Also covers a connection that began while draining had started.
                self._send_goaway()
            if (self.goaway_sent or self.peer_done) and not self.streams:
                return True
            with trio.move_on_at(self._next_deadline()) as scope:
                if not self.goaway_sent:
                    self.server.wakeups.add(scope)
                try:
                    data = await self.stream.receive_some(_RECEIVE_BYTES)
                finally:
                    self.server.wakeups.discard(scope)
            if scope.cancelled_caught:
                self._on_deadline()
                continue
            if not data:
                return False
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                # h2 has queued a GOAWAY naming the error; send it and close.
                logger.debug("h2 protocol error from %s: %s", self.client, exc)
                self.server.metrics.errors_h2.inc()
                # No stream can be answered on a failed connection; the writer still
                # sends the GOAWAY before the connection closes.
                for stream in self.streams.values():
                    stream.cancel_scope.cancel()
                self.streams.clear()
                return True
            for event in events:
                self._on_event_untrusted(event)
            self._kick_writer()

    def _send_goaway(self) -> None:
        if not self.goaway_sent:
            self.goaway_sent = True
            self.conn.close_connection()
            self._kick_writer()

    def _on_deadline(self) -> None:
        now = trio.current_time()
        if self.server.draining:
            self._send_goaway()
        if not self.streams and now >= self.idle_deadline:
            self.server.metrics.timeouts["keepalive" if self.conn.highest_inbound_stream_id else "head"].inc()
            self._send_goaway()
        for stream in list(self.streams.values()):
            if stream.receiving and now >= stream.body_deadline:
                self.server.metrics.timeouts["body"].inc()
                self._respond_early(stream, error_response(408, "the request body took too long", "body"))

    def _on_event_untrusted(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_request_untrusted(event)
        elif isinstance(event, h2.events.DataReceived):
            # Give the window back at once; the body limit, not flow control, bounds
            # what one stream may buffer.
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.receiving:
                stream.body_bytes += len(event.data)
                if stream.body_bytes > self.config.max_body_bytes:
                    self._respond_early(
                        stream,
                        error_response(413, f"the request body exceeds {self.config.max_body_bytes} bytes", "body"),
                    )
                else:
                    stream.body.append(event.data)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.receiving:
                stream.receiving = False
                self._start(self._handle_stream, stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.cancel_scope.cancel()
                self._stream_closed()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._window_changed.set()
            self._window_changed = trio.Event()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.peer_done = True

    def _on_request_untrusted(self, event: h2.events.RequestReceived) -> None:
        headers = list(event.headers or [])
        stream = _H2Stream(
            event.stream_id,
            headers,
            is_head=(b":method", b"HEAD") in headers,
            body_deadline=trio.current_time() + self.config.body_timeout_s,
        )
        self.streams[event.stream_id] = stream
        try:
            check_header_limits_untrusted(
                headers,
                max_header_bytes=self.config.max_header_bytes,
                max_header_fields=self.config.max_header_fields,
            )
            for name, value in headers:
                # h2 has already checked that content-length is a number.
                if name == b"content-length" and int(value) > self.config.max_body_bytes:
                    raise HTTPError(
                        413,
                        "body_too_large",
                        f"the request body of {int(value)} bytes exceeds {self.config.max_body_bytes} bytes",
                        "body",
                    )
        except HTTPError as exc:
            self._respond_early(stream, exc.to_response())
            return
        if event.stream_ended is not None:
            stream.receiving = False
            self._start(self._handle_stream, stream)

    def _start(self, function: Callable[..., Awaitable[None]], *args: Any) -> None:
        assert self._handlers is not None
        self._handlers.start_soon(function, *args)

    def _respond_early(self, stream: _H2Stream, response: Response) -> None:
        """Answer a stream whose request is still arriving (an error), then ask the
        client to stop sending it."""
        stream.receiving = False
        stream.body.clear()
        self._start(self._answer_early, stream, response)

    async def _handle_stream(self, stream: _H2Stream) -> None:
        with stream.cancel_scope:
            try:
                request = request_from_pseudo_headers_untrusted(
                    stream.headers, body=b"".join(stream.body), client=self.client, http_version="2",
                    max_query_fields=self.server.config.max_query_fields,
                )
            except HTTPError as exc:
                response = exc.to_response()
            else:
                stream.body.clear()
                response = await self.server.router.handle(request)
            await self._send_response(stream, response)
        self._forget(stream)

    async def _answer_early(self, stream: _H2Stream, response: Response) -> None:
        with stream.cancel_scope:
            await self._send_response(stream, response)
            # RFC 9113, 8.1: a complete response before the whole request may be
            # followed by RST_STREAM(NO_ERROR) so that the client stops sending.
            try:
                self.conn.reset_stream(stream.stream_id, h2.errors.ErrorCodes.NO_ERROR)
            except h2.exceptions.StreamClosedError:
                pass
            self._kick_writer()
        self._forget(stream)

    async def _send_response(self, stream: _H2Stream, response: Response) -> None:
        stream_id = stream.stream_id
        headers = [(":status", str(response.status))]
        headers += _framed_headers(response, is_head=stream.is_head, extra=self.server.https_extra_headers())
        body = b"" if stream.is_head or not _has_body(response.status) else response.body
        try:
            self.conn.send_headers(stream_id, _encode_headers(headers), end_stream=not body)
            self._kick_writer()
            with trio.move_on_after(self.config.body_timeout_s) as send_scope:
                await self._send_body(stream_id, body)
            if send_scope.cancelled_caught:
                self.server.metrics.timeouts["send"].inc()
                self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                self._kick_writer()
        except h2.exceptions.StreamClosedError:
            pass

    def _forget(self, stream: _H2Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is not None:
            self._stream_closed()

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        view = memoryview(body)
        offset = 0
        while offset < len(view):
            window_changed = self._window_changed
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                await window_changed.wait()
                continue
            chunk = view[offset : offset + window]
            offset += len(chunk)
            self.conn.send_data(stream_id, bytes(chunk), end_stream=offset == len(view))
            self._kick_writer()
            # Let the writer and other streams run between chunks.
            await trio.lowlevel.checkpoint()

    def _stream_closed(self) -> None:
        if not self.streams:
            self.idle_deadline = trio.current_time() + self.config.keepalive_timeout_s


# --------------------------------------------------------------------------- listener


async def _serve_connection(server: _Server, tcp_stream: trio.SocketStream) -> None:
    """Serve one accepted connection until it is done; closes it and never raises
    (except Cancelled)."""
    # The first request head, TLS handshake included, must arrive within
    # header_timeout_s of the accept.
    head_deadline = trio.current_time() + server.config.header_timeout_s
    counting = _CountingStream(tcp_stream, server.metrics)
    stream: trio.abc.Stream = counting
    client = _client_address(tcp_stream)
    try:
        first_byte = b""
        with trio.move_on_at(head_deadline) as handshake_scope:
            # Peek, so that the byte stays in the socket for TLS or h11 to read.
            first_byte = await tcp_stream.socket.recv(1, socket.MSG_PEEK)
            if first_byte and first_byte[0] == _TLS_HANDSHAKE_RECORD:
                stream = trio.SSLStream(counting, server.ssl_context, server_side=True)
                await stream.do_handshake()
        if handshake_scope.cancelled_caught:
            server.metrics.timeouts["handshake"].inc()
        elif not first_byte:
            pass
        elif isinstance(stream, trio.SSLStream) and stream.selected_alpn_protocol() == "h2":
            server.metrics.accepted_h2.inc()
            await _H2Connection(server, stream, client).run(head_deadline)
        elif isinstance(stream, trio.SSLStream):
            server.metrics.accepted_http11.inc()
            h11_connection = _H11Connection(
                server, stream, client, server.router.handle, server.https_extra_headers()
            )
            await h11_connection.run(head_deadline)
        else:
            server.metrics.accepted_plain.inc()
            await _H11Connection(server, stream, client, server.plain_http_untrusted, ()).run(head_deadline)
    except trio.BrokenResourceError as exc:
        if isinstance(exc.__cause__, ssl.SSLError):
            server.metrics.errors_tls.inc()
        logger.debug("connection from %s broke: %r", client, exc.__cause__ or exc)
    except (trio.ClosedResourceError, _SendTimeout, OSError) as exc:
        logger.debug("connection from %s ended: %r", client, exc)
    except Exception:
        logger.exception("connection from %s failed", client)
    finally:
        server.open_connections -= 1
        await _close(stream, server.config.close_timeout_s)


async def _close(stream: trio.abc.Stream, timeout_s: float) -> None:
    """Close with a TLS close_notify where the peer takes it, so clients see a clean
    end rather than a truncation; a peer that does not read is cut off."""
    with trio.move_on_after(timeout_s):
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    # aclose closes the socket even when cancelled or failing; this makes sure.
    await trio.aclose_forcefully(stream)


async def _accept_loop(server: _Server, listener: trio.SocketListener, connections: trio.Nursery) -> None:
    while True:
        try:
            tcp_stream = await listener.accept()
        except OSError as exc:
            # Out of file descriptors or memory: what is open still works, so wait
            # for some of it to close rather than fail the listener.
            logger.warning("accept failed: %s; retrying in %s s", exc, _ACCEPT_RETRY_S)
            await trio.sleep(_ACCEPT_RETRY_S)
            continue
        if server.open_connections >= server.config.max_connections:
            server.metrics.refused.inc()
            await trio.aclose_forcefully(tcp_stream)
            continue
        # Counted here, not in the task, so a burst of accepts cannot overshoot.
        server.open_connections += 1
        connections.start_soon(_serve_connection, server, tcp_stream)


async def _bind_once(addresses: Sequence[str], port: int, backlog: int) -> list[trio.socket.SocketType]:
    """One listening socket per address, all on one port (the first one's, when
    ``port`` is 0)."""
    has_ipv4 = any(":" not in address for address in addresses)
    sockets: list[trio.socket.SocketType] = []
    try:
        for address in addresses:
            infos = await trio.socket.getaddrinfo(
                address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, type_, proto, _, sockaddr = infos[0]
            sock = trio.socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # "::" alone is one dual-stack socket for IPv4 and IPv6 clients; next
                # to an IPv4 address it must leave IPv4 to that socket.
                dual_stack = sockaddr[0] == "::" and not has_ipv4
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
            await sock.bind(sockaddr)
            sock.listen(backlog)
            port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def _bind(addresses: Sequence[str], port: int, backlog: int) -> list[trio.socket.SocketType]:
    if not addresses:
        raise ValueError("serve_https needs at least one address to listen on")
    for attempt in range(_EPHEMERAL_BIND_TRIES):
        try:
            return await _bind_once(addresses, port, backlog)
        except OSError as exc:
            # With port 0 the first address's ephemeral port may be taken on another
            # address; try a fresh one.
            if port != 0 or len(addresses) == 1 or attempt == _EPHEMERAL_BIND_TRIES - 1:
                raise OSError(exc.errno, f"cannot listen on {addresses} port {port}: {exc.strerror}") from exc
    raise AssertionError("unreachable")


async def serve_https(
    *,
    config: Any,
    addresses: Sequence[str],
    port: int,
    ssl_context: ssl.SSLContext,
    router: Router,
    metrics: Registry,
    alt_svc: str | None = None,
    certificate_sha256: Callable[[], str] | None = None,
    stop_accepting: trio.Event | None = None,
    drain_timeout_s: float = 5.0,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) and plain HTTP on ``port`` of every
    address in ``addresses``; never returns unless cancelled or ``stop_accepting`` is set.

    ``config`` has the attributes of the ``[http]`` section of conf/default.toml.
    ``addresses`` are numeric host strings; ``"::"`` alone is one dual-stack socket.
    ``port`` 0 picks a free port, the same for every address. Once every socket
    listens, ``task_status.started(ports)`` reports the bound port of each address.
    ALPN is set on ``ssl_context`` (h2, http/1.1); its certificate may be replaced
    (``load_cert_chain``) while serving, and new handshakes use the new one.
    ``alt_svc`` is sent as the ``alt-svc`` header of every HTTPS response, e.g.
    ``'h3=":8443"; ma=86400'``. ``certificate_sha256`` returns the hex SHA-256 served
    at ``GET /certificate.sha256`` over plain HTTP; None answers it with a redirect
    like every other plain-HTTP request.

    Resource handling: one task per connection, at most ``config.max_connections``
    (more are closed at once and counted); each connection buffers at most one request
    head and, per request or HTTP/2 stream, ``config.max_body_bytes`` of body. When
    ``stop_accepting`` is set, the sockets close, idle connections close, HTTP/2
    connections get a GOAWAY, requests in flight have ``drain_timeout_s`` to finish,
    then what is left is cancelled and this function returns. Cancelling the caller's
    scope closes everything at once.

    Error handling: a client's mistake is answered with a JSON error and, where the
    connection cannot continue, a close: 400 malformed request, 408 head or body not
    within ``header_timeout_s`` / ``body_timeout_s``, 413 body over
    ``max_body_bytes``, 431 head over ``max_header_bytes`` or ``max_header_fields``; a
    failed TLS handshake or an HTTP/2 protocol error closes that connection. A
    handler's exception becomes a 500 (see `Router.handle`). No client can stop the
    others being served; only errors binding the sockets propagate.
    """
    ssl_context.set_alpn_protocols(ALPN_PROTOCOLS)
    sockets = await _bind(addresses, port, config.listen_backlog)
    try:
        listeners = [trio.SocketListener(sock) for sock in sockets]
        bound_ports = [sock.getsockname()[1] for sock in sockets]
        server = _Server(
            config=config,
            router=router,
            metrics=_HTTPMetrics(metrics, lambda: server.open_connections),
            ssl_context=ssl_context,
            alt_svc=alt_svc,
            certificate_sha256=certificate_sha256,
        )
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(_accept_loop, server, listener, connections)
                logger.info("HTTPS listening on %s port %s", addresses, bound_ports[0])
                task_status.started(bound_ports)
                if stop_accepting is None:
                    await trio.sleep_forever()
                await stop_accepting.wait()
                accepting.cancel_scope.cancel()
            for sock in sockets:
                sock.close()
            logger.info("HTTPS stopped accepting; draining %d connections", server.open_connections)
            server.begin_drain()
            connections.cancel_scope.deadline = trio.current_time() + drain_timeout_s
    finally:
        for sock in sockets:
            sock.close()

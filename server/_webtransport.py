"""WebTransport sessions as trio objects: streams with backpressure, datagrams,
and the session-close capsule.

A session handler is ``async def handler(session: WebTransportSession)``. It
accepts and opens streams and sends and receives datagrams; the QUIC
connection task (server/_quic.py) feeds incoming data in and drains what the
handler writes. Nothing here touches a socket.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Mapping

import trio
from aioquic.buffer import Buffer, BufferReadError, encode_uint_var

from shopcast.server._tokens import Claims

if TYPE_CHECKING:
    from shopcast.server._quic import QuicConnectionDriver

__all__ = [
    "CAPSULE_CLOSE_SESSION",
    "SessionClosed",
    "StreamReset",
    "WebTransportReceiveStream",
    "WebTransportSendStream",
    "WebTransportSession",
    "WebTransportStream",
    "SessionHandler",
    "decode_capsules_untrusted",
    "encode_close_capsule",
    "h3_code_to_wt",
    "wt_code_to_h3",
]

CAPSULE_CLOSE_SESSION = 0x2843
CAPSULE_DRAIN_SESSION = 0x78AE
MAX_CLOSE_REASON_BYTES = 1024
# WebTransport application error codes live inside the HTTP/3 error space
# (draft-ietf-webtrans-http3, "Resetting Data Streams").
_WT_FIRST = 0x52E4A40FA8DB
_WT_LAST = 0x52E5AC983162

SessionHandler = Callable[["WebTransportSession"], Awaitable[None]]


class SessionClosed(Exception):
    """The session ended; ``code`` and ``reason`` say how (0 and "" for a clean end)."""

    def __init__(self, code: int = 0, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"WebTransport session closed (code {code}): {reason}")


class StreamReset(Exception):
    """The peer reset the stream (receiving) or asked us to stop (sending)."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"stream reset by peer with code {code}")


def wt_code_to_h3(code: int) -> int:
    """Map a 32-bit WebTransport application error code into the HTTP/3 space."""
    if not 0 <= code <= 0xFFFFFFFF:
        raise ValueError("WebTransport error codes are 32-bit")
    return _WT_FIRST + code + code // 0x1E


def h3_code_to_wt(code: int) -> int | None:
    """The WebTransport code an HTTP/3 code carries, or None if it carries none."""
    if not _WT_FIRST <= code <= _WT_LAST or (code - 0x21) % 0x1F == 0:
        return None
    shifted = code - _WT_FIRST
    return shifted - shifted // 0x1F


def encode_close_capsule(code: int, reason: str) -> bytes:
    """A CLOSE_WEBTRANSPORT_SESSION capsule; the reason is cut to 1024 bytes."""
    reason_bytes = reason.encode("utf-8")[:MAX_CLOSE_REASON_BYTES]
    # Cutting may split a character; drop the partial tail so it stays UTF-8.
    reason_bytes = reason_bytes.decode("utf-8", "ignore").encode("utf-8")
    body = code.to_bytes(4, "big") + reason_bytes
    return encode_uint_var(CAPSULE_CLOSE_SESSION) + encode_uint_var(len(body)) + body


@dataclass(frozen=True)
class Capsule:
    """One capsule read from a session's CONNECT stream."""

    type: int
    value: bytes


def decode_capsules_untrusted(buffer: bytearray, max_capsule_bytes: int) -> list[Capsule]:
    """Take every complete capsule off the front of ``buffer``.

    Incomplete trailing bytes stay in the buffer. Raises ValueError for a
    capsule that declares more than ``max_capsule_bytes``.
    """
    capsules = []
    while buffer:
        buf = Buffer(data=bytes(buffer[:16]))
        try:
            capsule_type = buf.pull_uint_var()
            length = buf.pull_uint_var()
        except BufferReadError:
            break
        if length > max_capsule_bytes:
            raise ValueError(f"capsule of {length} bytes exceeds {max_capsule_bytes}")
        start = buf.tell()
        if len(buffer) < start + length:
            break
        capsules.append(Capsule(capsule_type, bytes(buffer[start:start + length])))
        del buffer[:start + length]
    return capsules


class WebTransportReceiveStream(trio.abc.ReceiveStream):
    """The receiving half of a WebTransport stream.

    Incoming bytes are buffered up to the configured limit; past that the
    stream is stopped and reset, since the peer outran a reader that does not
    keep up.
    """

    def __init__(self, driver: "QuicConnectionDriver", stream_id: int, limit_bytes: int) -> None:
        self._driver = driver
        self.stream_id = stream_id
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._limit = limit_bytes
        self._eof = False
        self._reset_code: int | None = None
        self._closed = False
        self._lot = trio.lowlevel.ParkingLot()

    # Called by the connection driver.
    def _feed(self, data: bytes, end: bool) -> bool:
        """Queue data; returns False when the buffer limit is exceeded."""
        if self._closed:
            return True
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
        if end:
            self._eof = True
        self._lot.unpark_all()
        return self._buffered <= self._limit

    def _abort(self, code: int) -> None:
        self._reset_code = code
        self._lot.unpark_all()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` bytes; b"" at the end of the stream."""
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            if self._chunks:
                chunk = self._chunks.popleft()
                if max_bytes is not None and len(chunk) > max_bytes:
                    self._chunks.appendleft(chunk[max_bytes:])
                    chunk = chunk[:max_bytes]
                self._buffered -= len(chunk)
                await trio.lowlevel.checkpoint()
                return chunk
            if self._reset_code is not None:
                raise StreamReset(self._reset_code)
            if self._eof:
                await trio.lowlevel.checkpoint()
                return b""
            await self._lot.park()

    def stop(self, code: int = 0) -> None:
        """Tell the peer we will read no more (STOP_SENDING with a WebTransport code)."""
        if not self._closed and not self._eof:
            self._driver.stop_stream(self.stream_id, wt_code_to_h3(code))
        self._closed = True
        self._lot.unpark_all()

    async def aclose(self) -> None:
        self.stop(0)
        await trio.lowlevel.checkpoint()


class WebTransportSendStream(trio.abc.SendStream):
    """The sending half of a WebTransport stream.

    ``send_all`` hands bytes to QUIC at once and then waits while more than
    ``high_water_bytes`` ([webtransport] send_high_water_bytes) are
    unacknowledged, so a slow peer slows its writer instead of growing memory.
    """

    def __init__(self, driver: "QuicConnectionDriver", stream_id: int, high_water_bytes: int) -> None:
        self._driver = driver
        self.stream_id = stream_id
        self._high_water_bytes = high_water_bytes
        self._finished = False
        self._stop_code: int | None = None

    def _abort(self, code: int) -> None:
        self._stop_code = code
        self._driver.wake_writers()

    def write_nowait(self, data: bytes | bytearray | memoryview, end: bool = False) -> None:
        """Queue bytes without waiting for the peer (for fan-out loops that
        manage their own budget with ``backlog_bytes``)."""
        if self._stop_code is not None:
            raise StreamReset(self._stop_code)
        if self._finished:
            raise trio.ClosedResourceError("stream already finished")
        self._driver.send_stream_data(self.stream_id, bytes(data), end)
        if end:
            self._finished = True

    @property
    def backlog_bytes(self) -> int:
        """Bytes written and not yet acknowledged by the peer."""
        return self._driver.stream_backlog_bytes(self.stream_id)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.write_nowait(data)
        await self.wait_send_all_might_not_block()

    async def wait_send_all_might_not_block(self) -> None:
        while self._stop_code is None and self.backlog_bytes > self._high_water_bytes:
            await self._driver.wait_progress()
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        """Finish the stream cleanly (FIN)."""
        if not self._finished and self._stop_code is None:
            self._driver.send_stream_data(self.stream_id, b"", True)
            self._finished = True
        await trio.lowlevel.checkpoint()

    def reset(self, code: int = 0) -> None:
        """Abandon the stream (RESET_STREAM with a WebTransport code). Also
        after send_eof, while the peer has not acknowledged everything: the
        relay drops a finished group its viewer is too far behind on."""
        if self._stop_code is None and not (self._finished and self.backlog_bytes == 0):
            self._driver.reset_stream(self.stream_id, wt_code_to_h3(code))
        self._finished = True
        self._stop_code = self._stop_code if self._stop_code is not None else code

    async def aclose(self) -> None:
        await self.send_eof()


class WebTransportStream(trio.abc.HalfCloseableStream):
    """A bidirectional WebTransport stream: a send half and a receive half."""

    def __init__(self, send: WebTransportSendStream, receive: WebTransportReceiveStream) -> None:
        self.send_stream = send
        self.receive_stream = receive
        self.stream_id = send.stream_id

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.send_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.send_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.send_stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.receive_stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.send_stream.aclose()
        await self.receive_stream.aclose()


class WebTransportSession:
    """One WebTransport session over an HTTP/3 connection.

    Attributes: ``path`` (without the query), ``query`` (first value of each
    parameter), ``headers`` (lowercase names), ``claims`` (the verified
    ``token`` query parameter, or None when there was none) and
    ``remote_address``.
    """

    def __init__(self, driver: "QuicConnectionDriver", session_id: int, *, path: str,
                 query: Mapping[str, str], headers: Mapping[str, str], claims: Claims | None,
                 remote_address: tuple, accept_queue: int, datagram_queue: int,
                 stream_buffer_bytes: int, send_high_water_bytes: int,
                 max_capsule_bytes: int) -> None:
        self._driver = driver
        self.session_id = session_id
        self.path = path
        self.query = dict(query)
        self.headers = dict(headers)
        self.claims = claims
        self.remote_address = remote_address
        self._stream_buffer_bytes = stream_buffer_bytes
        self._send_high_water_bytes = send_high_water_bytes
        self._max_capsule_bytes = max_capsule_bytes
        self._accept_send, self._accept_recv = trio.open_memory_channel[
            "WebTransportStream | WebTransportReceiveStream"](accept_queue)
        self._dgram_send, self._dgram_recv = trio.open_memory_channel[bytes](datagram_queue)
        self._receive_streams: dict[int, WebTransportReceiveStream] = {}
        self._send_streams: dict[int, WebTransportSendStream] = {}
        self._capsule_buffer = bytearray()
        self.closed = trio.Event()
        self.close_code = 0
        self.close_reason = ""
        self.datagrams_dropped = 0
        self.streams_refused = 0

    # --- handler API -------------------------------------------------------

    async def accept_stream(self) -> "WebTransportStream | WebTransportReceiveStream":
        """The next stream the peer opens: a WebTransportStream (bidirectional)
        or a WebTransportReceiveStream (unidirectional). Raises SessionClosed."""
        try:
            return await self._accept_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise SessionClosed(self.close_code, self.close_reason) from None

    async def open_bidi_stream(self) -> WebTransportStream:
        """Open a bidirectional stream to the peer."""
        self._check_open()
        stream_id = self._driver.open_webtransport_stream(self.session_id, unidirectional=False)
        send, receive = self._register(stream_id, bidi=True)
        await trio.lowlevel.checkpoint()
        assert send is not None and receive is not None
        return WebTransportStream(send, receive)

    def open_uni_stream_nowait(self) -> WebTransportSendStream:
        """Open a unidirectional stream to the peer, without a checkpoint
        (the relay opens one per group per subscriber in a batch)."""
        self._check_open()
        stream_id = self._driver.open_webtransport_stream(self.session_id, unidirectional=True)
        send, _ = self._register(stream_id, bidi=False, local=True)
        assert send is not None
        return send

    async def open_uni_stream(self) -> WebTransportSendStream:
        """Open a unidirectional stream to the peer."""
        send = self.open_uni_stream_nowait()
        await trio.lowlevel.checkpoint()
        return send

    def set_stream_priority(self, stream_id: int, send_order: int) -> None:
        """Streams with a higher ``send_order`` are served first; streams never
        given one (control streams) go ahead of all of them."""
        self._driver.set_stream_priority(stream_id, send_order)

    def send_datagram(self, data: bytes) -> bool:
        """Send an unreliable datagram; False if the session is closed or the
        datagram is larger than the path allows."""
        if self.closed.is_set():
            return False
        return self._driver.send_webtransport_datagram(self.session_id, data)

    def receive_datagram_nowait(self) -> bytes | None:
        """A datagram already received, or None when there is none (or the
        session is closed): lets a reader take a whole batch per wake-up."""
        try:
            return self._dgram_recv.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return None

    @property
    def datagram_backlog(self) -> int:
        """Datagrams queued on this session's connection and not yet sent
        (congestion control holds them; all of the connection's sessions)."""
        return self._driver.datagram_backlog

    async def receive_datagram(self) -> bytes:
        """The next datagram from the peer. Raises SessionClosed."""
        try:
            return await self._dgram_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise SessionClosed(self.close_code, self.close_reason) from None

    def close(self, code: int = 0, reason: str = "") -> None:
        """Close the session with a code and reason the peer sees."""
        if self.closed.is_set():
            return
        self._driver.close_webtransport_session(self.session_id, encode_close_capsule(code, reason))
        self._finish(code, reason)

    async def wait_closed(self) -> None:
        """Return once the session has ended, by either side."""
        await self.closed.wait()

    # --- driver API --------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed.is_set():
            raise SessionClosed(self.close_code, self.close_reason)

    def _register(self, stream_id: int, *, bidi: bool, local: bool = False
                  ) -> tuple[WebTransportSendStream | None, WebTransportReceiveStream | None]:
        send = receive = None
        if bidi or local:
            send = WebTransportSendStream(self._driver, stream_id, self._send_high_water_bytes)
            self._send_streams[stream_id] = send
        if bidi or not local:
            receive = WebTransportReceiveStream(self._driver, stream_id, self._stream_buffer_bytes)
            self._receive_streams[stream_id] = receive
        return send, receive

    def _stream_data(self, stream_id: int, data: bytes, end: bool, bidi: bool) -> None:
        receive = self._receive_streams.get(stream_id)
        if receive is None:
            if self.closed.is_set():
                return
            send, receive = self._register(stream_id, bidi=bidi)
            assert receive is not None
            accepted: WebTransportStream | WebTransportReceiveStream = (
                WebTransportStream(send, receive) if send is not None else receive)
            try:
                self._accept_send.send_nowait(accepted)
            except trio.WouldBlock:
                # The handler is not accepting: refuse rather than buffer
                # without bound.
                self.streams_refused += 1
                self._driver.stop_stream(stream_id, wt_code_to_h3(0))
                if send is not None:
                    self._driver.reset_stream(stream_id, wt_code_to_h3(0))
                self._forget(stream_id)
                return
        if not receive._feed(data, end):
            self._driver.stop_stream(stream_id, wt_code_to_h3(0))
            receive._abort(0)
        if end:
            self._receive_streams.pop(stream_id, None)

    def _stream_reset(self, stream_id: int, h3_code: int) -> None:
        receive = self._receive_streams.pop(stream_id, None)
        if receive is not None:
            receive._abort(h3_code_to_wt(h3_code) or 0)

    def _stop_sending(self, stream_id: int, h3_code: int) -> None:
        send = self._send_streams.pop(stream_id, None)
        if send is not None:
            send._abort(h3_code_to_wt(h3_code) or 0)

    def _forget(self, stream_id: int) -> None:
        self._receive_streams.pop(stream_id, None)
        self._send_streams.pop(stream_id, None)

    def _datagram(self, data: bytes) -> None:
        try:
            self._dgram_send.send_nowait(data)
        except trio.WouldBlock:
            self.datagrams_dropped += 1
        except trio.ClosedResourceError:
            pass

    def _connect_stream_data(self, data: bytes, end: bool) -> None:
        """Bytes on the CONNECT stream: capsules, of which we act on CLOSE."""
        self._capsule_buffer += data
        try:
            capsules = decode_capsules_untrusted(self._capsule_buffer, self._max_capsule_bytes)
        except ValueError as exc:
            self.close(0, f"malformed capsule: {exc}")
            return
        for capsule in capsules:
            if capsule.type == CAPSULE_CLOSE_SESSION:
                if len(capsule.value) < 4:
                    self._finish(0, "malformed close capsule")
                else:
                    reason = capsule.value[4:].decode("utf-8", "replace")
                    self._finish(int.from_bytes(capsule.value[:4], "big"), reason)
                self._driver.end_connect_stream(self.session_id)
                return
        if end:
            self._finish(0, "")
            self._driver.end_connect_stream(self.session_id)

    def _finish(self, code: int, reason: str) -> None:
        """Mark the session ended and wake everything waiting on it."""
        if self.closed.is_set():
            return
        self.close_code = code
        self.close_reason = reason
        self._accept_send.close()
        self._dgram_send.close()
        for stream_id, receive in list(self._receive_streams.items()):
            receive._abort(0)
        for stream_id, send in list(self._send_streams.items()):
            send._abort(0)
        self._receive_streams.clear()
        self._send_streams.clear()
        self.closed.set()


"""RTMP, sans-IO: the handshake, the chunk stream and message framing.

This module parses untrusted input. Bytes in (`RtmpConnection.receive_data`),
events out, bytes out (`RtmpConnection.data_to_send`); no sockets, no clock.
Everything the peer declares (chunk sizes, message lengths, chunk stream
ids, AMF0 contents) is checked against `RtmpLimits` before it costs memory,
and every violation raises `RtmpProtocolError`, the one exception the
parser raises; the connection cannot continue after it.

Both roles are here: the server (what OBS and ffmpeg talk to) and a client,
used by tests and tools to publish without ffmpeg.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Union

from shopcast.server._amf0 import Amf0Error, Amf0Limits, decode_amf0_untrusted, encode_amf0

__all__ = [
    "HANDSHAKE_SIZE",
    "CommandReceived",
    "DataReceived",
    "Event",
    "HandshakeCompleted",
    "MediaReceived",
    "MessageType",
    "Role",
    "RtmpConnection",
    "RtmpLimits",
    "RtmpProtocolError",
]

HANDSHAKE_SIZE = 1536
RTMP_VERSION = 3
DEFAULT_CHUNK_SIZE = 128
MAX_CHUNK_SIZE_FIELD = 0x7FFFFFFF
_EXTENDED = 0xFFFFFF
_MESSAGE_HEADER_BYTES = (11, 7, 3, 0)


class MessageType(enum.IntEnum):
    SET_CHUNK_SIZE = 1
    ABORT = 2
    ACKNOWLEDGEMENT = 3
    USER_CONTROL = 4
    WINDOW_ACK_SIZE = 5
    SET_PEER_BANDWIDTH = 6
    AUDIO = 8
    VIDEO = 9
    DATA_AMF3 = 15
    COMMAND_AMF3 = 17
    DATA_AMF0 = 18
    COMMAND_AMF0 = 20
    AGGREGATE = 22


class UserControl(enum.IntEnum):
    STREAM_BEGIN = 0
    STREAM_EOF = 1
    PING_REQUEST = 6
    PING_RESPONSE = 7


class Role(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


class RtmpProtocolError(Exception):
    """The peer broke the protocol or a limit; close its connection.

    ``reason`` is a short stable word for logs and metrics (``handshake``,
    ``chunk_size``, ``message_too_large``, ``chunk_streams``, ``buffered``,
    ``amf0``, ``malformed``).
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class RtmpLimits:
    """The ``[rtmp]`` bounds the parser enforces."""

    min_chunk_size: int = 128
    """Smallest chunk size a peer may set (bytes); tiny chunks cost a parse each."""
    max_chunk_size: int = 65536
    """Largest chunk size a peer may set (bytes)."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest message a peer may declare (bytes)."""
    max_chunk_streams: int = 64
    """Chunk stream ids one connection may use."""
    max_buffered_bytes: int = 16 * 1024 * 1024
    """Bytes of unfinished messages held across all chunk streams."""
    amf0: Amf0Limits = field(default_factory=Amf0Limits)


@dataclass(frozen=True)
class HandshakeCompleted:
    """C0/C1/C2 (or S0/S1/S2) done; messages may flow."""


@dataclass(frozen=True)
class CommandReceived:
    """An AMF0 command (``connect``, ``publish``, ``_result``, ``onStatus`` ...)."""

    name: str
    transaction_id: float
    command_object: Any
    """The value after the transaction id (an object for connect; usually null)."""
    arguments: tuple[Any, ...]
    """Further values, e.g. publish's stream name and type."""
    message_stream_id: int


@dataclass(frozen=True)
class DataReceived:
    """An AMF0 data message (``@setDataFrame``, ``onMetaData``)."""

    values: tuple[Any, ...]
    message_stream_id: int
    timestamp_ms: int


@dataclass(frozen=True)
class MediaReceived:
    """An audio (8) or video (9) message: exactly an FLV tag body."""

    message_type: int
    timestamp_ms: int
    """The message's (decode) timestamp, 32-bit, in milliseconds."""
    message_stream_id: int
    payload: bytes


Event = Union[HandshakeCompleted, CommandReceived, DataReceived, MediaReceived]


@dataclass
class _ChunkStream:
    """What a chunk stream remembers for header compression and reassembly."""

    timestamp: int = 0
    timestamp_field: int = 0
    """The last timestamp field (absolute after type 0, a delta after 1 and 2)."""
    extended: bool = False
    """The last header carried an extended timestamp, so type 3 chunks do too."""
    length: int = 0
    message_type: int = 0
    message_stream_id: int = 0
    has_header: bool = False
    partial: bytearray | None = None


@dataclass
class _OutStream:
    timestamp: int = 0
    delta: int = -1
    length: int = -1
    message_type: int = -1
    message_stream_id: int = -1


class _State(enum.Enum):
    WAIT_C0C1 = "wait C0+C1"
    WAIT_C2 = "wait C2"
    WAIT_S0S1S2 = "wait S0+S1+S2"
    OPEN = "open"


class RtmpConnection:
    """One RTMP connection's protocol state, in either role.

    ``receive_data(data)`` returns the events the bytes complete;
    ``data_to_send()`` returns what to write to the socket. Protocol control
    (chunk size, acknowledgements, abort, ping) is handled inside; the
    caller sees handshake completion, commands, data and media.
    """

    def __init__(self, role: Role = Role.SERVER, limits: RtmpLimits = RtmpLimits(),
                 *, ack_window_bytes: int = 2_500_000) -> None:
        self.role = role
        self.limits = limits
        self._buffer = bytearray()
        self._out = bytearray()
        self._in_chunk_size = DEFAULT_CHUNK_SIZE
        self._out_chunk_size = DEFAULT_CHUNK_SIZE
        self._streams: dict[int, _ChunkStream] = {}
        self._out_streams: dict[int, _OutStream] = {}
        self._buffered_bytes = 0
        self.bytes_received = 0
        self._last_ack = 0
        self.ack_window_bytes = ack_window_bytes
        """Acknowledge after this many bytes; the peer's Window Ack Size replaces it."""
        self.peer_bandwidth_bytes: int | None = None
        self.peer_acknowledged_bytes = 0
        if role is Role.SERVER:
            self._state = _State.WAIT_C0C1
        else:
            self._state = _State.WAIT_S0S1S2
            self._c1 = _handshake_packet()
            self._out += bytes((RTMP_VERSION,)) + self._c1

    # --- state ---------------------------------------------------------------------------

    @property
    def handshake_complete(self) -> bool:
        return self._state is _State.OPEN

    @property
    def in_chunk_size(self) -> int:
        return self._in_chunk_size

    @property
    def out_chunk_size(self) -> int:
        return self._out_chunk_size

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer, in order; empties the buffer."""
        out, self._out = bytes(self._out), bytearray()
        return out

    # --- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes from the peer; return the events they complete.

        Raises RtmpProtocolError when the peer broke the protocol or a limit.
        """
        self._buffer += data
        self.bytes_received += len(data)
        events: list[Event] = []
        if self._state is not _State.OPEN:
            self._handshake(events)
        if self._state is _State.OPEN:
            pos = 0
            # Each round consumes a whole chunk, or stops for more bytes.
            while True:
                used = self._read_chunk(pos, events)
                if used == 0:
                    break
                pos += used
            if pos:
                del self._buffer[:pos]
            if self._buffered_bytes + len(self._buffer) > self.limits.max_buffered_bytes:
                raise RtmpProtocolError("buffered", "more than rtmp.max_buffered_bytes of "
                                        "unfinished messages")
        self._maybe_acknowledge()
        return events

    def _handshake(self, events: list[Event]) -> None:
        buf = self._buffer
        if self._state is _State.WAIT_C0C1:
            if len(buf) >= 1 and buf[0] != RTMP_VERSION:
                raise RtmpProtocolError("handshake", f"RTMP version {buf[0]} is not supported "
                                        "(only 3, plain RTMP; RTMPE/RTMPS are not offered)")
            if len(buf) < 1 + HANDSHAKE_SIZE:
                return
            c1 = bytes(buf[1:1 + HANDSHAKE_SIZE])
            del buf[:1 + HANDSHAKE_SIZE]
            # S1 with a zero version field: clients then skip digest checks.
            # S2 echoes C1, which ffmpeg, librtmp (OBS) and Flash accept, the
            # digest-style C1 included.
            self._out += bytes((RTMP_VERSION,)) + _handshake_packet() + c1
            self._state = _State.WAIT_C2
        if self._state is _State.WAIT_C2:
            if len(buf) < HANDSHAKE_SIZE:
                return
            del buf[:HANDSHAKE_SIZE]  # C2 echoes S1; nothing in it is needed
            self._state = _State.OPEN
            events.append(HandshakeCompleted())
        elif self._state is _State.WAIT_S0S1S2:
            if len(buf) >= 1 and buf[0] != RTMP_VERSION:
                raise RtmpProtocolError("handshake", f"server answered RTMP version {buf[0]}")
            if len(buf) < 1 + 2 * HANDSHAKE_SIZE:
                return
            s1 = bytes(buf[1:1 + HANDSHAKE_SIZE])
            del buf[:1 + 2 * HANDSHAKE_SIZE]
            self._out += s1
            self._state = _State.OPEN
            events.append(HandshakeCompleted())

    def _read_chunk(self, pos: int, events: list[Event]) -> int:
        """Parse one chunk at ``pos``; return its size, or 0 if incomplete."""
        buf = self._buffer
        available = len(buf) - pos
        if available < 1:
            return 0
        first = buf[pos]
        fmt = first >> 6
        csid = first & 0x3F
        header = 1
        if csid == 0:
            if available < 2:
                return 0
            csid = 64 + buf[pos + 1]
            header = 2
        elif csid == 1:
            if available < 3:
                return 0
            csid = 64 + buf[pos + 1] + (buf[pos + 2] << 8)
            header = 3
        stream = self._streams.get(csid)
        if stream is None:
            if len(self._streams) >= self.limits.max_chunk_streams:
                raise RtmpProtocolError("chunk_streams", f"more than {self.limits.max_chunk_streams} "
                                        "chunk streams (rtmp.max_chunk_streams)")
            stream = _ChunkStream()
            if fmt != 0:
                raise RtmpProtocolError("malformed", f"chunk stream {csid} starts with a type {fmt} "
                                        "header; the first must be type 0")
        mh = _MESSAGE_HEADER_BYTES[fmt]
        if available < header + mh:
            return 0
        p = pos + header
        timestamp_field = stream.timestamp_field
        length = stream.length
        message_type = stream.message_type
        message_stream_id = stream.message_stream_id
        extended = stream.extended
        if fmt <= 2:
            timestamp_field = int.from_bytes(buf[p:p + 3], "big")
            extended = timestamp_field == _EXTENDED
        if fmt <= 1:
            length = int.from_bytes(buf[p + 3:p + 6], "big")
            message_type = buf[p + 6]
        if fmt == 0:
            message_stream_id = int.from_bytes(buf[p + 7:p + 11], "little")
        p += mh
        if extended:
            if len(buf) < p + 4:
                return 0
            timestamp_field = int.from_bytes(buf[p:p + 4], "big")
            p += 4
        starting = stream.partial is None
        if starting:
            if length > self.limits.max_message_bytes:
                raise RtmpProtocolError("message_too_large", f"message of {length} bytes exceeds "
                                        f"rtmp.max_message_bytes ({self.limits.max_message_bytes})")
            remaining = length
        else:
            if fmt != 3 and length != stream.length:
                raise RtmpProtocolError("malformed", f"chunk stream {csid} changed the message "
                                        "length in the middle of a message")
            remaining = stream.length - len(stream.partial)
        take = min(remaining, self._in_chunk_size)
        if len(buf) < p + take:
            return 0
        # The whole chunk is here: commit the header.
        self._streams[csid] = stream
        if starting:
            if fmt == 0:
                stream.timestamp = timestamp_field
            else:
                stream.timestamp = (stream.timestamp + timestamp_field) & 0xFFFFFFFF
            stream.timestamp_field = timestamp_field
            stream.extended = extended
            stream.length = length
            stream.message_type = message_type
            stream.message_stream_id = message_stream_id
            stream.has_header = True
            if take == length:
                self._dispatch(stream, bytes(buf[p:p + take]), events)
                return p + take - pos
            stream.partial = bytearray()
        stream.partial += buf[p:p + take]
        self._buffered_bytes += take
        if len(stream.partial) == stream.length:
            payload = bytes(stream.partial)
            self._buffered_bytes -= len(payload)
            stream.partial = None
            self._dispatch(stream, payload, events)
        return p + take - pos

    def _dispatch(self, stream: _ChunkStream, payload: bytes, events: list[Event]) -> None:
        kind = stream.message_type
        if kind in (MessageType.AUDIO, MessageType.VIDEO):
            events.append(MediaReceived(kind, stream.timestamp, stream.message_stream_id, payload))
        elif kind in (MessageType.COMMAND_AMF0, MessageType.COMMAND_AMF3):
            body = payload[1:] if kind == MessageType.COMMAND_AMF3 else payload
            values = self._amf0(body)
            if len(values) < 2 or not isinstance(values[0], str) or not isinstance(values[1], float):
                raise RtmpProtocolError("malformed", "a command must start with a name and a "
                                        "transaction id")
            events.append(CommandReceived(values[0], values[1], values[2] if len(values) > 2 else None,
                                          tuple(values[3:]), stream.message_stream_id))
        elif kind in (MessageType.DATA_AMF0, MessageType.DATA_AMF3):
            body = payload[1:] if kind == MessageType.DATA_AMF3 else payload
            events.append(DataReceived(tuple(self._amf0(body)), stream.message_stream_id,
                                       stream.timestamp))
        elif kind == MessageType.SET_CHUNK_SIZE:
            size = self._u32(payload, "Set Chunk Size")
            if size & 0x80000000 or not (self.limits.min_chunk_size <= size <= self.limits.max_chunk_size):
                raise RtmpProtocolError("chunk_size", f"chunk size {size} is outside "
                                        f"{self.limits.min_chunk_size}..{self.limits.max_chunk_size} "
                                        "(rtmp.min_chunk_size, rtmp.max_chunk_size)")
            self._in_chunk_size = size
        elif kind == MessageType.ABORT:
            aborted = self._streams.get(self._u32(payload, "Abort"))
            if aborted is not None and aborted.partial is not None:
                self._buffered_bytes -= len(aborted.partial)
                aborted.partial = None
        elif kind == MessageType.ACKNOWLEDGEMENT:
            self.peer_acknowledged_bytes = self._u32(payload, "Acknowledgement")
        elif kind == MessageType.WINDOW_ACK_SIZE:
            window = self._u32(payload, "Window Acknowledgement Size")
            if window == 0:
                raise RtmpProtocolError("malformed", "window acknowledgement size 0")
            self.ack_window_bytes = window
        elif kind == MessageType.SET_PEER_BANDWIDTH:
            if len(payload) < 5:
                raise RtmpProtocolError("malformed", "Set Peer Bandwidth shorter than 5 bytes")
            self.peer_bandwidth_bytes = self._u32(payload, "Set Peer Bandwidth")
        elif kind == MessageType.USER_CONTROL:
            if len(payload) < 2:
                raise RtmpProtocolError("malformed", "User Control message shorter than 2 bytes")
            event = int.from_bytes(payload[:2], "big")
            if event == UserControl.PING_REQUEST and len(payload) >= 6:
                self._send_message(2, MessageType.USER_CONTROL, 0, 0,
                                   struct.pack(">H", UserControl.PING_RESPONSE) + payload[2:6])
        elif kind == MessageType.AGGREGATE:
            self._split_aggregate(payload, stream, events)
        # Other types (shared objects, unknown) carry nothing a publisher needs.

    def _split_aggregate(self, payload: bytes, stream: _ChunkStream, events: list[Event]) -> None:
        """An aggregate message is FLV tags back to back; their times are
        relative to the first one's, rebased on the message's timestamp."""
        pos = 0
        base: int | None = None
        # Each round consumes at least 15 bytes, so this ends.
        while pos < len(payload):
            if len(payload) - pos < 11:
                raise RtmpProtocolError("malformed", "truncated tag header in an aggregate message")
            tag_type = payload[pos]
            size = int.from_bytes(payload[pos + 1:pos + 4], "big")
            ts = int.from_bytes(payload[pos + 4:pos + 7], "big") | (payload[pos + 7] << 24)
            end = pos + 11 + size
            if end + 4 > len(payload):
                raise RtmpProtocolError("malformed", "truncated tag in an aggregate message")
            if base is None:
                base = ts
            if tag_type in (MessageType.AUDIO, MessageType.VIDEO):
                events.append(MediaReceived(tag_type, (stream.timestamp + ts - base) & 0xFFFFFFFF,
                                            stream.message_stream_id, payload[pos + 11:end]))
            pos = end + 4

    def _amf0(self, body: bytes) -> list[Any]:
        try:
            return decode_amf0_untrusted(body, self.limits.amf0)
        except Amf0Error as exc:
            raise RtmpProtocolError("amf0", f"malformed AMF0: {exc}") from None

    @staticmethod
    def _u32(payload: bytes, what: str) -> int:
        if len(payload) < 4:
            raise RtmpProtocolError("malformed", f"{what} message shorter than 4 bytes")
        return int.from_bytes(payload[:4], "big")

    def _maybe_acknowledge(self) -> None:
        if self._state is not _State.OPEN:
            return
        if self.bytes_received - self._last_ack >= self.ack_window_bytes:
            self._last_ack = self.bytes_received
            self._send_message(2, MessageType.ACKNOWLEDGEMENT, 0, 0,
                               struct.pack(">I", self.bytes_received & 0xFFFFFFFF))

    # --- sending ---------------------------------------------------------------------------------

    def _send_message(self, csid: int, message_type: int, message_stream_id: int,
                      timestamp_ms: int, payload: bytes) -> None:
        """Cut a message into chunks, compressing the header against the
        previous message of the chunk stream (types 0, 1, 2 and 3)."""
        timestamp_ms &= 0xFFFFFFFF
        prev = self._out_streams.get(csid)
        length = len(payload)
        if prev is None or message_stream_id != prev.message_stream_id or timestamp_ms < prev.timestamp:
            fmt, field_value = 0, timestamp_ms
            prev = self._out_streams[csid] = _OutStream()
            delta = -1
        else:
            delta = timestamp_ms - prev.timestamp
            if length != prev.length or message_type != prev.message_type:
                fmt = 1
            elif delta != prev.delta:
                fmt = 2
            else:
                fmt = 3
            field_value = delta
        prev.timestamp, prev.delta = timestamp_ms, delta
        prev.length, prev.message_type, prev.message_stream_id = length, message_type, message_stream_id
        extended = field_value >= _EXTENDED
        ts3 = (_EXTENDED if extended else field_value).to_bytes(3, "big")
        ext = field_value.to_bytes(4, "big") if extended else b""
        out = self._out
        out += _basic_header(fmt, csid)
        if fmt == 0:
            out += ts3 + length.to_bytes(3, "big") + bytes((message_type,))
            out += message_stream_id.to_bytes(4, "little")
        elif fmt == 1:
            out += ts3 + length.to_bytes(3, "big") + bytes((message_type,))
        elif fmt == 2:
            out += ts3
        out += ext
        size = self._out_chunk_size
        out += payload[:size]
        for start in range(size, length, size):
            out += _basic_header(3, csid) + ext + payload[start:start + size]

    def send_set_chunk_size(self, size: int) -> None:
        self._send_message(2, MessageType.SET_CHUNK_SIZE, 0, 0, struct.pack(">I", size))
        self._out_chunk_size = size

    def send_window_ack_size(self, size: int) -> None:
        self._send_message(2, MessageType.WINDOW_ACK_SIZE, 0, 0, struct.pack(">I", size))

    def send_set_peer_bandwidth(self, size: int, limit_type: int = 2) -> None:
        self._send_message(2, MessageType.SET_PEER_BANDWIDTH, 0, 0, struct.pack(">IB", size, limit_type))

    def send_stream_begin(self, message_stream_id: int) -> None:
        self._send_message(2, MessageType.USER_CONTROL, 0, 0,
                           struct.pack(">HI", UserControl.STREAM_BEGIN, message_stream_id))

    def send_abort(self, csid: int) -> None:
        self._send_message(2, MessageType.ABORT, 0, 0, struct.pack(">I", csid))

    def send_command(self, name: str, transaction_id: float, command_object: Any, *arguments: Any,
                     message_stream_id: int = 0) -> None:
        """An AMF0 command; on chunk stream 3 for stream 0, else 5 (as Flash and ffmpeg)."""
        csid = 3 if message_stream_id == 0 else 5
        self._send_message(csid, MessageType.COMMAND_AMF0, message_stream_id, 0,
                           encode_amf0(name, transaction_id, command_object, *arguments))

    def send_data(self, *values: Any, message_stream_id: int = 1, timestamp_ms: int = 0) -> None:
        self._send_message(4, MessageType.DATA_AMF0, message_stream_id, timestamp_ms,
                           encode_amf0(*values))

    def send_media(self, message_type: int, timestamp_ms: int, payload: bytes, *,
                   message_stream_id: int = 1) -> None:
        """Audio on chunk stream 4, video on 6 (ffmpeg's choice)."""
        csid = 4 if message_type == MessageType.AUDIO else 6
        self._send_message(csid, message_type, message_stream_id, timestamp_ms, payload)


def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes(((fmt << 6) | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    return bytes(((fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8))


def _handshake_packet() -> bytes:
    """C1/S1: time 0, version field 0 (plain handshake), 1528 random bytes."""
    return bytes(8) + os.urandom(HANDSHAKE_SIZE - 8)

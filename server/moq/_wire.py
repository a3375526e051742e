"""moq-lite draft-01/02 wire format, with the moq-transport draft-14 compatibility SETUP.

Sans-IO encoders and decoders; docs/moq-lite.md says where every field comes from. Everything
named ``decode_*_untrusted`` and the ``StreamDecoder`` parse bytes from the network: they raise
``ProtocolViolation`` and nothing else, never allocate more than the ``Limits`` allow before the
bytes have arrived, and always make progress. Encoders take our own values and raise
``LocalProtocolError`` when a value cannot be put on the wire.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "MAX_VARINT",
    "LITE_VERSIONS",
    "Version",
    "BidiStreamType",
    "UniStreamType",
    "ErrorCode",
    "SetupParameter",
    "AnnounceStatus",
    "Limits",
    "ProtocolViolation",
    "LocalProtocolError",
    "ClientSetup",
    "ServerSetup",
    "SessionInfo",
    "AnnouncePlease",
    "AnnounceInit",
    "Announce",
    "Subscribe",
    "SubscribeOk",
    "SubscribeUpdate",
    "GroupHeader",
    "Frame",
    "Message",
    "Inbound",
    "StreamDecoder",
    "encode_varint",
    "normalize_path",
    "encode_client_setup",
    "encode_server_setup",
    "encode_session_info",
    "encode_announce_please",
    "encode_announce_init",
    "encode_announce",
    "encode_subscribe",
    "encode_subscribe_ok",
    "encode_subscribe_update",
    "encode_group_header",
    "encode_frame_size",
    "decode_client_setup_untrusted",
    "decode_server_setup_untrusted",
    "decode_session_info_untrusted",
    "decode_announce_please_untrusted",
    "decode_announce_init_untrusted",
    "decode_announce_untrusted",
    "decode_subscribe_untrusted",
    "decode_subscribe_ok_untrusted",
    "decode_subscribe_update_untrusted",
    "decode_group_header_untrusted",
]

MAX_VARINT = (1 << 62) - 1
"""The largest value a QUIC variable-length integer carries (RFC 9000, section 16)."""

_MAX_U16 = 0xFFFF
_MAX_U8 = 0xFF


class Version(enum.IntEnum):
    """Version numbers carried in the compatibility SETUP (lite/version.js, ietf/version.js)."""

    LITE_DRAFT_01 = 0xFF0DAD01
    LITE_DRAFT_02 = 0xFF0DAD02
    MOQT_DRAFT_14 = 0xFF00000E


LITE_VERSIONS: tuple[Version, ...] = (Version.LITE_DRAFT_02, Version.LITE_DRAFT_01)
"""The moq-lite versions shopcast speaks, most preferred first."""


class BidiStreamType(enum.IntEnum):
    """The varint that opens a bidirectional stream (lite/stream.js, ``StreamId``)."""

    SESSION = 0x00
    ANNOUNCE = 0x01
    SUBSCRIBE = 0x02
    FETCH = 0x03
    PROBE = 0x04
    GOAWAY = 0x05
    TRACK = 0x06
    CLIENT_COMPAT = 0x20
    SERVER_COMPAT = 0x21


class UniStreamType(enum.IntEnum):
    """The varint that opens a unidirectional stream (lite/stream.js, ``DataType``)."""

    GROUP = 0x00
    SETUP = 0x01


class ErrorCode(enum.IntEnum):
    """Stream reset and session close codes, numbered as the moq-lite Rust crate numbers them.

    The JavaScript client reports codes verbatim without interpreting them (error.js); sharing
    the Rust numbering keeps logs from either implementation readable side by side.
    """

    CANCEL = 0
    REQUIRED_EXTENSION = 1
    OLD = 2
    TIMEOUT = 3
    TRANSPORT = 4
    DECODE = 5
    UNAUTHORIZED = 6
    VERSION = 9
    UNEXPECTED_STREAM = 10
    BOUNDS_EXCEEDED = 11
    DUPLICATE = 12
    NOT_FOUND = 13
    WRONG_SIZE = 14
    PROTOCOL_VIOLATION = 15
    UNEXPECTED_MESSAGE = 16
    UNSUPPORTED = 17
    TOO_MANY_PARAMETERS = 19
    CLOSED = 25
    FRAME_TOO_LARGE = 27
    APP_BASE = 64


class SetupParameter(enum.IntEnum):
    """Setup parameter ids of the compatibility SETUP (ietf/parameters.js, ``SetupOption``).

    Even ids carry a varint value, odd ids a length-prefixed byte string.
    """

    PATH = 0x01
    MAX_REQUEST_ID = 0x02
    AUTHORIZATION_TOKEN = 0x03
    IMPLEMENTATION = 0x07
    SOLICIT = 0x40B5A


class AnnounceStatus(enum.IntEnum):
    """The status byte of an ANNOUNCE before lite-05 (lite/announce.js, ``encodeLegacyBody``)."""

    ENDED = 0
    ACTIVE = 1


@dataclass(frozen=True)
class Limits:
    """Bounds on what a peer may make us buffer or hold; conf/default.toml feeds these."""

    max_message_size_bytes: int = 64 * 1024
    """Largest control message body accepted (SETUP bodies are further capped at 65535)."""
    max_frame_size_bytes: int = 16 * 1024 * 1024
    """Largest frame payload accepted on a group stream."""
    max_setup_versions: int = 128
    """Most versions a CLIENT_SETUP may offer (the JS client's own cap, ietf/setup.js)."""
    max_setup_parameters: int = 64
    """Most parameters a SETUP may carry."""
    max_announce_paths: int = 4096
    """Most broadcast paths one ANNOUNCE_INIT may list."""
    max_path_parts: int = 32
    """Most '/'-separated parts in a broadcast path (path.js, ``MAX_PARTS``)."""
    max_name_size_bytes: int = 1024
    """Longest broadcast path, prefix or track name, in UTF-8 bytes."""
    max_early_bytes: int = 1024 * 1024
    """Bytes buffered on peer streams that race ahead of SETUP, before the session gives up."""
    max_peer_subscriptions: int = 1024
    """Most subscriptions the peer may hold open on this session at once."""
    max_peer_announce_interests: int = 64
    """Most announce streams the peer may hold open on this session at once."""


class ProtocolViolation(Exception):
    """The peer sent something moq-lite does not allow: its fault, not ours.

    ``code`` is the ErrorCode to reset the stream or close the session with and ``reason`` is
    a sentence for the log and the session close. When ``stream_only`` is true, only the stream
    it arrived on is rejected (an unknown stream type, as the JS reference does); otherwise
    the whole session is closed.
    """

    def __init__(self, code: ErrorCode, reason: str, *, stream_only: bool = False) -> None:
        super().__init__(f"{code.name} ({int(code)}): {reason}")
        self.code = code
        self.reason = reason
        self.stream_only = stream_only


class LocalProtocolError(Exception):
    """Our own code asked for something the protocol or the session state does not allow."""


# -- messages ---------------------------------------------------------------------------------

SetupParameters: TypeAlias = tuple[tuple[int, int | bytes], ...]


@dataclass(frozen=True)
class ClientSetup:
    """CLIENT_SETUP of moq-transport draft-14, as the compatibility handshake sends it."""

    versions: tuple[int, ...]
    """Offered versions, most preferred first."""
    parameters: SetupParameters = ()
    """(id, value) pairs in wire order: ints for even ids, bytes for odd ids."""


@dataclass(frozen=True)
class ServerSetup:
    """SERVER_SETUP of moq-transport draft-14, as the compatibility handshake sends it."""

    version: int
    """The version the server selected."""
    parameters: SetupParameters = ()
    """(id, value) pairs in wire order: ints for even ids, bytes for odd ids."""


@dataclass(frozen=True)
class SessionInfo:
    """SESSION_INFO on the session stream (lite/session.js), draft-01/02 only."""

    bitrate_bps: int
    """The sender's estimate of the bitrate available to the session."""


@dataclass(frozen=True)
class AnnouncePlease:
    """ANNOUNCE_PLEASE: the request on an announce stream (``AnnounceRequest`` in the JS)."""

    prefix: str
    """Only broadcasts whose path starts with this prefix (whole parts) are announced."""


@dataclass(frozen=True)
class AnnounceInit:
    """ANNOUNCE_INIT: the first answer on an announce stream, draft-01/02 only."""

    suffixes: tuple[str, ...]
    """Paths, relative to the requested prefix, of the broadcasts active now."""


@dataclass(frozen=True)
class Announce:
    """ANNOUNCE: a broadcast under the requested prefix became active or ended."""

    status: AnnounceStatus
    """Whether the broadcast is now active or has ended."""
    suffix: str
    """The broadcast's path relative to the requested prefix."""


@dataclass(frozen=True)
class Subscribe:
    """SUBSCRIBE: the request on a subscribe stream."""

    subscribe_id: int
    """Chosen by the subscriber, unique among its open subscriptions; group streams cite it."""
    broadcast: str
    """Path of the broadcast."""
    track: str
    """Name of the track within the broadcast."""
    priority: int
    """0..255; higher is delivered first."""


@dataclass(frozen=True)
class SubscribeOk:
    """SUBSCRIBE_OK: the publisher accepts; empty in draft-02, a priority byte in draft-01."""

    priority: int | None = None
    """The publisher's priority, present in draft-01 only."""


@dataclass(frozen=True)
class SubscribeUpdate:
    """SUBSCRIBE_UPDATE: the subscriber changes the priority of a subscription."""

    priority: int
    """0..255; higher is delivered first."""


@dataclass(frozen=True)
class GroupHeader:
    """GROUP: the header of a group stream."""

    subscribe_id: int
    """The subscription this group answers."""
    sequence: int
    """The group's sequence number within its track."""


@dataclass(frozen=True)
class Frame:
    """One frame of a group stream."""

    payload: bytes
    """The frame's bytes, exactly as the publisher wrote them."""


Message: TypeAlias = (
    ClientSetup
    | ServerSetup
    | SessionInfo
    | AnnouncePlease
    | AnnounceInit
    | Announce
    | Subscribe
    | SubscribeOk
    | SubscribeUpdate
    | GroupHeader
    | Frame
)

# -- primitive encoding ------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    """Encode a QUIC variable-length integer in its shortest form."""
    if value < 0:
        raise LocalProtocolError(f"varint must not be negative: {value}")
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x4000_0000:
        return (value | 0x8000_0000).to_bytes(4, "big")
    if value <= MAX_VARINT:
        return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise LocalProtocolError(f"varint too large: {value}")


def _encode_u8(value: int) -> bytes:
    if not 0 <= value <= _MAX_U8:
        raise LocalProtocolError(f"priority must be 0..255: {value}")
    return bytes((value,))


def _encode_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return encode_varint(len(data)) + data


def normalize_path(raw: str) -> str:
    """Normalise a broadcast path the way path.js does: no empty parts, no outer slashes."""
    return "/".join(part for part in raw.split("/") if part)


def _varint_message(body: bytes) -> bytes:
    return encode_varint(len(body)) + body


def _u16_message(body: bytes) -> bytes:
    # The compatibility SETUP uses draft-14's 16-bit length (ietf/message.js).
    if len(body) > _MAX_U16:
        raise LocalProtocolError(f"SETUP body of {len(body)} bytes exceeds 65535")
    return len(body).to_bytes(2, "big") + body


def _encode_parameters(parameters: SetupParameters) -> bytes:
    parts = [encode_varint(len(parameters))]
    for key, value in parameters:
        parts.append(encode_varint(key))
        if key % 2 == 0:
            if not isinstance(value, int):
                raise LocalProtocolError(f"setup parameter {key:#x} is even and takes an int")
            parts.append(encode_varint(value))
        else:
            if not isinstance(value, bytes):
                raise LocalProtocolError(f"setup parameter {key:#x} is odd and takes bytes")
            parts.append(encode_varint(len(value)))
            parts.append(value)
    return b"".join(parts)


# -- message encoders (each returns the message with its length prefix) -----------------------


def encode_client_setup(message: ClientSetup) -> bytes:
    """CLIENT_SETUP with its u16 length; the stream type 0x20 goes before it."""
    body = [encode_varint(len(message.versions))]
    body.extend(encode_varint(version) for version in message.versions)
    body.append(_encode_parameters(message.parameters))
    return _u16_message(b"".join(body))


def encode_server_setup(message: ServerSetup) -> bytes:
    """SERVER_SETUP with its u16 length; the stream type 0x21 goes before it."""
    return _u16_message(encode_varint(message.version) + _encode_parameters(message.parameters))


def encode_session_info(message: SessionInfo) -> bytes:
    """SESSION_INFO with its varint length."""
    return _varint_message(encode_varint(message.bitrate_bps))


def encode_announce_please(message: AnnouncePlease) -> bytes:
    """ANNOUNCE_PLEASE with its varint length."""
    return _varint_message(_encode_string(message.prefix))


def encode_announce_init(message: AnnounceInit) -> bytes:
    """ANNOUNCE_INIT with its varint length."""
    body = [encode_varint(len(message.suffixes))]
    body.extend(_encode_string(suffix) for suffix in message.suffixes)
    return _varint_message(b"".join(body))


def encode_announce(message: Announce) -> bytes:
    """ANNOUNCE with its varint length."""
    return _varint_message(bytes((message.status,)) + _encode_string(message.suffix))


def encode_subscribe(message: Subscribe) -> bytes:
    """SUBSCRIBE with its varint length."""
    return _varint_message(
        encode_varint(message.subscribe_id)
        + _encode_string(message.broadcast)
        + _encode_string(message.track)
        + _encode_u8(message.priority)
    )


def encode_subscribe_ok(message: SubscribeOk, version: int) -> bytes:
    """SUBSCRIBE_OK with its varint length, in the layout of ``version``."""
    if version == Version.LITE_DRAFT_01:
        if message.priority is None:
            raise LocalProtocolError("SUBSCRIBE_OK of moq-lite draft-01 carries a priority")
        return _varint_message(_encode_u8(message.priority))
    if version == Version.LITE_DRAFT_02:
        return _varint_message(b"")
    raise LocalProtocolError(f"not a moq-lite version shopcast speaks: {version:#x}")


def encode_subscribe_update(message: SubscribeUpdate) -> bytes:
    """SUBSCRIBE_UPDATE with its varint length."""
    return _varint_message(_encode_u8(message.priority))


def encode_group_header(message: GroupHeader) -> bytes:
    """The opening bytes of a group stream: stream type 0 and the GROUP header."""
    return encode_varint(UniStreamType.GROUP) + _varint_message(
        encode_varint(message.subscribe_id) + encode_varint(message.sequence)
    )


def encode_frame_size(payload_size_bytes: int) -> bytes:
    """The varint that precedes a frame payload; the payload itself is written uncopied."""
    return encode_varint(payload_size_bytes)


# -- decoding ---------------------------------------------------------------------------------


class _Cursor:
    """Reads fields from one complete message body; any shortfall is the peer's fault."""

    __slots__ = ("_data", "_position", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._position = 0
        self._what = what

    def _truncated(self) -> ProtocolViolation:
        return ProtocolViolation(ErrorCode.DECODE, f"{self._what} is truncated")

    def varint(self) -> int:
        data, position = self._data, self._position
        if position >= len(data):
            raise self._truncated()
        size = 1 << (data[position] >> 6)
        end = position + size
        if end > len(data):
            raise self._truncated()
        value = int.from_bytes(data[position:end], "big") & ((1 << (8 * size - 2)) - 1)
        self._position = end
        return value

    def u8(self) -> int:
        if self._position >= len(self._data):
            raise self._truncated()
        value = self._data[self._position]
        self._position += 1
        return value

    def raw(self, size: int) -> bytes:
        end = self._position + size
        if end > len(self._data):
            raise self._truncated()
        value = self._data[self._position : end]
        self._position = end
        return value

    def string(self, limits: Limits, field: str) -> str:
        size = self.varint()
        if size > limits.max_name_size_bytes:
            raise ProtocolViolation(
                ErrorCode.BOUNDS_EXCEEDED,
                f"{self._what} {field} of {size} bytes exceeds {limits.max_name_size_bytes}",
            )
        try:
            return self.raw(size).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation(
                ErrorCode.DECODE, f"{self._what} {field} is not UTF-8"
            ) from None

    def path(self, limits: Limits, field: str) -> str:
        path = normalize_path(self.string(limits, field))
        if path.count("/") + 1 > limits.max_path_parts:
            raise ProtocolViolation(
                ErrorCode.BOUNDS_EXCEEDED,
                f"{self._what} {field} has more than {limits.max_path_parts} parts",
            )
        return path

    def count(self, limit: int, field: str, code: ErrorCode = ErrorCode.BOUNDS_EXCEEDED) -> int:
        value = self.varint()
        if value > limit:
            raise ProtocolViolation(code, f"{self._what} lists {value} {field}, limit {limit}")
        return value

    def finish(self) -> None:
        if self._position != len(self._data):
            raise ProtocolViolation(
                ErrorCode.DECODE,
                f"{self._what} has {len(self._data) - self._position} trailing bytes",
            )


def _decode_parameters(cursor: _Cursor, limits: Limits) -> SetupParameters:
    count = cursor.count(limits.max_setup_parameters, "parameters", ErrorCode.TOO_MANY_PARAMETERS)
    parameters: list[tuple[int, int | bytes]] = []
    seen: set[int] = set()
    for _ in range(count):
        key = cursor.varint()
        if key in seen:
            raise ProtocolViolation(ErrorCode.DECODE, f"duplicate setup parameter {key:#x}")
        seen.add(key)
        if key % 2 == 0:
            parameters.append((key, cursor.varint()))
        else:
            parameters.append((key, cursor.raw(cursor.varint())))
    return tuple(parameters)


def decode_client_setup_untrusted(body: bytes, limits: Limits) -> ClientSetup:
    """Decode a CLIENT_SETUP body (without its u16 length)."""
    cursor = _Cursor(body, "CLIENT_SETUP")
    count = cursor.count(limits.max_setup_versions, "versions")
    versions = tuple(cursor.varint() for _ in range(count))
    parameters = _decode_parameters(cursor, limits)
    cursor.finish()
    return ClientSetup(versions, parameters)


def decode_server_setup_untrusted(body: bytes, limits: Limits) -> ServerSetup:
    """Decode a SERVER_SETUP body (without its u16 length)."""
    cursor = _Cursor(body, "SERVER_SETUP")
    version = cursor.varint()
    parameters = _decode_parameters(cursor, limits)
    cursor.finish()
    return ServerSetup(version, parameters)


def decode_session_info_untrusted(body: bytes, limits: Limits) -> SessionInfo:
    """Decode a SESSION_INFO body (without its varint length)."""
    cursor = _Cursor(body, "SESSION_INFO")
    message = SessionInfo(cursor.varint())
    cursor.finish()
    return message


def decode_announce_please_untrusted(body: bytes, limits: Limits) -> AnnouncePlease:
    """Decode an ANNOUNCE_PLEASE body (without its varint length)."""
    cursor = _Cursor(body, "ANNOUNCE_PLEASE")
    message = AnnouncePlease(cursor.path(limits, "prefix"))
    cursor.finish()
    return message


def decode_announce_init_untrusted(body: bytes, limits: Limits) -> AnnounceInit:
    """Decode an ANNOUNCE_INIT body (without its varint length)."""
    cursor = _Cursor(body, "ANNOUNCE_INIT")
    count = cursor.count(limits.max_announce_paths, "paths")
    suffixes = tuple(cursor.path(limits, "suffix") for _ in range(count))
    cursor.finish()
    return AnnounceInit(suffixes)


def decode_announce_untrusted(body: bytes, limits: Limits) -> Announce:
    """Decode an ANNOUNCE body (without its varint length)."""
    cursor = _Cursor(body, "ANNOUNCE")
    status = cursor.u8()
    if status not in (AnnounceStatus.ENDED, AnnounceStatus.ACTIVE):
        raise ProtocolViolation(ErrorCode.DECODE, f"ANNOUNCE status {status} is not 0 or 1")
    message = Announce(AnnounceStatus(status), cursor.path(limits, "suffix"))
    cursor.finish()
    return message


def decode_subscribe_untrusted(body: bytes, limits: Limits) -> Subscribe:
    """Decode a SUBSCRIBE body (without its varint length)."""
    cursor = _Cursor(body, "SUBSCRIBE")
    subscribe_id = cursor.varint()
    broadcast = cursor.path(limits, "broadcast")
    track = cursor.string(limits, "track")
    priority = cursor.u8()
    cursor.finish()
    return Subscribe(subscribe_id, broadcast, track, priority)


def decode_subscribe_ok_untrusted(body: bytes, version: int) -> SubscribeOk:
    """Decode a SUBSCRIBE_OK body (without its varint length) in the layout of ``version``."""
    cursor = _Cursor(body, "SUBSCRIBE_OK")
    message = SubscribeOk(cursor.u8()) if version == Version.LITE_DRAFT_01 else SubscribeOk()
    cursor.finish()
    return message


def decode_subscribe_update_untrusted(body: bytes, limits: Limits) -> SubscribeUpdate:
    """Decode a SUBSCRIBE_UPDATE body (without its varint length)."""
    cursor = _Cursor(body, "SUBSCRIBE_UPDATE")
    message = SubscribeUpdate(cursor.u8())
    cursor.finish()
    return message


def decode_group_header_untrusted(body: bytes, limits: Limits) -> GroupHeader:
    """Decode a GROUP header body (without its varint length)."""
    cursor = _Cursor(body, "GROUP")
    message = GroupHeader(cursor.varint(), cursor.varint())
    cursor.finish()
    return message


# -- incremental stream decoding --------------------------------------------------------------


class Inbound(enum.Enum):
    """Which grammar the bytes arriving on one stream follow."""

    PEER_BIDI = "peer_bidi"
    """A bidirectional stream the peer opened: a type varint, then that type's requests."""
    PEER_UNI = "peer_uni"
    """A unidirectional stream the peer opened: a type varint, then a group."""
    SESSION_REPLY = "session_reply"
    """Our session stream (client role): 0x21, SERVER_SETUP, then SESSION_INFO messages."""
    ANNOUNCE_REPLY = "announce_reply"
    """Our announce stream: ANNOUNCE_INIT, then ANNOUNCE messages."""
    SUBSCRIBE_REPLY = "subscribe_reply"
    """Our subscribe stream: SUBSCRIBE_OK, then nothing."""


_Decode: TypeAlias = Callable[[bytes], Message]


class StreamDecoder:
    """Turns the bytes of one incoming stream, fed in chunks of any size, into messages.

    ``feed`` accepts bytes, bytearray or memoryview and returns every message completed by
    the chunk. ``end`` is called when the stream's FIN arrives and rejects a stream cut in the
    middle of a message or before its first one. A declared length over the limit is rejected
    as soon as the length itself has arrived, before any of the body is buffered.
    """

    def __init__(self, inbound: Inbound, *, version: int, limits: Limits) -> None:
        self._limits = limits
        self._version = version
        self._buffer = bytearray()
        self._stream_type: int | None = None
        self._received_any = False
        # The grammar as a pair: the decoder of the one message still required next (None once
        # it has arrived) and the decoder of the messages that may repeat after it (None when
        # nothing may follow). The u16 flag marks the draft-14 SETUP framing.
        self._first: _Decode | None = None
        self._first_u16 = False
        self._repeat: _Decode | None = None
        self._repeat_is_frame = False
        self._inbound = inbound
        # Streams we opened carry no type in the reply direction, except the session stream,
        # whose reply starts with 0x21.
        self._expect_type = inbound in (Inbound.PEER_BIDI, Inbound.PEER_UNI, Inbound.SESSION_REPLY)
        if not self._expect_type:
            self._select(inbound, None)

    @property
    def stream_type(self) -> int | None:
        """The stream's type varint once it has arrived (None for our own streams)."""
        return self._stream_type

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)

    def _select(self, inbound: Inbound, stream_type: int | None) -> None:
        limits, version = self._limits, self._version
        if inbound is Inbound.ANNOUNCE_REPLY:
            self._first = lambda body: decode_announce_init_untrusted(body, limits)
            self._repeat = lambda body: decode_announce_untrusted(body, limits)
        elif inbound is Inbound.SUBSCRIBE_REPLY:
            self._first = lambda body: decode_subscribe_ok_untrusted(body, version)
        elif inbound is Inbound.SESSION_REPLY:
            if stream_type != BidiStreamType.SERVER_COMPAT:
                raise ProtocolViolation(
                    ErrorCode.UNEXPECTED_MESSAGE,
                    f"session stream answered with type {stream_type:#x}, not 0x21",
                )
            self._first = lambda body: decode_server_setup_untrusted(body, limits)
            self._first_u16 = True
            self._repeat = lambda body: decode_session_info_untrusted(body, limits)
        elif inbound is Inbound.PEER_BIDI:
            if stream_type == BidiStreamType.CLIENT_COMPAT:
                self._first = lambda body: decode_client_setup_untrusted(body, limits)
                self._first_u16 = True
                self._repeat = lambda body: decode_session_info_untrusted(body, limits)
            elif stream_type == BidiStreamType.ANNOUNCE:
                self._first = lambda body: decode_announce_please_untrusted(body, limits)
            elif stream_type == BidiStreamType.SUBSCRIBE:
                self._first = lambda body: decode_subscribe_untrusted(body, limits)
                self._repeat = lambda body: decode_subscribe_update_untrusted(body, limits)
            else:
                # Fetch, probe, goaway and track streams are lite-03+; the JS reference resets
                # a stream of a type it does not know and keeps the session.
                raise ProtocolViolation(
                    ErrorCode.UNSUPPORTED,
                    f"bidirectional stream type {stream_type:#x} is not part of moq-lite 01/02",
                    stream_only=True,
                )
        elif stream_type == UniStreamType.GROUP:
            self._first = lambda body: decode_group_header_untrusted(body, limits)
            self._repeat = Frame
            self._repeat_is_frame = True
        else:
            raise ProtocolViolation(
                ErrorCode.UNSUPPORTED,
                f"unidirectional stream type {stream_type:#x} is not part of moq-lite 01/02",
                stream_only=True,
            )

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Buffer ``data`` and return the messages it completes, in order."""
        if not data:
            return []
        self._received_any = True
        buffer = self._buffer
        buffer += data
        messages: list[Message] = []
        if self._expect_type:
            stream_type = self._pull_varint()
            if stream_type is None:
                return messages
            self._expect_type = False
            self._stream_type = stream_type
            self._select(self._inbound, stream_type)
        while buffer:
            if self._first is not None:
                body = self._pull_body(
                    self._first_u16, self._limits.max_message_size_bytes, ErrorCode.BOUNDS_EXCEEDED
                )
                if body is None:
                    break
                decode, self._first = self._first, None
                messages.append(decode(body))
            elif self._repeat is not None:
                if self._repeat_is_frame:
                    body = self._pull_body(
                        False, self._limits.max_frame_size_bytes, ErrorCode.FRAME_TOO_LARGE
                    )
                else:
                    body = self._pull_body(
                        False, self._limits.max_message_size_bytes, ErrorCode.BOUNDS_EXCEEDED
                    )
                if body is None:
                    break
                messages.append(self._repeat(body))
            else:
                raise ProtocolViolation(
                    ErrorCode.UNEXPECTED_MESSAGE,
                    f"{len(buffer)} bytes after the last message this stream may carry",
                )
        return messages

    def end(self) -> None:
        """The peer finished the stream: reject it if a message was cut short or missing."""
        if self._buffer:
            raise ProtocolViolation(
                ErrorCode.DECODE, f"stream ended inside a message ({len(self._buffer)} bytes)"
            )
        if self._received_any and (self._expect_type or self._first is not None):
            raise ProtocolViolation(ErrorCode.DECODE, "stream ended before its first message")

    def _pull_varint(self) -> int | None:
        buffer = self._buffer
        size = 1 << (buffer[0] >> 6)
        if len(buffer) < size:
            return None
        value = int.from_bytes(buffer[:size], "big") & ((1 << (8 * size - 2)) - 1)
        del buffer[:size]
        return value

    def _pull_body(self, u16: bool, limit: int, code: ErrorCode) -> bytes | None:
        buffer = self._buffer
        if u16:
            if len(buffer) < 2:
                return None
            header = 2
            size = (buffer[0] << 8) | buffer[1]
        else:
            header = 1 << (buffer[0] >> 6)
            if len(buffer) < header:
                return None
            size = int.from_bytes(buffer[:header], "big") & ((1 << (8 * header - 2)) - 1)
        if size > limit:
            raise ProtocolViolation(
                code, f"declared length {size} exceeds the limit of {limit} bytes"
            )
        end = header + size
        if len(buffer) < end:
            return None
        with memoryview(buffer) as view:
            body = bytes(view[header:end])
        del buffer[:end]
        return body


def format_versions(versions: Sequence[int]) -> str:
    """Versions as hex, for close reasons and logs."""
    return ", ".join(f"{version:#x}" for version in versions)

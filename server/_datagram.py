"""Datagram mode: shopcast's low-latency delivery of a track as packetizer datagrams with
XOR FEC and NACK resends, on its own WebTransport path (docs/datagram-mode.md).

The wire half (control messages and NACK datagrams) is sans-IO and shared with the client
(server/_datagram_client.py); its parsers take attacker bytes and are named ``*_untrusted``.
The server half packetizes each frame of a track once, into packets that every datagram
subscriber of that track is sent as the same ``bytes`` objects, and keeps a bounded ring of
them per track for resends and for late joiners.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol

import msgpack
import trio
from shopcast.codecs import MediaConfig, Packetizer
from shopcast.server._config import DatagramConfig
from shopcast.server._log import get_logger
from shopcast.server._metrics import Registry
from shopcast.server._relay import Broadcast, Group, Relay, RelayError, Track
from shopcast.server._webtransport import (
    SessionClosed,
    StreamReset,
    WebTransportReceiveStream,
    WebTransportSession,
    WebTransportStream,
)
from shopcast.server.moq import (
    CATALOG_TRACK,
    ErrorCode,
    ProtocolViolation,
    decode_catalog_untrusted,
    decode_frame_untrusted,
)

__all__ = [
    "CONTROL_LENGTH_BYTES",
    "NACK_HEADER_BYTES",
    "NACK_TYPE",
    "ControlDecoder",
    "ControlMessage",
    "DatagramProtocolError",
    "DatagramServer",
    "DatagramStats",
    "Ended",
    "Subscribe",
    "SubscribeError",
    "Subscribed",
    "TrackFanout",
    "Unsubscribe",
    "decode_control_message_untrusted",
    "decode_nack_untrusted",
    "encode_control_message",
    "encode_nack",
]

log = get_logger("datagram")

CONTROL_LENGTH_BYTES = 4
"""Every control message is a big-endian u32 length, then that many bytes of msgpack."""
_LENGTH = struct.Struct(">I")
NACK_TYPE = 0x01
"""First byte of a client's NACK datagram. Media packets start with version 1 << 4, so the
two can never be mistaken for each other."""
NACK_HEADER_BYTES = 3
"""Type byte and u16 track id; then u16 packet sequence numbers, big-endian."""
_MAX_ID = (1 << 53) - 1  # a subscription id must survive a JavaScript number
_MAX_NAME_BYTES = 1024
_READ_CHUNK_BYTES = 16384


# --- wire: control messages and NACKs (sans-IO) -------------------------------------------


class DatagramProtocolError(Exception):
    """The peer broke the datagram-mode protocol; ``code`` is the session close code
    (an ErrorCode), and the message is the reason the peer is told."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Subscribe:
    """Client: start delivering ``broadcast``/``track`` as datagrams."""

    id: int  #: chosen by the client, unique among its open subscriptions
    broadcast: str  #: the broadcast (room id)
    track: str  #: the track name, as in the catalog


@dataclass(frozen=True)
class Unsubscribe:
    """Client: stop the subscription ``id``; the server answers Ended."""

    id: int  #: the subscription


@dataclass(frozen=True)
class Subscribed:
    """Server: subscription ``id`` is live; its packets carry ``track_id``."""

    id: int  #: the subscription
    track_id: int  #: the 16-bit track field of its packets, assigned per relay track
    video: bool  #: a video track: after a lost frame, wait for the next keyframe
    payload_bytes: int  #: largest packet (header + fragment) the server sends (bytes)
    fec_k: int  #: data fragments per parity fragment, 0 = no FEC
    max_nack_seqs: int  #: most sequence numbers one NACK datagram may carry


@dataclass(frozen=True)
class SubscribeError:
    """Server: subscription ``id`` was refused or failed; nothing more will come for it."""

    id: int  #: the subscription
    code: int  #: an ErrorCode (NOT_FOUND, UNAUTHORIZED, BOUNDS_EXCEEDED, DUPLICATE, ...)
    reason: str  #: what a person reading a log needs to know


@dataclass(frozen=True)
class Ended:
    """Server: subscription ``id`` is over (track ended, or the client unsubscribed)."""

    id: int  #: the subscription


ControlMessage = Subscribe | Unsubscribe | Subscribed | SubscribeError | Ended

# message type -> (class, {field: expected type})
_MESSAGES: dict[str, tuple[type, dict[str, type]]] = {
    "subscribe": (Subscribe, {"id": int, "broadcast": str, "track": str}),
    "unsubscribe": (Unsubscribe, {"id": int}),
    "subscribed": (Subscribed, {"id": int, "track_id": int, "video": bool, "payload_bytes": int,
                                "fec_k": int, "max_nack_seqs": int}),
    "error": (SubscribeError, {"id": int, "code": int, "reason": str}),
    "ended": (Ended, {"id": int}),
}
_TYPE_OF = {cls: name for name, (cls, _) in _MESSAGES.items()}


def encode_control_message(message: ControlMessage) -> bytes:
    """One control message with its length prefix, ready for the control stream."""
    name = _TYPE_OF[type(message)]
    body: dict[str, object] = {"type": name}
    for key in _MESSAGES[name][1]:
        body[key] = getattr(message, key)
    packed = msgpack.packb(body, use_bin_type=True)
    return _LENGTH.pack(len(packed)) + packed


def decode_control_message_untrusted(body: bytes | bytearray | memoryview, *,
                                     max_message_bytes: int) -> ControlMessage:
    """Decode one control message body (without its length prefix).

    Raises DatagramProtocolError (DECODE) for bytes that are not one msgpack map, and
    (PROTOCOL_VIOLATION) for an unknown type, a missing or extra key, or a value of the
    wrong type or out of range. The unpacker's own limits keep a hostile message from
    declaring huge strings or containers; nesting never gets deep because only a flat
    map of scalars is accepted and every container is capped at a few entries.
    """
    if len(body) > max_message_bytes:
        raise DatagramProtocolError(ErrorCode.BOUNDS_EXCEEDED,
                                    f"control message of {len(body)} bytes exceeds {max_message_bytes}")
    try:
        value = msgpack.unpackb(
            bytes(body), raw=False, strict_map_key=True, use_list=True,
            max_str_len=max_message_bytes, max_bin_len=0, max_ext_len=0,
            max_array_len=8, max_map_len=16)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DatagramProtocolError(ErrorCode.DECODE, f"control message is not msgpack: {exc}") from None
    if not isinstance(value, dict):
        raise DatagramProtocolError(ErrorCode.PROTOCOL_VIOLATION,
                                    f"control message must be a map, not {type(value).__name__}")
    name = value.get("type")
    if not isinstance(name, str) or name not in _MESSAGES:
        raise DatagramProtocolError(ErrorCode.PROTOCOL_VIOLATION,
                                    f"unknown control message type {name!r}")
    cls, fields = _MESSAGES[name]
    extra = set(value) - set(fields) - {"type"}
    if extra:
        raise DatagramProtocolError(ErrorCode.PROTOCOL_VIOLATION,
                                    f"{name}: unknown keys {sorted(map(str, extra))}")
    arguments = {}
    for key, kind in fields.items():
        if key not in value:
            raise DatagramProtocolError(ErrorCode.PROTOCOL_VIOLATION, f"{name}: {key} is missing")
        item = value[key]
        # bool is an int in Python; msgpack keeps them apart, and so do we.
        if type(item) is not kind:
            raise DatagramProtocolError(ErrorCode.PROTOCOL_VIOLATION,
                                        f"{name}: {key} must be {kind.__name__}, not {type(item).__name__}")
        if kind is int and not 0 <= item <= _MAX_ID:
            raise DatagramProtocolError(ErrorCode.PROTOCOL_VIOLATION,
                                        f"{name}: {key} must be from 0 to 2**53-1")
        if kind is str and (len(item.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES):
            raise DatagramProtocolError(ErrorCode.PROTOCOL_VIOLATION,
                                        f"{name}: {key} is longer than {_MAX_NAME_BYTES} bytes")
        arguments[key] = item
    if cls is Subscribed and not 0 <= arguments["track_id"] <= 0xFFFF:
        raise DatagramProtocolError(ErrorCode.PROTOCOL_VIOLATION, "subscribed: track_id must fit 16 bits")
    return cls(**arguments)


class ControlDecoder:
    """Cuts the control stream into messages: bytes in, messages out.

    A declared length above ``max_message_bytes`` is refused before anything is buffered,
    so a peer cannot make the reader hold more than one message's worth of bytes.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()

    def feed_untrusted(self, data: bytes | bytearray | memoryview) -> list[ControlMessage]:
        """Take bytes from the stream; return the messages they complete.

        Raises DatagramProtocolError for a malformed message; the decoder is then unusable.
        """
        self._buffer += data
        messages = []
        while len(self._buffer) >= CONTROL_LENGTH_BYTES:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > self.max_message_bytes:
                raise DatagramProtocolError(
                    ErrorCode.BOUNDS_EXCEEDED,
                    f"control message declares {length} bytes; the limit is {self.max_message_bytes}")
            end = CONTROL_LENGTH_BYTES + length
            if len(self._buffer) < end:
                break
            body = bytes(self._buffer[CONTROL_LENGTH_BYTES:end])
            del self._buffer[:end]
            messages.append(decode_control_message_untrusted(body, max_message_bytes=self.max_message_bytes))
        return messages

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete message held so far."""
        return len(self._buffer)


def encode_nack(track_id: int, seqs: list[int]) -> bytes:
    """A NACK datagram asking for packets ``seqs`` (16-bit sequence numbers) of ``track_id``."""
    if not 0 <= track_id <= 0xFFFF or not seqs:
        raise ValueError("a NACK names a 16-bit track id and at least one sequence number")
    return struct.pack(f">BH{len(seqs)}H", NACK_TYPE, track_id, *seqs)


def decode_nack_untrusted(data: bytes | bytearray | memoryview, *, max_seqs: int) -> tuple[int, list[int]]:
    """(track id, sequence numbers) of a NACK datagram.

    Raises DatagramProtocolError for anything else: another type byte, a length that is
    not the header plus whole u16s, no sequence numbers or more than ``max_seqs``.
    """
    view = memoryview(data).cast("B")
    if len(view) < NACK_HEADER_BYTES or view[0] != NACK_TYPE:
        raise DatagramProtocolError(ErrorCode.PROTOCOL_VIOLATION,
                                    "malformed datagram: the client sends only NACKs (type 0x01)")
    count, odd = divmod(len(view) - NACK_HEADER_BYTES, 2)
    if odd or count == 0:
        raise DatagramProtocolError(ErrorCode.PROTOCOL_VIOLATION,
                                    "malformed NACK: expected whole 16-bit sequence numbers, at least one")
    if count > max_seqs:
        raise DatagramProtocolError(ErrorCode.BOUNDS_EXCEEDED,
                                    f"NACK names {count} packets; the limit is {max_seqs}")
    track_id = (view[1] << 8) | view[2]
    return track_id, list(struct.unpack_from(f">{count}H", view, NACK_HEADER_BYTES))


# --- server: per-track fan-out ---------------------------------------------------------


@dataclass
class DatagramStats:
    """Counters of the datagram mode, read by /metrics. Plain integers: trio runs one
    task at a time, and the hot path only adds to them."""

    sessions_total: int = 0
    sessions_open: int = 0
    subscriptions_open: int = 0
    frames_packetized: int = 0
    packets_packetized: int = 0
    datagrams_sent: int = 0
    resends_served: int = 0
    nacks_received: int = 0
    nack_seqs_received: int = 0
    protocol_errors: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("backlog", "send_refused", "resend_rate", "resend_missing", "frame_too_large", "unknown_track"), 0))
    """Packets (or NACKed sequence numbers) not sent, by reason."""
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("not_found", "unauthorized", "limit", "duplicate"), 0))
    """Subscriptions refused, by reason."""


class PacketSink(Protocol):
    """A datagram subscriber as a TrackFanout sees it."""

    def send_packets(self, packets: list[bytes]) -> None:
        """Send these packets, in order (the same objects go to every subscriber)."""

    def fanout_ended(self) -> None:
        """The track ended: no more packets will come."""


class TrackFanout:
    """The datagram side of one relay track: a single TrackSink that packetizes each frame
    once and hands the packets to every datagram subscriber, keeping the last
    ``history_packets`` of them for resends and for late joiners.

    The history is the datagram mode's GOP cache: a subscriber that joins while the
    newest group's packets are all still in it is sent them from its keyframe on, with
    their original sequence numbers, so its jitter buffer sees one unbroken stream.
    """

    def __init__(self, server: DatagramServer, track: Track, track_id: int) -> None:
        self.server = server
        self.track = track
        self.track_id = track_id
        self.packetizer = Packetizer(track_id, server.media)
        self.subscribers: list[PacketSink] = []
        self._size = server.config.history_packets
        self._history: list[bytes | None] = [None] * self._size
        self._history_seq = [-1] * self._size
        self._frames_in_group: dict[int, int] = {}
        self._newest_group = -1
        self._newest_group_first_seq: int | None = None
        # The catalog is JSON, not a hang frame: its packets carry the relay's clock.
        self._hang = track.name != CATALOG_TRACK
        self.video = _is_video(track)

    # TrackSink ---------------------------------------------------------------------------

    def group_started(self, track: Track, group: Group) -> None:
        self._frames_in_group[group.sequence] = 0
        if group.sequence > self._newest_group:
            self._newest_group = group.sequence
            self._newest_group_first_seq = None

    def frame(self, track: Track, group: Group, payload: bytes) -> None:
        index = self._frames_in_group.get(group.sequence, 0)
        self._frames_in_group[group.sequence] = index + 1
        timestamp_us = self._timestamp_us(payload)
        stats = self.server.stats
        packetizer = self.packetizer
        try:
            batch = packetizer.packetize_frame(payload, timestamp_us=timestamp_us,
                                               group=group.sequence & 0xFFFFFFFF, keyframe=index == 0)
        except ValueError:
            # Larger than [media] max_frame_bytes: stream mode can still carry it.
            stats.dropped["frame_too_large"] += 1
            return
        lengths = batch.lengths.tolist()
        rows = batch.rows
        first_seq = (packetizer.next_packet_seq - len(lengths)) & 0xFFFF
        # One copy per packet per track; every subscriber is then sent these same objects.
        packets = [rows[i, :length].tobytes() for i, length in enumerate(lengths)]
        size = self._size
        history, history_seq = self._history, self._history_seq
        for offset, packet in enumerate(packets):
            seq = (first_seq + offset) & 0xFFFF
            history[seq % size] = packet
            history_seq[seq % size] = seq
        if index == 0 and group.sequence == self._newest_group:
            self._newest_group_first_seq = first_seq
        stats.frames_packetized += 1
        stats.packets_packetized += len(packets)
        for subscriber in self.subscribers:
            subscriber.send_packets(packets)

    def group_ended(self, track: Track, group: Group) -> None:
        self._frames_in_group.pop(group.sequence, None)

    def track_ended(self, track: Track) -> None:
        subscribers, self.subscribers = self.subscribers, []
        self.server._forget(self)
        for subscriber in subscribers:
            subscriber.fanout_ended()

    # -------------------------------------------------------------------------------------

    def _timestamp_us(self, payload: bytes) -> int:
        if self._hang:
            try:
                return decode_frame_untrusted(payload)[0]
            except ProtocolViolation:
                pass
        return int(trio.current_time() * 1_000_000)

    def packet(self, seq: int) -> bytes | None:
        """The packet numbered ``seq`` (16 bits) if the history still holds it."""
        slot = seq % self._size
        return self._history[slot] if self._history_seq[slot] == seq else None

    def newest_group_packets(self) -> list[bytes] | None:
        """Every packet from the newest group's keyframe on, if the history still holds
        them all; None if it does not (or no group has begun)."""
        first = self._newest_group_first_seq
        if first is None:
            return None
        count = (self.packetizer.next_packet_seq - first) & 0xFFFF
        if count > self._size:
            return None
        packets = [self.packet((first + offset) & 0xFFFF) for offset in range(count)]
        if any(packet is None for packet in packets):
            return None
        return packets  # type: ignore[return-value]

    def add(self, subscriber: PacketSink, *, first: bool) -> None:
        """Add a subscriber; it is sent the newest group from its keyframe at once.

        ``first``: this fan-out was just made, so the relay replays its cached group
        (packetized on the fly, on subscribe). Otherwise the group comes from the
        history; when the history no longer holds it, the publisher is asked for a
        keyframe and the subscriber starts with the next group.
        """
        self.subscribers.append(subscriber)
        if first:
            self.track.subscribe(self)
            return
        packets = self.newest_group_packets()
        if packets:
            subscriber.send_packets(packets)
        else:
            self.track.broadcast.request_keyframe(self.track)

    def remove(self, subscriber: PacketSink) -> None:
        """Remove a subscriber; the last one to leave ends the fan-out."""
        try:
            self.subscribers.remove(subscriber)
        except ValueError:
            return
        if not self.subscribers:
            self.track.unsubscribe(self)
            self.server._forget(self)


def _is_video(track: Track) -> bool:
    """Whether the broadcast's catalog lists ``track`` as a video rendition."""
    catalog_track = track.broadcast.tracks.get(CATALOG_TRACK)
    group = catalog_track.current if catalog_track is not None else None
    if track.name == CATALOG_TRACK or group is None or not group.frames:
        return False
    try:
        catalog = decode_catalog_untrusted(group.frames[-1], max_size_bytes=1 << 20)
    except ProtocolViolation:
        return False
    return any(rendition.track == track.name for rendition in catalog.video)


# --- server: sessions ------------------------------------------------------------------------


class _Subscription:
    """One session's subscription to one track: a PacketSink writing datagrams."""

    def __init__(self, connection: _DatagramConnection, subscription_id: int, fanout: TrackFanout) -> None:
        self.connection = connection
        self.id = subscription_id
        self.fanout = fanout

    def send_packets(self, packets: list[bytes]) -> None:
        self.connection.send_packets(packets)

    def fanout_ended(self) -> None:
        self.connection.subscription_ended(self)


class _DatagramConnection:
    """One WebTransport session on the datagram path: its control stream, its
    subscriptions and the NACKs it sends."""

    def __init__(self, server: DatagramServer, session: WebTransportSession) -> None:
        self.server = server
        self.session = session
        self.config = server.config
        self.stats = server.stats
        self.subscriptions: dict[int, _Subscription] = {}
        self._by_track_id: dict[int, _Subscription] = {}
        self._control: WebTransportStream | None = None
        self._resend_tokens = float(server.config.resend_burst_packets)
        self._resend_refilled_at = trio.current_time()

    async def run(self) -> None:
        """Serve the session until it closes. Never returns unless the session ends
        or it is cancelled; a protocol error closes this session only."""
        stats = self.stats
        stats.sessions_total += 1
        stats.sessions_open += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._accept_streams, nursery)
                nursery.start_soon(self._receive_datagrams)
                await self.session.wait_closed()
                nursery.cancel_scope.cancel()
        finally:
            stats.sessions_open -= 1
            for subscription in list(self.subscriptions.values()):
                self._drop(subscription)

    def protocol_error(self, exc: DatagramProtocolError) -> None:
        self.stats.protocol_errors += 1
        log.info("datagram_protocol_violation", peer=str(self.session.remote_address),
                 code=exc.code, reason=exc.reason)
        self.session.close(exc.code, exc.reason)

    # --- streams -----------------------------------------------------------------------------

    async def _accept_streams(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await self.session.accept_stream()
            except SessionClosed:
                return
            if self._control is not None or isinstance(stream, WebTransportReceiveStream):
                self.protocol_error(DatagramProtocolError(
                    ErrorCode.UNEXPECTED_STREAM, "a datagram session has exactly one stream: "
                    "the bidirectional control stream the client opens first"))
                return
            self._control = stream
            nursery.start_soon(self._read_control, stream)

    async def _read_control(self, stream: WebTransportStream) -> None:
        decoder = ControlDecoder(self.config.max_control_message_bytes)
        while True:
            try:
                data = await stream.receive_some(_READ_CHUNK_BYTES)
            except (StreamReset, trio.ClosedResourceError):
                data = b""
            if not data:
                self.session.close(0, "control stream ended")
                return
            try:
                for message in decoder.feed_untrusted(data):
                    self._on_message(message)
            except DatagramProtocolError as exc:
                self.protocol_error(exc)
                return

    def _send_control(self, message: ControlMessage) -> None:
        if self._control is None:
            return
        try:
            self._control.send_stream.write_nowait(encode_control_message(message))
        except (StreamReset, trio.ClosedResourceError):
            pass  # the session is going away; its cleanup ends the subscriptions

    def _on_message(self, message: ControlMessage) -> None:
        if isinstance(message, Subscribe):
            self._subscribe(message)
        elif isinstance(message, Unsubscribe):
            subscription = self.subscriptions.get(message.id)
            if subscription is not None:
                self._drop(subscription)
                self._send_control(Ended(message.id))
        else:
            raise DatagramProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                        f"{_TYPE_OF[type(message)]} is a server message")

    def _refuse(self, message: Subscribe, reason_key: str, code: int, reason: str) -> None:
        self.stats.refused[reason_key] += 1
        self._send_control(SubscribeError(message.id, code, reason))

    def _subscribe(self, message: Subscribe) -> None:
        config = self.config
        if message.id in self.subscriptions:
            self._refuse(message, "duplicate", ErrorCode.DUPLICATE, f"subscription id {message.id} is in use")
            return
        if len(self.subscriptions) >= config.max_subscriptions_per_session:
            self._refuse(message, "limit", ErrorCode.BOUNDS_EXCEEDED, "too many subscriptions in this "
                         "session (datagram.max_subscriptions_per_session)")
            return
        broadcast = self.server.relay.broadcasts.get(message.broadcast)
        track = broadcast.tracks.get(message.track) if broadcast is not None else None
        if broadcast is None or track is None or track.ended:
            self._refuse(message, "not_found", ErrorCode.NOT_FOUND,
                         f"no live track {message.track!r} in broadcast {message.broadcast!r}")
            return
        if not self._may_watch(broadcast):
            self._refuse(message, "unauthorized", ErrorCode.UNAUTHORIZED,
                         f"broadcast {broadcast.name} is private: a token for that room is needed")
            return
        existing = self.server.fanouts.get(track)
        if existing is not None:
            if any(s.fanout is existing for s in self.subscriptions.values()):
                self._refuse(message, "duplicate", ErrorCode.DUPLICATE,
                             f"this session already subscribes to {broadcast.name}/{track.name}")
                return
            if len(existing.subscribers) >= self.server.relay.limits.max_subscribers_per_track:
                self._refuse(message, "limit", ErrorCode.BOUNDS_EXCEEDED, f"track {track.name} has the "
                             "most subscribers allowed (relay.max_subscribers_per_track)")
                return
        fanout, first = self.server.fanout_for(track)
        if fanout is None:
            self._refuse(message, "limit", ErrorCode.BOUNDS_EXCEEDED, "no free datagram track id")
            return
        subscription = _Subscription(self, message.id, fanout)
        self.subscriptions[message.id] = subscription
        self._by_track_id[fanout.track_id] = subscription
        self.stats.subscriptions_open += 1
        media = self.server.media
        # Subscribed goes out before any packet, so a client that reads it first knows
        # the track id; datagrams that overtake it are held briefly by the client.
        self._send_control(Subscribed(
            id=message.id, track_id=fanout.track_id, video=fanout.video,
            payload_bytes=media.datagram_payload_bytes, fec_k=media.fec_k,
            max_nack_seqs=config.max_nack_seqs))
        try:
            fanout.add(subscription, first=first)
        except RelayError as exc:  # the relay track's own subscriber limit
            self._drop(subscription)
            self._refuse(message, "limit", exc.code, str(exc))

    def _may_watch(self, broadcast: Broadcast) -> bool:
        if not broadcast.private:
            return True
        claims = self.session.claims
        return claims is not None and claims.allows_room(broadcast.name)

    def _drop(self, subscription: _Subscription) -> None:
        if self.subscriptions.pop(subscription.id, None) is None:
            return
        self._by_track_id.pop(subscription.fanout.track_id, None)
        self.stats.subscriptions_open -= 1
        subscription.fanout.remove(subscription)

    def subscription_ended(self, subscription: _Subscription) -> None:
        """The track ended: tell the client, forget the subscription."""
        if self.subscriptions.pop(subscription.id, None) is None:
            return
        self._by_track_id.pop(subscription.fanout.track_id, None)
        self.stats.subscriptions_open -= 1
        self._send_control(Ended(subscription.id))

    # --- datagrams ---------------------------------------------------------------------------

    def send_packets(self, packets: list[bytes]) -> None:
        """Send packets unless the session's QUIC datagram queue is over its limit; then
        the whole batch is dropped (the client NACKs or skips it), never queued without
        bound behind a slow or stalled peer."""
        stats = self.stats
        if _queued_datagrams(self.session) + len(packets) > self.config.max_queued_datagrams:
            stats.dropped["backlog"] += len(packets)
            return
        send = self.session.send_datagram
        sent = 0
        for packet in packets:
            if send(packet):
                sent += 1
        stats.datagrams_sent += sent
        if sent != len(packets):
            stats.dropped["send_refused"] += len(packets) - sent

    async def _receive_datagrams(self) -> None:
        while True:
            try:
                data = await self.session.receive_datagram()
            except SessionClosed:
                return
            try:
                self._on_nack(data)
            except DatagramProtocolError as exc:
                self.protocol_error(exc)
                return

    def _on_nack(self, data: bytes) -> None:
        config = self.config
        track_id, seqs = decode_nack_untrusted(data, max_seqs=config.max_nack_seqs)
        stats = self.stats
        stats.nacks_received += 1
        stats.nack_seqs_received += len(seqs)
        subscription = self._by_track_id.get(track_id)
        if subscription is None:
            # An unsubscribe may cross a NACK in flight: not the client's fault.
            stats.dropped["unknown_track"] += len(seqs)
            return
        now = trio.current_time()
        self._resend_tokens = min(
            float(config.resend_burst_packets),
            self._resend_tokens + (now - self._resend_refilled_at) * config.resend_rate_packets_per_s)
        self._resend_refilled_at = now
        allowed = min(len(seqs), int(self._resend_tokens))
        if allowed < len(seqs):
            stats.dropped["resend_rate"] += len(seqs) - allowed
        packets = []
        for seq in seqs[:allowed]:
            packet = subscription.fanout.packet(seq)
            if packet is None:
                stats.dropped["resend_missing"] += 1
            else:
                packets.append(packet)
        self._resend_tokens -= len(packets)
        if packets:
            before = stats.datagrams_sent
            self.send_packets(packets)
            stats.resends_served += stats.datagrams_sent - before


def _queued_datagrams(session: WebTransportSession) -> int:
    """DATAGRAM frames the session's QUIC connection holds unsent (all its sessions')."""
    return session.datagram_backlog


class DatagramServer:
    """The datagram-mode WebTransport endpoint (``[datagram] path``): one
    _DatagramConnection per session, one TrackFanout per relay track that has datagram
    subscribers."""

    def __init__(self, relay: Relay, config: DatagramConfig, media: MediaConfig | None = None) -> None:
        self.relay = relay
        self.config = config
        self.media = media or MediaConfig()
        self.stats = DatagramStats()
        self.fanouts: dict[Track, TrackFanout] = {}
        self._next_track_id = 0

    async def handle_session(self, session: WebTransportSession) -> None:
        """The session handler registered for the datagram path."""
        await _DatagramConnection(self, session).run()

    def fanout_for(self, track: Track) -> tuple[TrackFanout | None, bool]:
        """The fan-out of ``track``, made if there is none yet (then True), or None when
        every 16-bit track id is in use."""
        fanout = self.fanouts.get(track)
        if fanout is not None:
            return fanout, False
        in_use = {f.track_id for f in self.fanouts.values()}
        if len(in_use) > 0xFFFF:
            return None, False
        # Ids rotate rather than restart, so a stale packet of an ended fan-out is not
        # mistaken for a new one's.
        while self._next_track_id in in_use:
            self._next_track_id = (self._next_track_id + 1) & 0xFFFF
        fanout = TrackFanout(self, track, self._next_track_id)
        self._next_track_id = (self._next_track_id + 1) & 0xFFFF
        self.fanouts[track] = fanout
        return fanout, True

    def _forget(self, fanout: TrackFanout) -> None:
        if self.fanouts.get(fanout.track) is fanout:
            del self.fanouts[fanout.track]

    def subscribers_per_track(self) -> dict[tuple[str, str], int]:
        """Datagram subscribers of each track, for /metrics."""
        return {(f.track.broadcast.name, f.track.name): len(f.subscribers) for f in self.fanouts.values()}

    def register_metrics(self, registry: Registry) -> None:
        """Register the datagram mode's series (``shopcast_datagram_*``) in ``registry``."""
        stats = self.stats
        registry.gauge("shopcast_datagram_sessions", "Open datagram-mode sessions.",
                       callback=lambda: stats.sessions_open)
        registry.gauge("shopcast_datagram_subscribers", "Datagram subscribers per track.",
                       ("broadcast", "track"), callback=self.subscribers_per_track)
        for name, attr, help_text in (
            ("shopcast_datagram_sessions_total", "sessions_total", "Datagram-mode sessions started."),
            ("shopcast_datagram_frames_packetized_total", "frames_packetized",
             "Frames packetized (once per track, whatever the number of subscribers)."),
            ("shopcast_datagram_packets_packetized_total", "packets_packetized",
             "Packets made by the packetizer, parity included."),
            ("shopcast_datagram_datagrams_sent_total", "datagrams_sent",
             "Datagrams sent to subscribers, resends included."),
            ("shopcast_datagram_resends_total", "resends_served", "Packets resent in answer to NACKs."),
            ("shopcast_datagram_nacks_received_total", "nacks_received", "NACK datagrams received."),
            ("shopcast_datagram_nack_seqs_received_total", "nack_seqs_received",
             "Packet sequence numbers NACKed."),
            ("shopcast_datagram_protocol_errors_total", "protocol_errors",
             "Sessions closed for malformed control messages or datagrams."),
        ):
            registry.counter_callback(name, help_text, callback=lambda a=attr: getattr(stats, a))
        registry.counter_callback(
            "shopcast_datagram_dropped_total",
            "Packets or NACKed sequence numbers not sent: backlog (session's QUIC queue full), "
            "send_refused, resend_rate, resend_missing (gone from history), frame_too_large, "
            "unknown_track.", ("reason",),
            callback=lambda: {(reason,): count for reason, count in stats.dropped.items()})
        registry.counter_callback(
            "shopcast_datagram_refused_total", "Datagram subscriptions refused, by reason.", ("reason",),
            callback=lambda: {(reason,): count for reason, count in stats.refused.items()})

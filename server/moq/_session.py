"""A sans-IO moq-lite session: stream bytes in, events and stream commands out.

The transport (WebTransport over aioquic, or anything with QUIC-like streams) feeds what it
receives with the ``receive_*`` methods, which return events, and performs the commands that
``pop_commands`` hands back: write these bytes on that stream, reset it, stop reading it, close
the session. Stream ids are the transport's: when the session needs a new stream (a
subscription, a group), the caller opens one and passes its id. The same object serves both
roles (``Role.SERVER`` answers the compatibility SETUP, ``Role.CLIENT`` sends it) and both
directions on one session (the peer may subscribe to us and publish to us).

Every byte from the peer is untrusted: a malformed or out-of-place message closes the session
with a reason (``SessionClosed`` event plus a ``CloseSession`` command), an unknown stream type
rejects that stream only. Misuse by our own code raises ``LocalProtocolError``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from ._wire import (
    LITE_VERSIONS,
    Announce,
    AnnounceInit,
    AnnouncePlease,
    AnnounceStatus,
    BidiStreamType,
    ClientSetup,
    ErrorCode,
    Frame,
    GroupHeader,
    Inbound,
    Limits,
    LocalProtocolError,
    Message,
    ProtocolViolation,
    ServerSetup,
    SessionInfo,
    SetupParameter,
    StreamDecoder,
    Subscribe,
    SubscribeOk,
    SubscribeUpdate,
    encode_announce,
    encode_announce_init,
    encode_announce_please,
    encode_client_setup,
    encode_frame_size,
    encode_group_header,
    encode_server_setup,
    encode_session_info,
    encode_subscribe,
    encode_subscribe_ok,
    encode_subscribe_update,
    encode_varint,
    format_versions,
    normalize_path,
)

__all__ = [
    "Role",
    "Session",
    "group_send_order",
    "SendStreamData",
    "ResetStream",
    "StopSending",
    "SetStreamPriority",
    "CloseSession",
    "Command",
    "SessionStarted",
    "SessionInfoReceived",
    "AnnounceInterest",
    "BroadcastAnnounced",
    "SubscribeRequested",
    "SubscriptionUpdated",
    "SubscriptionCancelled",
    "SubscribeAccepted",
    "SubscriptionEnded",
    "GroupStarted",
    "FrameReceived",
    "GroupEnded",
    "SessionClosed",
    "Event",
]


class Role(enum.Enum):
    """Which end of the compatibility SETUP this session is."""

    CLIENT = "client"
    SERVER = "server"


def group_send_order(priority: int, sequence: int) -> int:
    """Rank of a group stream for the transport's scheduler: higher is sent first.

    A higher subscription priority always wins (the hang player asks catalog 100, audio 80,
    video 60), then the newer group, so a congested link delivers the live edge first, as
    moq-lite's own scheduler does (lite/priority.js).
    """
    return (priority << 62) | sequence


# -- commands: what the transport must do -----------------------------------------------------


@dataclass(frozen=True)
class SendStreamData:
    """Write bytes on a stream, then optionally finish it."""

    stream_id: int
    """The transport's stream id."""
    chunks: tuple[bytes | memoryview, ...]
    """Written in order; frame payloads are passed through uncopied."""
    end_stream: bool
    """Send FIN after the chunks."""


@dataclass(frozen=True)
class ResetStream:
    """Abandon our sending side of a stream (RESET_STREAM)."""

    stream_id: int
    """The transport's stream id."""
    error_code: int
    """Application error code (ErrorCode)."""


@dataclass(frozen=True)
class StopSending:
    """Ask the peer to stop sending on a stream (STOP_SENDING)."""

    stream_id: int
    """The transport's stream id."""
    error_code: int
    """Application error code (ErrorCode)."""


@dataclass(frozen=True)
class SetStreamPriority:
    """Rank a stream we send on; see ``group_send_order``."""

    stream_id: int
    """The transport's stream id."""
    send_order: int
    """Higher is sent first; streams without one rank above every group stream."""


@dataclass(frozen=True)
class CloseSession:
    """Close the whole session (WebTransport CLOSE_WEBTRANSPORT_SESSION)."""

    error_code: int
    """Application error code (ErrorCode)."""
    reason: str
    """Human-readable reason."""


Command: TypeAlias = SendStreamData | ResetStream | StopSending | SetStreamPriority | CloseSession

# -- events: what happened --------------------------------------------------------------------


@dataclass(frozen=True)
class SessionStarted:
    """The SETUP exchange completed."""

    version: int
    """The negotiated moq-lite version (a ``Version``)."""


@dataclass(frozen=True)
class SessionInfoReceived:
    """The peer reported a bitrate estimate on the session stream."""

    bitrate_bps: int
    """The peer's estimate of the bitrate available to the session."""


@dataclass(frozen=True)
class AnnounceInterest:
    """The peer asked which broadcasts we publish under a prefix.

    The session answers by itself from what ``announce`` was told, now and as it changes.
    """

    stream_id: int
    """The peer's announce stream."""
    prefix: str
    """The normalised prefix the peer asked about."""


@dataclass(frozen=True)
class BroadcastAnnounced:
    """A broadcast the peer publishes became active or ended."""

    stream_id: int
    """Our announce stream it arrived on."""
    path: str
    """Full path of the broadcast (the requested prefix joined with the announced suffix)."""
    active: bool
    """True when it became active, False when it ended or the announce stream closed."""


@dataclass(frozen=True)
class SubscribeRequested:
    """The peer wants one of our tracks: answer with accept_subscribe or reject_subscribe."""

    stream_id: int
    """The peer's subscribe stream; the handle for everything about this subscription."""
    subscribe_id: int
    """The peer's id for it, cited by our group streams."""
    broadcast: str
    """Normalised path of the broadcast."""
    track: str
    """Name of the track."""
    priority: int
    """0..255, higher first."""


@dataclass(frozen=True)
class SubscriptionUpdated:
    """The peer changed the priority of a subscription; open groups were re-ranked."""

    stream_id: int
    """The peer's subscribe stream."""
    subscribe_id: int
    """The peer's id for the subscription."""
    priority: int
    """The new priority, 0..255."""


@dataclass(frozen=True)
class SubscriptionCancelled:
    """The peer unsubscribed; its open groups were reset and later calls on it are no-ops."""

    stream_id: int
    """The peer's subscribe stream."""
    subscribe_id: int
    """The peer's id for the subscription."""
    error_code: int | None
    """None for a clean unsubscribe (FIN), else the peer's reset or stop-sending code."""


@dataclass(frozen=True)
class SubscribeAccepted:
    """The publisher accepted one of our subscriptions (SUBSCRIBE_OK)."""

    subscribe_id: int
    """Our id for the subscription, as returned by ``subscribe``."""


@dataclass(frozen=True)
class SubscriptionEnded:
    """One of our subscriptions is over; exactly one of these follows every ``subscribe``."""

    subscribe_id: int
    """Our id for the subscription."""
    error_code: int | None
    """None when the publisher finished it (track ended), else its reset code (rejection)."""


@dataclass(frozen=True)
class GroupStarted:
    """A group of one of our subscriptions began arriving."""

    stream_id: int
    """The group stream."""
    subscribe_id: int
    """Our id for the subscription."""
    sequence: int
    """The group's sequence number."""


@dataclass(frozen=True)
class FrameReceived:
    """A complete frame of a group."""

    stream_id: int
    """The group stream."""
    subscribe_id: int
    """Our id for the subscription."""
    group_sequence: int
    """The sequence number of the frame's group."""
    payload: bytes
    """The frame (for hang media: timestamp varint and codec payload)."""


@dataclass(frozen=True)
class GroupEnded:
    """A group stream finished or was reset by the publisher."""

    stream_id: int
    """The group stream."""
    subscribe_id: int
    """Our id for the subscription."""
    group_sequence: int
    """The group's sequence number."""
    error_code: int | None
    """None when the group is complete, else the publisher's reset code (group dropped)."""


@dataclass(frozen=True)
class SessionClosed:
    """The session is over; every stream of it is forgotten."""

    error_code: int
    """The close code (ErrorCode numbering)."""
    reason: str
    """Why, for the log."""
    by_peer: bool
    """True when the peer closed it, False when we closed it for a protocol violation."""


Event: TypeAlias = (
    SessionStarted
    | SessionInfoReceived
    | AnnounceInterest
    | BroadcastAnnounced
    | SubscribeRequested
    | SubscriptionUpdated
    | SubscriptionCancelled
    | SubscribeAccepted
    | SubscriptionEnded
    | GroupStarted
    | FrameReceived
    | GroupEnded
    | SessionClosed
)

# -- per-stream state -------------------------------------------------------------------------


class _State(enum.Enum):
    IDLE = "idle"
    AWAIT_SETUP = "await_setup"
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass(eq=False)
class _Stream:
    """One stream's two halves; a bare _Stream is a peer stream whose type is not known yet
    or one whose remaining bytes are being discarded (decoder None, readable True)."""

    stream_id: int
    readable: bool
    writable: bool
    decoder: StreamDecoder | None


@dataclass(eq=False)
class _SessionStream(_Stream):
    pass


@dataclass(eq=False)
class _PeerInterest(_Stream):
    prefix: str = ""
    active: set[str] = field(default_factory=set)


@dataclass(eq=False)
class _OurInterest(_Stream):
    prefix: str = ""
    active: set[str] = field(default_factory=set)


@dataclass(eq=False)
class _PeerSubscription(_Stream):
    subscribe_id: int = 0
    broadcast: str = ""
    track: str = ""
    priority: int = 0
    accepted: bool = False
    cancelled: bool = False
    groups: dict[int, _OutGroup] = field(default_factory=dict)


@dataclass(eq=False)
class _OutGroup(_Stream):
    subscription: _PeerSubscription | None = None
    sequence: int = 0


@dataclass(eq=False)
class _OurSubscription(_Stream):
    subscribe_id: int = 0
    unsubscribed: bool = False
    groups: dict[int, _InGroup] = field(default_factory=dict)


@dataclass(eq=False)
class _InGroup(_Stream):
    subscription: _OurSubscription | None = None
    sequence: int = 0


def _strip_prefix(prefix: str, path: str) -> str | None:
    """The suffix of ``path`` under ``prefix`` (whole parts), as path.js ``stripPrefix``."""
    if not prefix:
        return path
    if path == prefix:
        return ""
    if path.startswith(prefix) and path[len(prefix)] == "/":
        return path[len(prefix) + 1 :]
    return None


def _join(prefix: str, suffix: str) -> str:
    if not prefix:
        return suffix
    if not suffix:
        return prefix
    return f"{prefix}/{suffix}"


_IMPLEMENTATION = b"shopcast"


class Session:
    """One moq-lite session, as a state machine that performs no I/O.

    Resource handling: the session forgets a stream once both of its halves are finished
    (FIN or reset either way) and everything at ``close`` or ``receive_session_close``;
    nothing it holds grows without a bound from ``Limits``.

    Error handling: the peer's mistakes become ``SessionClosed`` (plus ``CloseSession``) or,
    for an unknown stream type, a reset of that stream. Calls naming a subscription or group
    that the peer has already cancelled return False and do nothing, because such races are
    normal; calls that are wrong in any state raise ``LocalProtocolError``.
    """

    def __init__(
        self,
        role: Role,
        *,
        limits: Limits | None = None,
        versions: Sequence[int] = LITE_VERSIONS,
    ) -> None:
        unknown = [version for version in versions if version not in LITE_VERSIONS]
        if not versions or unknown:
            raise LocalProtocolError(f"versions must be moq-lite 01/02, not {unknown}")
        self._role = role
        self._limits = limits if limits is not None else Limits()
        self._versions = tuple(versions)
        self._state = _State.IDLE if role is Role.CLIENT else _State.AWAIT_SETUP
        # 0 until SETUP completes; no moq-lite version is 0.
        self._version = 0
        self._session_stream: _SessionStream | None = None
        self._streams: dict[int, _Stream] = {}
        self._announced: set[str] = set()
        self._peer_subscription_ids: dict[int, _PeerSubscription] = {}
        self._peer_interest_count = 0
        self._our_subscriptions: dict[int, _OurSubscription] = {}
        self._next_subscribe_id = 0
        self._early: list[tuple[int, bytes, bool, bool]] = []
        self._early_bytes = 0
        self._commands: list[Command] = []

    # -- introspection ------------------------------------------------------------------------

    @property
    def role(self) -> Role:
        """Which end of the SETUP exchange this session is."""
        return self._role

    @property
    def version(self) -> int | None:
        """The negotiated version, None until ``SessionStarted``."""
        return self._version or None

    @property
    def established(self) -> bool:
        """Whether SETUP completed and the session is not closed."""
        return self._state is _State.ESTABLISHED

    @property
    def closed(self) -> bool:
        """Whether the session is over."""
        return self._state is _State.CLOSED

    def pop_commands(self) -> list[Command]:
        """Take the commands queued since the last call, oldest first."""
        commands, self._commands = self._commands, []
        return commands

    # -- transport input ----------------------------------------------------------------------

    def receive_stream_data(
        self,
        stream_id: int,
        data: bytes | bytearray | memoryview,
        *,
        end_stream: bool = False,
        unidirectional: bool,
    ) -> list[Event]:
        """Bytes (and possibly FIN) arrived on a stream; ``unidirectional`` as QUIC says."""
        events: list[Event] = []
        if self._state is _State.CLOSED:
            return events
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._role is Role.CLIENT and self._state is not _State.ESTABLISHED:
                # The server may open streams right after SERVER_SETUP, and QUIC does not order
                # streams, so they can overtake it; hold them until SETUP completes.
                self._hold_early(stream_id, bytes(data), end_stream, unidirectional, events)
                return events
            stream = self._open_peer_stream(stream_id, unidirectional)
        try:
            self._receive(stream, data, end_stream, events)
        except ProtocolViolation as violation:
            self._violation(stream, violation, end_stream, events)
        return events

    def receive_stream_reset(self, stream_id: int, error_code: int) -> list[Event]:
        """The peer reset its sending side of a stream (RESET_STREAM)."""
        events: list[Event] = []
        if self._state is _State.CLOSED:
            return events
        stream = self._streams.get(stream_id)
        if stream is None:
            self._early = [held for held in self._early if held[0] != stream_id]
            return events
        stream.readable = False
        stream.decoder = None
        if isinstance(stream, _SessionStream):
            self._fail_by_peer(error_code, "the peer reset the session stream", events)
            return events
        if isinstance(stream, _PeerSubscription):
            self._cancel_peer_subscription(stream, error_code, events)
        elif isinstance(stream, _OurSubscription):
            self._finish_our_subscription(stream, error_code, events)
        elif isinstance(stream, _OurInterest):
            self._finish_our_interest(stream, events)
        elif isinstance(stream, _PeerInterest):
            self._finish_writing(stream)
        elif isinstance(stream, _InGroup):
            self._end_in_group(stream, error_code, events)
        elif stream.writable and not isinstance(stream, _OutGroup):
            # A peer stream reset before saying what it is: abandon our half too.
            self._commands.append(ResetStream(stream_id, ErrorCode.CANCEL))
            stream.writable = False
        self._forget_if_done(stream)
        return events

    def receive_stop_sending(self, stream_id: int, error_code: int) -> list[Event]:
        """The peer asked us to stop sending on a stream (STOP_SENDING).

        The QUIC stack answers STOP_SENDING with RESET_STREAM by itself (aioquic does), so
        no command is queued for the stream; the session only stops using it.
        """
        events: list[Event] = []
        if self._state is _State.CLOSED:
            return events
        stream = self._streams.get(stream_id)
        if stream is None or not stream.writable:
            return events
        stream.writable = False
        if isinstance(stream, _OutGroup) and stream.subscription is not None:
            stream.subscription.groups.pop(stream_id, None)
        elif isinstance(stream, _PeerSubscription):
            self._cancel_peer_subscription(stream, error_code, events)
        self._forget_if_done(stream)
        return events

    def receive_session_close(self, error_code: int, reason: str) -> list[Event]:
        """The peer closed the session, or the connection under it is gone."""
        events: list[Event] = []
        if self._state is not _State.CLOSED:
            self._fail_by_peer(error_code, reason, events)
        return events

    # -- client role --------------------------------------------------------------------------

    def connect(self, stream_id: int) -> None:
        """Client role: send CLIENT_SETUP on a new bidirectional stream ``stream_id``."""
        if self._role is not Role.CLIENT or self._state is not _State.IDLE:
            raise LocalProtocolError("connect is for a client session that has not connected")
        self._claim(stream_id)
        stream = _SessionStream(
            stream_id,
            readable=True,
            writable=True,
            decoder=self._decoder(Inbound.SESSION_REPLY),
        )
        self._streams[stream_id] = stream
        self._session_stream = stream
        self._state = _State.AWAIT_SETUP
        setup = ClientSetup(self._versions, ((SetupParameter.IMPLEMENTATION, _IMPLEMENTATION),))
        self._send(
            stream_id, encode_varint(BidiStreamType.CLIENT_COMPAT), encode_client_setup(setup)
        )

    # -- publishing: our broadcasts, the peer's subscriptions ---------------------------------

    def announce(self, path: str) -> None:
        """Tell the peer's announce streams, now and later, that ``path`` is active."""
        self._require_established()
        path = normalize_path(path)
        if path in self._announced:
            return
        self._announced.add(path)
        for stream in list(self._streams.values()):
            if isinstance(stream, _PeerInterest) and stream.writable:
                suffix = _strip_prefix(stream.prefix, path)
                if suffix is not None and suffix not in stream.active:
                    stream.active.add(suffix)
                    self._send(
                        stream.stream_id, encode_announce(Announce(AnnounceStatus.ACTIVE, suffix))
                    )

    def unannounce(self, path: str) -> None:
        """Tell the peer's announce streams that ``path`` has ended."""
        self._require_established()
        path = normalize_path(path)
        if path not in self._announced:
            return
        self._announced.discard(path)
        for stream in list(self._streams.values()):
            if isinstance(stream, _PeerInterest) and stream.writable:
                suffix = _strip_prefix(stream.prefix, path)
                if suffix is not None and suffix in stream.active:
                    stream.active.discard(suffix)
                    self._send(
                        stream.stream_id, encode_announce(Announce(AnnounceStatus.ENDED, suffix))
                    )

    def end_broadcast(self, path: str, error_code: int | None = None) -> None:
        """Unannounce ``path`` and end every peer subscription to it (FIN, or reset with code)."""
        self.unannounce(path)
        path = normalize_path(path)
        for subscription in list(self._peer_subscription_ids.values()):
            if subscription.broadcast == path:
                self.end_subscription(subscription.stream_id, error_code)

    def accept_subscribe(self, stream_id: int) -> bool:
        """Answer SUBSCRIBE_OK; False if the peer already cancelled the subscription."""
        subscription = self._peer_subscription(stream_id)
        if subscription is None:
            return False
        if subscription.accepted:
            raise LocalProtocolError(f"subscription on stream {stream_id} is already accepted")
        subscription.accepted = True
        ok = SubscribeOk(subscription.priority)
        self._send(stream_id, encode_subscribe_ok(ok, self._version))
        return True

    def reject_subscribe(self, stream_id: int, error_code: int) -> bool:
        """Refuse a subscription (e.g. ErrorCode.NOT_FOUND, UNAUTHORIZED) by resetting it."""
        subscription = self._peer_subscription(stream_id)
        if subscription is None:
            return False
        if subscription.accepted:
            raise LocalProtocolError(f"subscription on stream {stream_id} is already accepted")
        self._release_peer_subscription(subscription)
        self._abort(subscription, error_code)
        return True

    def end_subscription(self, stream_id: int, error_code: int | None = None) -> bool:
        """End a peer subscription: FIN (track over) or reset with ``error_code``.

        With a FIN, open groups stay writable so they can finish; with a code they are reset.
        """
        subscription = self._peer_subscription(stream_id)
        if subscription is None:
            return False
        self._release_peer_subscription(subscription)
        if error_code is None:
            self._finish_writing(subscription)
        else:
            for group in list(subscription.groups.values()):
                self.drop_group(group.stream_id, error_code)
            self._commands.append(ResetStream(stream_id, error_code))
            subscription.writable = False
        self._forget_if_done(subscription)
        return True

    def start_group(self, stream_id: int, subscription_stream_id: int, sequence: int) -> bool:
        """Open group ``sequence`` on the new unidirectional stream ``stream_id``.

        Returns False, and resets ``stream_id`` so the transport can free it, when the peer
        has cancelled the subscription in the meantime.
        """
        self._claim(stream_id)
        subscription = self._peer_subscription(subscription_stream_id)
        if subscription is None:
            self._commands.append(ResetStream(stream_id, ErrorCode.CANCEL))
            return False
        if not subscription.accepted:
            raise LocalProtocolError("start_group before accept_subscribe")
        group = _OutGroup(
            stream_id,
            readable=False,
            writable=True,
            decoder=None,
            subscription=subscription,
            sequence=sequence,
        )
        self._streams[stream_id] = group
        subscription.groups[stream_id] = group
        self._commands.append(
            SetStreamPriority(stream_id, group_send_order(subscription.priority, sequence))
        )
        self._send(stream_id, encode_group_header(GroupHeader(subscription.subscribe_id, sequence)))
        return True

    def send_frame(self, stream_id: int, payload: bytes | memoryview) -> bool:
        """Queue one frame on a group stream, without copying ``payload``.

        Returns False when the group is no longer open (the peer stopped it or unsubscribed).
        """
        group = self._streams.get(stream_id)
        if not isinstance(group, _OutGroup) or not group.writable:
            return False
        self._commands.append(
            SendStreamData(stream_id, (encode_frame_size(len(payload)), payload), False)
        )
        return True

    def end_group(self, stream_id: int) -> bool:
        """Finish a group stream (FIN); False if it is no longer open."""
        group = self._streams.get(stream_id)
        if not isinstance(group, _OutGroup) or not group.writable:
            return False
        self._finish_writing(group)
        self._retire_out_group(group)
        return True

    def drop_group(self, stream_id: int, error_code: int = ErrorCode.OLD) -> bool:
        """Reset a group stream, e.g. a late group past its delivery deadline."""
        group = self._streams.get(stream_id)
        if not isinstance(group, _OutGroup) or not group.writable:
            return False
        self._commands.append(ResetStream(stream_id, error_code))
        group.writable = False
        self._retire_out_group(group)
        return True

    def send_session_info(self, bitrate_bps: int) -> None:
        """Report a bitrate estimate on the session stream."""
        self._require_established()
        stream = self._session_stream
        if stream is not None and stream.writable:
            self._send(stream.stream_id, encode_session_info(SessionInfo(bitrate_bps)))

    # -- subscribing: the peer's broadcasts ---------------------------------------------------

    def request_announces(self, stream_id: int, prefix: str = "") -> None:
        """Ask the peer, on the new bidirectional stream ``stream_id``, what it publishes."""
        self._require_established()
        self._claim(stream_id)
        prefix = normalize_path(prefix)
        self._streams[stream_id] = _OurInterest(
            stream_id,
            readable=True,
            writable=True,
            decoder=self._decoder(Inbound.ANNOUNCE_REPLY),
            prefix=prefix,
        )
        self._send(
            stream_id,
            encode_varint(BidiStreamType.ANNOUNCE),
            encode_announce_please(AnnouncePlease(prefix)),
        )

    def stop_announces(self, stream_id: int) -> bool:
        """Close one of our announce streams; no more BroadcastAnnounced comes from it."""
        stream = self._streams.get(stream_id)
        if not isinstance(stream, _OurInterest):
            return False
        stream.active.clear()
        self._finish_writing(stream)
        self._stop_reading(stream, ErrorCode.CANCEL)
        self._forget_if_done(stream)
        return True

    def subscribe(self, stream_id: int, broadcast: str, track: str, priority: int) -> int:
        """Subscribe to a track on the new bidirectional stream ``stream_id``; returns its id."""
        self._require_established()
        self._claim(stream_id)
        subscribe_id = self._next_subscribe_id
        message = Subscribe(subscribe_id, normalize_path(broadcast), track, priority)
        encoded = encode_subscribe(message)
        self._next_subscribe_id += 1
        subscription = _OurSubscription(
            stream_id,
            readable=True,
            writable=True,
            decoder=self._decoder(Inbound.SUBSCRIBE_REPLY),
            subscribe_id=subscribe_id,
        )
        self._streams[stream_id] = subscription
        self._our_subscriptions[subscribe_id] = subscription
        self._send(stream_id, encode_varint(BidiStreamType.SUBSCRIBE), encoded)
        return subscribe_id

    def update_subscription(self, subscribe_id: int, priority: int) -> bool:
        """Change the priority of one of our subscriptions; False if it is over."""
        subscription = self._our_subscriptions.get(subscribe_id)
        if subscription is None or not subscription.writable:
            return False
        self._send(subscription.stream_id, encode_subscribe_update(SubscribeUpdate(priority)))
        return True

    def unsubscribe(self, subscribe_id: int) -> bool:
        """Cancel one of our subscriptions; its groups are stopped and SubscriptionEnded
        follows when the publisher closes its side."""
        subscription = self._our_subscriptions.get(subscribe_id)
        if subscription is None or subscription.unsubscribed:
            return False
        subscription.unsubscribed = True
        self._finish_writing(subscription)
        for group in list(subscription.groups.values()):
            self._stop_reading(group, ErrorCode.CANCEL)
            self._forget_if_done(group)
        subscription.groups.clear()
        self._forget_if_done(subscription)
        return True

    # -- the whole session --------------------------------------------------------------------

    def close(self, error_code: int = ErrorCode.CANCEL, reason: str = "") -> None:
        """Close the session with a code and reason; later input is ignored."""
        if self._state is _State.CLOSED:
            return
        self._commands.append(CloseSession(error_code, reason))
        self._shut()

    # -- internals: input ---------------------------------------------------------------------

    def _decoder(self, inbound: Inbound) -> StreamDecoder:
        return StreamDecoder(inbound, version=self._version, limits=self._limits)

    def _open_peer_stream(self, stream_id: int, unidirectional: bool) -> _Stream:
        inbound = Inbound.PEER_UNI if unidirectional else Inbound.PEER_BIDI
        stream = _Stream(
            stream_id, readable=True, writable=not unidirectional, decoder=self._decoder(inbound)
        )
        self._streams[stream_id] = stream
        return stream

    def _hold_early(
        self,
        stream_id: int,
        data: bytes,
        end_stream: bool,
        unidirectional: bool,
        events: list[Event],
    ) -> None:
        self._early_bytes += len(data)
        if self._early_bytes > self._limits.max_early_bytes:
            self._fail(
                ErrorCode.BOUNDS_EXCEEDED, "too much data on streams opened before SETUP", events
            )
            return
        self._early.append((stream_id, data, end_stream, unidirectional))

    def _replay_early(self, events: list[Event]) -> None:
        early, self._early = self._early, []
        self._early_bytes = 0
        for stream_id, data, end_stream, unidirectional in early:
            if self._state is _State.CLOSED:
                return
            events.extend(
                self.receive_stream_data(
                    stream_id, data, end_stream=end_stream, unidirectional=unidirectional
                )
            )

    def _receive(
        self,
        stream: _Stream,
        data: bytes | bytearray | memoryview,
        end_stream: bool,
        events: list[Event],
    ) -> None:
        decoder = stream.decoder
        if decoder is not None and stream.readable:
            for message in decoder.feed(data):
                # A handler may swap the record for its typed one or discard the stream.
                stream = self._streams.get(stream.stream_id, stream)
                self._dispatch(stream, message, events)
                if self._state is _State.CLOSED:
                    return
                stream = self._streams.get(stream.stream_id, stream)
                if stream.decoder is None:
                    break
        if not end_stream:
            return
        stream = self._streams.get(stream.stream_id, stream)
        if stream.decoder is not None:
            stream.decoder.end()
        stream.readable = False
        stream.decoder = None
        self._on_fin(stream, events)
        self._forget_if_done(stream)

    def _dispatch(self, stream: _Stream, message: Message, events: list[Event]) -> None:
        if isinstance(message, Frame):
            self._on_frame(stream, message, events)
        elif isinstance(message, GroupHeader):
            self._on_group_header(stream, message, events)
        elif isinstance(message, Subscribe):
            self._on_subscribe(stream, message, events)
        elif isinstance(message, SubscribeUpdate):
            self._on_subscribe_update(stream, message, events)
        elif isinstance(message, SubscribeOk):
            self._on_subscribe_ok(stream, events)
        elif isinstance(message, AnnouncePlease):
            self._on_announce_please(stream, message, events)
        elif isinstance(message, AnnounceInit):
            self._on_announce_init(stream, message, events)
        elif isinstance(message, Announce):
            self._on_announce(stream, message, events)
        elif isinstance(message, ClientSetup):
            self._on_client_setup(stream, message, events)
        elif isinstance(message, ServerSetup):
            self._on_server_setup(message, events)
        else:
            events.append(SessionInfoReceived(message.bitrate_bps))

    def _require_peer_request_allowed(self, what: str) -> None:
        if self._state is not _State.ESTABLISHED:
            raise ProtocolViolation(ErrorCode.UNEXPECTED_MESSAGE, f"{what} before SETUP completed")

    def _typed(self, stream: _Stream, record: _Stream) -> None:
        self._streams[stream.stream_id] = record

    def _on_client_setup(self, stream: _Stream, message: ClientSetup, events: list[Event]) -> None:
        if self._role is not Role.SERVER or self._session_stream is not None:
            raise ProtocolViolation(ErrorCode.UNEXPECTED_STREAM, "a second session stream")
        chosen = next((version for version in self._versions if version in message.versions), None)
        if chosen is None:
            raise ProtocolViolation(
                ErrorCode.VERSION,
                f"no common version: offered {format_versions(message.versions)}, "
                f"supported {format_versions(self._versions)}",
            )
        session_stream = _SessionStream(
            stream.stream_id, stream.readable, stream.writable, stream.decoder
        )
        self._typed(stream, session_stream)
        self._session_stream = session_stream
        self._version = chosen
        self._state = _State.ESTABLISHED
        setup = ServerSetup(chosen, ((SetupParameter.IMPLEMENTATION, _IMPLEMENTATION),))
        self._send(
            stream.stream_id,
            encode_varint(BidiStreamType.SERVER_COMPAT),
            encode_server_setup(setup),
        )
        events.append(SessionStarted(chosen))

    def _on_server_setup(self, message: ServerSetup, events: list[Event]) -> None:
        chosen = next((version for version in self._versions if version == message.version), None)
        if chosen is None:
            raise ProtocolViolation(
                ErrorCode.VERSION,
                f"server chose {message.version:#x}, not one of {format_versions(self._versions)}",
            )
        self._version = chosen
        self._state = _State.ESTABLISHED
        events.append(SessionStarted(chosen))
        self._replay_early(events)

    def _on_announce_please(
        self, stream: _Stream, message: AnnouncePlease, events: list[Event]
    ) -> None:
        self._require_peer_request_allowed("ANNOUNCE_PLEASE")
        if self._peer_interest_count >= self._limits.max_peer_announce_interests:
            self._abort(stream, ErrorCode.BOUNDS_EXCEEDED)
            return
        interest = _PeerInterest(
            stream.stream_id,
            stream.readable,
            stream.writable,
            stream.decoder,
            prefix=message.prefix,
        )
        self._typed(stream, interest)
        self._peer_interest_count += 1
        for path in sorted(self._announced):
            suffix = _strip_prefix(message.prefix, path)
            if suffix is not None:
                interest.active.add(suffix)
        self._send(
            stream.stream_id, encode_announce_init(AnnounceInit(tuple(sorted(interest.active))))
        )
        events.append(AnnounceInterest(stream.stream_id, message.prefix))

    def _on_announce_init(
        self, stream: _Stream, message: AnnounceInit, events: list[Event]
    ) -> None:
        assert isinstance(stream, _OurInterest)
        for suffix in message.suffixes:
            if suffix not in stream.active:
                stream.active.add(suffix)
                events.append(
                    BroadcastAnnounced(stream.stream_id, _join(stream.prefix, suffix), True)
                )

    def _on_announce(self, stream: _Stream, message: Announce, events: list[Event]) -> None:
        assert isinstance(stream, _OurInterest)
        if (
            len(stream.active) >= self._limits.max_announce_paths
            and message.suffix not in stream.active
        ):
            raise ProtocolViolation(
                ErrorCode.BOUNDS_EXCEEDED, "too many active broadcasts announced"
            )
        active = message.status is AnnounceStatus.ACTIVE
        # A repeated ACTIVE is a re-route by the same publisher and an ENDED for a path never
        # announced says nothing; the JS subscriber ignores both the same way.
        if active == (message.suffix in stream.active):
            return
        if active:
            stream.active.add(message.suffix)
        else:
            stream.active.discard(message.suffix)
        events.append(
            BroadcastAnnounced(stream.stream_id, _join(stream.prefix, message.suffix), active)
        )

    def _on_subscribe(self, stream: _Stream, message: Subscribe, events: list[Event]) -> None:
        self._require_peer_request_allowed("SUBSCRIBE")
        if message.subscribe_id in self._peer_subscription_ids:
            raise ProtocolViolation(
                ErrorCode.DUPLICATE, f"subscribe id {message.subscribe_id} is in use"
            )
        if len(self._peer_subscription_ids) >= self._limits.max_peer_subscriptions:
            self._abort(stream, ErrorCode.BOUNDS_EXCEEDED)
            return
        subscription = _PeerSubscription(
            stream.stream_id,
            stream.readable,
            stream.writable,
            stream.decoder,
            subscribe_id=message.subscribe_id,
            broadcast=message.broadcast,
            track=message.track,
            priority=message.priority,
        )
        self._typed(stream, subscription)
        self._peer_subscription_ids[message.subscribe_id] = subscription
        events.append(
            SubscribeRequested(
                stream.stream_id,
                message.subscribe_id,
                message.broadcast,
                message.track,
                message.priority,
            )
        )

    def _on_subscribe_update(
        self, stream: _Stream, message: SubscribeUpdate, events: list[Event]
    ) -> None:
        assert isinstance(stream, _PeerSubscription)
        if stream.cancelled:
            return
        stream.priority = message.priority
        for group in stream.groups.values():
            self._commands.append(
                SetStreamPriority(
                    group.stream_id, group_send_order(message.priority, group.sequence)
                )
            )
        events.append(SubscriptionUpdated(stream.stream_id, stream.subscribe_id, message.priority))

    def _on_subscribe_ok(self, stream: _Stream, events: list[Event]) -> None:
        assert isinstance(stream, _OurSubscription)
        if not stream.unsubscribed:
            events.append(SubscribeAccepted(stream.subscribe_id))

    def _on_group_header(self, stream: _Stream, message: GroupHeader, events: list[Event]) -> None:
        self._require_peer_request_allowed("GROUP")
        subscription = self._our_subscriptions.get(message.subscribe_id)
        if subscription is None or subscription.unsubscribed:
            if message.subscribe_id >= self._next_subscribe_id:
                raise ProtocolViolation(
                    ErrorCode.PROTOCOL_VIOLATION,
                    f"group for subscribe id {message.subscribe_id}, never requested",
                )
            # A group of a subscription we already left: in flight when we unsubscribed.
            self._stop_reading(stream, ErrorCode.CANCEL)
            return
        group = _InGroup(
            stream.stream_id,
            stream.readable,
            False,
            stream.decoder,
            subscription=subscription,
            sequence=message.sequence,
        )
        self._typed(stream, group)
        subscription.groups[stream.stream_id] = group
        events.append(GroupStarted(stream.stream_id, message.subscribe_id, message.sequence))

    def _on_frame(self, stream: _Stream, message: Frame, events: list[Event]) -> None:
        assert isinstance(stream, _InGroup) and stream.subscription is not None
        events.append(
            FrameReceived(
                stream.stream_id, stream.subscription.subscribe_id, stream.sequence, message.payload
            )
        )

    def _on_fin(self, stream: _Stream, events: list[Event]) -> None:
        if isinstance(stream, _PeerSubscription):
            self._cancel_peer_subscription(stream, None, events)
        elif isinstance(stream, _PeerInterest):
            self._finish_writing(stream)
        elif isinstance(stream, _OurSubscription):
            self._finish_our_subscription(stream, None, events)
        elif isinstance(stream, _OurInterest):
            self._finish_our_interest(stream, events)
        elif isinstance(stream, _InGroup):
            self._end_in_group(stream, None, events)
        else:
            # A peer stream that ended before saying what it is: close our half too.
            self._finish_writing(stream)

    # -- internals: state changes -------------------------------------------------------------

    def _cancel_peer_subscription(
        self, subscription: _PeerSubscription, error_code: int | None, events: list[Event]
    ) -> None:
        if subscription.cancelled:
            self._finish_writing(subscription)
            return
        self._release_peer_subscription(subscription)
        for group in list(subscription.groups.values()):
            self.drop_group(group.stream_id, ErrorCode.CANCEL)
        self._finish_writing(subscription)
        events.append(
            SubscriptionCancelled(subscription.stream_id, subscription.subscribe_id, error_code)
        )

    def _release_peer_subscription(self, subscription: _PeerSubscription) -> None:
        subscription.cancelled = True
        if self._peer_subscription_ids.get(subscription.subscribe_id) is subscription:
            del self._peer_subscription_ids[subscription.subscribe_id]

    def _finish_our_subscription(
        self, subscription: _OurSubscription, error_code: int | None, events: list[Event]
    ) -> None:
        self._finish_writing(subscription)
        if self._our_subscriptions.get(subscription.subscribe_id) is subscription:
            del self._our_subscriptions[subscription.subscribe_id]
            events.append(SubscriptionEnded(subscription.subscribe_id, error_code))

    def _finish_our_interest(self, interest: _OurInterest, events: list[Event]) -> None:
        for suffix in sorted(interest.active):
            events.append(
                BroadcastAnnounced(interest.stream_id, _join(interest.prefix, suffix), False)
            )
        interest.active.clear()
        self._finish_writing(interest)

    def _end_in_group(self, group: _InGroup, error_code: int | None, events: list[Event]) -> None:
        subscription = group.subscription
        assert subscription is not None
        if subscription.groups.pop(group.stream_id, None) is not None:
            events.append(
                GroupEnded(group.stream_id, subscription.subscribe_id, group.sequence, error_code)
            )

    def _retire_out_group(self, group: _OutGroup) -> None:
        if group.subscription is not None:
            group.subscription.groups.pop(group.stream_id, None)
        self._forget_if_done(group)

    def _peer_subscription(self, stream_id: int) -> _PeerSubscription | None:
        subscription = self._streams.get(stream_id)
        if subscription is None:
            return None
        if not isinstance(subscription, _PeerSubscription):
            raise LocalProtocolError(f"stream {stream_id} is not a subscription of the peer")
        if subscription.cancelled or not subscription.writable:
            return None
        return subscription

    # -- internals: output and bookkeeping ----------------------------------------------------

    def _send(self, stream_id: int, *chunks: bytes) -> None:
        self._commands.append(SendStreamData(stream_id, chunks, False))

    def _finish_writing(self, stream: _Stream) -> None:
        if stream.writable:
            stream.writable = False
            self._commands.append(SendStreamData(stream.stream_id, (), True))

    def _stop_reading(self, stream: _Stream, error_code: int) -> None:
        """Ask the peer to stop and drop whatever still arrives until its FIN or reset."""
        if stream.readable and stream.decoder is not None:
            self._commands.append(StopSending(stream.stream_id, error_code))
        stream.decoder = None
        if isinstance(stream, _InGroup) and stream.subscription is not None:
            stream.subscription.groups.pop(stream.stream_id, None)

    def _abort(self, stream: _Stream, error_code: int) -> None:
        """Reset our side and stop the peer's side of a stream we will not serve."""
        if stream.writable:
            self._commands.append(ResetStream(stream.stream_id, error_code))
            stream.writable = False
        self._stop_reading(stream, error_code)
        self._forget_if_done(stream)

    def _forget_if_done(self, stream: _Stream) -> None:
        if stream.readable or stream.writable:
            return
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            if isinstance(stream, _PeerInterest):
                self._peer_interest_count -= 1

    def _claim(self, stream_id: int) -> None:
        if stream_id in self._streams:
            raise LocalProtocolError(f"stream {stream_id} is already in use")

    def _require_established(self) -> None:
        if self._state is not _State.ESTABLISHED:
            raise LocalProtocolError(f"the session is {self._state.value}, not established")

    def _violation(
        self, stream: _Stream, violation: ProtocolViolation, end_stream: bool, events: list[Event]
    ) -> None:
        if not violation.stream_only:
            self._fail(violation.code, violation.reason, events)
            return
        # The record stays until the peer's FIN or reset, so the rest of the stream is
        # discarded rather than parsed as a new stream.
        stream = self._streams.get(stream.stream_id, stream)
        self._abort(stream, violation.code)
        if end_stream:
            stream.readable = False
            self._forget_if_done(stream)

    def _fail(self, error_code: int, reason: str, events: list[Event]) -> None:
        self._commands.append(CloseSession(error_code, reason))
        events.append(SessionClosed(error_code, reason, by_peer=False))
        self._shut()

    def _fail_by_peer(self, error_code: int, reason: str, events: list[Event]) -> None:
        events.append(SessionClosed(error_code, reason, by_peer=True))
        self._shut()

    def _shut(self) -> None:
        self._state = _State.CLOSED
        self._streams.clear()
        self._peer_subscription_ids.clear()
        self._our_subscriptions.clear()
        self._early.clear()
        self._session_stream = None

"""moq-lite over WebTransport: binds each session's sans-IO moq Session to its
WebTransport streams and to the relay.

Viewers subscribe to broadcasts' tracks; a subscription is a TrackSink that
opens one unidirectional stream per group and drops (resets) a group its
viewer is too far behind on. Clients with a host or service token may also
publish: the server subscribes to their catalog and renditions and feeds
them into the relay like any other publisher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import trio

from shopcast.server._log import get_logger
from shopcast.server._relay import Broadcast, Group, Relay, RelayError, Track
from shopcast.server._webtransport import (
    SessionClosed,
    StreamReset,
    WebTransportReceiveStream,
    WebTransportSendStream,
    WebTransportSession,
    WebTransportStream,
)
from shopcast.server.moq import (
    CATALOG_TRACK,
    BroadcastAnnounced,
    CloseSession,
    ErrorCode,
    FrameReceived,
    GroupEnded,
    GroupStarted,
    Limits,
    ProtocolViolation,
    ResetStream,
    Role,
    SendStreamData,
    Session,
    SessionClosed as MoqSessionClosed,
    SessionStarted,
    SetStreamPriority,
    StopSending,
    SubscribeAccepted,
    SubscribeRequested,
    SubscriptionCancelled,
    SubscriptionEnded,
    TrackPriority,
    decode_catalog_untrusted,
)

__all__ = ["MoqConnection", "MoqServer", "MoqSettings", "ReceivedFrame", "SubscriberStats", "Upstream"]

log = get_logger("moq")
READ_CHUNK_BYTES = 65536


@dataclass(frozen=True)
class MoqSettings:
    """The ``[relay]`` values the session layer uses."""

    latency_budget_s: float = 1.0
    """A subscriber still sending a group this old when the next one starts
    has the old one reset."""
    max_subscriber_backlog_bytes: int = 4 * 1024 * 1024
    """Unacknowledged bytes on a subscriber's group stream before the group is dropped."""
    limits: Limits = Limits()


@dataclass
class SubscriberStats:
    """Relay-wide subscriber counters for /metrics."""

    groups_dropped: int = 0
    groups_sent: int = 0
    frames_sent: int = 0
    sessions: int = 0
    refused_unauthorized: int = 0
    protocol_errors: int = 0


class _Subscription:
    """A viewer's subscription to one track: a TrackSink writing one
    unidirectional stream per group.

    When a group starts, any earlier group whose stream the viewer has not
    yet acknowledged, and which began longer ago than the latency budget, is
    reset: the viewer jumps to the new group instead of falling further
    behind. A group whose unacknowledged bytes exceed the backlog limit is
    reset at once.
    """

    def __init__(self, connection: "MoqConnection", stream_id: int, track: Track) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.track = track
        self._open: dict[int, WebTransportSendStream] = {}
        # Streams finished (FIN sent) but maybe not yet acknowledged, with
        # their group's start time: still droppable if they fall behind.
        self._draining: list[tuple[WebTransportSendStream, float]] = []
        self._started: dict[int, float] = {}

    @property
    def queued_bytes(self) -> int:
        """Unacknowledged bytes on this subscription's group streams."""
        return sum(stream.backlog_bytes for stream in self._open.values()) + \
            sum(stream.backlog_bytes for stream, _ in self._draining)

    def group_started(self, track: Track, group: Group) -> None:
        connection = self.connection
        self._drop_stale(group.started_at)
        try:
            stream = connection.session.open_uni_stream_nowait()
        except Exception:  # noqa: BLE001 - stream limit or session gone: skip this group
            self._count_drop()
            connection.flush()
            return
        connection.register_send(stream)
        if connection.moq.start_group(stream.stream_id, self.stream_id, group.sequence):
            self._open[group.sequence] = stream
            self._started[group.sequence] = group.started_at
            connection.stats.groups_sent += 1
        connection.flush()

    def _drop_stale(self, now: float) -> None:
        budget = self.connection.settings.latency_budget_s
        still_draining = []
        for stream, started_at in self._draining:
            if stream.backlog_bytes == 0:
                continue
            if now - started_at > budget:
                stream.reset(ErrorCode.OLD)
                self._count_drop()
            else:
                still_draining.append((stream, started_at))
        self._draining = still_draining
        for sequence, stream in list(self._open.items()):
            if stream.backlog_bytes > 0 and now - self._started[sequence] > budget:
                self._drop(sequence)

    def frame(self, track: Track, group: Group, payload: bytes) -> None:
        stream = self._open.get(group.sequence)
        if stream is None:
            return
        if stream.backlog_bytes > self.connection.settings.max_subscriber_backlog_bytes:
            self._drop(group.sequence)
            self.connection.flush()
            return
        if self.connection.moq.send_frame(stream.stream_id, payload):
            self.connection.stats.frames_sent += 1
            track.stats.frames_out += 1
            track.stats.bytes_out += len(payload)
        self.connection.flush()

    def group_ended(self, track: Track, group: Group) -> None:
        stream = self._open.pop(group.sequence, None)
        started_at = self._started.pop(group.sequence, group.started_at)
        if stream is not None:
            self.connection.moq.end_group(stream.stream_id)
            self.connection.flush()
            self._draining.append((stream, started_at))

    def track_ended(self, track: Track) -> None:
        self.connection.moq.end_subscription(self.stream_id)
        self.connection.subscriptions.pop(self.stream_id, None)
        self.connection.flush()

    def _drop(self, sequence: int) -> None:
        stream = self._open.pop(sequence, None)
        self._started.pop(sequence, None)
        if stream is not None:
            self.connection.moq.drop_group(stream.stream_id, ErrorCode.OLD)
            self._count_drop()

    def _count_drop(self) -> None:
        self.connection.stats.groups_dropped += 1
        self.track.stats.groups_dropped += 1

    def cancel(self) -> None:
        self.track.unsubscribe(self)
        for sequence in list(self._open):
            stream = self._open.pop(sequence)
            self.connection.moq.drop_group(stream.stream_id, ErrorCode.CANCEL)
        self._draining.clear()


class _EndWhenBehindSubscription(_Subscription):
    """A subscription to a track where every object matters (a room's chat).

    Resetting the groups its viewer is behind on would lose messages without a
    word, so once the viewer has more than the track's
    ``end_subscribers_past_bytes`` unacknowledged, the whole subscription is
    ended with BOUNDS_EXCEEDED and counted; the viewer may subscribe again.
    The group a new subscriber is handed from the cache (its catch-up, at most
    one group) is not counted until it is acknowledged: joining a busy chat
    is not falling behind. At each new group the track's ``may_subscribe`` is
    asked again, so an account banned meanwhile is ended (UNAUTHORIZED). The
    Track may be iterating its sinks when the subscription ends, so it leaves
    the Track at the next group boundary (those calls iterate a copy).
    """

    ended = False
    _catch_up: tuple[WebTransportSendStream, int] | None = None

    def group_started(self, track: Track, group: Group) -> None:
        if self.ended:
            track.unsubscribe(self)
            return
        if not self.connection.may_subscribe(track):
            self._end(ErrorCode.UNAUTHORIZED)
            track.unsubscribe(self)
            return
        if not self._end_if_behind():
            super().group_started(track, group)
            stream = self._open.get(group.sequence)
            if group.frames and stream is not None:  # handed from the cache: a joiner's catch-up
                self._catch_up = (stream, group.size_bytes)

    def frame(self, track: Track, group: Group, payload: bytes) -> None:
        if not self.ended and not self._end_if_behind():
            super().frame(track, group, payload)

    def group_ended(self, track: Track, group: Group) -> None:
        if self.ended:
            track.unsubscribe(self)
        else:
            super().group_ended(track, group)

    def _drop_stale(self, now: float) -> None:
        # Never reset a group: only forget the finished ones fully acknowledged.
        self._draining = [(stream, started) for stream, started in self._draining
                          if stream.backlog_bytes]

    def _end_if_behind(self) -> bool:
        limit = self.track.end_subscribers_past_bytes
        if limit is None:
            return False
        if self._catch_up is not None:
            stream, size = self._catch_up
            if stream.backlog_bytes == 0:
                self._catch_up = None
            else:
                limit += size
        if self.queued_bytes <= limit:
            return False
        self._end(ErrorCode.BOUNDS_EXCEEDED)
        self.track.stats.subscribers_ended += 1
        if self.track.on_subscriber_ended is not None:
            self.track.on_subscriber_ended(self.track)
        return True

    def _end(self, code: int) -> None:
        self.ended = True
        connection = self.connection
        connection.subscriptions.pop(self.stream_id, None)
        for stream, _ in self._draining:
            stream.reset(code)
        self._draining.clear()
        self._open.clear()
        self._started.clear()
        self._catch_up = None
        connection.moq.end_subscription(self.stream_id, code)
        connection.flush()


@dataclass(frozen=True)
class ReceivedFrame:
    """A frame received on a subscription, with when it arrived."""

    group_sequence: int
    index: int
    """Position in its group; 0 is the group's keyframe."""
    payload: bytes
    arrival_s: float
    """trio.current_time() when it was read off the stream (s)."""


class Upstream:
    """A subscription this side made to the peer: frames go to ``track`` (the
    relay re-publishing a client's broadcast) or to a channel (a client
    watching)."""

    def __init__(self, track: Track | None, queue_frames: int) -> None:
        self.track = track
        self.accepted = trio.Event()
        self.ended = trio.Event()
        self.end_code: int | None = None
        self._send, self.frames = trio.open_memory_channel[ReceivedFrame](queue_frames)
        self._indices: dict[int, int] = {}
        self._groups: dict[int, Group] = {}
        self.frames_dropped = 0

    def _begin(self, sequence: int) -> None:
        if self.track is not None:
            self._groups[sequence] = self.track.begin_group(sequence, end_previous=False)

    def _frame(self, sequence: int, payload: bytes) -> None:
        if self.track is not None:
            group = self._groups.get(sequence)
            if group is not None:
                self.track.append(payload, group)
            return
        # Groups travel on their own streams, so frames of two groups may
        # interleave; each is numbered within its own group.
        index = self._indices.get(sequence, 0)
        self._indices[sequence] = index + 1
        if len(self._indices) > 64:
            del self._indices[min(self._indices)]
        try:
            self._send.send_nowait(ReceivedFrame(sequence, index, payload, trio.current_time()))
        except trio.WouldBlock:
            self.frames_dropped += 1

    def _group_end(self, sequence: int) -> None:
        group = self._groups.pop(sequence, None)
        if group is not None and self.track is not None:
            self.track.end_group(group)

    def _end(self, code: int | None) -> None:
        self.end_code = code
        self._send.close()
        self.ended.set()
        self.accepted.set()


class MoqConnection:
    """One WebTransport session speaking moq-lite, in either role.

    It serves subscriptions to the broadcasts of ``relay`` (the server's
    relay, or a client's own broadcasts) and can subscribe to the peer's.
    """

    def __init__(self, session: WebTransportSession, *, role: Role, relay: Relay,
                 settings: "MoqSettings", stats: "SubscriberStats",
                 server: "MoqServer | None" = None) -> None:
        self.server = server or _NO_SERVER
        self.role = role
        self.relay = relay
        self.settings = settings
        self.stats = stats
        self.session = session
        self.moq = Session(role, limits=settings.limits)
        self.established = trio.Event()
        self.announced: set[str] = set()
        self._announce_changed = trio.Event()
        self._send: dict[int, WebTransportSendStream] = {}
        self._receive: dict[int, WebTransportReceiveStream] = {}
        self.subscriptions: dict[int, _Subscription] = {}
        self._published: dict[str, Broadcast] = {}
        self._upstream: dict[int, Upstream] = {}
        self._nursery: trio.Nursery | None = None
        self._stop_listening: Callable[[], None] | None = None
        self._watching: set[Broadcast] = set()

    # --- transport ----------------------------------------------------------------------------

    def register_send(self, stream: WebTransportSendStream) -> None:
        self._send[stream.stream_id] = stream

    def flush(self) -> None:
        """Carry out what the moq Session asked for, in order."""
        for command in self.moq.pop_commands():
            if isinstance(command, SendStreamData):
                stream = self._send.get(command.stream_id)
                if stream is None:
                    continue
                try:
                    for chunk in command.chunks:
                        stream.write_nowait(chunk)
                    if command.end_stream:
                        stream.write_nowait(b"", end=True)
                        self._send.pop(command.stream_id, None)
                except (StreamReset, trio.ClosedResourceError):
                    self._send.pop(command.stream_id, None)
            elif isinstance(command, ResetStream):
                stream = self._send.pop(command.stream_id, None)
                if stream is not None:
                    stream.reset(command.error_code)
            elif isinstance(command, StopSending):
                receive = self._receive.pop(command.stream_id, None)
                if receive is not None:
                    receive.stop(command.error_code)
            elif isinstance(command, SetStreamPriority):
                self.session.set_stream_priority(command.stream_id, command.send_order)
            elif isinstance(command, CloseSession):
                self.session.close(command.error_code, command.reason)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the session until it closes. Never returns unless the
        session ends or it is cancelled; started() once SETUP is done."""
        self.stats.sessions += 1
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._stop_listening = self.relay.listen(self._on_broadcast)
                if self.role is Role.CLIENT:
                    stream = await self.session.open_bidi_stream()
                    self.register_send(stream.send_stream)
                    self.moq.connect(stream.stream_id)
                    self.flush()
                    nursery.start_soon(self._read_stream, stream, False)
                nursery.start_soon(self._accept_streams)
                async with trio.open_nursery() as race:
                    race.start_soon(_set_then_cancel, self.established.wait, race.cancel_scope)
                    race.start_soon(_set_then_cancel, self.session.wait_closed, race.cancel_scope)
                if not self.established.is_set():
                    raise SessionClosed(self.session.close_code,
                                        self.session.close_reason or "closed before SETUP completed")
                task_status.started()
                await self.session.wait_closed()
                nursery.cancel_scope.cancel()
        finally:
            self._cleanup()

    async def _accept_streams(self) -> None:
        assert self._nursery is not None
        while True:
            try:
                stream = await self.session.accept_stream()
            except SessionClosed:
                return
            self._nursery.start_soon(self._read_stream, stream)

    # --- subscribing to the peer ---------------------------------------------------------------

    async def subscribe(self, broadcast: str, track: str, priority: int,
                        into: Track | None = None, queue_frames: int = 4096) -> Upstream:
        """Subscribe to the peer's ``broadcast``/``track``; frames go into the
        relay track ``into``, or to the returned Upstream's ``frames`` channel."""
        upstream = Upstream(into, queue_frames)
        stream = await self.session.open_bidi_stream()
        self.register_send(stream.send_stream)
        subscribe_id = self.moq.subscribe(stream.stream_id, broadcast, track, priority)
        self._upstream[subscribe_id] = upstream
        self.flush()
        assert self._nursery is not None
        self._nursery.start_soon(self._read_stream, stream, False)
        return upstream

    async def wait_announced(self, name: str) -> None:
        """Return once the peer has announced ``name`` as active."""
        while name not in self.announced:
            await self._announce_changed.wait()

    async def _read_stream(self, stream: WebTransportStream | WebTransportReceiveStream,
                           register: bool = True) -> None:
        unidirectional = isinstance(stream, WebTransportReceiveStream)
        receive = stream if unidirectional else stream.receive_stream
        if register and not unidirectional:
            self.register_send(stream.send_stream)
        self._receive[stream.stream_id] = receive
        try:
            while True:
                try:
                    data = await receive.receive_some(READ_CHUNK_BYTES)
                except StreamReset as exc:
                    self._handle(self.moq.receive_stream_reset(stream.stream_id, exc.code))
                    return
                except trio.ClosedResourceError:
                    return
                self._handle(self.moq.receive_stream_data(
                    stream.stream_id, data, end_stream=not data, unidirectional=unidirectional))
                if not data:
                    return
        except ProtocolViolation as exc:
            self.stats.protocol_errors += 1
            log.info("moq_protocol_violation", peer=str(self.session.remote_address),
                     code=exc.code, reason=str(exc))
            self.session.close(exc.code, str(exc))
        finally:
            self._receive.pop(stream.stream_id, None)

    # --- events --------------------------------------------------------------------------------

    def _handle(self, events: list) -> None:
        for event in events:
            if isinstance(event, SessionStarted):
                self._on_started()
            elif isinstance(event, SubscribeRequested):
                self._on_subscribe(event)
            elif isinstance(event, SubscriptionCancelled):
                subscription = self.subscriptions.pop(event.stream_id, None)
                if subscription is not None:
                    subscription.cancel()
            elif isinstance(event, BroadcastAnnounced):
                self._on_announced(event)
            elif isinstance(event, SubscribeAccepted):
                upstream = self._upstream.get(event.subscribe_id)
                if upstream is not None:
                    upstream.accepted.set()
            elif isinstance(event, GroupStarted):
                upstream = self._upstream.get(event.subscribe_id)
                if upstream is not None:
                    upstream._begin(event.sequence)
            elif isinstance(event, FrameReceived):
                self._on_upstream_frame(event)
            elif isinstance(event, GroupEnded):
                upstream = self._upstream.get(event.subscribe_id)
                if upstream is not None:
                    upstream._group_end(event.group_sequence)
            elif isinstance(event, SubscriptionEnded):
                upstream = self._upstream.pop(event.subscribe_id, None)
                if upstream is not None:
                    upstream._end(event.error_code)
            elif isinstance(event, MoqSessionClosed):
                self.session.close(event.error_code, event.reason)
        self.flush()

    def _on_started(self) -> None:
        self.established.set()
        for broadcast in self.relay.broadcasts.values():
            if self._may_watch(broadcast):
                self.moq.announce(broadcast.name)
        replays = self.server.replays
        if replays is not None:
            for name in replays.announced_names():
                if name not in self.relay.broadcasts:
                    self.moq.announce(name)
            replays.listeners.append(self._on_replay)
        # Ask the peer what it publishes: a server learns of a client's
        # broadcast this way, a client of the server's.
        assert self._nursery is not None
        self._nursery.start_soon(self._request_announces)

    async def _request_announces(self) -> None:
        stream = await self.session.open_bidi_stream()
        self.register_send(stream.send_stream)
        self.moq.request_announces(stream.stream_id, "")
        self.flush()
        await self._read_stream(stream, False)

    def _identity(self) -> str:
        claims = self.session.claims
        if claims is not None:
            return f"account:{claims.subject}"
        return f"address:{self.session.remote_address[0]}"

    def may_subscribe(self, track: Track) -> bool:
        """The track's own admission check (a room's chat refuses banned accounts), asked
        with this session's token subject; True for tracks without one."""
        if track.may_subscribe is None:
            return True
        claims = self.session.claims
        return track.may_subscribe(track, claims.subject if claims is not None else None)

    def _is_staff(self, broadcast: Broadcast) -> bool:
        """A host, operator or service token for the room: the host console watching its
        own room, a moderator, a platform's monitor; not its audience, so not counted."""
        claims = self.session.claims
        return (claims is not None and claims.role in ("host", "operator", "service")
                and claims.allows_room(broadcast.name))

    def _may_watch(self, broadcast: Broadcast) -> bool:
        if self.role is Role.CLIENT or not broadcast.private:
            return True
        claims = self.session.claims
        return claims is not None and claims.allows_room(broadcast.name)

    def _on_subscribe(self, event: SubscribeRequested) -> None:
        broadcast = self.relay.broadcasts.get(event.broadcast)
        replays = self.server.replays
        if broadcast is None and replays is not None and self._nursery is not None:
            # Not live: maybe an ended room's replay, once its file is indexed.
            broadcast = replays.broadcast_for(self, event.broadcast)
            if broadcast is None:
                self._nursery.start_soon(self._subscribe_replay, event)
                return
        self._subscribe_to(event, broadcast)

    async def _subscribe_replay(self, event: SubscribeRequested) -> None:
        replays = self.server.replays
        broadcast = None
        if await replays.prepare(event.broadcast):
            broadcast = replays.broadcast_for(self, event.broadcast)
        self._subscribe_to(event, broadcast)
        self.flush()

    def _subscribe_to(self, event: SubscribeRequested, broadcast: Broadcast | None) -> None:
        if broadcast is None or event.track not in broadcast.tracks:
            self.moq.reject_subscribe(event.stream_id, ErrorCode.NOT_FOUND)
            return
        if not self._may_watch(broadcast):
            self.stats.refused_unauthorized += 1
            self.moq.reject_subscribe(event.stream_id, ErrorCode.UNAUTHORIZED)
            return
        track = broadcast.tracks[event.track]
        if not self.may_subscribe(track):
            self.stats.refused_unauthorized += 1
            self.moq.reject_subscribe(event.stream_id, ErrorCode.UNAUTHORIZED)
            return
        if not self._is_staff(broadcast) and broadcast.viewers.joined(self, self._identity()):
            self._watching.add(broadcast)
            self.server.on_viewer(broadcast, True, self._identity())
        kind = _Subscription if track.end_subscribers_past_bytes is None else _EndWhenBehindSubscription
        subscription = kind(self, event.stream_id, track)
        if not self.moq.accept_subscribe(event.stream_id):
            return
        self.subscriptions[event.stream_id] = subscription
        self.flush()
        try:
            track.subscribe(subscription)
        except RelayError as exc:
            self.subscriptions.pop(event.stream_id, None)
            self.moq.end_subscription(event.stream_id, exc.code)

    def _on_replay(self, name: str, available: bool) -> None:
        if self.moq.established and available and name not in self.relay.broadcasts:
            self.moq.announce(name)
            self.flush()

    def _on_broadcast(self, broadcast: Broadcast, active: bool) -> None:
        if not self.moq.established or broadcast.name in self._published:
            return
        if active and self._may_watch(broadcast):
            self.moq.announce(broadcast.name)
        elif not active:
            self.moq.end_broadcast(broadcast.name)
        self.flush()

    # --- publishing clients -------------------------------------------------------------------

    def _may_publish(self, name: str) -> bool:
        claims = self.session.claims
        if claims is None:
            return False
        if claims.role in ("operator", "service"):
            return claims.allows_room(name)
        return claims.role == "host" and claims.room == name

    def _on_announced(self, event: BroadcastAnnounced) -> None:
        name = event.path
        if event.active:
            self.announced.add(name)
        else:
            self.announced.discard(name)
        self._announce_changed.set()
        self._announce_changed = trio.Event()
        if self.role is Role.CLIENT:
            return
        if not event.active:
            broadcast = self._published.pop(name, None)
            if broadcast is not None:
                broadcast.end()
            return
        if not self._may_publish(name):
            self.stats.refused_unauthorized += 1
            self.session.close(ErrorCode.UNAUTHORIZED,
                               f"publishing {name} needs a host token for that room or a service token")
            return
        try:
            broadcast = self.relay.publish(name, owner=self.session.claims.subject)
        except RelayError as exc:
            self.session.close(exc.code, str(exc))
            return
        self._published[name] = broadcast
        assert self._nursery is not None
        self._nursery.start_soon(self._subscribe_upstream, broadcast, CATALOG_TRACK,
                                 TrackPriority.CATALOG)

    async def _subscribe_upstream(self, broadcast: Broadcast, track_name: str, priority: int) -> None:
        try:
            track = broadcast.track(track_name)
        except RelayError as exc:
            log.info("upstream_track_refused", broadcast=broadcast.name, track=track_name,
                     reason=str(exc))
            return
        await self.subscribe(broadcast.name, track_name, priority, into=track)

    def _on_upstream_frame(self, event: FrameReceived) -> None:
        upstream = self._upstream.get(event.subscribe_id)
        if upstream is None:
            return
        payload = bytes(event.payload)
        track = upstream.track
        # A catalog's tracks are made before the catalog is passed on, so
        # viewers that read it can subscribe to them at once.
        if track is not None and track.name == CATALOG_TRACK \
                and not self._on_upstream_catalog(track.broadcast, payload):
            return
        try:
            upstream._frame(event.group_sequence, payload)
        except RelayError as exc:
            self.session.close(exc.code, str(exc))

    def _on_upstream_catalog(self, broadcast: Broadcast, payload: bytes) -> bool:
        """Subscribe to the renditions a publisher's catalog lists; False
        (and the session closed) for a catalog that is not valid hang."""
        try:
            catalog = decode_catalog_untrusted(
                payload, max_size_bytes=self.settings.limits.max_message_size_bytes)
        except ProtocolViolation as exc:
            self.session.close(exc.code, f"malformed catalog: {exc}")
            return False
        wanted = [(r.track, TrackPriority.VIDEO) for r in catalog.video] + \
                 [(r.track, TrackPriority.AUDIO) for r in catalog.audio]
        assert self._nursery is not None
        for name, priority in wanted:
            if name in broadcast.tracks:
                continue
            try:
                track = broadcast.track(name)
            except RelayError as exc:
                self.session.close(exc.code, str(exc))
                return False
            self._nursery.start_soon(self.subscribe, broadcast.name, name, priority, track)
        return True

    def _cleanup(self) -> None:
        if self._stop_listening is not None:
            self._stop_listening()
        replays = self.server.replays
        if replays is not None and self._on_replay in replays.listeners:
            replays.listeners.remove(self._on_replay)
        for broadcast in self._watching:
            if broadcast.viewers.left(self):
                self.server.on_viewer(broadcast, False, self._identity())
        self._watching.clear()
        for subscription in list(self.subscriptions.values()):
            subscription.track.unsubscribe(subscription)
        self.subscriptions.clear()
        for broadcast in list(self._published.values()):
            broadcast.end()
        self._published.clear()
        for upstream in self._upstream.values():
            upstream._end(None)
        self._upstream.clear()


class _NoServer:
    """A client connection's stand-in for the MoqServer: nobody counts viewers."""

    replays = None

    def on_viewer(self, broadcast: Broadcast, joined: bool, identity: str) -> None:
        pass


_NO_SERVER = _NoServer()


async def _set_then_cancel(wait: Callable, scope: trio.CancelScope) -> None:
    await wait()
    scope.cancel()


class MoqServer:
    """The ``/moq`` WebTransport endpoint: one MoqConnection per session."""

    def __init__(self, relay: Relay, settings: MoqSettings | None = None) -> None:
        self.relay = relay
        self.settings = settings or MoqSettings()
        self.stats = SubscriberStats()
        self.viewer_listeners: list[Callable[[Broadcast, bool, str], None]] = []
        self.replays = None
        """The ReplayService (server/_recording.py) that serves names not
        live, or None: an ended room's replay is looked up there."""

    def disconnect_viewers(self, broadcast: Broadcast, code: int, reason: str) -> int:
        """Close the session of everyone watching ``broadcast`` (an emergency
        shutdown); returns how many."""
        closed = 0
        for connection in broadcast.viewers.sessions():
            if isinstance(connection, MoqConnection):
                connection.session.close(code, reason)
                closed += 1
        return closed

    def on_viewer(self, broadcast: Broadcast, joined: bool, identity: str) -> None:
        """Called when a session starts or stops watching a broadcast (the
        view counts are already updated); ``identity`` is ``account:<subject>``
        or ``address:<ip>``. Add to ``viewer_listeners`` to hear it."""
        for listener in self.viewer_listeners:
            listener(broadcast, joined, identity)

    async def handle_session(self, session: WebTransportSession) -> None:
        """The session handler registered for the moq path."""
        await MoqConnection(session, role=Role.SERVER, relay=self.relay,
                            settings=self.settings, stats=self.stats, server=self).run()


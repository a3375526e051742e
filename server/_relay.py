"""The relay's object model: broadcasts of tracks of groups of frames, with a
GOP cache and synchronous fan-out to subscribers.

A publisher (the demo room, RTMP ingest, a moq-lite client) writes frames to
a Track; the Track hands each frame to every subscribed sink in the same call,
with no task, queue or payload copy per subscriber. Sinks (moq-lite
subscriptions, later datagram subscriptions and recordings) decide for
themselves what to drop when their peer falls behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import trio

__all__ = [
    "Broadcast",
    "ViewerCounts",
    "Group",
    "Relay",
    "RelayError",
    "RelayLimits",
    "Track",
    "TrackSink",
]


class RelayError(Exception):
    """A request the relay refuses: a limit, a name in use, an unknown track.

    ``code`` is the moq-lite error code to answer with.
    """

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


# moq-lite error codes (docs/moq-lite.md, "Errors and session close").
NOT_FOUND = 13
BOUNDS_EXCEEDED = 11
DUPLICATE = 12
FRAME_TOO_LARGE = 27


@dataclass(frozen=True)
class RelayLimits:
    """The ``[relay]`` bounds the model enforces."""

    max_broadcasts: int = 1000
    max_tracks_per_broadcast: int = 16
    max_subscribers_per_track: int = 10000
    max_frame_bytes: int = 4 * 1024 * 1024
    max_group_bytes: int = 32 * 1024 * 1024
    keyframe_request_interval_s: float = 1.0
    publisher_takeover: bool = False
    max_open_groups_per_track: int = 4
    """Groups of one track open at once; older ones are ended when a new one begins."""


@dataclass(eq=False)
class Group:
    """A group: a keyframe and the frames that depend on it."""

    sequence: int
    started_at: float
    """trio time the group began (s)."""
    frames: list[bytes] = field(default_factory=list)
    """Frame payloads so far, while the group is cacheable."""
    size_bytes: int = 0
    cacheable: bool = True
    """False once the group outgrew max_group_bytes: late joiners wait for the next."""
    ended: bool = False


class TrackSink(Protocol):
    """What a Track calls for each subscriber, synchronously and in order."""

    def group_started(self, track: "Track", group: Group) -> None: ...

    def frame(self, track: "Track", group: Group, payload: bytes) -> None: ...

    def group_ended(self, track: "Track", group: Group) -> None: ...

    def track_ended(self, track: "Track") -> None: ...


@dataclass
class TrackStats:
    """Counters of one track, read by /metrics."""

    frames_in: int = 0
    bytes_in: int = 0
    groups_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    groups_dropped: int = 0
    keyframe_requests: int = 0
    subscribers_ended: int = 0
    """Subscribers ended for falling behind (tracks with ``end_subscribers_past_bytes``)."""


class Track:
    """One track of a broadcast.

    Groups arrive on their own streams and may overlap in transit, so more
    than one can be open; the newest is kept whole (the GOP cache) so that a
    new subscriber starts at its keyframe at once.
    """

    def __init__(self, broadcast: "Broadcast", name: str, limits: RelayLimits) -> None:
        self.broadcast = broadcast
        self.name = name
        self._limits = limits
        self.current: Group | None = None
        self._open: dict[int, Group] = {}
        self._next_sequence = 0
        self._sinks: list[TrackSink] = []
        self._taps = 0
        self.stats = TrackStats()
        self.ended = False
        self.end_subscribers_past_bytes: int | None = None
        """Set on tracks where every object matters (a room's chat): a subscriber
        with more unacknowledged bytes than this is ended, not silently sent
        fewer groups (server/_moq_server.py), and may subscribe again."""
        self.on_subscriber_ended: Callable[[Track], None] | None = None
        """Called when such a subscriber is ended (the chat counts them)."""
        self.may_subscribe: Callable[[Track, str | None], bool] | None = None
        """Asked with a new subscriber's token subject (None without a token)
        before it is accepted; False refuses it (a room's banned accounts)."""

    @property
    def subscriber_count(self) -> int:
        """Viewers' subscriptions (taps such as recordings are not counted)."""
        return len(self._sinks) - self._taps

    def queued_bytes(self) -> int:
        """Bytes written to this track's subscribers and not yet acknowledged
        by them: the depth of its send queues, for /metrics."""
        return sum(getattr(sink, "queued_bytes", 0) for sink in self._sinks)

    def begin_group(self, sequence: int | None = None, *, end_previous: bool = True) -> Group:
        """Start a group (numbered ``sequence`` by its publisher, or the next
        number). A local publisher ends the previous group first; a relayed
        one leaves it open for frames still in transit."""
        if end_previous:
            for group in list(self._open.values()):
                self.end_group(group)
        if sequence is None:
            sequence = self._next_sequence
        self._next_sequence = max(self._next_sequence, sequence + 1)
        group = Group(sequence, trio.current_time())
        self._open[sequence] = group
        if self.current is None or sequence > self.current.sequence:
            self.current = group
        while len(self._open) > self._limits.max_open_groups_per_track:
            self.end_group(self._open[min(self._open)])
        self.stats.groups_in += 1
        for sink in list(self._sinks):
            sink.group_started(self, group)
        return group

    def append(self, payload: bytes, group: Group | None = None) -> None:
        """Add a frame to ``group`` (default: the newest; one is started if
        there is none). Frames for a group already ended are dropped."""
        if len(payload) > self._limits.max_frame_bytes:
            raise RelayError(FRAME_TOO_LARGE, f"frame of {len(payload)} bytes exceeds "
                             f"relay.max_frame_bytes ({self._limits.max_frame_bytes})")
        if group is None:
            group = self.current
            if group is None or group.ended:
                group = self.begin_group()
        elif group.ended:
            return
        group.size_bytes += len(payload)
        if group.cacheable:
            if group.size_bytes > self._limits.max_group_bytes:
                group.cacheable = False
                group.frames.clear()
            else:
                group.frames.append(payload)
        stats = self.stats
        stats.frames_in += 1
        stats.bytes_in += len(payload)
        for sink in self._sinks:
            sink.frame(self, group, payload)

    def write_frame(self, payload: bytes, *, keyframe: bool) -> None:
        """A frame from a local publisher: a keyframe starts a new group."""
        if keyframe or self.current is None or self.current.ended:
            self.begin_group()
        self.append(payload)

    def end_group(self, group: Group | None = None) -> None:
        """End ``group`` (default: every open group)."""
        groups = [group] if group is not None else list(self._open.values())
        for group in groups:
            if group.ended:
                continue
            group.ended = True
            self._open.pop(group.sequence, None)
            for sink in list(self._sinks):
                sink.group_ended(self, group)

    def subscribe(self, sink: TrackSink) -> None:
        """Add a subscriber; it gets the cached group from its keyframe at once,
        or, with none usable, a keyframe is requested from the publisher."""
        if len(self._sinks) >= self._limits.max_subscribers_per_track:
            raise RelayError(BOUNDS_EXCEEDED, f"track {self.name} has the most subscribers "
                             f"allowed (relay.max_subscribers_per_track)")
        self._sinks.append(sink)
        group = self.current
        if group is not None and group.cacheable and group.frames:
            sink.group_started(self, group)
            for payload in group.frames:
                sink.frame(self, group, payload)
            if group.ended:
                sink.group_ended(self, group)
        else:
            self.broadcast.request_keyframe(self)

    def tap(self, sink: TrackSink, *, from_cache: bool) -> None:
        """Add a sink that is not a viewer (a recording): not counted as a
        subscriber, never the cause of a keyframe request. ``from_cache``
        hands it the cached group first, like a subscriber."""
        self._sinks.append(sink)
        self._taps += 1
        group = self.current
        if from_cache and group is not None and group.cacheable and group.frames:
            sink.group_started(self, group)
            for payload in group.frames:
                sink.frame(self, group, payload)
            if group.ended:
                sink.group_ended(self, group)

    def untap(self, sink: TrackSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)
            self._taps -= 1

    def unsubscribe(self, sink: TrackSink) -> None:
        try:
            self._sinks.remove(sink)
        except ValueError:
            pass

    def close(self) -> None:
        """The publisher is gone: end the groups and tell every subscriber."""
        if self.ended:
            return
        self.end_group()
        self.ended = True
        sinks, self._sinks = self._sinks, []
        self._taps = 0
        for sink in sinks:
            sink.track_ended(self)


class ViewerCounts:
    """Who is watching a broadcast: concurrent, unique and peak viewers.

    A viewer is a session (keyed by the caller); ``identity`` (an account or,
    for anonymous viewers, an address) makes unique viewers unique.
    """

    def __init__(self) -> None:
        self._sessions: dict[object, str] = {}
        self._identities: set[str] = set()
        self.peak = 0

    @property
    def concurrent(self) -> int:
        return len(self._sessions)

    @property
    def unique(self) -> int:
        return len(self._identities)

    def joined(self, session: object, identity: str) -> bool:
        """Count a session watching; False if it was already counted."""
        if session in self._sessions:
            return False
        self._sessions[session] = identity
        self._identities.add(identity)
        self.peak = max(self.peak, len(self._sessions))
        return True

    def left(self, session: object) -> bool:
        return self._sessions.pop(session, None) is not None

    def sessions(self) -> list[object]:
        """The sessions watching now (as the caller keyed them)."""
        return list(self._sessions)

    def snapshot(self) -> dict[str, int]:
        return {"concurrent": self.concurrent, "unique": self.unique, "peak": self.peak}


class Broadcast:
    """One live broadcast (a room's, named by the room id)."""

    def __init__(self, relay: "Relay", name: str, *, private: bool = False,
                 owner: str = "", on_keyframe_request: Callable[[Track], None] | None = None) -> None:
        self.relay = relay
        self.name = name
        self.private = private
        self.owner = owner
        self.tracks: dict[str, Track] = {}
        self.ended = trio.Event()
        self.on_keyframe_request = on_keyframe_request
        self._last_keyframe_request: dict[str, float] = {}
        self.viewers = ViewerCounts()

    def track(self, name: str) -> Track:
        """The track called ``name``, created on first use."""
        track = self.tracks.get(name)
        if track is None:
            if len(self.tracks) >= self.relay.limits.max_tracks_per_broadcast:
                raise RelayError(BOUNDS_EXCEEDED, f"broadcast {self.name} has the most tracks "
                                 "allowed (relay.max_tracks_per_broadcast)")
            track = self.tracks[name] = Track(self, name, self.relay.limits)
            for listener in list(self.relay.track_listeners):
                listener(track)
        return track

    def request_keyframe(self, track: Track) -> None:
        """Ask the publisher for a new group, at most once per configured interval."""
        if self.on_keyframe_request is None:
            return
        now = trio.current_time()
        last = self._last_keyframe_request.get(track.name, -math.inf)
        if now - last < self.relay.limits.keyframe_request_interval_s:
            return
        self._last_keyframe_request[track.name] = now
        track.stats.keyframe_requests += 1
        self.on_keyframe_request(track)

    def end(self) -> None:
        """The broadcast is over: close its tracks and withdraw it."""
        if self.ended.is_set():
            return
        for track in self.tracks.values():
            track.close()
        self.ended.set()
        self.relay._remove(self)


class Relay:
    """Every live broadcast, and who wants to hear when one starts or ends."""

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits or RelayLimits()
        self.broadcasts: dict[str, Broadcast] = {}
        self._listeners: list[Callable[[Broadcast, bool], None]] = []
        self.track_listeners: list[Callable[[Track], None]] = []
        """Called with every new track of any broadcast, before its first
        frame (the recorder taps it there)."""

    def publish(self, name: str, *, private: bool = False, owner: str = "",
                on_keyframe_request: Callable[[Track], None] | None = None) -> Broadcast:
        """Start a broadcast. An existing one of that name is ended first when
        ``relay.publisher_takeover`` is set, else RelayError(DUPLICATE)."""
        existing = self.broadcasts.get(name)
        if existing is not None:
            if not self.limits.publisher_takeover:
                raise RelayError(DUPLICATE, f"broadcast {name} already has a publisher")
            existing.end()
        if len(self.broadcasts) >= self.limits.max_broadcasts:
            raise RelayError(BOUNDS_EXCEEDED, "the relay has the most broadcasts allowed "
                             "(relay.max_broadcasts)")
        broadcast = Broadcast(self, name, private=private, owner=owner,
                              on_keyframe_request=on_keyframe_request)
        self.broadcasts[name] = broadcast
        for listener in list(self._listeners):
            listener(broadcast, True)
        return broadcast

    def _remove(self, broadcast: Broadcast) -> None:
        if self.broadcasts.get(broadcast.name) is broadcast:
            del self.broadcasts[broadcast.name]
            for listener in list(self._listeners):
                listener(broadcast, False)

    def make_public(self, broadcast: Broadcast) -> None:
        """A private broadcast (a rehearsal) becomes public: every listener
        hears it is active again, so sessions that may now watch it are told
        (announcing twice is harmless to those that had it)."""
        if not broadcast.private:
            return
        broadcast.private = False
        for listener in list(self._listeners):
            listener(broadcast, True)

    def listen(self, listener: Callable[[Broadcast, bool], None]) -> Callable[[], None]:
        """Call ``listener(broadcast, active)`` on every start and end; returns
        the function that stops listening."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

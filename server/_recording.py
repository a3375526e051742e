"""Recording and replay: every track of a live broadcast, group by group and
frame by frame with its arrival time, appended to one file per room; and the
replay of that file as a moq-lite broadcast, paced as it arrived.

The file (``<data_dir>/recordings/<room>.rec``) is a sequence of records,
each a 28-byte header and a payload::

    magic "SR" | kind u8 | track u8 | arrival_us u64 | group u64 | length u32 | crc32 u32

``crc32`` covers the header (with the crc field zero) and the payload, so a
record torn by a crash is recognised and the file is read up to the last
complete one (and cut back to it when the room records again). Kinds:
SEGMENT (a broadcast began; payload msgpack ``{room, wall_s}``; track numbers
restart), TRACK (payload: the name of track number ``track``), GROUP (a group
began on ``track``), FRAME (payload: the frame, byte for byte as the relay
carried it) and END (the broadcast ended cleanly). ``arrival_us`` grows
through the whole file: a later segment continues where the previous one
stopped, so a replay plays segments back to back.

A segment's media timestamps are the publisher's and restart with it (an
encoder that reconnects starts RTMP time at zero again). The index gives
every segment a media offset so that its audio and video follow the
previous segment's on one timeline, with no gap (the arrival times have
none either): a replay rewrites the timestamps of later segments' media
frames with it, and the MP4 export uses the same offsets.

Resource handling: the Recorder taps tracks synchronously (a list append per
frame, nothing else on the media path) and writes batches from a worker
thread once per ``flush_interval_ms``, with an fsync at least every
``fsync_interval_ms``. Error handling: a write that fails (disk full) stops
that room's recording with a log line; the live room goes on.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import msgpack
import trio

from shopcast.server._log import get_logger
from shopcast.server._relay import Broadcast, Group, Relay, RelayLimits, Track
from shopcast.server.moq import (
    CATALOG_TRACK,
    ProtocolViolation,
    decode_catalog_untrusted,
    decode_frame_untrusted,
    encode_frame,
)

__all__ = [
    "Recorder",
    "RecordingIndex",
    "RecordingSettings",
    "ReplayService",
    "export_mp4",
    "read_index",
    "recording_path",
    "replay_name_untrusted",
]

log = get_logger("recording")

MAGIC = b"SR"
HEADER = struct.Struct(">2sBBQQII")
SEGMENT, TRACK, GROUP, FRAME, END = 1, 2, 3, 4, 5
SUFFIX = ".rec"
REPLAY_MARK = "/replay@"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# The file format's limit: a record names its track in one byte of HEADER.
_MAX_TRACKS = 255


@dataclass(frozen=True)
class RecordingSettings:
    """The ``[recording]`` values."""

    enabled: bool = True
    directory: str = "recordings"
    """Under the data directory."""
    flush_interval_s: float = 0.2
    fsync_interval_s: float = 1.0
    max_bytes_per_room: int = 8 << 30
    retention_days: float = 30.0
    retention_check_interval_s: float = 3600.0
    record_demo: bool = False
    replay_read_ahead_s: float = 2.0
    """Replay reads this much of the file ahead of the playhead."""
    max_replays: int = 1000
    """Replays playing at once (one per viewer session and room)."""
    max_announced: int = 1000
    """Replays announced to moq-lite sessions, newest first."""
    read_threads: int = 4
    """Worker threads replays read files with (their own, so that many
    replays never hold up the database's)."""
    index_cache_entries: int = 64
    """Replay indexes kept in memory; past this the cache is emptied."""

    @classmethod
    def from_config(cls, rec) -> "RecordingSettings":
        """The settings of a loaded ``[recording]`` section (server/_config.py's RecordingConfig)."""
        return cls(
            enabled=rec.enabled, directory=rec.directory,
            flush_interval_s=rec.flush_interval_ms / 1000, fsync_interval_s=rec.fsync_interval_ms / 1000,
            max_bytes_per_room=rec.max_bytes_per_room, retention_days=rec.retention_days,
            retention_check_interval_s=rec.retention_check_interval_s, record_demo=rec.record_demo,
            replay_read_ahead_s=rec.replay_read_ahead_ms / 1000, max_replays=rec.max_replays,
            max_announced=rec.max_announced_replays, read_threads=rec.replay_read_threads,
            index_cache_entries=rec.replay_index_cache_entries)


def recording_path(directory: Path, room_id: str) -> Path | None:
    """Where ``room_id`` is recorded; None for a name that cannot be a file name."""
    if not _NAME.fullmatch(room_id):
        return None
    return directory / f"{room_id}{SUFFIX}"


def _record(kind: int, track: int, arrival_us: int, group: int, payload: bytes) -> bytes:
    header = HEADER.pack(MAGIC, kind, track, arrival_us, group, len(payload), 0)
    crc = zlib.crc32(payload, zlib.crc32(header))
    return HEADER.pack(MAGIC, kind, track, arrival_us, group, len(payload), crc) + payload


def _read_header(f: BinaryIO) -> tuple[int, int, int, int, int, int] | None:
    raw = f.read(HEADER.size)
    if len(raw) < HEADER.size:
        return None
    magic, kind, track, arrival_us, group, length, crc = HEADER.unpack(raw)
    if magic != MAGIC or not SEGMENT <= kind <= END:
        return None
    return kind, track, arrival_us, group, length, crc


def iter_records_untrusted(f: BinaryIO) -> Iterator[tuple[int, int, int, int, bytes, int, int]]:
    """(kind, track, arrival_us, group, payload, offset, length) of every
    complete record from the file position on; stops at the first record
    that is torn (a crash while writing it) or fails its CRC."""
    size = os.fstat(f.fileno()).st_size
    while True:
        offset = f.tell()
        header = _read_header(f)
        if header is None:
            return
        kind, track, arrival_us, group, length, crc = header
        if offset + HEADER.size + length > size:
            return
        payload = f.read(length)
        raw = HEADER.pack(MAGIC, kind, track, arrival_us, group, length, 0)
        if len(payload) < length or zlib.crc32(payload, zlib.crc32(raw)) != crc:
            return
        yield kind, track, arrival_us, group, payload, offset, length


# --- the index of a recording ---------------------------------------------------------------


@dataclass
class RecordingIndex:
    """What a replay or an export needs to know of a file before reading it:
    every record's place, and where groups begin."""

    path: Path
    size: int
    mtime_ns: int
    offsets: list[int] = field(default_factory=list)
    arrivals: list[int] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    tracks: list[str] = field(default_factory=list)
    """The track name of each record ('' for SEGMENT and END)."""
    track_names: list[str] = field(default_factory=list)
    """Every track name, in order of first appearance."""
    catalogs: list[tuple[int, bytes]] = field(default_factory=list)
    """(record number, payload) of each catalog.json frame."""
    video_track: str = "video"
    seek_points: list[int] = field(default_factory=list)
    """Record numbers of the video track's GROUP records: where a replay can start."""
    end: int = 0
    """The offset just past the last complete record."""
    first_media_us: int | None = None
    """The hang timestamp of the first video frame: a page converts a media
    timestamp to a seek offset (``ROOM/replay@START_US``) with it."""
    segment_starts: list[int] = field(default_factory=list)
    """Record numbers of the SEGMENT records, in order."""
    segment_offsets_us: list[int] = field(default_factory=list)
    """What to add to the media timestamps of each segment so that the
    segments follow one another (0 for the first; see the module docstring)."""
    media: frozenset[str] = frozenset()
    """The audio and video tracks (``media_tracks``), whose frames carry media timestamps."""

    def media_offset_us(self, number: int) -> int:
        """The media offset of the segment record ``number`` belongs to."""
        segment = bisect.bisect_right(self.segment_starts, number) - 1
        return self.segment_offsets_us[segment] if segment > 0 else 0

    @property
    def duration_us(self) -> int:
        return self.arrivals[-1] - self.arrivals[0] if self.arrivals else 0

    @property
    def frame_count(self) -> int:
        return sum(1 for k in self.kinds if k == FRAME)

    def media_tracks(self) -> set[str]:
        """Tracks the catalogs name as renditions (audio, video)."""
        names: set[str] = set()
        for _, payload in self.catalogs:
            try:
                catalog = decode_catalog_untrusted(payload, max_size_bytes=len(payload))
            except ProtocolViolation:  # a publisher's catalog we cannot read names nothing
                continue
            names.update(r.track for r in (*catalog.video, *catalog.audio))
        return names

    def seek(self, start_us: int) -> int:
        """The record number to start a replay at: the video group at or
        before ``start_us`` (µs from the start), else the beginning."""
        if start_us <= 0 or not self.seek_points:
            return 0
        base = self.arrivals[0]
        times = [self.arrivals[i] - base for i in self.seek_points]
        position = bisect.bisect_right(times, start_us) - 1
        return self.seek_points[max(0, position)]


def read_index(path: Path) -> RecordingIndex:
    """Read a recording through once and index it (blocking; run it in a
    thread). Catalogs were bounded by relay.max_frame_bytes when recorded,
    so they are parsed here at their own size."""
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        index = RecordingIndex(path, stat.st_size, stat.st_mtime_ns)
        names: dict[int, str] = {}
        seen: set[str] = set()
        first_us: dict[str, int] = {}
        spans: list[dict[str, _Span]] = [{}]
        """Per segment and track: the media timestamps its frames span."""
        # Every payload is checked (the whole file is read once; the index is
        # cached): a replay never sends a damaged frame.
        for kind, track, arrival_us, group, payload, offset, length in iter_records_untrusted(f):
            number = len(index.offsets)
            if kind == SEGMENT:
                names = {}
                if index.segment_starts:
                    spans.append({})
                index.segment_starts.append(number)
            elif kind == TRACK:
                name = payload.decode("utf-8", "replace")
                names[track] = name
                if name not in seen:
                    seen.add(name)
                    index.track_names.append(name)
            name = names.get(track, "") if kind in (GROUP, FRAME) else ""
            index.offsets.append(offset)
            index.arrivals.append(arrival_us)
            index.kinds.append(kind)
            index.tracks.append(name)
            if kind == FRAME and name == CATALOG_TRACK:
                index.catalogs.append((number, payload))
            elif kind == FRAME and payload:
                try:
                    timestamp_us = decode_frame_untrusted(payload)[0]
                except ProtocolViolation:  # not a hang frame (chat): no media time
                    pass
                else:
                    first_us.setdefault(name, timestamp_us)
                    span = spans[-1].get(name)
                    if span is None:
                        spans[-1][name] = _Span(timestamp_us, timestamp_us, timestamp_us)
                    else:
                        span.add(timestamp_us)
            index.end = f.tell()
        index.media = frozenset(index.media_tracks() - {CATALOG_TRACK})
        videos = [n for n in index.track_names if n in index.media]
        for _, payload in index.catalogs[:1]:
            try:
                catalog = decode_catalog_untrusted(payload, max_size_bytes=len(payload))
                if catalog.video:
                    index.video_track = catalog.video[0].track
            except ProtocolViolation:  # unreadable catalog: keep the default name
                pass
        if index.video_track not in index.track_names and videos:
            index.video_track = videos[0]
        index.seek_points = [i for i, (k, t) in enumerate(zip(index.kinds, index.tracks))
                             if k == GROUP and t == index.video_track]
        index.first_media_us = first_us.get(index.video_track)
        index.segment_offsets_us = _segment_offsets_us(
            [{t: s for t, s in segment.items() if t in index.media} for segment in spans])
    return index


@dataclass
class _Span:
    """The media timestamps of one track in one segment."""

    first_us: int
    last_us: int
    previous_us: int
    step_us: int = 0
    """The smallest positive step between consecutive frames: one frame's
    duration (with B-frames too, whose decode order jumps back and forth)."""

    def add(self, timestamp_us: int) -> None:
        step = timestamp_us - self.previous_us
        if step > 0 and (self.step_us == 0 or step < self.step_us):
            self.step_us = step
        self.previous_us = timestamp_us
        self.first_us = min(self.first_us, timestamp_us)
        self.last_us = max(self.last_us, timestamp_us)


def _segment_offsets_us(segments: list[dict[str, _Span]]) -> list[int]:
    """Each segment's media offset: its earliest media timestamp moved to
    just after the end of the previous segment's media (last timestamp plus
    one frame, on the track that ends last). One offset for all of a
    segment's tracks keeps its audio and video in sync; a segment with no
    media keeps the offset before it."""
    offsets: list[int] = []
    end_us: int | None = None
    for spans in segments:
        offset = offsets[-1] if offsets else 0
        if spans:
            start = min(s.first_us for s in spans.values())
            if end_us is not None:
                offset = end_us - start
            end_us = max(s.last_us + s.step_us for s in spans.values()) + offset
        offsets.append(offset)
    return offsets


def read_records(path: Path, index: RecordingIndex, first: int, last: int) -> list[tuple[int, str, int, bytes]]:
    """(kind, track name, arrival_us, payload) of records first..last-1 (blocking)."""
    out: list[tuple[int, str, int, bytes]] = []
    if first >= last:
        return out
    with open(path, "rb") as f:
        f.seek(index.offsets[first])
        for number in range(first, last):
            header = _read_header(f)
            if header is None:
                break
            payload = f.read(header[4])
            out.append((index.kinds[number], index.tracks[number], index.arrivals[number], payload))
    return out


# --- writing --------------------------------------------------------------------------------


class _FileWriter:
    """One room's open recording file; used from the writer thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        base_us = 0
        end = 0
        if path.exists():
            # Continue after the last complete record; a torn tail is cut off.
            with open(path, "rb") as f:
                for _, _, arrival_us, _, _, offset, length in iter_records_untrusted(f):
                    base_us = arrival_us
                    end = offset + HEADER.size + length
        self.file = open(path, "r+b" if path.exists() else "wb")
        self.file.truncate(end)
        self.file.seek(end)
        self.size = end
        self.base_us = base_us
        """arrival_us of the last record already in the file: where this segment begins."""
        self.tracks: dict[str, int] = {}
        self.dirty = False
        self.last_fsync = time.monotonic()

    def write(self, chunks: list[bytes]) -> None:
        data = b"".join(chunks)
        self.file.write(data)
        self.size += len(data)
        self.dirty = self.dirty or bool(data)

    def flush(self, fsync: bool) -> None:
        """Hand what was written to the kernel (a SIGKILL no longer loses
        it); with ``fsync``, to the disk too (a power cut does not)."""
        self.file.flush()
        if fsync and self.dirty:
            os.fsync(self.file.fileno())
            self.dirty = False
            self.last_fsync = time.monotonic()

    def close(self) -> None:
        self.flush(True)
        self.file.close()


class _Tap:
    """A TrackSink for every track of one recorded broadcast: it only
    appends (kind, track, trio time, group, payload) to a list."""

    def __init__(self, recording: "_RoomRecording") -> None:
        self.recording = recording

    def group_started(self, track: Track, group: Group) -> None:
        self.recording.pending.append((GROUP, track.name, trio.current_time(), group.sequence, b""))

    def frame(self, track: Track, group: Group, payload: bytes) -> None:
        recording = self.recording
        recording.pending.append((FRAME, track.name, trio.current_time(), group.sequence, payload))
        recording.pending_bytes += len(payload)

    def group_ended(self, track: Track, group: Group) -> None:
        pass

    def track_ended(self, track: Track) -> None:
        pass


@dataclass(eq=False)
class _RoomRecording:
    broadcast: Broadcast
    path: Path
    started_s: float
    """trio time the segment began."""
    pending: list[tuple[int, str, float, int, bytes]] = field(default_factory=list)
    pending_bytes: int = 0
    writer: _FileWriter | None = None
    ended: bool = False
    ended_s: float = 0.0
    stopped: bool = False
    tapped: list[Track] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tap = _Tap(self)


class Recorder:
    """Records every public broadcast of ``relay`` (see the module docstring).

    Start it after the plugins (``nursery.start(recorder.run)``) so that a
    room's broadcast, held private while the rooms plugin decides, is
    recorded from the moment it is public.
    """

    def __init__(self, relay: Relay, data_dir: Path, settings: RecordingSettings, *,
                 skip: Callable[[str], bool] = lambda name: False) -> None:
        self.relay = relay
        self.directory = data_dir / settings.directory
        self.settings = settings
        self._skip = skip
        self.recordings: dict[Broadcast, _RoomRecording] = {}
        self.bytes_written = 0
        self.records_written = 0
        self.rooms_stopped = 0
        self._wake = trio.Event()
        self.flushed = trio.Event()
        """Set (and replaced) after every flush: tests wait on it."""

    def path(self, room_id: str) -> Path | None:
        return recording_path(self.directory, room_id)

    # --- relay listeners (synchronous) ---------------------------------------------------------

    def _on_broadcast(self, broadcast: Broadcast, active: bool) -> None:
        if not active:
            recording = self.recordings.get(broadcast)
            if recording is not None:
                recording.ended = True
                recording.ended_s = trio.current_time()
                self._wake.set()
            return
        if broadcast.private or broadcast in self.recordings or self._skip(broadcast.name):
            return
        path = self.path(broadcast.name)
        if path is None:
            return
        recording = _RoomRecording(broadcast, path, trio.current_time())
        self.recordings[broadcast] = recording
        for track in list(broadcast.tracks.values()):
            track.tap(recording.tap, from_cache=True)
            recording.tapped.append(track)
        log.info("recording_started", room=broadcast.name, file=str(path))

    def _on_track(self, track: Track) -> None:
        recording = self.recordings.get(track.broadcast)
        if recording is not None and not recording.stopped:
            track.tap(recording.tap, from_cache=False)
            recording.tapped.append(track)

    # --- the writer --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen to the relay and write what arrives every flush interval;
        delete recordings past their retention. Never returns unless cancelled;
        on cancellation it writes what is pending and closes the files."""
        stop_listening = self.relay.listen(self._on_broadcast)
        self.relay.track_listeners.append(self._on_track)
        for broadcast in list(self.relay.broadcasts.values()):
            self._on_broadcast(broadcast, True)
        task_status.started()
        next_retention = 0.0
        try:
            while True:
                with trio.move_on_after(self.settings.flush_interval_s):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self.flush()
                if trio.current_time() >= next_retention:
                    next_retention = trio.current_time() + self.settings.retention_check_interval_s
                    await trio.to_thread.run_sync(self.delete_expired, time.time())
        finally:
            stop_listening()
            if self._on_track in self.relay.track_listeners:
                self.relay.track_listeners.remove(self._on_track)
            with trio.CancelScope(shield=True):
                for recording in self.recordings.values():
                    if not recording.ended:
                        recording.ended, recording.ended_s = True, trio.current_time()
                self._write_batches(self._take_batches(), time.monotonic())

    async def flush(self) -> None:
        """Write what every recording has pending (in a worker thread)."""
        batches = self._take_batches()
        if batches:
            await trio.to_thread.run_sync(self._write_batches, batches, time.monotonic())
        for recording, _, ended in batches:
            if recording.stopped:
                self.rooms_stopped += 1
                for track in recording.tapped:
                    track.untap(recording.tap)
            # Only once its END is written: a broadcast that ended while this
            # batch was being written still has frames pending.
            if ended or recording.stopped:
                self.recordings.pop(recording.broadcast, None)
        self.flushed.set()
        self.flushed = trio.Event()

    def _take_batches(self) -> list[tuple[_RoomRecording, list, bool]]:
        batches = []
        for recording in list(self.recordings.values()):
            if recording.stopped:
                continue
            pending, recording.pending = recording.pending, []
            recording.pending_bytes = 0
            batches.append((recording, pending, recording.ended))
        return batches

    def _write_batches(self, batches: list[tuple[_RoomRecording, list, bool]], now: float) -> None:
        """Blocking: encode and append each room's batch, fsync when due."""
        settings = self.settings
        for recording, pending, ended in batches:
            try:
                writer = recording.writer
                if writer is None:
                    writer = recording.writer = _FileWriter(recording.path)
                    writer.write([_record(SEGMENT, 0, writer.base_us, 0, msgpack.packb(
                        {"room": recording.broadcast.name, "wall_s": time.time()}))])
                chunks = []
                for kind, name, at_s, group, payload in pending:
                    arrival_us = writer.base_us + max(0, round((at_s - recording.started_s) * 1e6))
                    number = writer.tracks.get(name)
                    if number is None:
                        if len(writer.tracks) >= _MAX_TRACKS:
                            continue
                        number = writer.tracks[name] = len(writer.tracks)
                        chunks.append(_record(TRACK, number, arrival_us, 0, name.encode("utf-8")))
                    chunks.append(_record(kind, number, arrival_us, group, payload))
                if writer.size + sum(map(len, chunks)) > settings.max_bytes_per_room:
                    log.warning("recording_full", room=recording.broadcast.name,
                                max_bytes=settings.max_bytes_per_room)
                    self._stop(recording)
                    continue
                if ended:
                    last_s = max(recording.ended_s, pending[-1][2] if pending else 0.0)
                    chunks.append(_record(END, 0, writer.base_us + max(
                        0, round((last_s - recording.started_s) * 1e6)), 0, b""))
                writer.write(chunks)
                self.records_written += len(chunks)
                self.bytes_written += sum(map(len, chunks))
                if ended:
                    writer.close()
                    recording.writer = None
                else:
                    writer.flush(now - writer.last_fsync >= settings.fsync_interval_s)
            except OSError as exc:
                log.error("recording_failed", room=recording.broadcast.name, error=str(exc))
                self._stop(recording)

    def _stop(self, recording: _RoomRecording) -> None:
        """(Writer thread) give up on this recording; ``flush`` removes its
        taps back on the event loop."""
        recording.stopped = True
        if recording.writer is not None:
            try:
                recording.writer.close()
            except OSError:
                pass
            recording.writer = None

    def delete_expired(self, now_s: float) -> list[Path]:
        """Delete recordings last written more than ``retention_days`` ago (blocking)."""
        if self.settings.retention_days <= 0 or not self.directory.is_dir():
            return []
        limit = now_s - self.settings.retention_days * 86400
        live = {r.path for r in self.recordings.values()}
        deleted = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            try:
                if path not in live and path.stat().st_mtime < limit:
                    path.unlink()
                    deleted.append(path)
            except OSError:
                continue
        if deleted:
            log.info("recordings_expired", count=len(deleted))
        return deleted


# --- replay ---------------------------------------------------------------------------------


def replay_name_untrusted(name: str) -> tuple[str, int]:
    """(room id, start µs) of a broadcast name: ``ROOM`` or ``ROOM/replay@START_US``."""
    if REPLAY_MARK not in name:
        return name, 0
    room_id, _, start = name.partition(REPLAY_MARK)
    if not start.isdigit() or len(start) > 16:
        raise ValueError(f"replay start {start!r} is not a whole number of microseconds")
    return room_id, int(start)


def _with_replay_field(payload: bytes, index: RecordingIndex) -> bytes:
    try:
        root = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(root, dict):
        return payload
    root["replay"] = {"duration_us": index.duration_us, "groups": len(index.seek_points)}
    if index.first_media_us is not None:
        root["replay"]["first_media_us"] = index.first_media_us
    return json.dumps(root, separators=(",", ":")).encode("utf-8")


class ReplayService:
    """Serves ended rooms' recordings as broadcasts, one playback per viewer
    session: the MoqServer asks ``broadcast_for(connection, name)`` when a
    name is not live."""

    def __init__(self, recorder: Recorder, limits: RelayLimits, settings: RecordingSettings, *,
                 may_replay: Callable[[str], bool] = lambda room_id: True) -> None:
        self.recorder = recorder
        self.settings = settings
        self._relay = Relay(limits)
        """Owns the replay broadcasts' limits; they are never listed in it."""
        self.may_replay = may_replay
        self._playing: dict[tuple[int, str], Broadcast] = {}
        self._indexes: dict[Path, RecordingIndex] = {}
        self._nursery: trio.Nursery | None = None
        self.replays_started = 0
        self._readers = trio.CapacityLimiter(settings.read_threads)
        self.available: dict[str, float] = {}
        """Rooms with a recording, and when it was last written (Unix s)."""
        self.withheld: set[str] = set()
        """Rooms whose recording is never replayed (an operator's emergency
        shutdown): not announced, not played; their owner and operators can
        still download it."""
        self.listeners: list[Callable[[str, bool], None]] = []
        """Called with (name, True) when a replay is announced: moq-lite
        sessions announce it, so players that wait for an announcement
        (@moq/watch by default) start it like a live broadcast. Only ended
        rooms are announced (by the recordings plugin); any other recorded
        name is replayed when subscribed to, unannounced."""

    def announce(self, room_id: str, written_s: float | None = None) -> None:
        """The room ``room_id`` has ended: announce its replay, if it has a
        recording and may be replayed now."""
        path = self.recorder.path(room_id)
        if (path is None or not path.exists() or not self._may_replay(room_id)
                or self.settings.max_announced == 0):
            return
        self.available[room_id] = time.time() if written_s is None else written_s
        while len(self.available) > self.settings.max_announced:
            del self.available[min(self.available, key=self.available.__getitem__)]
        for listener in list(self.listeners):
            listener(room_id, True)

    def announced_names(self) -> list[str]:
        """The replays to announce to a new session: the newest recordings
        that may be replayed now, at most ``max_announced``."""
        return [name for name in self.available if self._may_replay(name)]

    def withhold(self, room_id: str) -> None:
        """Never replay ``room_id`` (see ``withheld``); its announcement is taken back."""
        self.withheld.add(room_id)
        if self.available.pop(room_id, None) is not None:
            for listener in list(self.listeners):
                listener(room_id, False)

    def _may_replay(self, room_id: str) -> bool:
        return room_id not in self.withheld and self.may_replay(room_id)

    def recorded_names(self) -> dict[str, float]:
        """Every recording in the directory and when it was last written
        (Unix s), newest last, at most ``max_announced`` (blocking)."""
        found = {}
        if self.recorder.directory.is_dir():
            for path in self.recorder.directory.glob(f"*{SUFFIX}"):
                try:
                    found[path.name[: -len(SUFFIX)]] = path.stat().st_mtime
                except OSError:
                    continue
        newest = sorted(found, key=found.__getitem__)[-self.settings.max_announced:] \
            if self.settings.max_announced else []
        return {name: found[name] for name in newest}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery the playbacks run in. Never returns unless cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def has_replay(self, room_id: str) -> bool:
        """Whether ``room_id`` has a recording and may be replayed now (for
        Buy Now from the replay; blocking only for a stat)."""
        path = self.recorder.path(room_id)
        return path is not None and path.exists() and self._may_replay(room_id)

    @property
    def indexes_cached(self) -> int:
        """Recording indexes held in memory (at most ``index_cache_entries``)."""
        return len(self._indexes)

    async def index(self, room_id: str) -> RecordingIndex | None:
        """The index of ``room_id``'s recording (cached while the file is unchanged)."""
        path = self.recorder.path(room_id)
        if path is None:
            return None
        try:
            stat = await trio.to_thread.run_sync(path.stat)
        except OSError:
            return None
        cached = self._indexes.get(path)
        if cached is not None and cached.size == stat.st_size and cached.mtime_ns == stat.st_mtime_ns:
            return cached
        index = await trio.to_thread.run_sync(read_index, path, limiter=self._readers)
        if len(self._indexes) >= self.settings.index_cache_entries:
            self._indexes.clear()
        self._indexes[path] = index
        return index

    def broadcast_for(self, connection: Any, name: str) -> Broadcast | None:
        """The replay broadcast ``name`` for this viewer session, started on
        its first subscription; None when there is nothing to replay. The
        file's index must be cached (``prepare``)."""
        key = (id(connection), name)
        broadcast = self._playing.get(key)
        if broadcast is not None:
            return None if broadcast.ended.is_set() else broadcast
        try:
            room_id, start_us = replay_name_untrusted(name)
        except ValueError:
            return None
        path = self.recorder.path(room_id)
        index = self._indexes.get(path) if path is not None else None
        if (index is None or not index.offsets or self._nursery is None
                or len(self._playing) >= self.settings.max_replays or not self._may_replay(room_id)):
            return None
        broadcast = Broadcast(self._relay, name, owner="replay")
        broadcast.replay_of = room_id  # type: ignore[attr-defined]
        for track_name in index.track_names:
            broadcast.track(track_name)
        self._playing[key] = broadcast
        self.replays_started += 1
        self._nursery.start_soon(self._play, connection, key, broadcast, index, start_us)
        return broadcast

    async def prepare(self, name: str) -> bool:
        """Index the recording a subscription to ``name`` would replay; False
        when there is none (or the room may not be replayed)."""
        try:
            room_id, _ = replay_name_untrusted(name)
        except ValueError:
            return False
        if not self._may_replay(room_id):
            return False
        index = await self.index(room_id)
        return index is not None and bool(index.offsets)

    async def _play(self, connection: Any, key: tuple[int, str], broadcast: Broadcast,
                    index: RecordingIndex, start_us: int) -> None:
        try:
            async with trio.open_nursery() as nursery:
                async def stop_when_closed() -> None:
                    await connection.session.wait_closed()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_when_closed)
                await self._emit(broadcast, index, start_us)
                nursery.cancel_scope.cancel()
        finally:
            broadcast.end()
            self._playing.pop(key, None)

    async def _emit(self, broadcast: Broadcast, index: RecordingIndex, start_us: int) -> None:
        first = index.seek(start_us)
        path = index.path
        # Before the seek point: the newest group of every track that is not
        # audio or video (catalog, chat, pins, counts), sent at once, so a
        # viewer who seeks knows the catalog and what is pinned.
        if first > 0:
            last_group: dict[str, int] = {}
            for number in range(first):
                if index.kinds[number] == GROUP and index.tracks[number] not in index.media:
                    last_group[index.tracks[number]] = number
            if last_group:
                start = min(last_group.values())
                records = await trio.to_thread.run_sync(read_records, path, index, start, first,
                                                        limiter=self._readers)
                for number, (kind, track_name, _, payload) in enumerate(records, start=start):
                    if track_name not in last_group or number < last_group[track_name]:
                        continue
                    self._apply(broadcast, index, number, kind, track_name, payload)
        t0 = index.arrivals[first]
        started = trio.current_time()
        ahead_us = max(1, int(self.settings.replay_read_ahead_s * 1e6))
        number = first
        total = len(index.offsets)
        while number < total:
            horizon = index.arrivals[number] + ahead_us
            last = bisect.bisect_right(index.arrivals, horizon, lo=number)
            last = max(last, number + 1)
            records = await trio.to_thread.run_sync(read_records, path, index, number, last,
                                                    limiter=self._readers)
            if not records:
                return
            for kind, track_name, arrival_us, payload in records:
                await trio.sleep_until(started + (arrival_us - t0) / 1e6)
                self._apply(broadcast, index, number, kind, track_name, payload)
                number += 1

    @staticmethod
    def _apply(broadcast: Broadcast, index: RecordingIndex, number: int, kind: int, track_name: str,
               payload: bytes) -> None:
        track = broadcast.tracks.get(track_name)
        if track is None:
            return
        if kind == GROUP:
            track.begin_group()
        elif kind == FRAME:
            if track_name == CATALOG_TRACK:
                payload = _with_replay_field(payload, index)
            elif track_name in index.media:
                offset_us = index.media_offset_us(number)
                if offset_us and payload:
                    # A later segment: its restarted timestamps continue the previous one's.
                    try:
                        timestamp_us, body = decode_frame_untrusted(payload)
                    except ProtocolViolation:  # sent as recorded, as it was live
                        pass
                    else:
                        payload = encode_frame(max(0, timestamp_us + offset_us), body)
            if track.current is None or track.current.ended:
                track.begin_group()
            track.append(payload)


# --- export ---------------------------------------------------------------------------------


class _FileSlice:
    """Where a frame's codec payload lies in the recording file: the MP4
    writer reads it when it writes the frame's fragment."""

    __slots__ = ("length", "offset")

    def __init__(self, offset: int, length: int) -> None:
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length


def export_mp4(path: Path, out: BinaryIO) -> dict[str, Any]:
    """Write the recording at ``path`` as a fragmented MP4 (H.264 + AAC) to
    ``out`` (blocking), fragment by fragment: what is held in memory is each
    frame's time and place in the file, never the media. Segments follow one
    another on one timeline (``RecordingIndex.segment_offsets_us``). Returns
    what was written: duration, fragments, samples. Raises ValueError when
    the recording has no H.264 video or AAC audio that an MP4 can hold."""
    from shopcast.codecs import FragmentedMp4Writer

    index = read_index(path)
    if not index.catalogs:
        raise ValueError("the recording has no catalog, so no codec configuration")
    try:
        catalog = decode_catalog_untrusted(index.catalogs[-1][1], max_size_bytes=len(index.catalogs[-1][1]))
    except ProtocolViolation as exc:
        raise ValueError(f"the recording's catalog cannot be read: {exc}") from None
    video = next((v for v in catalog.video if v.codec.startswith("avc1") and v.description), None)
    audio = next((a for a in catalog.audio if a.codec.startswith("mp4a") and a.description), None)
    if video is None and audio is None:
        raise ValueError("the recording has neither H.264 video nor AAC audio")
    frames: dict[str, list[tuple[int, bool, _FileSlice]]] = {}
    wanted = {r.track for r in (video, audio) if r is not None}
    # One sample entry per track: a segment whose encoder had another
    # configuration (a new resolution after a reconnect) cannot be decoded
    # with it, so that track's frames of that segment are left out.
    configs = _segment_configs(index, {r.track: r.description for r in (video, audio) if r is not None})
    left_out: set[tuple[str, int]] = set()
    new_group: dict[str, bool] = {}
    with open(path, "rb") as f:
        # The index has checked every record: only each frame's header and
        # timestamp are read here, the media when its fragment is written.
        for number, (kind, name) in enumerate(zip(index.kinds, index.tracks)):
            if name not in wanted:
                continue
            segment = max(0, bisect.bisect_right(index.segment_starts, number) - 1)
            if not configs.get((name, segment), True):
                left_out.add((name, segment))
                continue
            if kind == GROUP:
                new_group[name] = True
                continue
            if kind != FRAME:
                continue
            f.seek(index.offsets[number])
            head = f.read(HEADER.size + 8)
            length = HEADER.unpack_from(head)[5]
            try:
                timestamp_us, rest = decode_frame_untrusted(head[HEADER.size:HEADER.size + length])
            except ProtocolViolation:  # a frame we cannot read is left out
                continue
            stamp = min(length, 8) - len(rest)
            if length - stamp <= 0:
                continue
            where = _FileSlice(index.offsets[number] + HEADER.size + stamp, length - stamp)
            frames.setdefault(name, []).append(
                (timestamp_us + index.media_offset_us(number), new_group.pop(name, False), where))

        def read(where: _FileSlice) -> bytes:
            f.seek(where.offset)
            return f.read(where.length)

        writer = FragmentedMp4Writer(
            video=None if video is None else (video.description, video.coded_width_px or 0,
                                              video.coded_height_px or 0),
            audio=None if audio is None else (audio.description, audio.sample_rate_hz, audio.channel_count))
        summary = writer.write(out, frames.get(video.track, []) if video else [],
                               frames.get(audio.track, []) if audio else [], read=read)
    summary["segments"] = max(1, len(index.segment_starts))
    summary["segments_left_out"] = len({segment for _, segment in left_out})
    return summary


def _segment_configs(index: RecordingIndex, chosen: dict[str, bytes | None]) -> dict[tuple[str, int], bool]:
    """(track, segment) -> whether the segment's catalog describes the track
    as ``chosen`` does; a segment without a catalog keeps the previous one's."""
    described: dict[str, bytes | None] = {}
    by_segment: dict[int, dict[str, bytes | None]] = {}
    catalogs = iter(index.catalogs)
    pending = next(catalogs, None)
    for segment in range(max(1, len(index.segment_starts))):
        end = index.segment_starts[segment + 1] if segment + 1 < len(index.segment_starts) else len(index.offsets)
        while pending is not None and pending[0] < end:
            try:
                catalog = decode_catalog_untrusted(pending[1], max_size_bytes=len(pending[1]))
            except ProtocolViolation:  # an unreadable catalog changes nothing
                pass
            else:
                described = {r.track: r.description for r in (*catalog.video, *catalog.audio)}
            pending = next(catalogs, None)
        by_segment[segment] = dict(described)
    return {(track, segment): by_segment[segment].get(track) == description
            for segment in by_segment for track, description in chosen.items()}

"""The recorder and the file format without sockets: a clip played into a
relay (on trio's autojumping clock) is recorded track by track, a torn tail
is cut off, and the export is an MP4 that ffprobe and ffmpeg accept."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import trio
import trio.testing

from shopcast.server._hang_mux import HangMuxer, load_flv_clip, play_clip
from shopcast.server._recording import (
    FRAME,
    Recorder,
    RecordingSettings,
    export_mp4,
    read_index,
    read_records,
)
from shopcast.server._relay import Relay
from shopcast.server.moq import decode_frame_untrusted

DEMO = Path(__file__).parents[2] / "server" / "media" / "demo.flv"


async def record_clip(data_dir: Path, loops: float, name: str = "room1") -> tuple[Path, dict[str, list[bytes]]]:
    """Play the demo clip ``loops`` times as broadcast ``name`` while a
    Recorder records it; returns the file and every frame written per track."""
    relay = Relay()
    recorder = Recorder(relay, data_dir, RecordingSettings())
    written: dict[str, list[bytes]] = {}

    class Capture:
        def group_started(self, track, group): pass
        def frame(self, track, group, payload): written.setdefault(track.name, []).append(payload)
        def group_ended(self, track, group): pass
        def track_ended(self, track): pass

    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        broadcast = relay.publish(name)
        capture = Capture()
        relay.track_listeners.append(lambda track: track.tap(capture, from_cache=False))
        for track in broadcast.tracks.values():
            track.tap(capture, from_cache=False)
        await play_clip(HangMuxer(broadcast), load_flv_clip(DEMO.read_bytes()), loops=loops)
        broadcast.end()
        while recorder.recordings:
            await recorder.flushed.wait()
        nursery.cancel_scope.cancel()
    return recorder.path(name), written


async def test_every_frame_is_recorded_in_order_with_its_groups(tmp_path, autojump_clock):
    path, written = await record_clip(tmp_path, loops=2)
    index = read_index(path)
    records = read_records(path, index, 0, len(index.offsets))
    recorded: dict[str, list[bytes]] = {}
    for kind, track, _, payload in records:
        if kind == FRAME:
            recorded.setdefault(track, []).append(payload)
    assert set(recorded) == {"catalog.json", "video", "audio"}
    for track in ("video", "audio", "catalog.json"):
        assert recorded[track] == written[track], (track, len(recorded[track]), len(written[track]))
    # A group record before every video keyframe; arrival times never go back.
    assert len(index.seek_points) >= 2
    assert index.arrivals == sorted(index.arrivals)
    assert 7.5e6 < index.duration_us < 8.5e6  # two loops of a 4.02 s clip


async def test_a_torn_tail_is_ignored_and_cut_when_recording_resumes(tmp_path, autojump_clock):
    path, _ = await record_clip(tmp_path, loops=1)
    whole = read_index(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:  # a crash in the middle of the last record
        f.truncate(size - 5)
    torn = read_index(path)
    assert len(torn.offsets) == len(whole.offsets) - 1
    # Corrupt a byte inside an early frame: reading stops before it.
    data = bytearray(path.read_bytes())
    middle = whole.offsets[len(whole.offsets) // 2]
    data[middle + 40] ^= 0xFF
    path.write_bytes(bytes(data))
    assert len(read_index(path).offsets) == len(whole.offsets) // 2
    # Recording the room again cuts the damaged tail and goes on after it.
    path2, _ = await record_clip(tmp_path, loops=1)
    assert path2 == path
    again = read_index(path)
    assert again.offsets[: len(whole.offsets) // 2] == whole.offsets[: len(whole.offsets) // 2]
    assert len(again.offsets) > len(whole.offsets) // 2 + 100
    assert again.arrivals == sorted(again.arrivals)


async def test_thirty_seconds_export_to_an_mp4_ffprobe_and_ffmpeg_accept(tmp_path, ffprobe, ffmpeg, autojump_clock):
    path, written = await record_clip(tmp_path, loops=7.5)
    video_ts = [decode_frame_untrusted(f)[0] for f in written["video"]]
    recorded_s = (max(video_ts) - min(video_ts)) / 1e6
    assert recorded_s > 29
    out = tmp_path / "room1.mp4"
    with open(out, "wb") as f:
        summary = export_mp4(path, f)
    assert summary["video_samples"] == len(written["video"])
    assert summary["audio_samples"] == len(written["audio"])
    probe = json.loads(subprocess.run(
        [ffprobe, "-v", "error", "-show_streams", "-show_format", "-of", "json", str(out)],
        check=True, capture_output=True, text=True).stdout)
    codecs = sorted(s["codec_name"] for s in probe["streams"])
    assert codecs == ["aac", "h264"]
    gop_s = _gop_s(video_ts, written)
    assert abs(float(probe["format"]["duration"]) - recorded_s) <= gop_s
    decode = subprocess.run([ffmpeg, "-v", "error", "-i", str(out), "-f", "null", "-"],
                            capture_output=True, text=True)
    assert decode.returncode == 0 and decode.stderr == "", decode.stderr
    frames = subprocess.run([ffprobe, "-v", "error", "-select_streams", "v", "-count_frames",
                             "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", str(out)],
                            check=True, capture_output=True, text=True).stdout.strip()
    assert int(frames) == len(written["video"])


def _gop_s(video_ts: list[int], written) -> float:
    """The longest keyframe interval of the clip (s)."""
    keys = [t for t, f in zip(video_ts, written["video"])
            if _is_idr(decode_frame_untrusted(f)[1])]
    return max(b - a for a, b in zip(keys, keys[1:])) / 1e6


def _is_idr(payload) -> bool:
    data = bytes(payload)
    position = 0
    while position + 4 <= len(data):
        size = int.from_bytes(data[position:position + 4], "big")
        if data[position + 4] & 0x1F == 5:
            return True
        position += 4 + size
    return False


async def test_a_rehearsal_is_recorded_only_once_public_and_the_demo_never(tmp_path, autojump_clock):
    relay = Relay()
    recorder = Recorder(relay, tmp_path, RecordingSettings(), skip=lambda name: name == "demo")
    clip = load_flv_clip(DEMO.read_bytes())
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        demo = relay.publish("demo")
        rehearsal = relay.publish("room2", private=True)
        await play_clip(HangMuxer(rehearsal), clip, loops=1)
        await play_clip(HangMuxer(demo), clip, loops=0.5)
        assert recorder.recordings == {}
        video = rehearsal.tracks["video"]
        cached = list(video.current.frames)
        relay.make_public(rehearsal)  # the room goes live
        assert video.subscriber_count == 0  # a tap is not a viewer
        await play_clip(HangMuxer(rehearsal), clip, loops=1, start_ms=clip.duration_ms)
        rehearsal.end()
        demo.end()
        while recorder.recordings:
            await recorder.flushed.wait()
        nursery.cancel_scope.cancel()
    assert recorder.path("demo").exists() is False
    path = recorder.path("room2")
    index = read_index(path)
    frames = [p for k, t, _, p in read_records(path, index, 0, len(index.offsets)) if k == FRAME and t == "video"]
    # From the group cached when it went public (its keyframe first), then live.
    assert frames[: len(cached)] == cached
    assert len(frames) == len(cached) + 120


async def test_a_room_past_its_size_limit_stops_recording_and_the_live_goes_on(tmp_path, autojump_clock):
    relay = Relay()
    limit = 200_000
    recorder = Recorder(relay, tmp_path, RecordingSettings(max_bytes_per_room=limit))
    seen = []

    class Viewer:
        def group_started(self, track, group): pass
        def frame(self, track, group, payload): seen.append(payload)
        def group_ended(self, track, group): pass
        def track_ended(self, track): pass

    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        broadcast = relay.publish("room3")
        muxer = HangMuxer(broadcast)
        clip = load_flv_clip(DEMO.read_bytes())
        await play_clip(muxer, clip, loops=0.2)
        broadcast.tracks["video"].subscribe(Viewer())
        await play_clip(muxer, clip, loops=2, start_ms=clip.duration_ms)
        while recorder.recordings:  # the writer finds the file full on one of its flushes
            await recorder.flushed.wait()
        assert recorder.rooms_stopped == 1
        assert broadcast.tracks["video"].subscriber_count == 1  # the viewer, still served
        broadcast.end()
        nursery.cancel_scope.cancel()
    assert len(seen) > 200
    path = recorder.path("room3")
    assert 0 < path.stat().st_size <= limit
    assert read_index(path).frame_count > 10  # what fit is readable


def test_recordings_past_their_retention_are_deleted(tmp_path):
    import os
    import time

    recorder = Recorder(Relay(), tmp_path, RecordingSettings(retention_days=30))
    recorder.directory.mkdir()
    old, new = recorder.path("old1"), recorder.path("new1")
    for path in (old, new):
        path.write_bytes(b"")
    now = time.time()
    os.utime(old, (now - 31 * 86400, now - 31 * 86400))
    os.utime(new, (now - 29 * 86400, now - 29 * 86400))
    assert recorder.delete_expired(now) == [old]
    assert not old.exists() and new.exists()
    keep = Recorder(Relay(), tmp_path, RecordingSettings(retention_days=0))
    assert keep.delete_expired(now + 1e9) == [] and new.exists()


async def test_the_replay_index_cache_is_bounded_by_config(tmp_path, autojump_clock):
    import pytest

    from shopcast.server._config import ConfigError, load_config
    from shopcast.server._recording import ReplayService
    from shopcast.server._relay import RelayLimits

    config = load_config(environ={}, overrides={"recording": {"replay_index_cache_entries": 2}})
    settings = RecordingSettings.from_config(config.recording)
    assert settings.index_cache_entries == 2
    with pytest.raises(ConfigError, match="replay_index_cache_entries"):
        load_config(environ={}, overrides={"recording": {"replay_index_cache_entries": 0}})
    for name in ("room1", "room2", "room3"):
        await record_clip(tmp_path, loops=0.1, name=name)
    replays = ReplayService(Recorder(Relay(), tmp_path, settings), RelayLimits(), settings)
    counts = []
    for name in ("room1", "room2", "room3", "room3"):
        assert await replays.index(name) is not None
        counts.append(replays.indexes_cached)
    assert counts == [1, 2, 1, 1]  # full at two: emptied before the third is kept

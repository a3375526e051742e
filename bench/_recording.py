"""Recording: what the recorder costs the media path, how fast it writes,
and how fast a recording exports to MP4.

- ``tap``: frames per second through a relay track with one viewer sink,
  against the same track with the recorder's tap added (the only per-frame
  work the recorder does on the media path: a list append).
- ``write``: bytes per second the writer thread appends (records encoded,
  CRC32, written), against plain ``file.write`` of the same payloads.
- ``export``: media seconds exported to fragmented MP4 per second.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TextIO

import trio

from shopcast.bench._record import Record
from shopcast.server._recording import FRAME, Recorder, RecordingSettings, _RoomRecording, export_mp4
from shopcast.server._relay import Relay

__all__ = ["run"]

VIDEO_BYTES = 12_000
"""A 2.9 Mbit/s, 30 fps video frame."""


class _Sink:
    __slots__ = ("frames",)

    def __init__(self) -> None:
        self.frames = 0

    def group_started(self, track, group) -> None:
        pass

    def frame(self, track, group, payload) -> None:
        self.frames += 1

    def group_ended(self, track, group) -> None:
        pass

    def track_ended(self, track) -> None:
        pass


def _frames_per_s(frames: int, tapped: bool) -> float:
    async def measure() -> float:
        relay = Relay()
        broadcast = relay.publish("bench")
        track = broadcast.track("video")
        track.subscribe(_Sink())
        if tapped:
            recording = _RoomRecording(broadcast, Path(os.devnull), 0.0)
            track.tap(recording.tap, from_cache=False)
        payload = bytes(VIDEO_BYTES)
        started = time.perf_counter()
        for i in range(frames):
            track.write_frame(payload, keyframe=i % 30 == 0)
            if tapped and i % 300 == 299:
                recording.pending.clear()  # what the writer takes each flush
        return frames / (time.perf_counter() - started)

    return trio.run(measure)


def _write_bytes_per_s(frames: int, directory: Path, settings: RecordingSettings) -> tuple[float, float]:
    relay = Relay()
    recorder = Recorder(relay, directory, settings)
    broadcast = relay.publish("bench")
    recording = _RoomRecording(broadcast, directory / "bench.rec", 0.0)
    payload = bytes(VIDEO_BYTES)
    batches = [[(FRAME, "video", i / 30, i // 30, payload) for i in range(j, j + 6)]
               for j in range(0, frames, 6)]
    started = time.perf_counter()
    for batch in batches:
        recorder._write_batches([(recording, batch, False)], time.monotonic())
    recording.writer.close()
    recorded = (time.perf_counter() - started)
    started = time.perf_counter()
    with open(directory / "plain.bin", "wb") as f:
        for batch in batches:
            f.write(b"".join(p for *_, p in batch))
            f.flush()
        os.fsync(f.fileno())
    plain = time.perf_counter() - started
    total = frames * VIDEO_BYTES
    return total / recorded, total / plain


def _export_media_s_per_s(directory: Path, loops: int, settings: RecordingSettings) -> float:
    from shopcast.server._hang_mux import HangMuxer, load_flv_clip, play_clip

    demo = Path(__file__).parents[1] / "server" / "media" / "demo.flv"
    clip = load_flv_clip(demo.read_bytes())

    async def record() -> Path:
        relay = Relay()
        recorder = Recorder(relay, directory, settings)
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            broadcast = relay.publish("export")
            await play_clip(HangMuxer(broadcast), clip, loops=loops)
            broadcast.end()
            while recorder.recordings:
                await recorder.flushed.wait()
            nursery.cancel_scope.cancel()
        return recorder.path("export")

    import trio.testing

    path = trio.run(record, clock=trio.testing.MockClock(autojump_threshold=0))
    started = time.perf_counter()
    with open(directory / "export.mp4", "wb") as out:  # to a file, as shopcast export writes
        summary = export_mp4(path, out)
    return summary["duration_s"] / (time.perf_counter() - started)


def run(quick: bool, progress: TextIO, config: str | None = None) -> list[Record]:
    """The recording suite's records, under the ``[recording]`` settings of ``config``."""
    from shopcast.server._config import load_config

    settings = RecordingSettings.from_config(load_config(config, environ={}).recording)
    frames = 20_000 if quick else 300_000
    print(f"recording: tap, {frames} frames", file=progress)
    plain = _frames_per_s(frames, tapped=False)
    tapped = _frames_per_s(frames, tapped=True)
    records = [
        Record("recording", "tap/one-viewer", plain, "frames/s"),
        Record("recording", "tap/one-viewer+recorder", tapped, "frames/s",
               against="tap/one-viewer", ratio=tapped / plain),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        print("recording: write", file=progress)
        written, raw = _write_bytes_per_s(3_000 if quick else 30_000, directory, settings)
        records += [
            Record("recording", "write/plain-file", raw / 1e6, "MB/s"),
            Record("recording", "write/recorder", written / 1e6, "MB/s", against="write/plain-file",
                   ratio=written / raw),
        ]
        print("recording: export", file=progress)
        records.append(Record("recording", "export/fmp4", _export_media_s_per_s(directory, 2 if quick else 30, settings),
                              "media s/s"))
    return records

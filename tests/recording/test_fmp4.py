"""The fragmented MP4 writer: decode times rebuilt from presentation times
(B-frames), boxes ffprobe and ffmpeg read, every frame kept."""

from __future__ import annotations

import json
import subprocess

import trio
from hypothesis import given
from hypothesis import strategies as st

from shopcast.codecs import FragmentedMp4Writer
from shopcast.server._hang_mux import HangMuxer, load_flv_clip, play_clip
from shopcast.server._recording import Recorder, RecordingSettings, export_mp4
from shopcast.server._relay import Relay


@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.integers(0, 10**9))
def test_decode_times_rise_and_offsets_give_back_the_presentation_times(reorder, base_us):
    # Presentation times of 30 fps frames, sent in decode order: each
    # "anchor" frame comes before the up to 3 B-frames shown ahead of it.
    pts, n = [], 0
    for b_frames in reorder:
        anchor = n + b_frames
        pts.append(anchor)
        pts.extend(range(n, anchor))
        n = anchor + 1
    frames = [(base_us + p * 33_333, i == 0, b"x") for i, p in enumerate(pts)]
    samples = FragmentedMp4Writer._video_samples(frames)
    dts = [s[0] for s in samples]
    assert dts == sorted(dts) and len(set(dts)) == len(dts)
    for (decode_us, offset_ticks, _, _, pts_us), (t, _, _) in zip(samples, frames):
        assert pts_us == t and offset_ticks >= 0
        assert abs(decode_us + offset_ticks * 1e6 / 90_000 - t) < 12  # one 90 kHz tick


async def test_b_frames_survive_record_and_export(tmp_path, ffmpeg, ffprobe, autojump_clock):
    source = tmp_path / "b.flv"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
                    "-f", "lavfi", "-i", "sine=frequency=440", "-t", "4", "-c:v", "libx264",
                    "-bf", "3", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "flv", str(source)],
                   check=True)
    relay = Relay()
    recorder = Recorder(relay, tmp_path, RecordingSettings())
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        broadcast = relay.publish("room4")
        await play_clip(HangMuxer(broadcast), load_flv_clip(source.read_bytes()), loops=1)
        broadcast.end()
        while recorder.recordings:
            await recorder.flushed.wait()
        nursery.cancel_scope.cancel()
    out = tmp_path / "b.mp4"
    with open(out, "wb") as f:
        summary = export_mp4(recorder.path("room4"), f)
    assert summary["video_samples"] == 120
    frames = json.loads(subprocess.run(
        [ffprobe, "-v", "error", "-select_streams", "v", "-show_frames", "-show_entries",
         "frame=pts_time,pict_type", "-of", "json", str(out)],
        check=True, capture_output=True, text=True).stdout)["frames"]
    assert "B" in {f["pict_type"] for f in frames}  # the clip really has B-frames
    times = [round(float(f["pts_time"]) * 30) for f in frames]
    assert times == list(range(times[0], times[0] + 120))  # every frame, in order, 1/30 s apart
    decoded = subprocess.run([ffmpeg, "-v", "error", "-i", str(out), "-f", "null", "-"],
                             capture_output=True, text=True)
    assert decoded.returncode == 0 and decoded.stderr == ""

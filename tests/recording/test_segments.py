"""A recording of more than one segment: the encoder reconnected while the
room stayed live, so a second broadcast began and its media timestamps
restarted at zero. The export and the replay put the segments one after
the other on one timeline."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import trio

from shopcast.client import connect
from shopcast.server._hang_mux import HangMuxer, load_flv_clip, play_clip
from shopcast.server._recording import SEGMENT, export_mp4, read_index
from shopcast.server.moq import decode_frame_untrusted

from .test_recorder import _gop_s, record_clip

DEMO = Path(__file__).parents[2] / "server" / "media" / "demo.flv"


def _stream_durations(ffprobe: str, path: Path) -> dict[str, float]:
    probe = json.loads(subprocess.run(
        [ffprobe, "-v", "error", "-show_streams", "-of", "json", str(path)],
        check=True, capture_output=True, text=True).stdout)
    return {s["codec_type"]: float(s["duration"]) for s in probe["streams"]}


def _packet_times(ffprobe: str, path: Path, stream: str) -> list[float]:
    packets = json.loads(subprocess.run(
        [ffprobe, "-v", "error", "-select_streams", stream, "-show_entries", "packet=dts_time",
         "-of", "json", str(path)], check=True, capture_output=True, text=True).stdout)["packets"]
    return [float(p["dts_time"]) for p in packets]


async def test_two_segments_export_to_one_timeline_ffmpeg_decodes_cleanly(tmp_path, ffprobe, ffmpeg,
                                                                          autojump_clock):
    _, first = await record_clip(tmp_path, loops=1)
    path, second = await record_clip(tmp_path, loops=2)  # the encoder came back
    index = read_index(path)
    assert index.kinds.count(SEGMENT) == 2
    video_ts = [decode_frame_untrusted(f)[0] for f in first["video"]]
    assert decode_frame_untrusted(second["video"][0])[0] <= video_ts[0]  # time restarted
    out = tmp_path / "two.mp4"
    with open(out, "wb") as f:
        summary = export_mp4(path, f)
    assert summary["video_samples"] == len(first["video"]) + len(second["video"])
    assert summary["audio_samples"] == len(first["audio"]) + len(second["audio"])
    durations = _stream_durations(ffprobe, out)
    gop_s = _gop_s(video_ts, first)
    assert abs(durations["video"] - durations["audio"]) <= gop_s, durations
    clip_s = load_flv_clip(DEMO.read_bytes()).duration_ms / 1000
    assert abs(durations["video"] - 3 * clip_s) <= gop_s, durations
    for stream in ("v", "a"):
        times = _packet_times(ffprobe, out, stream)
        assert times == sorted(times) and len(set(times)) == len(times), stream
    decoded = subprocess.run([ffmpeg, "-v", "error", "-i", str(out), "-f", "null", "-"],
                             capture_output=True, text=True)
    assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr


async def test_the_replay_of_two_segments_sends_rising_media_timestamps(server_factory):
    started = await server_factory({"demo": {"enabled": False}})
    app = started.app
    clip = load_flv_clip(DEMO.read_bytes())
    for _ in range(2):  # one broadcast, then the encoder's reconnect: timestamps from zero again
        broadcast = app.relay.publish("room1")
        await play_clip(HangMuxer(broadcast), clip, loops=1)
        broadcast.end()
        with trio.fail_after(10):
            while app.recorder.recordings:
                await app.recorder.flushed.wait()
    token = app.tokens.mint(subject="viewer-1", role="viewer", room="room1", ttl_s=600, now=time.time())
    async with connect(f"https://127.0.0.1:{started.port}/moq", token=token,
                       certificate_sha256=app.certificate.sha256_hex) as viewer:
        received: dict[str, list[int]] = {"video": [], "audio": []}
        upstreams = {t: await viewer.subscribe("room1", t) for t in received}

        async def drain(track: str) -> None:
            async for frame in upstreams[track].frames:
                received[track].append(decode_frame_untrusted(frame.payload)[0])

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for track in received:
                    nursery.start_soon(drain, track)
    for track, times in received.items():
        assert len(times) > 0 and times == sorted(times), track
        # Both segments, back to back: about two clips' worth of media time.
        assert 2 * clip.duration_ms * 1000 - 100_000 <= times[-1] - times[0] <= 2 * clip.duration_ms * 1000
    assert len(received["video"]) == 240


async def test_a_segment_whose_encoder_changed_configuration_is_left_out(tmp_path, ffprobe, ffmpeg,
                                                                         autojump_clock):
    from shopcast.server._recording import Recorder, RecordingSettings
    from shopcast.server._relay import Relay

    other = tmp_path / "other.flv"  # another resolution and audio rate than the demo clip
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=22050", "-t", "3",
                    "-c:v", "libx264", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "flv",
                    str(other)], check=True)
    relay = Relay()
    recorder = Recorder(relay, tmp_path, RecordingSettings())
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        for source in (other, DEMO):
            broadcast = relay.publish("room6")
            await play_clip(HangMuxer(broadcast), load_flv_clip(source.read_bytes()), loops=1)
            broadcast.end()
            while recorder.recordings:
                await recorder.flushed.wait()
        nursery.cancel_scope.cancel()
    out = tmp_path / "changed.mp4"
    with open(out, "wb") as f:
        summary = export_mp4(recorder.path("room6"), f)
    assert (summary["segments"], summary["segments_left_out"]) == (2, 1)
    assert summary["video_samples"] == 120  # the demo clip's, with its own configuration
    decoded = subprocess.run([ffmpeg, "-v", "error", "-i", str(out), "-f", "null", "-"],
                             capture_output=True, text=True)
    assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr
    durations = _stream_durations(ffprobe, out)
    clip_s = load_flv_clip(DEMO.read_bytes()).duration_ms / 1000
    assert abs(durations["video"] - clip_s) <= 1.0 and abs(durations["audio"] - clip_s) <= 1.0, durations

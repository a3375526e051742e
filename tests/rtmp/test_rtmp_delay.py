"""The server-added delay of RTMP ingest: from the arrival of an RTMP message
(the read that completed it) to the first subscriber's receipt of that frame,
in one process on one clock. Reported, never asserted (DESIGN.md: speed is
measured, not timed in tests); the figures go to stdout and
test-artifacts/rtmp-delay.json.
"""

from __future__ import annotations

import json
import statistics

import pytest
import trio

from shopcast.bench._record import percentile
from shopcast.client import connect, decode_frame_untrusted
from shopcast.codecs import TagType, parse_audio_tag_untrusted, parse_video_tag_untrusted

pytestmark = pytest.mark.e2e


async def test_server_added_delay_is_reported(server_factory, rtmp_helpers, ffmpeg):
    started = await server_factory({"demo": {"enabled": False}})
    app = started.app
    room = "shop-delay"
    url = await rtmp_helpers.push_url(started, room)
    arrivals: dict[tuple[str, int], float] = {}
    accepted_at = {"video": float("inf"), "audio": float("inf")}

    def observe(room_id: str, tag, arrival_s: float) -> None:
        if tag.tag_type == TagType.VIDEO:
            video = parse_video_tag_untrusted(tag.body)
            if video.packet_type == 1:
                arrivals[("video", (tag.timestamp_ms + video.composition_time_ms) * 1000)] = arrival_s
        elif parse_audio_tag_untrusted(tag.body).packet_type == 1:
            arrivals[("audio", tag.timestamp_ms * 1000)] = arrival_s

    app.rtmp.media_observer = observe
    seconds = 8
    command = rtmp_helpers.ffmpeg_command(
        ffmpeg, url, seconds=seconds, video="testsrc2=size=640x360:rate=30",
        video_args=("-preset", "veryfast", "-tune", "zerolatency", "-g", "30"))
    run = rtmp_helpers.FfmpegRun()
    received: dict[str, list[tuple[int, float]]] = {"video": [], "audio": []}
    sha = app.certificate.sha256_hex

    async def watch(track: str) -> None:
        async with connect(f"https://127.0.0.1:{started.port}/moq", certificate_sha256=sha) as client:
            upstream = await client.subscribe(room, track)
            await upstream.accepted.wait()
            accepted_at[track] = trio.current_time()
            with trio.move_on_after(seconds + 10):
                async for frame in upstream.frames:
                    ts_us, _ = decode_frame_untrusted(frame.payload)
                    received[track].append((ts_us, frame.arrival_s))

    async with trio.open_nursery() as nursery:
        await nursery.start(rtmp_helpers.run_ffmpeg, command, run)
        await rtmp_helpers.wait_for_tracks(started, room)
        nursery.start_soon(watch, "video")
        nursery.start_soon(watch, "audio")
    assert run.returncode == 0, run.stderr

    report = {}
    for track in ("video", "audio"):
        # Frames that reached the server after the subscription began: the
        # cached group a viewer gets on joining is not "delay".
        delays_ms = [(arrival - arrivals[(track, ts)]) * 1000 for ts, arrival in received[track]
                     if (track, ts) in arrivals and arrivals[(track, ts)] > accepted_at[track]]
        assert len(delays_ms) > seconds * 10, (track, len(delays_ms))
        report[track] = {"frames": len(delays_ms), "p50_ms": round(percentile(delays_ms, 0.5), 3),
                         "p99_ms": round(percentile(delays_ms, 0.99), 3),
                         "mean_ms": round(statistics.fmean(delays_ms), 3),
                         "max_ms": round(max(delays_ms), 3)}
    print(f"\nserver-added delay, RTMP message arrival -> first subscriber receipt: {report}")
    artifacts = rtmp_helpers.REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "rtmp-delay.json").write_text(json.dumps(report, indent=2) + "\n")

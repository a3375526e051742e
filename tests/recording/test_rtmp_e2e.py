"""The issue's path with real programs: ffmpeg pushes the demo clip in real
time (-re) over RTMP to a room for 30 s; the room ends when the push stops;
`shopcast export` writes an MP4 whose codecs and length ffprobe confirms
(within one GOP of what was pushed) and that ffmpeg decodes without an error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

DEMO = Path(__file__).parents[2] / "server" / "media" / "demo.flv"
PUSH_S = 30
GOP_S = 1.0
"""The demo clip's keyframe interval."""


@pytest.mark.e2e
async def test_thirty_seconds_pushed_over_rtmp_export_to_a_playable_mp4(
        api_server, clock, rooms_api, tmp_path, ffmpeg, ffprobe):
    api = await api_server({"rooms": {"push_lost_end_after_s": 0.0}})
    app = api.app
    rooms = app.plugins.get("rooms")
    rooms.clock = clock
    host = await api.user("hana", "host", display_name="Hana")
    body = rooms_api.room_body(scheduled_start=rooms_api.iso(clock.now + 3600))
    created = await api.call("POST", "/api/v1/rooms", body, token=host)
    room_id, push_url = created.body["room"]["id"], created.body["push"]["push_url"]
    clock.now = rooms._cache[room_id]["scheduled_start"] + 1  # past the start: the push goes live
    push_url = push_url.replace("localhost", "127.0.0.1")
    encoder = subprocess.Popen(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(DEMO),
         "-t", str(PUSH_S), "-c", "copy", "-f", "flv", push_url],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with trio.fail_after(30):
            await rooms.wait_for_state(room_id, "live")
        with trio.fail_after(PUSH_S + 30):
            await rooms.wait_for_state(room_id, "ended")
            while any(b.name == room_id for b in app.recorder.recordings):
                await app.recorder.flushed.wait()
        assert await trio.to_thread.run_sync(encoder.wait) == 0, encoder.stderr.read()
    finally:
        if encoder.poll() is None:
            encoder.kill()
            encoder.wait()
        encoder.stderr.close()
    out = tmp_path / f"{room_id}.mp4"
    export = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "shopcast.server._cli", "export", room_id, str(out),
         "--data-dir", str(app.data_dir)], capture_output=True, text=True))
    assert export.returncode == 0, export.stderr
    probe = json.loads(subprocess.run(
        [ffprobe, "-v", "error", "-show_streams", "-show_format", "-of", "json", str(out)],
        check=True, capture_output=True, text=True).stdout)
    assert sorted(s["codec_name"] for s in probe["streams"]) == ["aac", "h264"]
    duration_s = float(probe["format"]["duration"])
    assert abs(duration_s - PUSH_S) <= GOP_S, duration_s
    decoded = subprocess.run([ffmpeg, "-v", "error", "-i", str(out), "-f", "null", "-"],
                             capture_output=True, text=True)
    assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr


@pytest.mark.e2e
async def test_an_encoder_that_reconnects_is_exported_as_one_timeline(
        api_server, clock, rooms_api, tmp_path, ffmpeg, ffprobe):
    """ffmpeg pushes twice to the same room, the second push within
    push_lost_end_after_s of the first: the room stays live, the recording
    has two segments whose RTMP timestamps both start at zero, and the MP4
    plays them one after the other."""
    api = await api_server({"rooms": {"push_lost_end_after_s": 30.0}})
    app = api.app
    rooms = app.plugins.get("rooms")
    rooms.clock = clock
    host = await api.user("hana", "host", display_name="Hana")
    body = rooms_api.room_body(scheduled_start=rooms_api.iso(clock.now + 3600))
    created = await api.call("POST", "/api/v1/rooms", body, token=host)
    room_id, push_url = created.body["room"]["id"], created.body["push"]["push_url"]
    clock.now = rooms._cache[room_id]["scheduled_start"] + 1
    push_url = push_url.replace("localhost", "127.0.0.1")
    push_s = 6
    for _ in range(2):
        encoder = subprocess.Popen(
            [ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(DEMO),
             "-t", str(push_s), "-c", "copy", "-f", "flv", push_url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            with trio.fail_after(30):
                await rooms.wait_for_state(room_id, "live")
                while not any(b.name == room_id for b in app.recorder.recordings):
                    await app.recorder.flushed.wait()
            with trio.fail_after(push_s + 30):
                assert await trio.to_thread.run_sync(encoder.wait) == 0, encoder.stderr.read()
                while any(b.name == room_id for b in app.recorder.recordings):
                    await app.recorder.flushed.wait()
        finally:
            if encoder.poll() is None:
                encoder.kill()
                encoder.wait()
            encoder.stderr.close()
        assert (await api.call("GET", f"/api/v1/rooms/{room_id}")).body["state"] == "live"
    clock.now += 31  # the encoder did not come back a third time
    await rooms.tick()
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "ended")
    out = tmp_path / f"{room_id}.mp4"
    export = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "shopcast.server._cli", "export", room_id, str(out),
         "--data-dir", str(app.data_dir)], capture_output=True, text=True))
    assert export.returncode == 0, export.stderr
    probe = json.loads(subprocess.run(
        [ffprobe, "-v", "error", "-show_streams", "-show_format", "-of", "json", str(out)],
        check=True, capture_output=True, text=True).stdout)
    durations = {s["codec_type"]: float(s["duration"]) for s in probe["streams"]}
    assert abs(durations["video"] - durations["audio"]) <= GOP_S, durations
    assert abs(float(probe["format"]["duration"]) - 2 * push_s) <= 2 * GOP_S, probe["format"]
    decoded = subprocess.run([ffmpeg, "-v", "error", "-i", str(out), "-f", "null", "-"],
                             capture_output=True, text=True)
    assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr

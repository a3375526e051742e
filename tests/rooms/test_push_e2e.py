"""The issue's whole path with real programs: a host schedules a room through
the API, ffmpeg pushes to the room's push URL and the room goes live, a
viewer watches, and an operator's emergency shutdown disconnects the viewer
and the encoder with the reason."""

import subprocess
import urllib.parse

import pytest
import trio

from shopcast.client import connect


@pytest.mark.e2e
async def test_push_goes_live_and_shutdown_disconnects_everyone(api, room_fields, ffmpeg):
    app = api.app
    rooms = app.plugins.get("rooms")
    host = await api.user("hana", "host", display_name="Hana")
    operator = await api.operator()
    created = await api.call("POST", "/api/v1/rooms", room_fields(), token=host)
    assert created.status == 201, created.body
    room_id = created.body["room"]["id"]
    push = urllib.parse.urlsplit(created.body["push"]["push_url"])
    assert push.port == app.rtmp_port
    # It is now past the scheduled start, so the push makes the room live.
    start = rooms._cache[room_id]["scheduled_start"]
    rooms.clock = lambda: start + 1
    encoder = subprocess.Popen(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-re",
         "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i", "sine=frequency=440",
         "-t", "60", "-c:v", "libx264", "-tune", "zerolatency", "-g", "30", "-c:a", "aac",
         "-f", "flv", f"rtmp://127.0.0.1:{push.port}{push.path}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with trio.fail_after(30):
            await rooms.wait_for_state(room_id, "live")
        async with connect(f"https://127.0.0.1:{app.port}/moq",
                           certificate_sha256=app.certificate.sha256_hex) as viewer:
            catalog = await viewer.catalog(room_id)  # as a player does: catalog first
            assert catalog.video[0].codec.startswith("avc1.") and catalog.audio[0].codec == "mp4a.40.2"
            video = await viewer.subscribe(room_id, "video")
            with trio.fail_after(20):
                first = await video.frames.receive()
            assert first.index == 0  # a keyframe begins the viewer's first group
            shut = await api.call("POST", f"/api/v1/rooms/{room_id}/shutdown",
                                  {"reason": "prohibited goods"}, token=operator)
            assert shut.status == 200 and shut.body["state"] == "ended", shut.body
            with trio.fail_after(10):
                await viewer.session.wait_closed()
            assert "prohibited goods" in viewer.session.close_reason
        # The encoder is refused too: the broadcast ended and its key was rotated.
        await trio.to_thread.run_sync(lambda: encoder.wait(timeout=30))
        assert room_id not in app.relay.broadcasts
        page = await api.call("GET", f"/api/v1/rooms/{room_id}")
        assert page.body["state"] == "ended"
    finally:
        if encoder.poll() is None:
            encoder.kill()
            encoder.wait()
        encoder.stderr.close()


@pytest.mark.e2e
async def test_the_host_ends_the_live_at_once_and_a_viewer_cannot(api, room_fields, ffmpeg):
    app = api.app
    rooms = app.plugins.get("rooms")
    host = await api.user("hiro", "host", display_name="Hiro")
    viewer_token = await api.user("vera", "audience")
    created = await api.call("POST", "/api/v1/rooms", room_fields(), token=host)
    room_id = created.body["room"]["id"]
    push = urllib.parse.urlsplit(created.body["push"]["push_url"])
    start = rooms._cache[room_id]["scheduled_start"]
    rooms.clock = lambda: start + 1
    encoder = subprocess.Popen(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-re",
         "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-t", "60", "-c:v", "libx264",
         "-tune", "zerolatency", "-g", "30", "-f", "flv", f"rtmp://127.0.0.1:{push.port}{push.path}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(30):
            await rooms.wait_for_state(room_id, "live")
        refused = await api.call("POST", f"/api/v1/rooms/{room_id}/end", token=viewer_token)
        assert refused.status == 403, refused.body
        async with connect(f"https://127.0.0.1:{app.port}/moq",
                           certificate_sha256=app.certificate.sha256_hex) as watcher:
            await watcher.catalog(room_id)  # as a player does: catalog first
            video = await watcher.subscribe(room_id, "video")
            with trio.fail_after(20):
                await video.frames.receive()
            ended = await api.call("POST", f"/api/v1/rooms/{room_id}/end", token=host)
            assert ended.status == 200 and ended.body["state"] == "ended", ended.body
            assert ended.body["end_reason"] == "host_ended"
            with trio.fail_after(10):
                await video.ended.wait()  # the viewer's track finishes at once
        again = await api.call("POST", f"/api/v1/rooms/{room_id}/end", token=host)
        assert again.status == 409 and again.body["error"]["field"] == "room_id"
    finally:
        encoder.kill()
        encoder.wait()

"""The recording leaves the server only to its owner and operators: the MP4
download over HTTPS, and `shopcast export` for operators on the machine."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import trio

from shopcast.server._hang_mux import HangMuxer, load_flv_clip, play_clip

DEMO = Path(__file__).parents[2] / "server" / "media" / "demo.flv"


def _probe(ffprobe: str, path: Path) -> dict:
    return json.loads(subprocess.run(
        [ffprobe, "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True, capture_output=True, text=True).stdout)


async def test_only_the_owner_and_operators_download_the_mp4(api_server, clock, rooms_api, tmp_path,
                                                             ffprobe):
    api = await api_server({"rooms": {"push_lost_end_after_s": 0.0}})
    app = api.app
    rooms = app.plugins.get("rooms")
    rooms.clock = clock
    host = await api.user("hana", "host", display_name="Hana")
    other = await api.user("olga", "host", display_name="Olga")
    member = await api.user("tina", "host", display_name="Tina")
    viewer = await api.user("vera", "audience", display_name="Vera")
    operator = await api.operator()
    body = rooms_api.room_body(scheduled_start=rooms_api.iso(clock.now + 3600), team=["tina"])
    room_id = (await api.call("POST", "/api/v1/rooms", body, token=host)).body["room"]["id"]
    path = f"/api/v1/rooms/{room_id}/recording.mp4"
    nothing = await api.call("GET", path, token=host)
    assert nothing.status == 404 and nothing.error_field == "room_id"
    # The media tokens the rooms plugin gives its owner and a team member
    # (both host tokens for this room; only the owner's subject owns it).
    media = {}
    for name, token in (("owner", host), ("member", member)):
        reply = await api.call("POST", f"/api/v1/rooms/{room_id}/media-token", {"publish": True},
                               token=token)
        assert reply.status == 200, reply.body
        media[name] = reply.body["token"]
        assert app.tokens.verify_untrusted(media[name], now=time.time()).role == "host"
    clock.now = rooms._cache[room_id]["scheduled_start"] + 1
    broadcast = app.relay.publish(room_id)  # a local publisher, as the demo room is
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "live")
    await play_clip(HangMuxer(broadcast), load_flv_clip(DEMO.read_bytes()), loops=1)
    broadcast.end()
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "ended")
        while any(b.name == room_id for b in app.recorder.recordings):
            await app.recorder.flushed.wait()
    assert (await api.call("GET", path)).status == 401
    stats = f"/api/v1/rooms/{room_id}/statistics"
    for token in (other, viewer, member, media["member"]):
        refused = await api.call("GET", path, token=token)
        assert refused.status == 403 and refused.body["error"]["field"] == "authorization"
        # An audience account is refused by the route's roles, a host by the owner check.
        assert refused.body["error"]["code"] == ("forbidden" if token == viewer else "not_owner")
        assert (await api.call("GET", stats, token=token)).status == 403
    for token in (media["owner"], operator):
        assert (await api.call("GET", stats, token=token)).status == 200
    for token in (host, media["owner"], operator):
        reply = await api.call("GET", path, token=token)
        assert reply.status == 200 and reply.headers["content-type"] == "video/mp4"
        out = tmp_path / "download.mp4"
        out.write_bytes(reply.body)
        probe = _probe(ffprobe, out)
        assert sorted(s["codec_name"] for s in probe["streams"]) == ["aac", "h264"]
        assert 3.5 < float(probe["format"]["duration"]) < 5.1
    # The files themselves are not served by any route.
    assert (await api.call("GET", f"/recordings/{room_id}.rec")).status == 404


def _export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shopcast.server._cli", "export", *args],
                          capture_output=True, text=True)


async def test_shopcast_export_writes_an_mp4_and_names_what_is_wrong(tmp_path, ffprobe, ffmpeg,
                                                                     autojump_clock):
    from shopcast.server._recording import Recorder, RecordingSettings
    from shopcast.server._relay import Relay

    data = tmp_path / "data"
    relay = Relay()
    recorder = Recorder(relay, data, RecordingSettings())
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        broadcast = relay.publish("room7")
        await play_clip(HangMuxer(broadcast), load_flv_clip(DEMO.read_bytes()), loops=2)
        broadcast.end()
        while recorder.recordings:
            await recorder.flushed.wait()
        nursery.cancel_scope.cancel()
    out = tmp_path / "room7.mp4"
    done = await trio.to_thread.run_sync(lambda: _export("room7", str(out), "--data-dir", str(data)))
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stderr
    probe = _probe(ffprobe, out)
    assert sorted(s["codec_name"] for s in probe["streams"]) == ["aac", "h264"]
    assert 7.5 < float(probe["format"]["duration"]) < 9.1
    decoded = subprocess.run([ffmpeg, "-v", "error", "-i", str(out), "-f", "null", "-"],
                             capture_output=True, text=True)
    assert decoded.returncode == 0 and decoded.stderr == ""
    missing = _export("room8", str(tmp_path / "x.mp4"), "--data-dir", str(data))
    assert missing.returncode == 1 and "no recording" in missing.stderr
    invalid = _export("../etc", str(tmp_path / "x.mp4"), "--data-dir", str(data))
    assert invalid.returncode == 2 and "invalid room id" in invalid.stderr


class NoRecording:
    """A platform's plugin that opts one room out of recording."""

    from shopcast.plugins._hookspecs import hookimpl

    @hookimpl
    def shopcast_room_may_record(self, room_id: str) -> str | None:
        return "the seller opted out" if room_id == "private1" else None


async def test_a_plugin_can_opt_a_room_out_of_recording(server_factory):
    started = await server_factory({"demo": {"enabled": False}})
    app = started.app
    app.plugins.register(NoRecording(), "no-recording")
    for name in ("private1", "room9"):
        broadcast = app.relay.publish(name)
        broadcast.track("video").write_frame(b"\x00frame", keyframe=True)
        broadcast.end()
    with trio.fail_after(10):
        while app.recorder.recordings:
            await app.recorder.flushed.wait()
    assert not app.recorder.path("private1").exists()
    assert app.recorder.path("room9").exists()


async def test_a_recording_too_large_to_download_says_to_export_it(api_server):
    api = await api_server({"recording": {"max_download_bytes": 1024}})
    app = api.app
    broadcast = app.relay.publish("room9")
    for i in range(3):
        broadcast.track("video").write_frame(bytes(1000), keyframe=i == 0)
    broadcast.end()
    with trio.fail_after(10):
        while app.recorder.recordings:
            await app.recorder.flushed.wait()
    reply = await api.call("GET", "/api/v1/rooms/room9/recording.mp4", token=api.service_token())
    assert reply.status == 413 and reply.error_field == "room_id"
    assert "shopcast export room9" in reply.body["error"]["message"]


async def test_the_export_holds_where_frames_are_not_the_media(tmp_path, autojump_clock):
    import tracemalloc

    from shopcast.server._recording import export_mp4

    from .test_recorder import record_clip

    path, written = await record_clip(tmp_path, loops=15)  # a minute
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with open(tmp_path / "out.mp4", "wb") as out:
            summary = export_mp4(path, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["video_samples"] == len(written["video"])
    # Frame times and places, not frames: a whole-file export held more than the file (1.26x).
    assert peak < 0.75 * size, (peak, size)


async def test_downloads_at_once_are_bounded_and_the_next_is_told_to_retry(api_server):
    api = await api_server({"recording": {"max_concurrent_downloads": 1}})
    app = api.app
    broadcast = app.relay.publish("room9")
    await play_clip(HangMuxer(broadcast), load_flv_clip(DEMO.read_bytes()), loops=1)
    broadcast.end()
    with trio.fail_after(10):
        while app.recorder.recordings:
            await app.recorder.flushed.wait()
    downloads = app.plugins.get("recordings").downloads
    path = "/api/v1/rooms/room9/recording.mp4"
    async with downloads:  # the one download allowed is being made
        busy = await api.call("GET", path, token=api.service_token())
        assert busy.status == 503 and busy.body["error"]["code"] == "downloads_busy"
        assert busy.headers["retry-after"] == "5"
    assert downloads.value == 1
    reply = await api.call("GET", path, token=api.service_token())
    assert reply.status == 200 and reply.body[4:8] == b"ftyp"
    assert downloads.value == 1
    assert not [p for p in app.recorder.directory.iterdir() if p.name.startswith(".export-")]

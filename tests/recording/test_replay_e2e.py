"""Replay through the relay with real moq-lite clients: a broadcast recorded
live comes back, once it has ended, byte for byte with its chat and product
pins at the media times they had live; seeking starts at a group."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgpack
import trio

from shopcast.client import connect, connect_chat
from shopcast.server._hang_mux import HangMuxer, load_flv_clip, play_clip
from shopcast.server._interaction import live_edge_us
from shopcast.server.moq import encode_frame, decode_frame_untrusted

DEMO = Path(__file__).parents[2] / "server" / "media" / "demo.flv"
ROOM = "room1"


def _token(app, role: str, subject: str) -> str:
    return app.tokens.mint(subject=subject, role=role, room=ROOM, ttl_s=600, now=time.time())


class Capture:
    """A tap on the publisher's own track: every frame it sends."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def group_started(self, track, group): pass
    def frame(self, track, group, payload): self.frames.append(payload)
    def group_ended(self, track, group): pass
    def track_ended(self, track): pass


async def _live(started) -> dict:
    """Publish two loops of the demo clip (about 8 s) as ROOM; a viewer chats
    at about 3 s and a pin is written at about 5 s, as the commerce plugin
    writes pins. Returns what was sent."""
    app = started.app
    url = f"https://127.0.0.1:{started.port}/moq"
    sha = app.certificate.sha256_hex
    video = Capture()
    sent: dict = {}
    async with connect(url, token=_token(app, "host", "host-1"), certificate_sha256=sha) as publisher:
        broadcast = publisher.publish(ROOM)
        publisher._relay.track_listeners.append(
            lambda track: track.tap(video, from_cache=False) if track.name == "video" else None)
        async with trio.open_nursery() as nursery:
            async def extras() -> None:
                await trio.sleep(3)
                async with connect_chat(f"https://127.0.0.1:{started.port}", ROOM,
                                        _token(app, "viewer", "viewer-1"),
                                        certificate_sha256=sha) as chat:
                    reply = await chat.request(type="message", text="is it waterproof?")
                    assert reply["type"] == "ok", reply
                await trio.sleep(2)
                live = app.relay.broadcasts[ROOM]
                sent["pin_us"] = live_edge_us(live)
                pin = {"type": "pin", "pin": {"id": "p1", "kind": "product", "media_us": sent["pin_us"]}}
                live.track("commerce").write_frame(encode_frame(sent["pin_us"], msgpack.packb(pin)),
                                                   keyframe=True)

            nursery.start_soon(extras)
            await play_clip(HangMuxer(broadcast), load_flv_clip(DEMO.read_bytes()), loops=2)
        broadcast.end()
    with trio.fail_after(10):
        while any(b.name == ROOM for b in app.recorder.recordings):
            await app.recorder.flushed.wait()
    transcript = app.interaction.rooms[ROOM].transcript()
    sent["chat_us"] = [m.media_timestamp_us for m, _ in transcript]
    sent["video"] = video.frames
    return sent


async def _watch(client, name: str, tracks: list[str]) -> dict[str, list]:
    """Every frame of ``tracks`` of ``name`` until the replay ends."""
    received: dict[str, list] = {t: [] for t in tracks}
    upstreams = {t: await client.subscribe(name, t) for t in tracks}

    async def drain(track: str) -> None:
        async for frame in upstreams[track].frames:
            received[track].append(frame)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for track in tracks:
                nursery.start_soon(drain, track)
    return received


def _video_time_at(video: list, arrival_s: float) -> int:
    """The timestamp of the newest video frame received by ``arrival_s``."""
    before = [f for f in video if f.arrival_s <= arrival_s]
    return decode_frame_untrusted(before[-1].payload)[0]


async def test_replay_is_the_live_byte_for_byte_with_chat_and_pins_on_time(server_factory):
    started = await server_factory({"demo": {"enabled": False}})
    app = started.app
    sent = await _live(started)
    assert len(sent["chat_us"]) == 1 and len(sent["video"]) == 240
    async with connect(f"https://127.0.0.1:{started.port}/moq",
                       certificate_sha256=app.certificate.sha256_hex) as viewer:
        got = await _watch(viewer, ROOM, ["catalog.json", "video", "chat", "commerce"])
    catalog = json.loads(got["catalog.json"][0].payload)
    assert catalog["video"]["renditions"]["video"]["codec"].startswith("avc1.")
    assert catalog["replay"]["groups"] == 8  # a keyframe every second
    assert 7.5e6 < catalog["replay"]["duration_us"] < 9.5e6
    assert catalog["replay"]["first_media_us"] == decode_frame_untrusted(sent["video"][0])[0]
    # Every video frame, in order, byte for byte.
    assert [f.payload for f in got["video"]] == sent["video"]
    # The chat message and the pin arrive when the video is where it was live.
    messages = [(m, f) for f in got["chat"] for m in msgpack.unpackb(f.payload)["messages"]]
    assert [m["media_us"] for m, _ in messages] == sent["chat_us"]
    for message, frame in messages:
        assert abs(_video_time_at(got["video"], frame.arrival_s) - message["media_us"]) <= 200_000
    pins = [f for f in got["commerce"]]
    assert len(pins) == 1 and decode_frame_untrusted(pins[0].payload)[0] == sent["pin_us"]
    assert abs(_video_time_at(got["video"], pins[0].arrival_s) - sent["pin_us"]) <= 200_000
    # Counted as a replay viewer of the room, not a live one: the relay's
    # hooks reached the statistics with replay=True (the join, and the leave
    # when the session closed).
    assert app.replays.replays_started == 1
    stats = app.plugins.get("statistics")

    def viewer_rows(c):
        return [tuple(r) for r in c.execute(
            "SELECT kind, subject, replay FROM stat_events WHERE room_id = ? AND kind IN ('join', 'leave') "
            "ORDER BY id", (ROOM,))]

    with trio.fail_after(10):
        while True:
            changed = stats.stored  # taken before reading: a store during the read sets it
            rows = await app.db.read(viewer_rows)
            if len(rows) >= 2:
                break
            await changed.wait()
    assert rows == [("join", "address:127.0.0.1", 1), ("leave", "address:127.0.0.1", 1)]


async def test_seeking_starts_at_the_group_before_with_the_pin_already_shown(server_factory):
    started = await server_factory({"demo": {"enabled": False}})
    app = started.app
    sent = await _live(started)
    first_us = decode_frame_untrusted(sent["video"][0])[0]
    seek_us = 6_500_000
    async with connect(f"https://127.0.0.1:{started.port}/moq",
                       certificate_sha256=app.certificate.sha256_hex) as viewer:
        got = await _watch(viewer, f"{ROOM}/replay@{seek_us}", ["video", "commerce"])
    start = decode_frame_untrusted(got["video"][0].payload)[0] - first_us
    assert seek_us - 1_100_000 <= start <= seek_us  # the group at or before, one a second
    tail = [f for f in sent["video"] if decode_frame_untrusted(f)[0] - first_us >= start]
    assert [f.payload for f in got["video"]] == tail
    # The pin (made at about 5 s) is sent at once, before the video reaches it.
    assert len(got["commerce"]) == 1
    assert got["commerce"][0].arrival_s <= got["video"][0].arrival_s + 0.5


async def test_a_live_room_is_not_replayed_and_a_bad_seek_is_not_found(server_factory):
    started = await server_factory({"demo": {"enabled": False}})
    app = started.app
    async with connect(f"https://127.0.0.1:{started.port}/moq",
                       certificate_sha256=app.certificate.sha256_hex) as viewer:
        for name in (ROOM, f"{ROOM}/replay@abc", f"{ROOM}/replay@-5", "../etc/passwd"):
            upstream = await viewer.subscribe(name, "video")
            with trio.fail_after(10):
                await upstream.ended.wait()
            assert upstream.end_code is not None and upstream.end_code != 0, name


async def test_viewers_are_told_when_an_ended_rooms_replay_is_there(api_server, clock, rooms_api,
                                                                   tmp_path):
    data = str(tmp_path / "shared")
    api = await api_server({"rooms": {"push_lost_end_after_s": 0.0}, "server": {"data_dir": data}})
    app = api.app
    rooms = app.plugins.get("rooms")
    rooms.clock = clock
    host = await api.user("hana", "host", display_name="Hana")
    body = rooms_api.room_body(scheduled_start=rooms_api.iso(clock.now + 3600))
    room_id = (await api.call("POST", "/api/v1/rooms", body, token=host)).body["room"]["id"]
    clock.now = rooms._cache[room_id]["scheduled_start"] + 1
    async with connect(f"https://127.0.0.1:{api.port}/moq",
                       certificate_sha256=app.certificate.sha256_hex) as viewer:
        # Every announcement as it arrives: the end of the live and the
        # replay's announcement can follow each other within a millisecond.
        heard: list[tuple[str, bool]] = []
        changed = trio.Event()
        connection = viewer.connection
        on_announced = connection._on_announced

        def record(event) -> None:
            heard.append((event.path, event.active))
            changed.set()
            on_announced(event)

        connection._on_announced = record
        broadcast = app.relay.publish(room_id)  # a local publisher
        with trio.fail_after(10):
            await rooms.wait_for_state(room_id, "live")
        broadcast.track("video").write_frame(encode_frame(0, b"\x00\x00\x00\x01\x65"), keyframe=True)
        with trio.fail_after(10):
            await viewer.wait_announced(room_id)
        broadcast.end()
        with trio.fail_after(10):
            while heard.count((room_id, True)) < 2:
                await changed.wait()
                changed = trio.Event()
        assert heard == [(room_id, True), (room_id, False), (room_id, True)]
        assert app.replays.announced_names() == [room_id]
    # The room stays "ended", the last state: that it can be watched again
    # is the replay service's answer, not a state that retention or a
    # shutdown would leave stale; no state is declared that is never set.
    room = (await api.call("GET", f"/api/v1/rooms/{room_id}")).body
    assert room["state"] == "ended" and app.replays.has_replay(room_id)
    doc = (await api.call("GET", "/api/v1/openapi.json")).body
    states = doc["components"]["schemas"]["Room"]["properties"]["state"]["enum"]
    assert states == ["scheduled", "rehearsal", "live", "ended"]
    # A broadcast that is no room is not announced once over (a platform's
    # own name): subscribing to it still replays it.
    other = app.relay.publish("room5")
    other.track("video").write_frame(encode_frame(0, b"\x00\x00\x00\x01\x65"), keyframe=True)
    other.end()
    with trio.fail_after(10):
        while app.recorder.recordings:
            await app.recorder.flushed.wait()
    assert app.replays.announced_names() == [room_id]
    # After a restart the ended room's replay is announced again.
    started = await api_server({"server": {"data_dir": data}})
    async with connect(f"https://127.0.0.1:{started.port}/moq",
                       certificate_sha256=started.app.certificate.sha256_hex) as viewer:
        with trio.fail_after(10):
            await viewer.wait_announced(room_id)
        assert "room5" not in viewer.connection.announced


async def test_a_room_whose_recording_field_is_false_is_not_recorded(api_server, clock, rooms_api,
                                                                     tmp_path):
    api = await api_server({"server": {"data_dir": str(tmp_path / "optout")}})
    app = api.app
    rooms = app.plugins.get("rooms")
    rooms.clock = clock
    host = await api.user("otto", "host", display_name="Otto")
    start = rooms_api.iso(clock.now + 3600)
    kept = await api.call("POST", "/api/v1/rooms", rooms_api.room_body(scheduled_start=start), token=host)
    unrecorded = await api.call("POST", "/api/v1/rooms",
                                {**rooms_api.room_body(scheduled_start=start), "recording": False},
                                token=host)
    assert kept.status == 201 and unrecorded.status == 201, (kept.body, unrecorded.body)
    assert kept.body["room"]["recording"] is True and unrecorded.body["room"]["recording"] is False
    bad = await api.call("POST", "/api/v1/rooms",
                         {**rooms_api.room_body(scheduled_start=start), "recording": "no"}, token=host)
    assert bad.status == 400 and bad.body["error"]["field"] == "recording", bad.body
    clock.now = rooms._cache[kept.body["room"]["id"]]["scheduled_start"] + 1
    for room in (kept.body["room"], unrecorded.body["room"]):
        broadcast = app.relay.publish(room["id"])
        with trio.fail_after(10):
            await rooms.wait_for_state(room["id"], "live")
        broadcast.track("video").write_frame(encode_frame(0, b"\x00\x00\x00\x01\x65"), keyframe=True)
    recorded = {b.name for b in app.recorder.recordings}
    assert kept.body["room"]["id"] in recorded
    assert unrecorded.body["room"]["id"] not in recorded


async def test_a_room_shut_down_by_an_operator_is_never_replayed_but_its_owner_downloads_it(
        api_server, clock, rooms_api, tmp_path):
    data = str(tmp_path / "shutdown")
    api = await api_server({"server": {"data_dir": data}})
    app = api.app
    rooms = app.plugins.get("rooms")
    rooms.clock = clock
    host = await api.user("hana", "host", display_name="Hana")
    operator = await api.operator()
    body = rooms_api.room_body(scheduled_start=rooms_api.iso(clock.now + 3600))
    room_id = (await api.call("POST", "/api/v1/rooms", body, token=host)).body["room"]["id"]
    clock.now = rooms._cache[room_id]["scheduled_start"] + 1
    broadcast = app.relay.publish(room_id)
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "live")
    await play_clip(HangMuxer(broadcast), load_flv_clip(DEMO.read_bytes()), loops=1)
    shut = await api.call("POST", f"/api/v1/rooms/{room_id}/shutdown", {"reason": "unsafe content"},
                          token=operator)
    assert shut.status == 200 and shut.body["state"] == "ended", shut.body
    with trio.fail_after(10):
        while app.recorder.recordings:
            await app.recorder.flushed.wait()
    assert app.recorder.path(room_id).stat().st_size > 100_000  # it was recorded

    async def refused_to_the_public(server_app, port: int) -> None:
        assert room_id not in server_app.replays.announced_names()
        assert not server_app.replays.has_replay(room_id)
        viewer_token = server_app.tokens.mint(subject="guest:abcdefghijklmnop", role="viewer",
                                              room=room_id, ttl_s=600, now=time.time())
        async with connect(f"https://127.0.0.1:{port}/moq", token=viewer_token,
                           certificate_sha256=server_app.certificate.sha256_hex) as viewer:
            for name in (room_id, f"{room_id}/replay@2000000"):
                upstream = await viewer.subscribe(name, "video")
                with trio.fail_after(10):
                    await upstream.ended.wait()
                assert upstream.end_code not in (None, 0), name
                assert upstream.frames.statistics().current_buffer_used == 0, name
        assert server_app.replays.replays_started == 0

    await refused_to_the_public(app, api.port)
    download = await api.call("GET", f"/api/v1/rooms/{room_id}/recording.mp4", token=host)
    assert download.status == 200 and download.body[4:8] == b"ftyp"
    # After a restart too.
    again = await api_server({"server": {"data_dir": data}})
    await refused_to_the_public(again.app, again.port)

"""A room's whole life through the HTTP API: a host registers, schedules a
room with every IWA 41 field, finds it by hashtag, rehearses, goes live when
the push arrives after the scheduled start, and an operator shuts it down."""

import trio


async def test_room_life(api, room_fields):
    app = api.app
    rooms = app.plugins.get("rooms")
    host = await api.user("maria", "host", display_name="Maria", region="ES")
    viewer = await api.user("vic", "audience")
    operator = await api.operator()

    created = await api.call("POST", "/api/v1/rooms", room_fields(), token=host)
    assert created.status == 201, created.body
    room = created.body["room"]
    room_id = room["id"]
    assert room["state"] == "scheduled"
    assert room["hashtags"] == ["springsale", "shoes"]
    push = created.body["push"]
    assert push["push_url"] == f"{push['server_url']}/{push['stream_key']}"
    assert push["server_url"].startswith("rtmp://")
    assert created.body["publish"]["broadcast"] == room_id

    found = await api.call("GET", "/api/v1/rooms/search?hashtag=%23springsale")
    assert [r["id"] for r in found.body["rooms"]] == [room_id]
    page = await api.call("GET", f"/api/v1/rooms/{room_id}/page")
    assert page.body["open_graph"]["og:title"] == "Spring sneakers launch"
    share = await api.call("GET", f"/r/{room_id}")
    assert '<meta property="og:title" content="Spring sneakers launch">' in share.body

    # Before the start only the owner and team may enter the setup.
    assert (await api.call("GET", f"/api/v1/rooms/{room_id}/setup", token=viewer)).status == 403
    other_host = await api.user("otto", "host")
    assert (await api.call("GET", f"/api/v1/rooms/{room_id}/setup", token=other_host)).status == 403
    assert (await api.call("GET", f"/api/v1/rooms/{room_id}/setup", token=host)).status == 200
    edited = await api.call("PATCH", f"/api/v1/rooms/{room_id}", {"title": "Spring sneakers!"}, token=host)
    assert edited.status == 200 and edited.body["title"] == "Spring sneakers!"

    # A push before the start is a rehearsal: private, the team may watch.
    broadcast = app.relay.publish(room_id, owner="rtmp")
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "rehearsal")
    assert broadcast.private
    watch = await api.call("POST", f"/api/v1/rooms/{room_id}/media-token", {}, token=viewer)
    assert watch.status == 403 and watch.body["error"]["code"] == "rehearsal"

    # The scheduled start arrives: the room goes live and public.
    start = rooms._cache[room_id]["scheduled_start"]
    rooms.clock = lambda: start + 1
    await rooms.tick()
    assert (await api.call("GET", f"/api/v1/rooms/{room_id}")).body["state"] == "live"
    assert not broadcast.private
    assert (await api.call("PATCH", f"/api/v1/rooms/{room_id}", {"title": "late"},
                           token=host)).status == 409
    watch = await api.call("POST", f"/api/v1/rooms/{room_id}/media-token", {}, token=viewer)
    assert watch.status == 200
    liked = await api.call("PUT", f"/api/v1/rooms/{room_id}/rating", {"positive": True}, token=viewer)
    assert liked.body["stats"]["positive_ratings"] == 1
    comment = await api.call("POST", f"/api/v1/rooms/{room_id}/comments", {"text": "Hola!"}, token=viewer)
    assert comment.status == 201

    # Emergency shutdown: the broadcast ends at once and the reason is kept.
    shut = await api.call("POST", f"/api/v1/rooms/{room_id}/shutdown",
                          {"reason": "restricted goods on sale"}, token=operator)
    assert shut.status == 200, shut.body
    assert shut.body["state"] == "ended"
    assert shut.body["end_reason"] == "shutdown"
    assert shut.body["shutdown_reason"] == "restricted goods on sale"
    assert broadcast.ended.is_set() and room_id not in app.relay.broadcasts
    audit = await api.call("GET", "/api/v1/audit-log", token=operator)
    assert audit.body["entries"][0]["action"] == "room_shutdown"
    assert audit.body["entries"][0]["reason"] == "restricted goods on sale"
    # A reconnecting encoder does not bring it back.
    again = app.relay.publish(room_id, owner="rtmp")
    with trio.fail_after(10):
        await again.ended.wait()

    profile = await api.call("GET", "/api/v1/accounts/maria")
    assert profile.body["stats"]["live_events"] == 1
    assert profile.body["stats"]["positive_rating"] == 1.0


async def test_push_at_start_goes_live_and_auto_ends(api, room_fields):
    app = api.app
    rooms = app.plugins.get("rooms")
    host = await api.user("maria", "host")
    room_id = (await api.call("POST", "/api/v1/rooms", room_fields(duration_s=600),
                              token=host)).body["room"]["id"]
    start = rooms._cache[room_id]["scheduled_start"]
    rooms.clock = lambda: start
    broadcast = app.relay.publish(room_id, owner="rtmp")
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "live")
    assert not broadcast.private
    rooms.clock = lambda: start + 600 + app.config.rooms.auto_end_grace_s
    await rooms.tick()
    room = (await api.call("GET", f"/api/v1/rooms/{room_id}")).body
    assert room["state"] == "ended" and room["end_reason"] == "duration_elapsed"
    assert broadcast.ended.is_set()


async def test_digital_human_needs_approval_to_go_live(api, room_fields):
    app = api.app
    rooms = app.plugins.get("rooms")
    host = await api.user("avatar", "host", digital_human=True)
    operator = await api.operator()
    room_id = (await api.call("POST", "/api/v1/rooms", room_fields(), token=host)).body["room"]["id"]
    start = rooms._cache[room_id]["scheduled_start"]
    rooms.clock = lambda: start + 1
    broadcast = app.relay.publish(room_id, owner="rtmp")
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "rehearsal")
    assert broadcast.private
    approved = await api.call("PUT", "/api/v1/accounts/avatar/digital-human-approval",
                              {"approved": True}, token=operator)
    assert approved.status == 200 and approved.body["digital_human_approved"]
    await rooms.tick()
    assert (await api.call("GET", f"/api/v1/rooms/{room_id}")).body["state"] == "live"
    assert not broadcast.private

"""Chat with real accounts: display names from profiles, the room's owner as
host, followers-only mode that knows who follows the host, and media tokens
from the API as the chat's room token."""

import time

import trio

from shopcast.client import connect_chat


async def test_chat_knows_accounts_follows_and_the_host(api, room_fields):
    app = api.app
    rooms = app.plugins.get("rooms")
    host = await api.user("hana", "host", display_name="Hana the Host")
    fan = await api.user("fanny", "audience", display_name="Fanny")
    stranger = await api.user("stan", "audience", display_name="Stan")
    room_id = (await api.call("POST", "/api/v1/rooms", room_fields(), token=host)).body["room"]["id"]
    assert (await api.call("PUT", "/api/v1/accounts/hana/follow", token=fan)).status in (200, 204)
    start = rooms._cache[room_id]["scheduled_start"]
    rooms.clock = lambda: start + 1
    app.relay.publish(room_id, owner="rtmp")  # the push arrives: live
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "live")

    async def media_token(token: str) -> str:
        reply = await api.call("POST", f"/api/v1/rooms/{room_id}/media-token", {}, token=token)
        assert reply.status in (200, 201), reply.body
        return reply.body["token"]

    base = f"https://127.0.0.1:{app.port}"
    sha = app.certificate.sha256_hex
    async with connect_chat(base, room_id, await media_token(host), certificate_sha256=sha) as h, \
            connect_chat(base, room_id, await media_token(fan), certificate_sha256=sha) as f, \
            connect_chat(base, room_id, await media_token(stranger), certificate_sha256=sha) as s:
        assert (await h.request(type="mode", followers_only=True))["type"] == "ok"
        refused = await s.request(type="message", text="hi?")
        assert refused["type"] == "notice" and refused["code"] == "followers_only"
        assert (await f.request(type="message", text="love these shoes 😍"))["type"] == "ok"
        assert (await h.request(type="message", text="thank you!"))["type"] == "ok"
        refused = await f.request(type="mute", account="stan", seconds=60)
        assert refused["code"] == "forbidden"  # a viewer is no moderator
    room = app.interaction.rooms[room_id]
    said = [(m.author_name, m.author_role, m.text) for m in room.history()]
    assert said == [("Fanny", "viewer", "love these shoes 😍"), ("Hana the Host", "host", "thank you!")]


async def test_guests_are_not_registered_and_ranks_bound_who_moderates_whom(api, room_fields):
    app = api.app
    rooms = app.plugins.get("rooms")
    host = await api.user("hana", "host", display_name="Hana the Host")
    mod = await api.user("mona", "host", display_name="Mona")
    fan = await api.user("fanny", "audience", display_name="Fanny")
    operator = await api.operator()
    room_id = (await api.call("POST", "/api/v1/rooms", room_fields(team=["mona"]), token=host)).body["room"]["id"]
    start = rooms._cache[room_id]["scheduled_start"]
    rooms.clock = lambda: start + 1
    app.relay.publish(room_id, owner="rtmp")
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "live")

    async def media_token(token: str) -> str:
        reply = await api.call("POST", f"/api/v1/rooms/{room_id}/media-token", {}, token=token)
        assert reply.status in (200, 201), reply.body
        return reply.body["token"]

    guest = app.tokens.mint(subject="guest:Zk3xQ9pLm2Rt7Wv1", role="viewer", room=room_id, ttl_s=600,
                            now=time.time())
    stranger = app.tokens.mint(subject="no-such-account", role="viewer", room=room_id, ttl_s=600,
                               now=time.time())
    accounts = app.plugins.get("accounts")
    ids = {name: (await accounts.by_name(name))["id"] for name in ("hana", "mona", "fanny", "op")}
    base = f"https://127.0.0.1:{app.port}"
    sha = app.certificate.sha256_hex
    async with connect_chat(base, room_id, await media_token(host), certificate_sha256=sha) as h, \
            connect_chat(base, room_id, await media_token(mod), certificate_sha256=sha) as m, \
            connect_chat(base, room_id, await media_token(fan), certificate_sha256=sha) as f, \
            connect_chat(base, room_id, await media_token(operator), certificate_sha256=sha) as o, \
            connect_chat(base, room_id, guest, certificate_sha256=sha) as g, \
            connect_chat(base, room_id, stranger, certificate_sha256=sha) as s:
        # Registered-only: the guest and a subject no account has may read, not post.
        assert (await h.request(type="mode", registered_only=True))["type"] == "ok"
        for unregistered in (g, s):
            refused = await unregistered.request(type="message", text="me too?")
            assert refused["type"] == "notice" and refused["code"] == "registered_only"
        assert (await f.request(type="message", text="registered, so I may 🙂"))["type"] == "ok"
        assert (await h.request(type="mode", registered_only=False))["type"] == "ok"
        assert (await g.request(type="message", text="hello from a guest"))["type"] == "ok"
        # Ranks: a moderator may not touch the host or an operator; the host may
        # moderate moderators; operators everyone.
        host_said = (await h.request(type="message", text="welcome all"))["id"]
        for request in ({"type": "mute", "account": ids["hana"], "seconds": 60},
                        {"type": "ban", "account": ids["hana"]}, {"type": "delete", "message_id": host_said},
                        {"type": "mute", "account": ids["op"], "seconds": 60}):
            refused = await m.request(**request)
            assert refused["type"] == "notice" and refused["code"] == "outranked", request
        assert (await m.request(type="mute", account=ids["fanny"], seconds=60))["type"] == "ok"
        assert (await h.request(type="mute", account=ids["mona"], seconds=60))["type"] == "ok"
        assert (await o.request(type="delete", message_id=host_said))["type"] == "ok"
    room = app.interaction.rooms[room_id]
    said = [(mm.author_id, mm.author_name) for mm, _ in room.transcript() if mm.text == "hello from a guest"]
    assert said == [("guest:Zk3xQ9pLm2Rt7Wv1", "Guest7Wv1")]
    # The audit log: the owner and the team's moderator may read it, a viewer may not.
    audit = f"/api/v1/rooms/{room_id}/chat/audit"
    for token, expected in ((await media_token(host), 200), (await media_token(mod), 200),
                            (await media_token(fan), 403)):
        reply = await api.call("GET", audit, token=token)
        assert reply.status == expected, reply.body

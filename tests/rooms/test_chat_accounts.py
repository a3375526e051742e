"""Chat with real accounts: display names from profiles, the room's owner as
host, followers-only mode that knows who follows the host, and media tokens
from the API as the chat's room token."""

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

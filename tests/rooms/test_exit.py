"""Account exit: refused with the reason while something is unsettled; once
done, no table holds the account's personal data or generated content; an
operator's forced exit is audited without naming the person."""

import trio


async def table_dump(app) -> str:
    """Every row of every table, as text (blobs decoded leniently)."""

    def dump(c):
        out = []
        for (table,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in c.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        value = value.decode("utf-8", "replace")
                    out.append(f"{table}: {value}")
        return "\n".join(out)

    return await app.db.read(dump)


async def test_exit_deletes_personal_data_and_content(api, room_fields):
    app = api.app
    host = await api.user("maria_host", "host", display_name="Maria Personal",
                          photo_url="https://cdn.example/maria-face.jpg", gender="female", region="ES")
    fan = await api.user("fan_friend", "audience", display_name="Fan Friend")
    room = await api.call("POST", "/api/v1/rooms", room_fields(
        title="Maria unique launch", description="Maria's private story"), token=host)
    room_id = room.body["room"]["id"]
    host_id = (await api.call("GET", "/api/v1/me", token=host)).body["id"]
    await api.call("POST", "/api/v1/me/check-in", token=host)
    await api.call("POST", "/api/v1/me/verification", {"document_reference": "passport-X123"}, token=host)
    await api.call("PUT", "/api/v1/accounts/fan_friend/follow", token=host)
    await api.call("PUT", "/api/v1/accounts/maria_host/follow", token=fan)
    await api.call("POST", f"/api/v1/rooms/{room_id}/comments", {"text": "fan comment here"}, token=fan)
    await api.call("POST", f"/api/v1/rooms/{room_id}/comments", {"text": "Maria replies here"},
                   token=host)
    await api.call("PUT", f"/api/v1/rooms/{room_id}/rating", {"positive": True}, token=fan)

    # While the room is live the exit is refused, with the reason.
    rooms = app.plugins.get("rooms")
    start = rooms._cache[room_id]["scheduled_start"]
    rooms.clock = lambda: start + 1
    app.relay.publish(room_id, owner="rtmp")  # the push arrives
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "live")
    refused = await api.call("DELETE", "/api/v1/me", {"password": "password-maria_host", "confirm": True},
                             token=host)
    assert refused.status == 409 and room_id in refused.body["error"]["message"]
    rooms.clock = lambda: start + 10**6
    await rooms.tick()
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "ended")

    wrong = await api.call("DELETE", "/api/v1/me", {"password": "nope", "confirm": True}, token=host)
    assert wrong.status == 401
    before = await table_dump(app)
    personal = [host_id, "maria_host", "Maria Personal", "maria-face.jpg", "passport-X123",
                "Maria unique launch", "Maria's private story", "Maria replies here", room_id]
    assert all(needle in before for needle in personal)

    gone = await api.call("DELETE", "/api/v1/me", {"password": "password-maria_host", "confirm": True},
                          token=host)
    assert gone.status == 200, gone.body
    after = await table_dump(app)
    for needle in personal:
        assert needle not in after, f"{needle!r} survived the exit"
    # The comment of the other account went with the room it was on.
    assert "fan comment here" not in after
    assert "fan_friend" in after
    assert (await api.call("GET", "/api/v1/me", token=host)).status == 403
    assert (await api.call("GET", "/api/v1/accounts/maria_host")).status == 404


async def test_forced_exit_is_audited_without_the_name(api):
    operator = await api.operator()
    cheat = await api.user("cheater", "host")
    cheat_id = (await api.call("GET", "/api/v1/me", token=cheat)).body["id"]
    reply = await api.call("POST", "/api/v1/accounts/cheater/forced-exit",
                           {"reason": "sold counterfeit goods"}, token=operator)
    assert reply.status == 200
    log = (await api.call("GET", "/api/v1/audit-log", token=operator)).body["entries"]
    assert log[0]["action"] == "forced_exit" and log[0]["reason"] == "sold counterfeit goods"
    assert log[0]["subject"].startswith("sha256:")
    dump = await table_dump(api.app)
    assert cheat_id not in dump and "cheater" not in dump

"""Warm-up and search: upcoming rooms, search by hashtag, partial title, date
range, account name and keyword (FTS5, ranked, paginated), no result, and
recommendations that explain their score."""

import time
import urllib.parse


async def make_rooms(api, room_fields, iso_time):
    maria = await api.user("maria", "host", display_name="Maria Shoes")
    lee = await api.user("lee", "host", display_name="Lee Kitchen")
    day = 86400
    now = time.time()
    ids = {}
    for name, token, fields in (
        ("sneakers", maria, room_fields(title="Spring sneakers launch", hashtags=["springsale", "shoes"],
                                        scheduled_start=iso_time(now + day))),
        ("boots", maria, room_fields(title="Winter boots clearance", hashtags=["shoes"],
                                     keywords=["leather"], scheduled_start=iso_time(now + 3 * day))),
        ("woks", lee, room_fields(title="Woks and knives", hashtags=["kitchen"], language="en",
                                  keywords=["cookware"], description="Sneak peek at our cookware",
                                  scheduled_start=iso_time(now + 2 * day))),
    ):
        reply = await api.call("POST", "/api/v1/rooms", fields, token=token)
        assert reply.status == 201, reply.body
        ids[name] = reply.body["room"]["id"]
    return ids, now


async def search(api, **params):
    reply = await api.call("GET", "/api/v1/rooms/search?" + urllib.parse.urlencode(params))
    assert reply.status == 200, reply.body
    return [r["id"] for r in reply.body["rooms"]], reply.body


async def test_search_cases(api, room_fields, iso_time):
    ids, now = await make_rooms(api, room_fields, iso_time)
    day = 86400
    assert (await search(api, hashtag="#shoes"))[0] == [ids["sneakers"], ids["boots"]]
    assert (await search(api, hashtag="kitchen"))[0] == [ids["woks"]]
    # A partial title: words match as prefixes; the title outranks a description hit.
    found = (await search(api, q="sneak"))[0]
    assert found[0] == ids["sneakers"], (found, ids)
    assert set(found) == set(ids.values())  # the other two say "sneak" in their descriptions
    assert (await search(api, q="winter boo"))[0] == [ids["boots"]]
    assert (await search(api, q="leather"))[0] == [ids["boots"]]
    assert set((await search(api, **{"from": iso_time(now + 1.5 * day),
                                     "to": iso_time(now + 3.5 * day)}))[0]) == {ids["boots"], ids["woks"]}
    assert (await search(api, host="lee"))[0] == [ids["woks"]]
    assert set((await search(api, q="maria"))[0]) == {ids["sneakers"], ids["boots"]}
    assert (await search(api, q="Kitchen", host="lee"))[0] == [ids["woks"]]
    assert (await search(api, q="submarine"))[0] == []
    assert (await search(api, host="nobody"))[0] == []
    assert (await search(api, hashtag="shoes", **{"from": iso_time(now + 10 * day)}))[0] == []
    # Injection attempts are words, not FTS5 syntax.
    assert (await search(api, q='sneak" OR title:*'))[0] == []
    first, body = await search(api, hashtag="shoes", per_page=1)
    second, _ = await search(api, hashtag="shoes", per_page=1, page=2)
    assert body["total"] == 2 and first + second == [ids["sneakers"], ids["boots"]]

    upcoming = (await api.call("GET", "/api/v1/rooms/upcoming")).body
    assert [r["id"] for r in upcoming["rooms"]] == [ids["sneakers"], ids["woks"], ids["boots"]]


async def test_recommendations_explain_themselves(api, room_fields, iso_time):
    ids, _ = await make_rooms(api, room_fields, iso_time)
    fan = await api.user("fan", "audience")
    assert (await api.call("PUT", "/api/v1/accounts/lee/follow", token=fan)).status == 200
    reply = await api.call("GET", "/api/v1/me/recommendations", token=fan)
    assert reply.status == 200
    first = reply.body["recommendations"][0]
    assert first["room"]["id"] == ids["woks"]
    assert first["reasons"][0]["reason"] == "follows_host"
    assert first["score"] == sum(r["points"] for r in first["reasons"])
    # Liking a shoe room makes the other shoe room share a hashtag with the fan's taste.
    await api.call("PUT", f"/api/v1/rooms/{ids['sneakers']}/rating", {"positive": True}, token=fan)
    reply = await api.call("GET", "/api/v1/me/recommendations", token=fan)
    by_id = {r["room"]["id"]: r for r in reply.body["recommendations"]}
    reasons = {r["reason"] for r in by_id[ids["boots"]]["reasons"]}
    assert {"shared_hashtags", "popular_host"} <= reasons

"""The statistics of a live from a scripted session (joins and leaves
through the viewer hooks the relay fires, chat through the room's chat,
page events through the HTTP API, orders through the order hooks), checked
against figures computed by hand; and who may read them."""

from __future__ import annotations

import csv
import importlib.util
import io

import trio

from shopcast.plugins._chat_engine import Author, Role



async def _live_room(api, rooms_api, clock, host_token: str, **fields):
    """Create a room, make it live at ``clock.now`` (a local publisher's
    broadcast under its id); returns (room id, broadcast)."""
    app = api.app
    rooms = app.plugins.get("rooms")
    body = rooms_api.room_body(scheduled_start=rooms_api.iso(clock.now + 3600), **fields)
    created = await api.call("POST", "/api/v1/rooms", body, token=host_token)
    assert created.status == 201, created.body
    room_id = created.body["room"]["id"]
    clock.now = rooms._cache[room_id]["scheduled_start"] + 1
    broadcast = app.relay.publish(room_id)
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "live")
    return room_id, broadcast


async def _end(api, room_id: str, broadcast) -> None:
    broadcast.end()
    with trio.fail_after(10):
        await api.app.plugins.get("rooms").wait_for_state(room_id, "ended")


async def test_a_scripted_session_gives_the_statistics_computed_by_hand(api_server, clock, rooms_api):
    api = await api_server({"rooms": {"push_lost_end_after_s": 0.0}})
    app = api.app
    stats, rooms, plugins = app.plugins.get("statistics"), app.plugins.get("rooms"), app.plugins
    rooms.clock = stats.clock = clock
    host = await api.user("hana", "host", display_name="Hana")
    # An earlier live of the same host, which A watched: A is a returning viewer.
    earlier, earlier_broadcast = await _live_room(api, rooms_api, clock, host)
    await plugins.notify("shopcast_viewer_joined", room_id=earlier, subject="account:A", replay=False)
    await _end(api, earlier, earlier_broadcast)
    room_id, broadcast = await _live_room(api, rooms_api, clock, host)
    t0 = clock.now
    chat = app.interaction.room(room_id)

    async def at(offset_s: float) -> None:
        clock.now = t0 + offset_s

    async def join(who: str, replay: bool = False) -> None:
        await plugins.notify("shopcast_viewer_joined", room_id=room_id, subject=f"account:{who}", replay=replay)

    async def leave(who: str, replay: bool = False) -> None:
        await plugins.notify("shopcast_viewer_left", room_id=room_id, subject=f"account:{who}", replay=replay)

    async def say(who: str, text: str) -> None:
        # Chat stamps messages with wall-clock time: here the test's clock.
        chat.handle(Author(who, who, Role.VIEWER, registered=True), {"type": "message", "text": text},
                    now_s=clock.now, media_timestamp_us=0)
        await stats.poll_chat()  # read at this (fake) time

    async def event(**body) -> None:
        reply = await api.call("POST", f"/api/v1/rooms/{room_id}/events", body)
        assert reply.status == 204, reply.body

    async def order(kind: str, order_id: str, who: str, total: int) -> None:
        view = {"id": order_id, "room_id": room_id, "buyer_id": who, "total": total, "currency": "EUR",
                "product_id": "shoe-1"}
        if kind in ("refunded", "returned"):  # as the orders plugin tells a status change
            await plugins.notify("shopcast_order_updated", order={**view, "status": kind}, previous="paid")
        else:
            await plugins.notify(f"shopcast_order_{kind}", order=view)

    await at(0); await join("A"); await event(type="arrival", source="upcoming", viewer="A")
    await event(type="impression", pin_id="p1", viewer="A")
    await at(10); await join("B"); await event(type="arrival", source="share", viewer="B")
    await event(type="impression", pin_id="p1", viewer="B"); await event(type="share", viewer="B")
    await at(12); await leave("B")
    await at(30); await join("C"); await event(type="arrival", viewer="C")
    await event(type="impression", pin_id="p1", viewer="C"); await event(type="impression", pin_id="p1", viewer="C")
    await at(45); await say("A", "hello")
    await at(50); await say("C", "price?")
    chat.react(Author("C", "C", Role.VIEWER), "heart", now_s=trio.current_time())
    chat.react(Author("C", "C", Role.VIEWER), "fire", now_s=trio.current_time())
    await at(58); await event(type="click", pin_id="p1", viewer="A")
    await at(60); await order("placed", "o1", "A", 2500)
    await at(61); await order("paid", "o1", "A", 2500)
    await at(70); await join("B")
    await at(75); await leave("B")
    await at(100); await leave("A")
    await at(130); await join("A"); await say("A", "bought it")
    await at(140); await event(type="click", pin_id="p1", viewer="C")
    await at(150); await order("placed", "o2", "C", 1000)
    await at(151); await order("paid", "o2", "C", 1000)
    await at(170); await order("placed", "o3", "C", 400)
    await at(200); await leave("A"); await order("refunded", "o2", "C", 1000)
    await at(240); await _end(api, room_id, broadcast)  # C is still watching: to the end
    # The replay.
    await at(300); await join("D", replay=True)
    await event(type="click", pin_id="p1", viewer="D", replay=True)
    await at(305); await order("placed", "o4", "D", 700)
    await at(306); await order("paid", "o4", "D", 700)
    await at(310); await leave("D", replay=True)
    await at(320); await join("E", replay=True)
    await at(321); await leave("E", replay=True)
    await at(400)

    operator = await api.operator()
    reply = await api.call("GET", f"/api/v1/rooms/{room_id}/statistics", token=host)
    assert reply.status == 200, reply.body
    report = reply.body
    assert report["live_length_s"] == 240
    # Sessions: A 0-100 and 130-200, B 10-12 and 70-75, C 30-240 (open at the end).
    assert report["live"] == {
        "peak_concurrent": 3, "unique_viewers": 3, "sessions": 5, "views": 4,
        "average_watch_time_s": round((170 + 7 + 210) / 3, 3),
        "chat_messages": 3, "chatters": 2, "reactions": 2,
        "impressions": 4, "clicks": 2, "ctr": 0.5, "orders": 3, "paid_orders": 2,
        "click_to_order": 1.5, "gmv_minor": 3500, "currency": "EUR", "buyers": 2,
        "conversion_rate": round(2 / 3, 4), "refunded_orders": 1, "returned_orders": 0,
        "refund_rate": 0.5, "return_rate": 0.0}
    assert report["funnel"] == {
        "acquisition": {"arrivals": 3, "from_upcoming": 1, "from_share": 1, "from_direct": 1},
        "activation": {"viewers_past_activation": 2, "activation_s": 10.0, "rate": round(2 / 3, 4)},
        "retention": {"returning_viewers": 1, "rate": round(1 / 3, 4)},
        "referral": {"shares": 1},
        "revenue": {"gmv_minor": 3500, "paid_orders": 2}}
    assert report["replay"] == {
        "unique_viewers": 2, "sessions": 2, "views": 1, "average_watch_time_s": 5.5,
        "arrivals": 0, "shares": 0, "impressions": 0, "clicks": 1, "ctr": None, "orders": 1, "paid_orders": 1,
        "click_to_order": 1.0, "gmv_minor": 700, "currency": "EUR", "buyers": 1,
        "conversion_rate": 0.5, "refunded_orders": 0, "returned_orders": 0,
        "refund_rate": 0.0, "return_rate": 0.0}
    assert [(m["viewers"], m["chat_messages"], m["orders"]) for m in report["timeline"]] == [
        (2, 2, 0), (3, 0, 1), (2, 1, 2), (2, 0, 0)]
    # CSV: the same figures.
    as_csv = await api.call("GET", f"/api/v1/rooms/{room_id}/statistics?format=csv", token=operator)
    assert as_csv.status == 200 and as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(as_csv.body)))
    assert ["live", "gmv_minor", "3500"] in rows and ["replay", "views", "1"] in rows
    assert ["funnel.referral", "shares", "1"] in rows
    assert ["1", rooms_api.iso(t0 + 60), "3", "0", "1"] in rows
    # The chart: one line per series, drawn from the timeline.
    svg = await api.call("GET", f"/api/v1/rooms/{room_id}/statistics/chart.svg", token=host)
    assert svg.status == 200 and svg.headers["content-type"] == "image/svg+xml"
    drawing = svg.body.decode()
    assert drawing.startswith("<svg") and drawing.count("<polyline") == 3
    # Four points per line, the viewers' highest at the peak of 3 (the top).
    viewers = drawing.split('class="viewers"')[1].split('points="')[1].split('"')[0].split()
    assert len(viewers) == 4 and viewers[1].endswith(",36.0")
    png = await api.call("GET", f"/api/v1/rooms/{room_id}/statistics/chart.png", token=host)
    if importlib.util.find_spec("matplotlib") is None:
        assert png.status == 404 and png.error_field == "format"
    else:
        assert png.status == 200 and png.body[:8] == b"\x89PNG\r\n\x1a\n"


async def test_only_the_owner_and_operators_read_statistics_and_events_are_checked(api_server, clock,
                                                                                   rooms_api):
    api = await api_server({"rooms": {"push_lost_end_after_s": 0.0},
                            "statistics": {"events_per_viewer_per_room_max": 3}})
    app = api.app
    app.plugins.get("rooms").clock = clock
    host = await api.user("hana", "host", display_name="Hana")
    other = await api.user("olga", "host", display_name="Olga")
    viewer = await api.user("vera", "audience", display_name="Vera")
    room_id, broadcast = await _live_room(api, rooms_api, clock, host)
    path = f"/api/v1/rooms/{room_id}/statistics"
    assert (await api.call("GET", path)).status == 401
    assert (await api.call("GET", path, token=other)).status == 403
    assert (await api.call("GET", path, token=viewer)).status == 403
    assert (await api.call("GET", path + "/chart.svg", token=other)).status == 403
    assert (await api.call("GET", path, token=await api.operator())).status == 200
    bad = await api.call("GET", path + "?format=xml", token=host)
    assert bad.status == 400 and bad.error_field == "format"
    events = f"/api/v1/rooms/{room_id}/events"
    for body, field in (({"type": "like"}, "type"), ({"type": "arrival", "source": "ads"}, "source"),
                        ({"type": "click", "pin_id": "x" * 500}, "pin_id"), ({}, "type"),
                        ({"type": "click", "product_id": ""}, "product_id"),
                        ({"type": "click", "replay": "yes"}, "replay"),
                        ({"type": "click", "viewer": 7}, "viewer"),
                        ({"type": "click", "extra": 1}, "extra")):
        reply = await api.call("POST", events, body)
        assert reply.status == 400 and field in (reply.error_field or ""), (body, reply.body)
    missing = await api.call("POST", "/api/v1/rooms/r0000000000000000/events", {"type": "click"})
    assert missing.status == 404
    for _ in range(3):
        assert (await api.call("POST", events, {"type": "click", "viewer": "v1"})).status == 204
    refused = await api.call("POST", events, {"type": "click", "viewer": "v1"})
    assert refused.status == 429
    # Another viewer is still counted, and the refused event was not.
    assert (await api.call("POST", events, {"type": "click", "viewer": "v2"})).status == 204
    report = (await api.call("GET", path, token=host)).body
    assert report["live"]["clicks"] == 4
    await _end(api, room_id, broadcast)


async def test_held_chat_counts_once_approved_and_replay_page_events_count_apart(api_server, clock,
                                                                                rooms_api):
    api = await api_server({"rooms": {"push_lost_end_after_s": 0.0}})
    app = api.app
    stats, rooms = app.plugins.get("statistics"), app.plugins.get("rooms")
    rooms.clock = stats.clock = clock
    host = await api.user("hana", "host", display_name="Hana")
    room_id, broadcast = await _live_room(api, rooms_api, clock, host)
    chat = app.interaction.room(room_id)
    moderator = Author("hana", "Hana", Role.HOST, registered=True)
    chat.set_mode(moderator, now_s=clock.now, hold_for_review=True)
    chat.set_blocklist(moderator, ["spam"], now_s=clock.now)  # flagged: held for review

    def say(who: str, text: str) -> dict:
        return chat.handle(Author(who, who, Role.VIEWER, registered=True), {"type": "message", "text": text},
                           now_s=clock.now, media_timestamp_us=0)

    for who in ("A", "B", "C"):
        assert say(who, f"spam? question from {who}")["type"] == "held"
    await stats.poll_chat()  # all three held: none shown yet
    first, second, _ = [m.id for m in chat.held()]
    chat.approve(moderator, first, now_s=clock.now)
    chat.reject(moderator, second, now_s=clock.now)
    await stats.poll_chat()
    chat.set_mode(moderator, now_s=clock.now, hold_for_review=False)
    assert say("D", "shown at once")["type"] == "ok"
    events = f"/api/v1/rooms/{room_id}/events"

    async def event(**body) -> None:
        reply = await api.call("POST", events, body)
        assert reply.status == 204, reply.body

    clock.now += 5
    await event(type="arrival", source="share", viewer="guestguestguest01")
    await event(type="impression", pin_id="p1", viewer="guestguestguest01")
    await event(type="click", pin_id="p1", viewer="guestguestguest01")
    await event(type="share", viewer="guestguestguest01")
    # A replay page's events (the web pages flag them), even while the live is on...
    await event(type="impression", pin_id="p1", viewer="guestguestguest02", replay=True)
    clock.now += 5
    await _end(api, room_id, broadcast)
    clock.now += 5
    # ... and any event once it has ended, flagged or not.
    await event(type="arrival", source="share", viewer="guestguestguest03", replay=True)
    await event(type="impression", pin_id="p1", viewer="guestguestguest03", replay=True)
    await event(type="click", pin_id="p1", viewer="guestguestguest03")
    await event(type="share", viewer="guestguestguest03", replay=True)
    report = (await api.call("GET", f"/api/v1/rooms/{room_id}/statistics", token=host)).body
    # One approved, one shown at once; the rejected and the still-held never.
    assert report["live"]["chat_messages"] == 2 and report["live"]["chatters"] == 2
    assert (report["live"]["impressions"], report["live"]["clicks"], report["live"]["ctr"]) == (1, 1, 1.0)
    assert report["funnel"]["acquisition"]["arrivals"] == 1
    assert report["funnel"]["referral"]["shares"] == 1
    replay = report["replay"]
    assert (replay["impressions"], replay["clicks"], replay["ctr"]) == (2, 1, 0.5)
    assert (replay["arrivals"], replay["shares"]) == (1, 1)


async def test_real_viewer_sessions_live_and_replay_make_the_statistics(api_server, clock, rooms_api):
    """Viewers are moq-lite sessions of shopcast.client with viewer tokens of
    distinct subjects (two guests' browsers and an account); after the live
    one guest watches the replay. Their joins and leaves come from the relay,
    flagged replay by the server, not from the test."""
    import time

    from shopcast.client import connect
    from shopcast.server.moq import encode_frame

    api = await api_server({"rooms": {"push_lost_end_after_s": 0.0}})
    app = api.app
    stats, rooms = app.plugins.get("statistics"), app.plugins.get("rooms")
    rooms.clock = stats.clock = clock
    host = await api.user("hana", "host", display_name="Hana")
    await api.user("vera", "audience", display_name="Vera")
    vera = (await api.app.db.read(lambda c: c.execute(
        "SELECT id FROM accounts WHERE name = 'vera'").fetchone()))[0]
    room_id, broadcast = await _live_room(api, rooms_api, clock, host)
    video = broadcast.track("video")
    video.write_frame(encode_frame(0, b"\x00\x00\x00\x01\x65"), keyframe=True)
    url = f"https://127.0.0.1:{api.port}/moq"
    sha = app.certificate.sha256_hex
    guests = ["guest:" + "a" * 20, "guest:" + "b" * 20]

    def token(subject: str) -> str:
        return app.tokens.mint(subject=subject, role="viewer", room=room_id, ttl_s=600, now=time.time())

    async def stored(kind: str, count: int) -> None:
        def rows(c):
            found = c.execute("SELECT subject, replay FROM stat_events WHERE room_id = ? AND kind = ?",
                              (room_id, kind)).fetchall()
            return [tuple(row) for row in found]
        with trio.fail_after(10):
            while True:
                changed = stats.stored  # taken before reading: a store during the read sets it
                found = await app.db.read(rows)
                if len(found) >= count:
                    return found
                await changed.wait()

    t0 = clock.now
    async with connect(url, token=token(guests[0]), certificate_sha256=sha) as guest, \
            connect(url, token=token(vera), certificate_sha256=sha) as account:
        for viewer in (guest, account):
            upstream = await viewer.subscribe(room_id, "video")
            with trio.fail_after(10):
                await upstream.accepted.wait()
        joins = await stored("join", 2)
        assert sorted(joins) == sorted([(guests[0], 0), (f"account:{vera}", 0)])
        # The guest's page counts an impression with the same viewer token.
        reply = await api.call("POST", f"/api/v1/rooms/{room_id}/events",
                               {"type": "impression", "pin_id": "p1"}, token=token(guests[0]))
        assert reply.status == 204, reply.body
        clock.now = t0 + 20
    await stored("leave", 2)
    for order_id, buyer in (("o1", vera), ("o2", "someone-who-never-watched")):
        view = {"id": order_id, "room_id": room_id, "buyer_id": buyer, "total": 900, "currency": "EUR"}
        await app.plugins.notify("shopcast_order_placed", order=view)
        await app.plugins.notify("shopcast_order_paid", order=view)
    clock.now = t0 + 30
    await _end(api, room_id, broadcast)
    with trio.fail_after(10):
        while app.recorder.recordings:
            await app.recorder.flushed.wait()
    clock.now = t0 + 40
    async with connect(url, token=token(guests[1]), certificate_sha256=sha) as replayer:
        await replayer.subscribe(room_id, "video")
        joins = await stored("join", 3)
        assert (guests[1], 1) in joins  # the server flagged it: replay=True reached the statistics
        reply = await api.call("POST", f"/api/v1/rooms/{room_id}/events",
                               {"type": "impression", "pin_id": "p1", "replay": True},
                               token=token(guests[1]))
        assert reply.status == 204, reply.body
        clock.now = t0 + 50
    await stored("leave", 3)
    assert app.replays.replays_started == 1
    report = (await api.call("GET", f"/api/v1/rooms/{room_id}/statistics", token=host)).body
    live, replay = report["live"], report["replay"]
    assert (live["unique_viewers"], live["sessions"], live["peak_concurrent"]) == (2, 2, 2)
    assert live["average_watch_time_s"] == 20.0
    assert (live["impressions"], replay["impressions"]) == (1, 1)
    # Two paying buyers, one of whom watched: conversion 1 of 2 viewers.
    assert (live["buyers"], live["conversion_rate"]) == (2, 0.5)
    assert (replay["unique_viewers"], replay["sessions"], replay["average_watch_time_s"]) == (1, 1, 10.0)


def _events():
    from hypothesis import strategies as st

    from shopcast.plugins._statistics import EventRow

    subjects = st.sampled_from(["guest:g1", "account:guest:g1", "account:a1", "account:a2", "viewer:g2",
                                "guest:g2", "account:a3", ""])
    kinds = st.sampled_from(["join", "leave", "impression", "click", "share", "arrival", "chat",
                             "order_placed", "order_paid", "order_refunded"])
    return st.lists(st.builds(EventRow, at=st.floats(0, 400), kind=kinds, subject=subjects,
                              replay=st.booleans(), order_id=st.sampled_from(["o1", "o2", "o3"]),
                              amount_minor=st.integers(0, 10_000)), max_size=60)


def test_the_figures_stay_within_their_bounds_whatever_the_events():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from shopcast.plugins._statistics import compute_statistics

    @settings(max_examples=300, deadline=None)
    @given(_events(), st.sets(st.sampled_from(["guest:g1", "account:a1", "viewer:g2", "account:a9"])))
    def check(events, returning):
        report = compute_statistics(events, started_at=100.0, ended_at=300.0, now=400.0, view_min_s=3.0,
                                    activation_s=10.0, bucket_s=60, max_buckets=100, returning=returning)
        for section in ("live", "replay"):
            figures = report[section]
            assert figures["conversion_rate"] is None or 0 <= figures["conversion_rate"] <= 1
            assert figures["views"] <= figures["sessions"]
            assert figures["unique_viewers"] <= figures["sessions"]
        live, funnel = report["live"], report["funnel"]
        assert live["average_watch_time_s"] <= report["live_length_s"]
        assert funnel["retention"]["returning_viewers"] <= live["unique_viewers"]
        assert funnel["activation"]["viewers_past_activation"] <= live["unique_viewers"]
        for stage in ("retention", "activation"):
            assert funnel[stage]["rate"] is None or 0 <= funnel[stage]["rate"] <= 1

    check()

"""Pins in step with the video: a host publishes the demo clip to a room over
moq-lite, pins cards through the REST API, and a real QUIC viewer receives
them on the room broadcast's commerce track stamped with the media
timestamps of the frames they were made on; a late joiner starts with the
state of the pins. Flash-sale cards: the flash price and limits at Buy Now."""

from pathlib import Path

import msgpack
import trio

import shopcast.server
from shopcast.client import connect
from shopcast.server.moq import decode_frame_untrusted

DEMO_FLV = Path(shopcast.server.__file__).parent / "media" / "demo.flv"


def decode(frame):
    timestamp_us, payload = decode_frame_untrusted(frame.payload)
    return timestamp_us, msgpack.unpackb(bytes(payload))


async def live_room(api, shop, nursery):
    """Publish the demo clip into the shop's room (as its host, over moq-lite) until cancelled."""
    app = api.app
    start = shop.rooms._cache[shop.room_id]["scheduled_start"]
    shop.rooms.clock = lambda: start + 1
    token = (await api.call("POST", f"/api/v1/rooms/{shop.room_id}/media-token", {"publish": True},
                            token=shop.host)).body["token"]

    async def publish():
        async with connect(f"https://127.0.0.1:{app.port}/moq", token=token,
                           certificate_sha256=app.certificate.sha256_hex) as host:
            await host.publish_flv(shop.room_id, DEMO_FLV, loops=50)

    nursery.start_soon(publish)
    with trio.fail_after(20):
        await shop.rooms.wait_for_state(shop.room_id, "live")


async def pin(api, shop, body, status=201):
    reply = await api.call("POST", f"/api/v1/rooms/{shop.room_id}/pins", body, token=shop.host)
    assert reply.status == status, reply.body
    return reply.body


async def next_message(upstream, kind):
    """The next frame of the commerce track whose payload has type ``kind``."""
    with trio.fail_after(15):
        while True:
            frame = await upstream.frames.receive()
            timestamp_us, message = decode(frame)
            if message["type"] == kind:
                return frame, timestamp_us, message


async def test_pins_arrive_with_the_media_timestamps_of_their_frames(api, shop):
    app = api.app
    async with trio.open_nursery() as nursery:
        await live_room(api, shop, nursery)
        viewer_token = (await api.call("POST", f"/api/v1/rooms/{shop.room_id}/media-token", {},
                                       token=shop.buyer)).body["token"]
        async with connect(f"https://127.0.0.1:{app.port}/moq", token=viewer_token,
                           certificate_sha256=app.certificate.sha256_hex) as viewer:
            commerce = await viewer.subscribe(shop.room_id, "commerce")
            video = await viewer.subscribe(shop.room_id, "video")
            # A group opens with the state: nothing pinned yet.
            frame, timestamp_us, message = await next_message(commerce, "state")
            assert frame.index == 0 and message["pins"] == [] and message["media_us"] == timestamp_us

            # The host had the frame at 1.234567 s on screen.
            made = await pin(api, shop, {"kind": "product", "product_id": shop.product["id"],
                                         "media_us": 1_234_567})
            assert made["media_us"] == 1_234_567 and made["product"]["title"] == "Trail runner 2"
            assert made["product"]["skus"][0]["price_minor"] == 5999 and made["flash_sale"] is None
            _, timestamp_us, message = await next_message(commerce, "pin")
            assert timestamp_us == 1_234_567 and message["pin"]["id"] == made["id"]

            # No media_us: the live edge, the timestamp of a video frame the viewer gets.
            seen_video = set()
            with trio.fail_after(15):
                while len(seen_video) < 5:
                    seen_video.add(decode_frame_untrusted((await video.frames.receive()).payload)[0])
            edge = await pin(api, shop, {"kind": "product", "product_id": shop.product["id"]})
            _, timestamp_us, message = await next_message(commerce, "pin")
            assert timestamp_us == edge["media_us"] == message["pin"]["media_us"]
            with trio.fail_after(15):
                while edge["media_us"] not in seen_video:
                    ts = decode_frame_untrusted((await video.frames.receive()).payload)[0]
                    assert ts <= edge["media_us"] or edge["media_us"] in seen_video
                    seen_video.add(ts)

            flash = await pin(api, shop, {
                "kind": "flash_sale", "product_id": shop.product["id"], "media_us": 2_000_000,
                "flash_sale": {"price_minor": 2999, "countdown_s": 10, "duration_s": 60,
                               "per_buyer_limit": 1, "stock_cap": 3}})
            assert flash["flash_sale"]["price_minor"] == 2999 and flash["flash_sale"]["sold"] == 0
            # pins_max (3) are pinned: a fourth is refused, and nothing goes out.
            refused = await pin(api, shop, {"kind": "product", "product_id": shop.product["id"]}, 409)
            assert refused["error"]["code"] == "too_many_pins"

            reply = await api.call("DELETE", f"/api/v1/rooms/{shop.room_id}/pins/{made['id']}",
                                   {"media_us": 3_000_000}, token=shop.host)
            assert reply.status == 200, reply.body
            _, timestamp_us, message = await next_message(commerce, "unpin")
            assert (timestamp_us, message["pin_id"], message["media_us"]) == (3_000_000, made["id"],
                                                                               3_000_000)
            listed = (await api.call("GET", f"/api/v1/rooms/{shop.room_id}/pins")).body["pins"]
            assert [p["id"] for p in listed] == [edge["id"], flash["id"]]

            # A late joiner's first frame is the state of what is pinned at the
            # start of the newest group (one starts every pins_state_interval_s).
            await shop.commerce.publish_pin_states()
            late = await viewer.subscribe(shop.room_id, "commerce")
            frame, timestamp_us, message = await next_message(late, "state")
            assert frame.index == 0
            assert [p["id"] for p in message["pins"]] == [edge["id"], flash["id"]]
            assert message["pins"][1]["flash_sale"]["stock_cap"] == 3
        nursery.cancel_scope.cancel()


async def test_pins_are_for_the_rooms_team_and_its_products(api, shop):
    body = {"kind": "product", "product_id": shop.product["id"]}
    path = f"/api/v1/rooms/{shop.room_id}/pins"
    reply = await api.call("POST", path, body, token=shop.host)
    assert reply.status == 409 and reply.body["error"]["code"] == "room_not_live"
    await shop.go_live()
    assert (await api.call("POST", path, body, token=shop.buyer)).status == 403
    reply = await api.call("POST", path, {**body, "product_id": "pnothere"}, token=shop.host)
    assert reply.status == 404 and reply.error_field == "product_id"
    reply = await api.call("POST", path, {**body, "kind": "coupon"}, token=shop.host)
    assert reply.status == 400 and reply.error_field == "coupon_code"
    reply = await api.call("POST", path, {**body, "coupon_code": "NOPE"}, token=shop.host)
    assert reply.status == 400 and reply.error_field == "coupon_code"
    reply = await api.call("POST", path, {**body, "kind": "coupon", "coupon_code": "NOPE"}, token=shop.host)
    assert reply.status == 404 and reply.error_field == "coupon_code"
    reply = await api.call("POST", path, {**body, "kind": "flash_sale", "flash_sale": {
        "price_minor": 1, "countdown_s": 5, "duration_s": 60, "per_buyer_limit": 1, "stock_cap": 1}},
        token=shop.host)
    assert reply.status == 400 and reply.error_field == "flash_sale.countdown_s"
    reply = await api.call("POST", path, {**body, "kind": "flash_sale", "flash_sale": {
        "price_minor": 1, "countdown_s": 10, "duration_s": 1201, "per_buyer_limit": 1, "stock_cap": 1}},
        token=shop.host)
    assert reply.status == 400 and reply.error_field == "flash_sale.duration_s"
    # The platform may pin too (no broadcast: media_us is 0).
    reply = await api.call("POST", path, body, token=api.service_token())
    assert reply.status == 201 and reply.body["media_us"] == 0
    reply = await api.call("DELETE", f"{path}/{reply.body['id']}", raw=b"{\"media_us\": -5}",
                           token=shop.host)
    assert reply.status == 400 and reply.error_field == "media_us"
    assert (await api.call("DELETE", f"{path}/pinnothere", token=shop.host)).status == 404


async def test_flash_sale_price_window_limit_and_cap(api, shop):
    await shop.go_live()
    now = shop.commerce.clock()
    shop.commerce.clock = lambda: now
    flash = await pin(api, shop, {"kind": "flash_sale", "product_id": shop.product["id"], "flash_sale": {
        "price_minor": 2999, "countdown_s": 30, "duration_s": 60, "per_buyer_limit": 1, "stock_cap": 2}})
    body = {"sku_id": shop.sku_id, "quantity": 1, "pin_id": flash["id"]}
    reply = await shop.buy(body)
    assert reply.status == 409 and reply.body["error"]["code"] == "flash_sale_closed"
    shop.commerce.clock = lambda: now + 31
    reply = await shop.buy(body)
    assert reply.status == 201, reply.body
    assert (reply.body["unit_price"], reply.body["total"], reply.body["pin_id"]) == (2999, 2999, flash["id"])
    reply = await shop.buy(body)
    assert reply.status == 409 and reply.body["error"]["code"] == "per_buyer_limit"
    # Without the card, the normal price and limits apply.
    reply = await shop.buy({"sku_id": shop.sku_id, "quantity": 1})
    assert reply.status == 201 and reply.body["unit_price"] == 5999
    second = await api.user("buyer2", "audience")
    assert (await shop.buy(body, token=second)).status == 201
    third = await api.user("buyer3", "audience")
    reply = await shop.buy(body, token=third)
    assert reply.status == 409 and reply.body["error"]["code"] == "sold_out"
    listed = (await api.call("GET", f"/api/v1/rooms/{shop.room_id}/pins")).body["pins"]
    assert listed[0]["flash_sale"]["sold"] == 2
    # A hold that expires gives its unit back to the flash sale's cap.
    shop.commerce.clock = lambda: now + 31 + shop.commerce.cfg.hold_expiry_s + 1
    await shop.commerce.expire_holds()
    listed = (await api.call("GET", f"/api/v1/rooms/{shop.room_id}/pins")).body["pins"]
    assert listed[0]["flash_sale"]["sold"] == 0
    shop.commerce.clock = lambda: now + 91
    reply = await shop.buy(body, token=third)
    assert reply.status == 409 and reply.body["error"]["code"] == "flash_sale_closed"
    reply = await shop.buy({**body, "pin_id": "pinnothere"}, token=third)
    assert reply.status == 404 and reply.error_field == "pin_id"


async def test_coupon_cards_arrive_on_the_commerce_track(api, shop):
    app = api.app
    for body in ({"code": "LIVE15", "kind": "percent", "value": 15, "max_uses": 100},
                 {"code": "FIVEOFF", "kind": "amount", "value": 500, "currency": "EUR", "max_uses": 2}):
        reply = await api.call("POST", f"/api/v1/rooms/{shop.room_id}/coupons", body, token=shop.host)
        assert reply.status == 201, reply.body
    async with trio.open_nursery() as nursery:
        await live_room(api, shop, nursery)
        viewer_token = (await api.call("POST", f"/api/v1/rooms/{shop.room_id}/media-token", {},
                                       token=shop.buyer)).body["token"]
        async with connect(f"https://127.0.0.1:{app.port}/moq", token=viewer_token,
                           certificate_sha256=app.certificate.sha256_hex) as viewer:
            commerce = await viewer.subscribe(shop.room_id, "commerce")
            await next_message(commerce, "state")
            percent = await pin(api, shop, {"kind": "coupon", "product_id": shop.product["id"],
                                            "coupon_code": "LIVE15", "media_us": 4_500_000})
            assert percent["kind"] == "coupon" and percent["coupon"] == {"code": "LIVE15", "percent": 15}
            frame, timestamp_us, message = await next_message(commerce, "pin")
            # The frame's media timestamp is the one the host pinned on; the
            # msgpack payload carries the card with its coupon.
            assert timestamp_us == 4_500_000
            card = message["pin"]
            assert (card["id"], card["kind"], card["media_us"]) == (percent["id"], "coupon", 4_500_000)
            assert card["coupon"] == {"code": "LIVE15", "percent": 15}
            assert card["product"]["id"] == shop.product["id"] and card["flash_sale"] is None
            amount = await pin(api, shop, {"kind": "coupon", "product_id": shop.product["id"],
                                           "coupon_code": "FIVEOFF", "media_us": 5_000_000})
            _, timestamp_us, message = await next_message(commerce, "pin")
            assert timestamp_us == 5_000_000 and message["pin"]["id"] == amount["id"]
            assert message["pin"]["coupon"] == {"code": "FIVEOFF", "amount_minor": 500, "currency": "EUR"}
            # A late joiner's state has both cards with their coupons.
            await shop.commerce.publish_pin_states()
            late = await viewer.subscribe(shop.room_id, "commerce")
            _, _, state = await next_message(late, "state")
            assert [(p["id"], p["coupon"]["code"]) for p in state["pins"]] == [
                (percent["id"], "LIVE15"), (amount["id"], "FIVEOFF")]
            # The card's coupon applies at Buy Now.
            bought = await shop.buy({"sku_id": shop.sku_id, "quantity": 1, "coupon_code": "LIVE15",
                                     "pin_id": percent["id"]})
            assert bought.status == 201 and (bought.body["discount"], bought.body["total"]) == (900, 5099)
            # Unpinned at a frame: the unpin object carries that timestamp.
            reply = await api.call("DELETE", f"/api/v1/rooms/{shop.room_id}/pins/{percent['id']}",
                                   {"media_us": 6_000_000}, token=shop.host)
            assert reply.status == 200
            _, timestamp_us, message = await next_message(commerce, "unpin")
            assert (timestamp_us, message["pin_id"]) == (6_000_000, percent["id"])
        nursery.cancel_scope.cancel()

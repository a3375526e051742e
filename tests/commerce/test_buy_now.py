"""Buy Now: orders with inventory holds, per-buyer limits, coupons, server
prices, hold expiry with a fake clock, and every idempotency case."""

import pytest


async def coupon(api, shop, **body):
    reply = await api.call("POST", f"/api/v1/rooms/{shop.room_id}/coupons", body, token=shop.host)
    assert reply.status == 201, reply.body
    return reply.body


async def test_buy_now_holds_stock_at_the_server_price(api, shop):
    reply = await shop.buy()
    assert reply.status == 409 and reply.body["error"]["code"] == "room_not_live"
    await shop.go_live()
    reply = await shop.buy({"sku_id": shop.sku_id, "quantity": 3})
    assert reply.status == 201, reply.body
    order = reply.body
    assert order["state"] == "pending" and order["quantity"] == 3
    assert (order["unit_price"], order["subtotal"], order["discount"], order["total"]) == (5999, 17997, 0, 17997)
    assert order["currency"] == "EUR" and all(isinstance(order[k], int) for k in ("total", "subtotal"))
    assert await shop.stock() == 7
    shown = await api.call("GET", f"/api/v1/orders/{order['id']}", token=shop.buyer)
    assert shown.status == 200 and {k: shown.body[k] for k in order} == order
    assert order["status"] == "pending" and order["total_minor"] == order["total"]
    assert [h["status"] for h in shown.body["history"]] == ["pending"]
    # The room's host sees it; another viewer does not.
    assert (await api.call("GET", f"/api/v1/orders/{order['id']}", token=shop.host)).status == 200
    stranger = await api.user("stranger", "audience")
    assert (await api.call("GET", f"/api/v1/orders/{order['id']}", token=stranger)).status == 404
    # A price from the client is refused, never used.
    reply = await shop.buy({"sku_id": shop.sku_id, "quantity": 1, "price": 1})
    assert reply.status == 400 and reply.error_field == "price"
    # A variant not on the room's list is not for sale there.
    reply = await shop.buy({"sku_id": "snothere", "quantity": 1})
    assert reply.status == 404 and reply.error_field == "sku_id"
    # A platform token has no buyer account.
    reply = await shop.buy(token=api.service_token())
    assert reply.status == 403


async def test_per_buyer_limit_and_sold_out(api, shop):
    # A variant's own limit overrides the default (5).
    cap = await shop.add_product(title="Cap", skus=[{"name": "one size", "price": 1000,
                                                     "currency": "EUR", "stock": 50,
                                                     "per_buyer_limit": 1}])
    await shop.go_live()
    assert (await shop.buy({"sku_id": shop.sku_id, "quantity": 5})).status == 201
    reply = await shop.buy()
    assert reply.status == 409 and reply.body["error"]["code"] == "per_buyer_limit"
    assert reply.error_field == "quantity"
    other = await api.user("buyer2", "audience")
    reply = await shop.buy({"sku_id": shop.sku_id, "quantity": 5}, token=other)
    assert reply.status == 201
    third = await api.user("buyer3", "audience")
    reply = await shop.buy(token=third)
    assert reply.status == 409 and reply.body["error"]["code"] == "sold_out"
    assert await shop.stock() == 0
    cap_sku = cap["skus"][0]["id"]
    assert (await shop.buy({"sku_id": cap_sku, "quantity": 1}, token=third)).status == 201
    reply = await shop.buy({"sku_id": cap_sku, "quantity": 1}, token=third)
    assert reply.status == 409 and reply.body["error"]["code"] == "per_buyer_limit"
    assert await shop.stock(cap_sku) == 49


async def test_coupons(api, shop):
    ten = await coupon(api, shop, code="TEN", kind="percent", value=10, max_uses=2)
    assert ten["uses"] == 0
    await coupon(api, shop, code="BIG", kind="amount", value=10**6, currency="EUR", max_uses=5)
    await coupon(api, shop, code="USD5", kind="amount", value=500, currency="USD", max_uses=5)
    reply = await api.call("POST", f"/api/v1/rooms/{shop.room_id}/coupons",
                           {"code": "TEN", "kind": "percent", "value": 5, "max_uses": 1}, token=shop.host)
    assert reply.status == 409 and reply.error_field == "code"
    for body, field in [({"code": "HALF", "kind": "percent", "value": 95, "max_uses": 1}, "value"),
                        ({"code": "AMT", "kind": "amount", "value": 5, "max_uses": 1}, "currency"),
                        ({"code": "PCT", "kind": "percent", "value": 5, "currency": "EUR",
                          "max_uses": 1}, "currency")]:
        reply = await api.call("POST", f"/api/v1/rooms/{shop.room_id}/coupons", body, token=shop.host)
        assert reply.status == 400 and reply.error_field == field, reply.body
    assert (await api.call("POST", f"/api/v1/rooms/{shop.room_id}/coupons",
                           {"code": "VIEW", "kind": "percent", "value": 5, "max_uses": 1},
                           token=shop.buyer)).status == 403
    await shop.go_live()
    other = await api.user("buyer2", "audience")
    reply = await shop.buy({"sku_id": shop.sku_id, "quantity": 1, "coupon_code": "TEN"})
    assert reply.status == 201 and (reply.body["discount"], reply.body["total"]) == (600, 5399)
    reply = await shop.buy({"sku_id": shop.sku_id, "quantity": 1, "coupon_code": "TEN"}, token=other)
    assert reply.status == 201
    reply = await shop.buy({"sku_id": shop.sku_id, "quantity": 1, "coupon_code": "TEN"})
    assert reply.status == 409 and reply.body["error"]["code"] == "coupon_used_up"
    reply = await shop.buy({"sku_id": shop.sku_id, "quantity": 1, "coupon_code": "BIG"})
    assert reply.status == 201 and reply.body["total"] == 0 and reply.body["discount"] == 5999
    reply = await shop.buy({"sku_id": shop.sku_id, "quantity": 1, "coupon_code": "USD5"})
    assert reply.status == 409 and reply.body["error"]["code"] == "coupon_invalid"
    reply = await shop.buy({"sku_id": shop.sku_id, "quantity": 1, "coupon_code": "NOPE"})
    assert reply.status == 409 and reply.error_field == "coupon_code"
    # Refusals took nothing.
    assert await shop.stock() == 7


async def pay_by_event(api, shop, order, now_s):
    """A payment provider's signed success event for ``order``, sent at ``now_s``."""
    import json

    from shopcast.plugins._payments import sign_payload

    body = json.dumps({"id": "evt_" + order["id"], "type": "payment_intent.succeeded",
                       "created": int(now_s), "data": {"intent_id": "pi_" + order["id"],
                                                       "order_id": order["id"],
                                                       "amount_minor": order["total"],
                                                       "currency": order["currency"]}}).encode()
    reply = await api.call("POST", "/api/v1/payments/webhook/test", raw=body, headers={
        "payment-signature": sign_payload(shop.commerce.payments_secret, int(now_s), body)})
    assert reply.status == 200, reply.body
    return reply.body


async def test_expired_holds_return_their_stock(api, shop):
    commerce = shop.commerce
    now = [1_000_000.0]
    commerce.clock = lambda: now[0]
    await coupon(api, shop, code="ONCE", kind="percent", value=10, max_uses=1)
    await shop.go_live()
    held = (await shop.buy({"sku_id": shop.sku_id, "quantity": 2, "coupon_code": "ONCE"})).body
    paid = (await shop.buy({"sku_id": shop.sku_id, "quantity": 3})).body
    assert await shop.stock() == 5
    assert (await pay_by_event(api, shop, paid, now[0]))["outcome"] == "paid"
    now[0] += commerce.cfg.hold_expiry_s - 1
    assert await commerce.expire_holds() == []
    now[0] += 2
    expired = await commerce.expire_holds()
    assert [o["id"] for o in expired] == [held["id"]]
    assert await shop.stock() == 7  # the paid units stay sold
    assert (await api.call("GET", f"/api/v1/orders/{held['id']}", token=shop.buyer)).body["state"] == "expired"
    assert (await api.call("GET", f"/api/v1/orders/{paid['id']}", token=shop.buyer)).body["state"] == "paid"
    # An expired hold cannot be paid, and expiring again changes nothing.
    assert (await pay_by_event(api, shop, held, now[0]))["outcome"] == "refund_unpayable"
    assert await commerce.expire_holds() == []
    # The coupon's use came back too, and the buyer's limit counts only live orders.
    reply = await shop.buy({"sku_id": shop.sku_id, "quantity": 2, "coupon_code": "ONCE"})
    assert reply.status == 201, reply.body


async def test_the_background_task_expires_holds(make_shop):
    import trio

    shop = await make_shop({"commerce": {"hold_expiry_s": 1.0, "hold_check_interval_s": 0.1}})
    await shop.go_live()
    assert (await shop.buy()).status == 201
    assert await shop.stock() == 9
    with trio.fail_after(10):
        while await shop.stock() != 10:
            await trio.sleep(0.1)


# --- idempotency -------------------------------------------------------------------------------


async def test_same_key_same_body_gives_the_same_response(api, shop, connections):
    await shop.go_live()
    first = await shop.buy(key="k-1")
    again = await shop.buy(key="k-1")
    assert first.status == again.status == 201 and first.body == again.body
    assert await shop.stock() == 9


async def test_same_key_other_body_is_409(api, shop):
    await shop.go_live()
    assert (await shop.buy(key="k-2")).status == 201
    reply = await shop.buy({"sku_id": shop.sku_id, "quantity": 2}, key="k-2")
    assert reply.status == 409 and reply.body["error"]["code"] == "idempotency_key_reused"
    assert reply.error_field == "Idempotency-Key"
    assert await shop.stock() == 9


async def test_different_keys_and_no_key_make_new_orders(api, shop):
    await shop.go_live()
    a, b = await shop.buy(key="k-a"), await shop.buy(key="k-b")
    c, d = await shop.buy(), await shop.buy()
    assert len({r.body["id"] for r in (a, b, c, d)}) == 4
    assert await shop.stock() == 6


async def test_keys_belong_to_one_buyer(api, shop):
    await shop.go_live()
    other = await api.user("buyer2", "audience")
    a = await shop.buy(key="shared")
    b = await shop.buy(key="shared", token=other)
    assert a.body["id"] != b.body["id"] and await shop.stock() == 8


async def test_a_refusal_is_kept_under_its_key(api, shop):
    await shop.go_live()
    big = {"sku_id": shop.sku_id, "quantity": 6}
    refused = await shop.buy(big, key="k-r")
    assert refused.status == 409 and refused.body["error"]["code"] == "per_buyer_limit"
    again = await shop.buy(big, key="k-r")
    assert (again.status, again.body) == (refused.status, refused.body)


async def test_concurrent_retries_with_one_key_make_one_order(api, shop, connections):
    import trio

    await shop.go_live()
    replies = []

    async def one(connection):
        replies.append(await shop.buy(key="k-race", connection=connection))

    async with trio.open_nursery() as nursery:
        for connection in connections(8):
            nursery.start_soon(one, connection)
    assert {r.status for r in replies} == {201} and len({r.body["id"] for r in replies}) == 1
    assert await shop.stock() == 9


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "caf\u00e9"])
async def test_bad_idempotency_keys_are_named(api, shop, key):
    await shop.go_live()
    if not key.isascii():
        # http.client would refuse to send it; send the raw bytes ourselves.
        key = key.encode().decode("latin-1")
    reply = await shop.buy(key=key)
    assert reply.status == 400 and reply.error_field == "Idempotency-Key", reply.body
    assert await shop.stock() == 10


async def test_buy_now_from_the_replay_once_the_room_has_ended(api, shop, room_fields):
    """An ended room with a recording sells on from its replay; one without
    a recording does not."""
    from shopcast.server.moq import encode_frame

    import trio

    app = api.app
    await shop.go_live()
    broadcast = app.relay.publish(shop.room_id)  # recorded: a public broadcast
    video = broadcast.track("video")
    for index in range(30):
        video.write_frame(encode_frame(index * 33_333, b"\x00" * 100), keyframe=index % 10 == 0)
    ended = await api.call("POST", f"/api/v1/rooms/{shop.room_id}/end", token=shop.host)
    assert ended.status == 200 and ended.body["state"] == "ended", ended.body
    with trio.fail_after(10):  # the recorder has written and closed the file
        while any(b.name == shop.room_id for b in app.recorder.recordings):
            await app.recorder.flushed.wait()
    reply = await shop.buy({"sku_id": shop.sku_id, "quantity": 2})
    assert reply.status == 201, reply.body
    assert reply.body["status"] == "pending" and await shop.stock() == 8

    # A room that ended with nothing recorded has no replay to sell from.
    other = await api.call("POST", "/api/v1/rooms", room_fields(), token=shop.host)
    assert other.status == 201, other.body
    other_id = other.body["room"]["id"]
    listed = await api.call("PUT", f"/api/v1/rooms/{other_id}/products/{shop.product['id']}",
                            token=shop.host)
    assert listed.status == 200, listed.body
    await shop.rooms._update(other_id, {"state": "live", "started_at": 0})
    assert (await api.call("POST", f"/api/v1/rooms/{other_id}/end", token=shop.host)).status == 200
    refused = await api.call("POST", f"/api/v1/rooms/{other_id}/orders",
                             {"sku_id": shop.sku_id, "quantity": 1}, token=shop.buyer)
    assert refused.status == 409 and refused.body["error"]["code"] == "room_not_live", refused.body

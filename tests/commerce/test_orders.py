"""Orders after payment: confirm, ship (API and the signed logistics
webhook), deliver, complete; cancel, refund through the provider, return;
complaints; the buyer's order list and the host's live sales view; order
events to the platform's webhooks. Illegal moves are 409 naming the status."""

import json
import time
import urllib.parse

import trio

from shopcast.plugins._payments import sign_payload

GOOD = "4242424242424242"


async def paid_order(shop, quantity=1, token=None):
    api = shop.api
    token = token or shop.buyer
    placed = (await shop.buy({"sku_id": shop.sku_id, "quantity": quantity}, token=token)).body
    intent = (await api.call("POST", f"/api/v1/orders/{placed['id']}/payment", token=token)).body
    count = shop.commerce.events_applied
    reply = await api.call("POST", urllib.parse.urlsplit(intent["payment_url"]).path,
                           raw=urllib.parse.urlencode({"card": GOOD}).encode(),
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert reply.status == 200, reply.body
    with trio.fail_after(20):
        await shop.commerce.wait_events_applied(count + 1)
    return placed


async def until(shop, fetch, done):
    """Wait for payment events until ``done(order)`` holds (bounded)."""
    with trio.fail_after(20):
        while True:
            count = shop.commerce.events_applied  # before the read: no event slips between
            if done((await fetch()).body):
                return
            await shop.commerce.wait_events_applied(count + 1)


async def act(shop, order_id, action, token, body=None, status=200):
    reply = await shop.api.call("POST", f"/api/v1/orders/{order_id}/{action}", body, token=token)
    assert reply.status == status, (action, reply.body)
    return reply.body


async def test_the_whole_after_sale_path_with_platform_webhooks(make_shop):
    shop = await make_shop({"webhooks": {"urls": ["http://127.0.0.1:9/platform"]}})
    api = shop.api
    await shop.go_live()
    order = await paid_order(shop, 2)
    oid = order["id"]
    # Illegal moves name the current status.
    error = await act(shop, oid, "ship", shop.host, {"tracking_number": "1Z9", "carrier": "UPS"}, 409)
    assert error["error"]["code"] == "order_status" and "the order is paid" in error["error"]["message"]
    assert error["error"]["field"] == "status"
    # The buyer cannot confirm their own order; the host can.
    assert (await act(shop, oid, "confirm", shop.buyer, status=403))["error"]["code"] == "not_allowed"
    assert (await act(shop, oid, "confirm", shop.host))["status"] == "confirmed"
    shipped = await act(shop, oid, "ship", shop.host, {"tracking_number": "1Z999AA10123456784",
                                                       "carrier": "UPS"})
    assert (shipped["status"], shipped["tracking_number"], shipped["carrier"]) == (
        "shipped", "1Z999AA10123456784", "UPS")
    # The logistics partner reports the delivery through its signed webhook.
    body = json.dumps({"event_id": "lg-1", "order_id": oid, "status": "delivered"}).encode()
    secret = shop.commerce.logistics_secret
    forged = await api.call("POST", "/api/v1/logistics/webhook", raw=body, headers={
        "logistics-signature": sign_payload(b"guess", int(time.time()), body)})
    assert forged.status == 400 and forged.error_field == "Logistics-Signature"
    headers = {"logistics-signature": sign_payload(secret, int(time.time()), body)}
    reply = await api.call("POST", "/api/v1/logistics/webhook", raw=body, headers=headers)
    assert reply.status == 200 and reply.body["outcome"] == "delivered", reply.body
    reply = await api.call("POST", "/api/v1/logistics/webhook", raw=body, headers=headers)
    assert reply.body["outcome"] == "duplicate"
    assert (await act(shop, oid, "complete", shop.buyer))["status"] == "completed"
    complaint = await shop.api.call("POST", f"/api/v1/orders/{oid}/complaints",
                                    {"text": "One shoe is scuffed."}, token=shop.buyer)
    assert complaint.status == 201 and complaint.body["state"] == "open"
    listed = await api.call("GET", f"/api/v1/orders/{oid}/complaints", token=shop.host)
    assert [c["text"] for c in listed.body["complaints"]] == ["One shoe is scuffed."]
    returned = await act(shop, oid, "return", shop.buyer)
    assert returned["status"] == "returned"
    assert await shop.stock() == 10  # the goods came back
    refund = await act(shop, oid, "refund", shop.host)
    assert refund["status"] == "returned" and refund["payment_state"] == "refund_pending"
    await until(shop, lambda: api.call("GET", f"/api/v1/orders/{oid}", token=shop.buyer),
                lambda order: order["status"] == "refunded")
    final = (await api.call("GET", f"/api/v1/orders/{oid}", token=shop.buyer)).body
    assert final["payment_state"] == "refunded"
    assert [h["status"] for h in final["history"]] == [
        "pending", "paid", "confirmed", "shipped", "delivered", "completed", "completed", "returned",
        "returned", "refunded"]
    assert await shop.stock() == 10  # not given back twice
    events = await api.app.db.read(lambda c: [r[0] for r in c.execute(
        "SELECT event FROM webhook_outbox ORDER BY id")])
    for name in ("order.placed", "order.paid", "order.confirmed", "order.shipped", "order.delivered",
                 "order.completed", "order.complaint", "order.returned", "order.cancelled",
                 "order.refunded"):
        assert name in events, (name, events)


async def test_cancel_before_and_after_payment(api, shop):
    await shop.go_live()
    pending = (await shop.buy()).body
    assert await shop.stock() == 9
    assert (await act(shop, pending["id"], "cancel", shop.buyer))["status"] == "cancelled"
    assert await shop.stock() == 10
    error = await act(shop, pending["id"], "cancel", shop.buyer, status=409)
    assert "the order is cancelled" in error["error"]["message"]
    paid = await paid_order(shop)
    assert await shop.stock() == 9
    cancelled = await act(shop, paid["id"], "cancel", shop.host)
    assert cancelled["status"] == "cancelled" and cancelled["payment_state"] == "refund_pending"
    assert await shop.stock() == 10
    await until(shop, lambda: api.call("GET", f"/api/v1/orders/{paid['id']}", token=shop.buyer),
                lambda order: order["payment_state"] == "refunded")
    assert await shop.stock() == 10
    # A refund of an order never paid is refused.
    other = (await shop.buy()).body
    assert (await act(shop, other["id"], "refund", shop.host, status=409))["error"]["code"] == "order_status"


async def test_buyer_list_and_host_sales_view(api, shop):
    await shop.go_live()
    first = await paid_order(shop, 2)
    second_buyer = await api.user("buyer2", "audience")
    second = await paid_order(shop, 1, token=second_buyer)
    held = (await shop.buy(token=second_buyer)).body
    mine = await api.call("GET", "/api/v1/me/orders", token=second_buyer)
    assert [o["id"] for o in mine.body["orders"]] == [held["id"], second["id"]]
    only_paid = await api.call("GET", "/api/v1/me/orders?status=paid", token=second_buyer)
    assert [o["id"] for o in only_paid.body["orders"]] == [second["id"]]
    assert (await api.call("GET", "/api/v1/me/orders?status=lost", token=second_buyer)).status == 400
    sales = await api.call("GET", f"/api/v1/rooms/{shop.room_id}/sales", token=shop.host)
    assert sales.status == 200, sales.body
    body = sales.body
    assert (body["orders"], body["paid_orders"], body["pending_orders"]) == (3, 2, 1)
    assert body["units_by_product"] == {shop.product["id"]: 3}
    assert (body["gmv_minor"], body["currency"]) == (3 * 5999, "EUR")
    assert body["recent"][0]["id"] == held["id"]
    assert first["id"] in {o["id"] for o in body["recent"]}
    # Viewers do not see the sales.
    assert (await api.call("GET", f"/api/v1/rooms/{shop.room_id}/sales", token=shop.buyer)).status == 403


def logistics(shop, event_id, order_id, status, **extra):
    body = json.dumps({"event_id": event_id, "order_id": order_id, "status": status, **extra}).encode()
    headers = {"logistics-signature": sign_payload(shop.commerce.logistics_secret, int(time.time()), body)}
    return shop.api.call("POST", "/api/v1/logistics/webhook", raw=body, headers=headers)


async def test_logistics_webhook_ships_with_a_tracking_number(api, shop):
    await shop.go_live()
    oid = (await paid_order(shop))["id"]
    await act(shop, oid, "confirm", shop.host)
    reply = await logistics(shop, "lg-ship-1", oid, "shipped", tracking_number="JD014600006281234567",
                            carrier="DHL")
    assert reply.status == 200 and reply.body["outcome"] == "shipped", reply.body
    order = (await api.call("GET", f"/api/v1/orders/{oid}", token=shop.buyer)).body
    assert (order["status"], order["tracking_number"], order["carrier"]) == (
        "shipped", "JD014600006281234567", "DHL")
    assert order["history"][-1]["actor"] == "logistics"
    # The partner's retry of the same event is a duplicate and changes nothing.
    again = await logistics(shop, "lg-ship-1", oid, "shipped", tracking_number="OTHER", carrier="UPS")
    assert again.status == 200 and again.body["outcome"] == "duplicate"
    order = (await api.call("GET", f"/api/v1/orders/{oid}", token=shop.buyer)).body
    assert order["tracking_number"] == "JD014600006281234567"
    # Bad bodies name the field.
    reply = await logistics(shop, "lg-ship-2", oid, "lost")
    assert reply.status == 400 and reply.error_field == "status"
    reply = await logistics(shop, "lg-ship-3", oid, "delivered", tracking_number="t" * 65)
    assert reply.status == 400 and reply.error_field == "tracking_number"


async def test_a_refused_logistics_event_is_applied_when_retried_later(api, shop):
    await shop.go_live()
    pending = (await shop.buy()).body
    # Shipped before it was paid: refused, and not remembered as seen.
    early = await logistics(shop, "lg-early", pending["id"], "shipped", tracking_number="1Z1", carrier="UPS")
    assert early.status == 409 and early.body["error"]["code"] == "order_status", early.body
    unknown = await logistics(shop, "lg-unknown", "onothere", "shipped")
    assert unknown.status == 404
    # The order gets paid and confirmed; the partner's retry (same event id) now applies.
    other = (await paid_order(shop))["id"]
    intent = (await api.call("POST", f"/api/v1/orders/{pending['id']}/payment", token=shop.buyer)).body
    count = shop.commerce.events_applied
    paid = await api.call("POST", urllib.parse.urlsplit(intent["payment_url"]).path,
                          raw=urllib.parse.urlencode({"card": GOOD}).encode(),
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert paid.status == 200
    with trio.fail_after(20):
        await shop.commerce.wait_events_applied(count + 1)
    await act(shop, pending["id"], "confirm", shop.host)
    retry = await logistics(shop, "lg-early", pending["id"], "shipped", tracking_number="1Z1", carrier="UPS")
    assert retry.status == 200 and retry.body["outcome"] == "shipped", retry.body
    assert retry.body["order"]["tracking_number"] == "1Z1"
    # Another paid order was not touched.
    assert (await api.call("GET", f"/api/v1/orders/{other}", token=shop.buyer)).body["status"] == "paid"
    # The unknown order's event id was not kept either.
    seen = await api.app.db.read(lambda c: [r[0] for r in c.execute(
        "SELECT event_id FROM payment_events_seen WHERE event_id LIKE 'logistics:%'")])
    assert seen == ["logistics:lg-early"]


async def test_complaint_resolution(api, shop):
    await shop.go_live()
    oid = (await paid_order(shop))["id"]
    complaint = (await api.call("POST", f"/api/v1/orders/{oid}/complaints", {"text": "Wrong size."},
                                token=shop.buyer)).body
    path = f"/api/v1/complaints/{complaint['id']}/resolve"
    # Neither the buyer nor a host of another room may resolve it.
    reply = await api.call("POST", path, {"resolution": "Fine"}, token=shop.buyer)
    assert reply.status == 403 and reply.body["error"]["code"] == "forbidden"
    stranger = await api.user("strangerhost", "host")
    reply = await api.call("POST", path, {"resolution": "Fine"}, token=stranger)
    assert reply.status == 404
    reply = await api.call("POST", path, {"resolution": ""}, token=shop.host)
    assert reply.status == 400 and reply.error_field == "resolution"
    reply = await api.call("POST", path, {"resolution": "We sent the right size; keep the other."},
                           token=shop.host)
    assert reply.status == 200, reply.body
    assert reply.body["state"] == "resolved" and reply.body["resolved_at"]
    again = await api.call("POST", path, {"resolution": "Again"}, token=shop.operator)
    assert again.status == 409 and again.body["error"]["code"] == "complaint_resolved"
    # The buyer sees the resolution.
    seen = (await api.call("GET", f"/api/v1/orders/{oid}/complaints", token=shop.buyer)).body["complaints"]
    assert [(c["state"], c["resolution"]) for c in seen] == [
        ("resolved", "We sent the right size; keep the other.")]
    history = (await api.call("GET", f"/api/v1/orders/{oid}", token=shop.buyer)).body["history"]
    assert history[-1]["note"] == "complaint resolved " + complaint["id"]
    # An operator resolves another one.
    second = (await api.call("POST", f"/api/v1/orders/{oid}/complaints", {"text": "Late."},
                             token=shop.buyer)).body
    reply = await api.call("POST", f"/api/v1/complaints/{second['id']}/resolve",
                           {"resolution": "Voucher sent."}, token=shop.operator)
    assert reply.status == 200 and reply.body["resolution"] == "Voucher sent."
    assert (await api.call("POST", "/api/v1/complaints/cnothere/resolve", {"resolution": "x"},
                           token=shop.operator)).status == 404


async def test_a_refund_event_faster_than_the_answer_still_ends_refunded(api, shop):
    """The provider's charge.refunded may be applied before the cancel or
    refund request has answered; the order must still end refunded (it used
    to stay refund_pending when the event won that race)."""
    await shop.go_live()
    provider = shop.commerce.provider
    real_refund = provider.refund

    async def fast_refund(intent_id):
        # A provider whose refund event is delivered and applied before its
        # refund call returns: the race, every time.
        count = shop.commerce.events_applied
        await real_refund(intent_id)
        with trio.fail_after(20):
            await shop.commerce.wait_events_applied(count + 1)

    provider.refund = fast_refund
    try:
        for action in ("cancel", "refund"):
            paid = await paid_order(shop)
            answer = await act(shop, paid["id"], action, shop.host)
            assert answer["payment_state"] == "refund_pending"
            final = (await api.call("GET", f"/api/v1/orders/{paid['id']}", token=shop.buyer)).body
            assert final["payment_state"] == "refunded", (action, final)
            assert final["refund_reason"] == {"cancel": "order_cancelled", "refund": "seller_refund"}[action]
            assert final["status"] == ("cancelled" if action == "cancel" else "refunded")
    finally:
        provider.refund = real_refund
    assert await shop.stock() == 10

"""Payments through the test provider, as a buyer does it: Buy Now, the
hosted payment page, a test card, and the provider's signed event POSTed to
the server's own webhook endpoint over real HTTPS. An order becomes paid
only through a verified event, exactly once; forged, stale, future-dated and
replayed events are refused."""

import http.client
import http.server
import json
import re
import ssl
import threading
import time
import urllib.parse

import pytest
import trio

from shopcast.plugins._payments import format_amount, sign_payload

GOOD, DECLINED, DELAYED = "4242424242424242", "4000000000000002", "4000000000000077"


async def pay_page(api, url, card):
    path = urllib.parse.urlsplit(url).path
    return await api.call("POST", path, raw=urllib.parse.urlencode({"card": card}).encode(),
                          headers={"content-type": "application/x-www-form-urlencoded"})


async def start_payment(api, shop, order_id, token=None):
    reply = await api.call("POST", f"/api/v1/orders/{order_id}/payment", token=token or shop.buyer)
    assert reply.status == 200, reply.body
    return reply.body


async def order(api, shop, order_id):
    reply = await api.call("GET", f"/api/v1/orders/{order_id}", token=shop.buyer)
    assert reply.status == 200, reply.body
    return reply.body


async def applied(shop, count):
    with trio.fail_after(20):
        await shop.commerce.wait_events_applied(count)


async def test_pay_with_a_test_card(api, shop):
    await shop.go_live()
    placed = (await shop.buy({"sku_id": shop.sku_id, "quantity": 2})).body
    assert placed["status"] == "pending" and placed["total_minor"] == 11998
    intent = await start_payment(api, shop, placed["id"])
    assert intent["payment_url"].endswith(f"/pay/test/{intent['intent_id']}")
    assert intent["amount_minor"] == 11998
    # Only the buyer pays.
    assert (await api.call("POST", f"/api/v1/orders/{placed['id']}/payment", token=shop.host)).status == 403
    page = await api.call("GET", urllib.parse.urlsplit(intent["payment_url"]).path)
    assert page.status == 200 and "text/html" in page.headers["content-type"]
    assert '<label for="card">Card number</label>' in page.body and 'name="card"' in page.body
    assert ">Pay</button>" in page.body and "119.98 EUR" in page.body
    # Starting again gives the same intent.
    assert (await start_payment(api, shop, placed["id"]))["intent_id"] == intent["intent_id"]
    bad = await pay_page(api, intent["payment_url"], "1234")
    assert bad.status == 400 and "Card number" in bad.body
    done = await pay_page(api, intent["payment_url"], GOOD)
    assert done.status == 200 and "succeeded" in done.body
    assert f'href="/orders/{placed["id"]}"' in done.body
    await applied(shop, 1)
    paid = await order(api, shop, placed["id"])
    assert paid["status"] == "paid" and paid["payment_state"] == "succeeded" and paid["paid_at"]
    assert [h["status"] for h in paid["history"]] == ["pending", "paid"]
    # Paying twice is refused by the provider; the order stays paid once.
    again = await pay_page(api, intent["payment_url"], GOOD)
    assert again.status == 409
    # The hold became a sale: expiry no longer gives the stock back.
    shop.commerce.clock = lambda: time.time() + shop.commerce.cfg.hold_expiry_s + 10
    assert await shop.commerce.expire_holds() == []
    assert await shop.stock() == 8


async def test_decline_keeps_the_hold_until_expiry_then_a_retry_can_pay(api, shop):
    await shop.go_live()
    first = (await shop.buy()).body
    intent = await start_payment(api, shop, first["id"])
    declined = await pay_page(api, intent["payment_url"], DECLINED)
    assert declined.status == 402 and "declined" in declined.body
    await applied(shop, 1)
    after = await order(api, shop, first["id"])
    assert after["status"] == "pending" and after["payment_state"] == "failed"
    assert await shop.stock() == 9  # still held
    assert (await pay_page(api, intent["payment_url"], GOOD)).status == 200
    await applied(shop, 2)
    assert (await order(api, shop, first["id"]))["status"] == "paid"
    # A declined order nobody retries expires and its stock comes back.
    second = (await shop.buy()).body
    intent = await start_payment(api, shop, second["id"])
    assert (await pay_page(api, intent["payment_url"], DECLINED)).status == 402
    await applied(shop, 3)
    assert await shop.stock() == 8
    now = time.time()
    shop.commerce.clock = lambda: now + shop.commerce.cfg.hold_expiry_s + 1
    assert [o["id"] for o in await shop.commerce.expire_holds()] == [second["id"]]
    assert (await order(api, shop, second["id"]))["status"] == "expired"
    assert await shop.stock() == 9
    reply = await api.call("POST", f"/api/v1/orders/{second['id']}/payment", token=shop.buyer)
    assert reply.status == 409 and "expired" in reply.body["error"]["message"]


async def test_delayed_success(make_shop):
    delay_s = 5.0
    shop = await make_shop({"payments": {"test_delay_s": delay_s}})
    api = shop.api
    await shop.go_live()
    placed = (await shop.buy()).body
    intent = await start_payment(api, shop, placed["id"])
    done = await pay_page(api, intent["payment_url"], DELAYED)
    assert done.status == 200 and "processing" in done.body
    # The provider decided at once and tells only after the delay: nothing is
    # paid right after the page answered.
    submitted = await shop.api.app.db.read(lambda c: c.execute(
        "SELECT updated_at FROM payment_intents WHERE id = ?", (intent["intent_id"],)).fetchone()[0])
    assert time.time() - submitted < delay_s, "the machine stalled longer than the delay"
    right_after = await order(api, shop, placed["id"])
    assert right_after["status"] == "pending" and shop.commerce.events_applied == 0
    outbox = await shop.api.app.db.read(lambda c: c.execute(
        "SELECT created_at, deliver_at FROM payment_outbox WHERE intent_id = ?",
        (intent["intent_id"],)).fetchall())
    assert len(outbox) == 1 and outbox[0][1] - outbox[0][0] == pytest.approx(delay_s)
    await applied(shop, 1)
    paid = await order(api, shop, placed["id"])
    assert paid["status"] == "paid"
    # Paid by the event, which came no earlier than the configured delay.
    paid_at = await shop.api.app.db.read(lambda c: c.execute(
        "SELECT paid_at FROM orders WHERE id = ?", (placed["id"],)).fetchone()[0])
    assert paid_at - submitted >= delay_s


async def test_a_second_event_for_the_same_payment_refunds_nothing(api, shop):
    await shop.go_live()
    placed = (await shop.buy()).body
    intent = await start_payment(api, shop, placed["id"])
    assert (await pay_page(api, intent["payment_url"], GOOD)).status == 200
    await applied(shop, 1)
    secret = shop.commerce.payments_secret
    db = api.app.db
    # The provider sends the same success under a new event id (as a provider
    # re-creating an event does): a duplicate of the same payment, a no-op.
    again = json.dumps({"id": "evt_again", "type": "payment_intent.succeeded", "created": int(time.time()),
                        "data": {"intent_id": intent["intent_id"], "order_id": placed["id"],
                                 "amount_minor": placed["total"], "currency": "EUR"}}).encode()
    reply = await api.call("POST", "/api/v1/payments/webhook/test", raw=again, headers=signed(secret, again))
    assert reply.status == 200 and reply.body["outcome"] == "duplicate_payment", reply.body
    # The provider still holds the payment: nothing was refunded or queued to be.
    assert await db.read(lambda c: c.execute("SELECT state FROM payment_intents WHERE id = ?",
                                             (intent["intent_id"],)).fetchone()[0]) == "succeeded"
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM payment_outbox WHERE "
                                             "type = 'charge.refunded'").fetchone()[0]) == 0
    kept = await order(api, shop, placed["id"])
    assert (kept["status"], kept["payment_state"], kept["refund_reason"]) == ("paid", "succeeded", None)
    # A success of another payment for the paid order is refunded, at the provider.
    other_id = "pi_" + "ab" * 12
    await db.write(lambda c: c.execute(
        "INSERT INTO payment_intents (id, provider, order_id, amount_minor, currency, state, return_url, "
        "created_at, updated_at) VALUES (?, 'test', ?, ?, 'EUR', 'succeeded', '/', ?, ?)",
        (other_id, placed["id"], placed["total"], time.time(), time.time())))
    second = again.replace(b"evt_again", b"evt_second").replace(intent["intent_id"].encode(),
                                                                other_id.encode())
    reply = await api.call("POST", "/api/v1/payments/webhook/test", raw=second,
                           headers=signed(secret, second))
    assert reply.status == 200 and reply.body["outcome"] == "refund_unpayable", reply.body
    assert await db.read(lambda c: c.execute("SELECT state FROM payment_intents WHERE id = ?",
                                             (other_id,)).fetchone()[0]) == "refunded"
    assert await db.read(lambda c: c.execute("SELECT state FROM payment_intents WHERE id = ?",
                                             (intent["intent_id"],)).fetchone()[0]) == "succeeded"
    final = await order(api, shop, placed["id"])
    assert (final["status"], final["payment_state"]) == ("paid", "succeeded")
    assert any(other_id in h["note"] and "refunded" in h["note"] for h in final["history"])


async def test_the_payment_page_refuses_cancelled_and_expired_orders(api, shop):
    await shop.go_live()
    db = api.app.db

    async def intent_state(intent_id):
        return await db.read(lambda c: c.execute("SELECT state FROM payment_intents WHERE id = ?",
                                                 (intent_id,)).fetchone()[0])

    # Cancelled by the buyer before paying.
    placed = (await shop.buy()).body
    intent = await start_payment(api, shop, placed["id"])
    reply = await api.call("POST", f"/api/v1/orders/{placed['id']}/cancel", token=shop.buyer)
    assert reply.status == 200 and reply.body["status"] == "cancelled"
    page = await api.call("GET", urllib.parse.urlsplit(intent["payment_url"]).path)
    assert page.status == 409 and "the order was cancelled" in page.body
    assert "Nothing was charged" in page.body and 'name="card"' not in page.body
    paid = await pay_page(api, intent["payment_url"], GOOD)
    assert paid.status == 409 and "the order was cancelled" in paid.body
    assert await intent_state(intent["intent_id"]) == "cancelled"
    # The hold expired (swept).
    placed = (await shop.buy()).body
    intent = await start_payment(api, shop, placed["id"])
    now = time.time()
    shop.commerce.clock = lambda: now + shop.commerce.cfg.hold_expiry_s + 1
    assert [o["id"] for o in await shop.commerce.expire_holds()] == [placed["id"]]
    shop.commerce.clock = time.time
    paid = await pay_page(api, intent["payment_url"], GOOD)
    assert paid.status == 409 and "hold expired" in paid.body and "Nothing was charged" in paid.body
    # Past the hold, not yet swept: the page knows the hold's end too.
    placed = (await shop.buy()).body
    intent = await start_payment(api, shop, placed["id"])
    shop.commerce.provider.clock = lambda: now + shop.commerce.cfg.hold_expiry_s + 1
    try:
        paid = await pay_page(api, intent["payment_url"], GOOD)
    finally:
        shop.commerce.provider.clock = time.time
    assert paid.status == 409 and "hold expired" in paid.body
    assert await intent_state(intent["intent_id"]) == "requires_payment_method"
    # No event of any payment was made.
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM payment_outbox").fetchone()[0]) == 0


async def test_a_payment_that_beat_the_hold_expiry_is_refunded_and_says_why(make_shop):
    shop = await make_shop({"payments": {"test_delay_s": 3.0}})
    api = shop.api
    await shop.go_live()
    placed = (await shop.buy()).body
    intent = await start_payment(api, shop, placed["id"])
    # Taken by the provider (told after 3 s) while the hold runs out.
    assert (await pay_page(api, intent["payment_url"], DELAYED)).status == 200
    now = time.time()
    shop.commerce.clock = lambda: now + shop.commerce.cfg.hold_expiry_s + 1
    assert [o["id"] for o in await shop.commerce.expire_holds()] == [placed["id"]]
    shop.commerce.clock = time.time  # the webhook checks signatures against the real time
    await applied(shop, 2)  # the success (refunded) and the provider's charge.refunded
    final = await order(api, shop, placed["id"])
    assert final["status"] == "expired"
    assert (final["payment_state"], final["refund_reason"]) == ("refunded", "hold_expired"), final
    notes = [h["note"] for h in final["history"]]
    assert any("refunded automatically" in n and intent["intent_id"] in n for n in notes), notes
    assert await api.app.db.read(lambda c: c.execute("SELECT state FROM payment_intents WHERE id = ?",
                                                     (intent["intent_id"],)).fetchone()[0]) == "refunded"
    assert await shop.stock() == 10  # nothing sold


def signed(secret, body, timestamp=None):
    return {"payment-signature": sign_payload(secret, int(time.time() if timestamp is None else timestamp),
                                              body),
            "content-type": "application/json"}


async def test_forged_stale_future_and_replayed_events_are_refused(api, shop):
    await shop.go_live()
    placed = (await shop.buy()).body
    intent = await start_payment(api, shop, placed["id"])
    secret = shop.commerce.payments_secret
    body = json.dumps({"id": "evt_manual1", "type": "payment_intent.succeeded", "created": int(time.time()),
                       "data": {"intent_id": intent["intent_id"], "order_id": placed["id"],
                                "amount_minor": placed["total"], "currency": "EUR"}}).encode()
    path = "/api/v1/payments/webhook/test"
    cases = [
        ("forged", {"payment-signature": sign_payload(b"not the secret", int(time.time()), body)}),
        ("stale", signed(secret, body, time.time() - 301)),
        ("future", signed(secret, body, time.time() + 301)),
        ("missing", {}),
        ("malformed", {"payment-signature": "v1=abc"}),
    ]
    for name, headers in cases:
        reply = await api.call("POST", path, raw=body, headers=headers)
        assert reply.status == 400 and reply.error_field == "Payment-Signature", (name, reply.body)
    # The body tampered after signing.
    headers = signed(secret, body)
    reply = await api.call("POST", path, raw=body.replace(b"11998", b"1").replace(b"5999", b"1"),
                           headers=headers)
    assert reply.status == 400
    # A valid signature on something that is no event.
    junk = b'{"id": "evt_x", "type": "payment_intent.stolen"}'
    reply = await api.call("POST", path, raw=junk, headers=signed(secret, junk))
    assert reply.status == 400 and reply.error_field == "body"
    assert (await order(api, shop, placed["id"]))["status"] == "pending"
    # Within the tolerance either way it is applied, once.
    reply = await api.call("POST", path, raw=body, headers=signed(secret, body, time.time() - 290))
    assert reply.status == 200 and reply.body["outcome"] == "paid", reply.body
    reply = await api.call("POST", path, raw=body, headers=signed(secret, body, time.time() + 290))
    assert reply.status == 200 and reply.body["outcome"] == "duplicate"
    paid = await order(api, shop, placed["id"])
    assert [h["status"] for h in paid["history"]] == ["pending", "paid"]
    # Another event id for the same payment cannot pay it twice either (and
    # is no reason to refund the payment that paid it).
    other = body.replace(b"evt_manual1", b"evt_manual2")
    reply = await api.call("POST", path, raw=other, headers=signed(secret, other))
    assert reply.status == 200 and reply.body["outcome"] == "duplicate_payment"
    assert [h["status"] for h in (await order(api, shop, placed["id"]))["history"]] == ["pending", "paid"]
    assert (await api.call("POST", "/api/v1/payments/webhook/paypal", raw=body,
                           headers=signed(secret, body))).status == 404
    assert (await api.call("GET", "/healthz")).status == 200


@pytest.mark.parametrize("amount,currency,text", [
    (0, "EUR", "0.00 EUR"), (5, "USD", "0.05 USD"), (11998, "EUR", "119.98 EUR"),
    (1999, "JPY", "1999 JPY"), (1234, "KWD", "1.234 KWD"),
])
def test_format_amount(amount, currency, text):
    assert format_amount(amount, currency) == text


async def test_payment_page_of_no_intent(api):
    reply = await api.call("GET", "/pay/test/pi_nothere")
    assert reply.status == 404
    assert re.search("pi_nothere", json.dumps(reply.body))


class FlakyEndpoint:
    """A webhook endpoint on loopback that answers 503 to the first ``failures``
    deliveries, then forwards each to the server's real webhook (``forward_to``,
    set once the server is up) and answers what it answers. Records the time
    of every delivery."""

    def __init__(self, failures):
        self.failures = failures
        self.forward_to = None
        self.arrivals = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                endpoint.arrivals.append(time.monotonic())
                status = 503
                if len(endpoint.arrivals) > endpoint.failures and endpoint.forward_to is not None:
                    status = endpoint.forward(body, self.headers["payment-signature"])
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def forward(self, body, signature):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection("127.0.0.1", self.forward_to, context=context, timeout=10)
        try:
            connection.request("POST", "/api/v1/payments/webhook/test", body=body, headers={
                "content-type": "application/json", "payment-signature": signature})
            response = connection.getresponse()
            response.read()
            return response.status
        except OSError:
            return 502  # the server stopped (the test is over)
        finally:
            connection.close()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


async def outbox_rows(db):
    return await db.read(lambda c: [dict(r) for r in c.execute("SELECT * FROM payment_outbox ORDER BY id")])


async def wait_outbox(db, done):
    """Wait (bounded) until ``done(rows)`` holds for the provider's outbox."""
    with trio.fail_after(30):
        while not done(await outbox_rows(db)):
            await trio.sleep(0.05)


async def test_event_delivery_is_retried_with_backoff_until_delivered(make_shop):
    endpoint = FlakyEndpoint(failures=3)
    try:
        shop = await make_shop({"payments": {"webhook_url": endpoint.url, "retry_base_s": 0.3,
                                             "retry_max_s": 5.0, "max_attempts": 6}})
        endpoint.forward_to = shop.api.port
        api = shop.api
        await shop.go_live()
        placed = (await shop.buy()).body
        intent = await start_payment(api, shop, placed["id"])
        assert (await pay_page(api, intent["payment_url"], GOOD)).status == 200
        await applied(shop, 1)  # only once the endpoint stopped failing
        assert len(endpoint.arrivals) == 4
        # Exponential backoff between the attempts: 0.3, 0.6, 1.2 s at least.
        gaps = [b - a for a, b in zip(endpoint.arrivals, endpoint.arrivals[1:])]
        for gap, backoff in zip(gaps, (0.3, 0.6, 1.2)):
            assert gap >= backoff * 0.95, gaps
        await wait_outbox(api.app.db, lambda rows: rows and rows[0]["state"] == "delivered")
        row = (await outbox_rows(api.app.db))[0]
        assert (row["attempts"], row["last_error"]) == (4, "HTTP 503")
        assert (await order(api, shop, placed["id"]))["status"] == "paid"
        assert shop.commerce.provider.attempts_failed == 3
    finally:
        endpoint.close()


async def test_event_delivery_gives_up_after_max_attempts_and_records_it(make_shop):
    endpoint = FlakyEndpoint(failures=10_000)
    try:
        shop = await make_shop({"payments": {"webhook_url": endpoint.url, "retry_base_s": 0.1,
                                             "retry_max_s": 0.2, "max_attempts": 3,
                                             "reconcile_interval_s": 3600.0}})
        api = shop.api
        await shop.go_live()
        placed = (await shop.buy()).body
        intent = await start_payment(api, shop, placed["id"])
        assert (await pay_page(api, intent["payment_url"], GOOD)).status == 200
        await wait_outbox(api.app.db, lambda rows: rows and rows[0]["state"] == "failed")
        row = (await outbox_rows(api.app.db))[0]
        assert (row["attempts"], row["last_error"], row["type"]) == (3, "HTTP 503",
                                                                     "payment_intent.succeeded")
        assert len(endpoint.arrivals) == 3  # no fourth attempt
        assert (await order(api, shop, placed["id"]))["status"] == "pending"
        assert shop.commerce.events_applied == 0
        # Reconciliation tries the given-up delivery again (now to a working endpoint).
        endpoint.failures, endpoint.forward_to = 0, api.port
        assert await shop.commerce.reconcile() >= 1
        await applied(shop, 1)
        assert (await order(api, shop, placed["id"]))["status"] == "paid"
    finally:
        endpoint.close()

"""Payments: the provider interface shopcast pays orders through, and the
built-in test provider, its reference implementation (docs/payments.md).

A provider makes a payment intent for an order and gives the buyer a payment
URL; the outcome reaches shopcast only as an event POSTed to shopcast's
webhook endpoint (``/api/v1/payments/webhook/{provider}``), signed with
HMAC-SHA256 over ``timestamp + "." + body`` in a header
``Payment-Signature: t=<unix s>,v1=<hex>`` (the scheme Stripe uses). The
endpoint checks the signature in constant time, refuses timestamps more than
``payments.webhook_tolerance_s`` away in either direction, and applies each
event id at most once; an order becomes paid only there.

The test provider behaves as a real one: intents stored in the database, a
hosted payment page at ``/pay/test/{intent_id}`` (a card number form), test
cards that succeed, are declined, or succeed after ``payments.test_delay_s``,
and events delivered from a persisted outbox by real HTTP POSTs (to this
server itself by default), retried with exponential backoff until
``payments.max_attempts``. Its side and shopcast's side share nothing but the
secret and the HTTP request, as with a real provider.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import http.client
import json
import os
import re
import secrets
import sqlite3
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import trio

from shopcast.plugins._storage import Migration
from shopcast.server._log import get_logger
from shopcast.server._routing import HTTPError, Request, Response

__all__ = [
    "CURRENCY_EXPONENTS",
    "EVENT_TYPES",
    "PaymentEvent",
    "PaymentIntent",
    "PaymentProvider",
    "SIGNATURE_HEADER",
    "SignatureError",
    "TEST_CARDS",
    "TestProvider",
    "format_amount",
    "load_secret",
    "parse_event_untrusted",
    "sign_payload",
    "verify_signature_untrusted",
]

log = get_logger("payments")
SIGNATURE_HEADER = "payment-signature"
SECRET_FILE = "payments-secret"
EVENT_TYPES = ("payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded")
TEST_CARDS = {
    "4242424242424242": "succeed",
    "4000000000000002": "decline",
    "4000000000000077": "succeed_after_delay",
}
"""The test provider's cards and what each does."""
CURRENCY_EXPONENTS = {"JPY": 0, "KRW": 0, "CLP": 0, "VND": 0, "BHD": 3, "KWD": 3, "JOD": 3}
"""Digits after the decimal point of a currency's minor unit; 2 unless listed (ISO 4217)."""

MIGRATIONS = [
    Migration("payments", 1, """
CREATE TABLE payment_intents (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    order_id TEXT NOT NULL,
    amount_minor INTEGER NOT NULL CHECK (amount_minor >= 0),
    currency TEXT NOT NULL,
    state TEXT NOT NULL,
    return_url TEXT NOT NULL,
    card_last4 TEXT,
    decline_reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX payment_intents_order ON payment_intents(order_id);
CREATE INDEX payment_intents_state ON payment_intents(state);
CREATE TABLE payment_outbox (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    intent_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    deliver_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT
);
CREATE INDEX payment_outbox_due ON payment_outbox(state, deliver_at);
CREATE TABLE payment_events_seen (
    event_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    order_id TEXT,
    received_at REAL NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX payment_events_seen_age ON payment_events_seen(received_at);
"""),
    Migration("payments", 2, """
ALTER TABLE payment_intents ADD COLUMN expires_at REAL;
"""),
]
CANCEL_REASONS = {"hold_expired": "the order's hold expired before it was paid",
                  "order_cancelled": "the order was cancelled"}
"""Why an intent was cancelled, as the hosted page tells the buyer."""


# --- money ----------------------------------------------------------------------------------


def format_amount(amount_minor: int, currency: str) -> str:
    """``1999, "EUR"`` -> ``"19.99 EUR"``; ``1999, "JPY"`` -> ``"1999 JPY"``. Integers only."""
    exponent = CURRENCY_EXPONENTS.get(currency, 2)
    if exponent == 0:
        return f"{amount_minor} {currency}"
    whole, fraction = divmod(amount_minor, 10 ** exponent)
    return f"{whole}.{fraction:0{exponent}d} {currency}"


# --- signatures -----------------------------------------------------------------------------


class SignatureError(Exception):
    """A webhook event refused: no or malformed signature, wrong MAC, or a
    timestamp outside the tolerance. The sender's fault (HTTP 400)."""


def sign_payload(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Payment-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature_untrusted(secret: bytes, header: str | None, body: bytes, *, now: float,
                               tolerance_s: float, max_chars: int = 1024) -> int:
    """Check a ``Payment-Signature`` header; returns its timestamp. Several
    ``v1`` values are allowed (a rotating secret), one must match."""
    if not header:
        raise SignatureError("no Payment-Signature header")
    if len(header) > max_chars:
        raise SignatureError(f"the signature header is longer than {max_chars} characters")
    timestamp = None
    macs = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and re.fullmatch(r"\d{1,12}", value):
            timestamp = int(value)
        elif key == "v1" and re.fullmatch(r"[0-9a-f]{64}", value):
            macs.append(value)
    if timestamp is None or not macs:
        raise SignatureError("Payment-Signature must be t=<unix seconds>,v1=<hex HMAC-SHA256>")
    expected = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, mac) for mac in macs):
        raise SignatureError("Payment-Signature does not match the body")
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"the signature's timestamp is {now - timestamp:+.0f} s away from now; "
                             f"at most {tolerance_s:.0f} s either way (payments.webhook_tolerance_s)")
    return timestamp


def load_secret(configured: str, data_dir: Path, file_name: str = SECRET_FILE) -> bytes:
    """The configured secret, or one generated once into ``data_dir/file_name``."""
    if configured:
        return configured.encode()
    path = Path(data_dir) / file_name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip().encode()
    with os.fdopen(fd, "w") as f:
        value = secrets.token_urlsafe(32)
        f.write(value + "\n")
    return value.encode()


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentEvent:
    """A verified provider event."""

    id: str
    """Unique per event, the same on every delivery attempt: deduplicate on it."""
    type: str
    """One of EVENT_TYPES."""
    intent_id: str
    order_id: str
    amount_minor: int
    currency: str
    created_at: float
    """When the provider made the event (Unix s)."""


def parse_event_untrusted(body: bytes) -> PaymentEvent:
    """The event in a verified body; ValueError naming the field at fault."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("body: not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
        raise ValueError("body: expected {id, type, created, data: {...}}")
    obj = data["data"]
    checks = [("id", data.get("id"), str), ("type", data.get("type"), str),
              ("created", data.get("created"), int), ("data.intent_id", obj.get("intent_id"), str),
              ("data.order_id", obj.get("order_id"), str),
              ("data.amount_minor", obj.get("amount_minor"), int),
              ("data.currency", obj.get("currency"), str)]
    for name, value, kind in checks:
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{name}: expected {kind.__name__}")
    if data["type"] not in EVENT_TYPES:
        raise ValueError(f"type: expected one of {', '.join(EVENT_TYPES)}")
    if not 1 <= len(data["id"]) <= 255:
        raise ValueError("id: expected 1 to 255 characters")
    return PaymentEvent(data["id"], data["type"], obj["intent_id"], obj["order_id"],
                        obj["amount_minor"], obj["currency"], float(data["created"]))


# --- the interface --------------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentIntent:
    """A provider's payment for one order."""

    id: str
    order_id: str
    amount_minor: int
    currency: str
    state: str
    """requires_payment_method, processing, succeeded, failed (may be retried), refunded."""
    payment_url: str


class PaymentProvider(Protocol):
    """What the commerce plugin needs of a payments provider (docs/payments.md)."""

    name: str
    """Names the webhook endpoint: /api/v1/payments/webhook/{name}."""

    def register_routes(self, router: Any) -> None:
        """Add the provider's own pages (a hosted payment page), if any."""

    async def start(self, nursery: trio.Nursery) -> None:
        """Start background work (event delivery)."""

    async def create_intent(self, order: dict[str, Any], return_url: str) -> PaymentIntent:
        """A payment intent for ``order`` (its ``id``, ``total`` and
        ``currency``), reusing the order's open intent if there is one."""

    async def refund(self, intent_id: str) -> None:
        """Refund a succeeded intent in full; the outcome arrives as a
        ``charge.refunded`` event."""

    async def cancel_intents(self, order_id: str, reason: str) -> int:
        """Cancel the order's intents not paid yet (its hold expired, it was
        cancelled: a key of CANCEL_REASONS): the payment page refuses them
        and charges nothing. Returns how many were cancelled."""

    def verify_event_untrusted(self, headers: Mapping[str, str], body: bytes, now: float) -> PaymentEvent:
        """The event of a webhook request, or SignatureError/ValueError."""

    async def succeeded_intents(self, since: float) -> list[PaymentIntent]:
        """Reconciliation: the intents that succeeded (and were not refunded)
        since ``since`` (Unix s), as a provider's list API gives them."""

    async def resend_succeeded(self, order_ids: list[str]) -> int:
        """Reconciliation: deliver again the success events of these orders'
        intents that succeeded (the receiver deduplicates); returns how many."""


# --- the test provider ----------------------------------------------------------------------


class PaymentsStore:
    """The SQL of the test provider's side."""

    @staticmethod
    def intent(c: sqlite3.Connection, intent_id: str) -> dict[str, Any] | None:
        row = c.execute("SELECT * FROM payment_intents WHERE id = ?", (intent_id,)).fetchone()
        return dict(row) if row else None

    @staticmethod
    def enqueue(c: sqlite3.Connection, event_type: str, intent: dict[str, Any], now: float,
                deliver_at: float, event_id: str | None = None) -> str:
        event_id = event_id or "evt_" + secrets.token_hex(12)
        body = json.dumps({"id": event_id, "type": event_type, "created": int(now),
                           "data": {"intent_id": intent["id"], "order_id": intent["order_id"],
                                    "amount_minor": intent["amount_minor"],
                                    "currency": intent["currency"]}},
                          separators=(",", ":"))
        c.execute("INSERT INTO payment_outbox (event_id, type, intent_id, body, created_at, deliver_at) "
                  "VALUES (?, ?, ?, ?, ?, ?)", (event_id, event_type, intent["id"], body, now, deliver_at))
        return event_id


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, ch in enumerate(reversed(digits)):
        d = int(ch)
        if index % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem}}
label,input,button{{display:block;font-size:1.1rem;margin:.5rem 0}}input{{width:100%;padding:.4rem}}
button{{padding:.5rem 1.5rem}}.note{{color:#555;font-size:.9rem}}</style></head>
<body><h1>{title}</h1>
{content}
<p class="note">shopcast test payments: no real money moves. Test cards: 4242 4242 4242 4242
succeeds, 4000 0000 0000 0002 is declined, 4000 0000 0000 0077 succeeds after a delay.</p>
</body></html>
"""


class TestProvider:
    """The built-in provider; see the module docstring and docs/payments.md."""

    name = "test"

    def __init__(self, *, db: Any, cfg: Any, secret: bytes, base_url: str, webhook_url: str,
                 ca_file: str | None, clock=time.time) -> None:
        self.db = db
        self.cfg = cfg
        self.secret = secret
        self.base_url = base_url
        self.webhook_url = webhook_url
        self.clock = clock
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
        if ca_file:
            # Our own certificate, reached on the loopback address it does not name.
            self._ssl.check_hostname = False
        self._wake = trio.Event()
        self._connections: list[http.client.HTTPConnection] = []
        self._closed = False
        self.delivered = 0
        self.attempts_failed = 0
        self._progress = trio.Condition()

    # --- interface ----------------------------------------------------------------------

    def register_routes(self, router: Any) -> None:
        router.add("GET", "/pay/test/{intent_id}", self.payment_page, "pay_test_page")
        router.add("POST", "/pay/test/{intent_id}", self.submit_payment, "pay_test_submit")

    async def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._deliver_forever)

    async def create_intent(self, order: dict[str, Any], return_url: str) -> PaymentIntent:
        now = self.clock()

        def make(c: sqlite3.Connection) -> dict[str, Any]:
            row = c.execute("SELECT * FROM payment_intents WHERE order_id = ? AND state IN "
                            "('requires_payment_method', 'failed', 'processing', 'succeeded') "
                            "ORDER BY created_at DESC LIMIT 1", (order["id"],)).fetchone()
            if row is not None:
                return dict(row)
            intent = {"id": "pi_" + secrets.token_hex(12), "provider": self.name,
                      "order_id": order["id"], "amount_minor": order["total"],
                      "currency": order["currency"], "state": "requires_payment_method",
                      "return_url": return_url, "card_last4": None, "decline_reason": None,
                      "created_at": now, "updated_at": now, "expires_at": order.get("expires_at")}
            c.execute(f"INSERT INTO payment_intents ({', '.join(intent)}) VALUES "
                      f"({', '.join('?' * len(intent))})", tuple(intent.values()))
            return intent

        intent = await self.db.write(make)
        return self._intent(intent)

    def _intent(self, row: dict[str, Any]) -> PaymentIntent:
        return PaymentIntent(row["id"], row["order_id"], row["amount_minor"], row["currency"],
                             row["state"], f"{self.base_url}/pay/test/{row['id']}")

    async def refund(self, intent_id: str) -> None:
        now = self.clock()

        def refund(c: sqlite3.Connection) -> None:
            intent = PaymentsStore.intent(c, intent_id)
            if intent is None or c.execute(
                    "UPDATE payment_intents SET state = 'refunded', updated_at = ? WHERE id = ? AND "
                    "state = 'succeeded'", (now, intent_id)).rowcount != 1:
                raise HTTPError(409, "not_refundable", f"payment {intent_id} has not succeeded "
                                f"(it is {intent and intent['state']})", "intent_id")
            PaymentsStore.enqueue(c, "charge.refunded", intent, now, now)

        await self.db.write(refund)
        self._wake.set()

    async def cancel_intents(self, order_id: str, reason: str) -> int:
        now = self.clock()
        return await self.db.write(lambda c: c.execute(
            "UPDATE payment_intents SET state = 'cancelled', decline_reason = ?, updated_at = ? "
            "WHERE order_id = ? AND state IN ('requires_payment_method', 'failed')",
            (reason, now, order_id)).rowcount)

    def verify_event_untrusted(self, headers: Mapping[str, str], body: bytes, now: float) -> PaymentEvent:
        verify_signature_untrusted(self.secret, headers.get(SIGNATURE_HEADER), body, now=now,
                                   tolerance_s=self.cfg.webhook_tolerance_s,
                                   max_chars=self.cfg.signature_max_chars)
        return parse_event_untrusted(body)

    async def succeeded_intents(self, since: float) -> list[PaymentIntent]:
        rows = await self.db.read(lambda c: [dict(r) for r in c.execute(
            "SELECT * FROM payment_intents WHERE state = 'succeeded' AND updated_at >= ? "
            "ORDER BY updated_at", (since,))])
        return [self._intent(r) for r in rows]

    async def resend_succeeded(self, order_ids: list[str]) -> int:
        now = self.clock()

        def resend(c: sqlite3.Connection) -> int:
            count = 0
            for order_id in order_ids:
                for intent in c.execute("SELECT * FROM payment_intents WHERE order_id = ? AND "
                                        "state = 'succeeded'", (order_id,)).fetchall():
                    row = c.execute("SELECT event_id FROM payment_outbox WHERE intent_id = ? AND "
                                    "type = 'payment_intent.succeeded' ORDER BY id LIMIT 1",
                                    (intent["id"],)).fetchone()
                    # The same event id: a receiver that applied it already ignores it.
                    PaymentsStore.enqueue(c, "payment_intent.succeeded", dict(intent), now, now,
                                          event_id=row["event_id"] if row else None)
                    count += 1
            # Deliveries given up on are tried again.
            count += c.execute("UPDATE payment_outbox SET state = 'pending', attempts = 0, "
                               "deliver_at = ? WHERE state = 'failed'", (now,)).rowcount
            return count

        count = await self.db.write(resend)
        self._wake.set()
        return count

    # --- the hosted page ----------------------------------------------------------------

    def _page(self, title: str, content: str, status: int = 200, refresh_url: str | None = None,
              refresh_s: int = 3) -> Response:
        refresh = (f'\n<meta http-equiv="refresh" content="{refresh_s};url={html.escape(refresh_url)}">'
                   if refresh_url else "")
        text = _PAGE.format(title=html.escape(title), content=content, refresh=refresh)
        return Response.text(text, status=status, content_type="text/html; charset=utf-8",
                             headers=(("cache-control", "no-store"),
                                      ("content-security-policy", "default-src 'self'; "
                                       "style-src 'unsafe-inline'; form-action 'self'")))

    async def _load(self, intent_id: str) -> dict[str, Any]:
        intent = None
        if re.fullmatch(r"pi_[0-9a-f]{24}", intent_id):
            intent = await self.db.read(lambda c: PaymentsStore.intent(c, intent_id))
        if intent is None:
            raise HTTPError(404, "not_found", f"no payment {intent_id!r}", "intent_id")
        return intent

    def _form(self, intent: dict[str, Any], error: str = "") -> str:
        amount = html.escape(format_amount(intent["amount_minor"], intent["currency"]))
        message = f'<p role="alert">{html.escape(error)}</p>' if error else ""
        return (f"<p>Order {html.escape(intent['order_id'])}: <strong>{amount}</strong></p>{message}"
                f'<form method="post" action="/pay/test/{html.escape(intent["id"])}">'
                '<label for="card">Card number</label>'
                '<input id="card" name="card" inputmode="numeric" autocomplete="cc-number" '
                f'maxlength="{self.cfg.card_max_chars}" required placeholder="4242 4242 4242 4242">'
                '<button type="submit">Pay</button></form>')

    def _done(self, intent: dict[str, Any], title: str, text: str, status: int = 200) -> Response:
        url = intent["return_url"]
        content = (f"<p>{html.escape(text)}</p>"
                   f'<p><a href="{html.escape(url)}">Back to your order</a></p>')
        return self._page(title, content, status, refresh_url=url)

    def _closed_page(self, intent: dict[str, Any]) -> Response | None:
        """The page of an intent that can no longer be paid (cancelled, or past
        the order's hold): nothing is charged. None while it can be paid."""
        reason = None
        if intent["state"] == "cancelled":
            reason = intent["decline_reason"]
        elif (intent["state"] in ("requires_payment_method", "failed") and intent.get("expires_at")
              and self.clock() >= intent["expires_at"]):
            reason = "hold_expired"
        if reason is None:
            return None
        text = CANCEL_REASONS.get(reason, "the order can no longer be paid")
        return self._done(intent, "Payment not possible", f"This payment cannot be made: {text}. "
                          "Nothing was charged.", 409)

    async def payment_page(self, request: Request, intent_id: str) -> Response:
        intent = await self._load(intent_id)
        closed = self._closed_page(intent)
        if closed is not None:
            return closed
        if intent["state"] in ("succeeded", "processing", "refunded"):
            return self._done(intent, "Already paid", f"This payment is {intent['state']}.")
        return self._page("Pay", self._form(intent))

    async def submit_payment(self, request: Request, intent_id: str) -> Response:
        intent = await self._load(intent_id)
        closed = self._closed_page(intent)
        if closed is not None:
            return closed
        cfg = self.cfg
        if len(request.body) > cfg.form_max_bytes:
            return self._page("Pay", self._form(intent, "The form is too large."), 413)
        try:
            fields = urllib.parse.parse_qs(request.body.decode("utf-8"), max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            fields = {}
        card = "".join((fields.get("card") or [""])[0].split()).replace("-", "")
        if not re.fullmatch(r"\d{12,19}", card) or len(card) > cfg.card_max_chars or not _luhn_ok(card):
            return self._page("Pay", self._form(intent, "Card number: enter 12 to 19 digits of a "
                                                        "valid card number."), 400)
        behaviour = TEST_CARDS.get(card)
        if behaviour is None:
            return self._page("Pay", self._form(intent, "Card number: this test provider accepts "
                                                        "only its test cards (listed below)."), 402)
        now = self.clock()
        # A delayed success is decided now and told later, as a provider settling it does.
        state = "failed" if behaviour == "decline" else "succeeded"

        def pay(c: sqlite3.Connection) -> str | None:
            # One payment per intent, however many submissions race.
            # Not once cancelled, nor past the order's hold (the seller cannot take it).
            if c.execute("UPDATE payment_intents SET state = ?, card_last4 = ?, decline_reason = ?, "
                         "updated_at = ? WHERE id = ? AND state IN ('requires_payment_method', 'failed') "
                         "AND (expires_at IS NULL OR expires_at > ?)",
                         (state, card[-4:], "card_declined" if behaviour == "decline" else None, now,
                          intent_id, now)).rowcount != 1:
                return None
            if behaviour == "decline":
                return PaymentsStore.enqueue(c, "payment_intent.payment_failed", intent, now, now)
            deliver_at = now + (cfg.test_delay_s if behaviour == "succeed_after_delay" else 0.0)
            return PaymentsStore.enqueue(c, "payment_intent.succeeded", intent, now, deliver_at)

        event_id = await self.db.write(pay)
        if event_id is None:
            now_intent = await self._load(intent_id)
            closed = self._closed_page(now_intent)
            if closed is not None:
                return closed
            return self._done(intent, "Already paid", "This payment was already made.", 409)
        self._wake.set()
        log.info("test_payment", intent=intent_id, order=intent["order_id"], outcome=behaviour)
        if behaviour == "decline":
            return self._page("Payment declined", self._form(intent, "Your card was declined. Try "
                                                                     "another card."), 402)
        if behaviour == "succeed_after_delay":
            return self._done(intent, "Payment processing", "Your payment is being processed; the "
                              "order is confirmed when it completes.")
        return self._done(intent, "Payment received", "Thank you: your payment succeeded.")

    # --- event delivery -----------------------------------------------------------------

    async def wait_delivered(self, count: int) -> None:
        """Return once ``count`` events were delivered since start (tests)."""
        async with self._progress:
            while self.delivered < count:
                await self._progress.wait()

    async def _deliver_forever(self) -> None:
        """Deliver due events; sleep until the next is due or one is queued.
        Never returns unless cancelled."""
        try:
            await self._deliver_rounds()
        finally:
            self.close()

    async def _deliver_rounds(self) -> None:
        while True:
            self._wake = trio.Event()
            try:
                await self.deliver_due()
                next_at = await self.db.read(lambda c: c.execute(
                    "SELECT min(deliver_at) FROM payment_outbox WHERE state = 'pending'").fetchone()[0])
            except Exception:
                log.error("payment_delivery_round_failed", exc_info=True)
                next_at = self.clock() + self.cfg.retry_base_s
            wait_s = self.cfg.retry_max_s if next_at is None else max(0.0, next_at - self.clock())
            with trio.move_on_after(wait_s):
                await self._wake.wait()

    async def deliver_due(self) -> int:
        """One round: try every due event once, ``payments.senders`` at a time."""
        cfg = self.cfg
        rows = await self.db.read(lambda c: [dict(r) for r in c.execute(
            "SELECT * FROM payment_outbox WHERE state = 'pending' AND deliver_at <= ? "
            "ORDER BY deliver_at, id LIMIT ?", (self.clock(), cfg.batch_events))])
        limiter = trio.CapacityLimiter(cfg.senders)
        results: list[tuple[dict[str, Any], str | None]] = []

        async def send(row: dict[str, Any]) -> None:
            async with limiter:
                results.append((row, await self._post(row["body"].encode())))

        async with trio.open_nursery() as nursery:
            for row in rows:
                nursery.start_soon(send, row)
        now = self.clock()
        done = [row["id"] for row, error in results if error is None]
        retries = []
        for row, error in results:
            if error is None:
                continue
            self.attempts_failed += 1
            attempts = row["attempts"] + 1
            next_at = None
            if attempts < cfg.max_attempts:
                next_at = now + min(cfg.retry_max_s, cfg.retry_base_s * 2 ** (attempts - 1))
            log.info("payment_event_failed", event_id=row["event_id"], attempts=attempts, error=error,
                     gave_up=next_at is None)
            retries.append((attempts, next_at, next_at, error[:500], row["id"]))

        def record(c: sqlite3.Connection) -> None:
            c.executemany("UPDATE payment_outbox SET state = 'delivered', attempts = attempts + 1 "
                          "WHERE id = ?", [(i,) for i in done])
            c.executemany("UPDATE payment_outbox SET attempts = ?, deliver_at = coalesce(?, deliver_at), "
                          "state = CASE WHEN ? IS NULL THEN 'failed' ELSE 'pending' END, last_error = ? "
                          "WHERE id = ?", retries)

        if results:
            await self.db.write(record)
        if done:
            self.delivered += len(done)
            async with self._progress:
                self._progress.notify_all()
        return len(done)

    async def _post(self, body: bytes) -> str | None:
        """POST one event, signed now; None when delivered (2xx), else the error."""
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "user-agent": "shopcast-test-payments",
                   SIGNATURE_HEADER: sign_payload(self.secret, timestamp, body)}
        try:
            status = await trio.to_thread.run_sync(self._post_blocking, headers, body,
                                                   abandon_on_cancel=True)
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= status < 300 else f"HTTP {status}"

    def _post_blocking(self, headers: dict[str, str], body: bytes) -> int:
        """One POST on a kept-alive connection from the pool (a worker thread)."""
        parts = urllib.parse.urlsplit(self.webhook_url)
        try:
            connection = self._connections.pop()
        except IndexError:
            if parts.scheme == "https":
                connection = http.client.HTTPSConnection(parts.hostname, parts.port, context=self._ssl,
                                                         timeout=self.cfg.timeout_s)
            else:
                connection = http.client.HTTPConnection(parts.hostname, parts.port,
                                                        timeout=self.cfg.timeout_s)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            connection.request("POST", target, body=body, headers=headers)
            response = connection.getresponse()
            response.read(65536)
        except BaseException:
            connection.close()
            raise
        if response.will_close or self._closed:
            connection.close()
        else:
            self._connections.append(connection)
        return response.status

    def close(self) -> None:
        """Close the kept-alive delivery connections (at shutdown)."""
        self._closed = True
        for connection in self._connections:
            connection.close()
        self._connections.clear()

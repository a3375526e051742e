"""Orders after Buy Now (issue 9 parts 5 and 6): payment through the
provider (plugins/_payments.py), the verified webhook that alone makes an
order paid, the after-sale statuses, complaints, the buyer's order list, the
host's live sales view, an inbound logistics webhook, and reconciliation at
start-up.

Statuses and who moves an order between them (anything else is 409 naming
the current status):

    pending   -> paid       a verified payment_intent.succeeded event, once
    pending   -> expired    the hold ran out unpaid (stock comes back)
    pending   -> cancelled  buyer or seller (stock comes back)
    paid      -> confirmed  seller: the room's team, an operator or the platform
    confirmed -> shipped    seller or the logistics webhook (tracking number)
    shipped   -> delivered  seller or the logistics webhook
    delivered -> completed  buyer or platform/operator
    paid, confirmed -> cancelled      buyer or seller: stock back, refund issued
    paid, confirmed, delivered, completed, returned -> refunded
                            seller; on the provider's verified charge.refunded
    delivered, completed -> returned  buyer (the goods come back to stock)

Each change is logged in ``order_events`` and told to plugins
(``shopcast_order_paid``, ``shopcast_order_cancelled``,
``shopcast_order_updated``), which the webhooks plugin forwards to the platform.
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

import trio

from shopcast.plugins._api import Api, Query, field_error, format_time
from shopcast.plugins._payments import (
    MIGRATIONS as PAYMENT_MIGRATIONS,
    SignatureError,
    TestProvider,
    load_secret,
    parse_event_untrusted,
    verify_signature_untrusted,
)
from shopcast.server._log import get_logger
from shopcast.server._routing import HTTPError, Request, Response

__all__ = ["OrderStore", "OrdersMixin", "TRANSITIONS", "order_view"]

log = get_logger("commerce")
LOGISTICS_SECRET_FILE = "logistics-secret"
LOGISTICS_SIGNATURE_HEADER = "logistics-signature"

BUYER, SELLER = "buyer", "seller"
TRANSITIONS: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    # action: (from statuses, to status, who)
    "confirm": (("paid",), "confirmed", (SELLER,)),
    "ship": (("confirmed",), "shipped", (SELLER,)),
    "deliver": (("shipped",), "delivered", (SELLER,)),
    "complete": (("delivered",), "completed", (BUYER, SELLER)),
    "cancel": (("pending", "paid", "confirmed"), "cancelled", (BUYER, SELLER)),
    "refund": (("paid", "confirmed", "delivered", "completed", "returned"), "refunded", (SELLER,)),
    "return": (("delivered", "completed"), "returned", (BUYER,)),
}
_RELEASE_ON_REFUND = ("paid", "confirmed")
"""Refunds before shipping give the units back to stock (a return already did)."""


def order_view(o: dict[str, Any]) -> dict[str, Any]:
    """The public form of an order. ``state`` is kept beside ``status`` for
    the first API clients; money fields have ``_minor`` twins as in CONTRACTS.md."""
    return {"id": o["id"], "room_id": o["room_id"], "product_id": o["product_id"],
            "sku_id": o["sku_id"], "quantity": o["quantity"], "unit_price": o["unit_price"],
            "subtotal": o["subtotal"], "discount": o["discount"], "total": o["total"],
            "total_minor": o["total"], "currency": o["currency"], "coupon_code": o["coupon_code"],
            "pin_id": o.get("pin_id"), "state": o["state"], "status": o["state"],
            "payment_state": o.get("payment_state", "none"),
            "tracking_number": o.get("tracking_number"), "carrier": o.get("carrier"),
            "refund_reason": o.get("refund_reason"),
            "created_at": format_time(o["created_at"]), "expires_at": format_time(o["expires_at"]),
            "hold_expires_at": format_time(o["expires_at"]), "paid_at": format_time(o["paid_at"]),
            "updated_at": format_time(o.get("updated_at"))}


class OrderStore:
    """The SQL of orders after Buy Now."""

    @staticmethod
    def log(c: sqlite3.Connection, order_id: str, at: float, status: str, actor: str, note: str) -> None:
        c.execute("INSERT INTO order_events (order_id, at, status, actor, note) VALUES (?, ?, ?, ?, ?)",
                  (order_id, at, status, actor, note[:500]))

    @staticmethod
    def get(c: sqlite3.Connection, order_id: str) -> dict[str, Any] | None:
        row = c.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        return dict(row) if row else None

    @staticmethod
    def move(c: sqlite3.Connection, order_id: str, from_states: tuple[str, ...], to: str, now: float,
             actor: str, note: str = "", **fields: Any) -> dict[str, Any] | None:
        """The conditional status change: the order after it, or None when it
        was not in ``from_states`` (someone else moved it first)."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        marks = ", ".join("?" * len(from_states))
        cursor = c.execute(f"UPDATE orders SET state = ?, updated_at = ?{', ' + sets if sets else ''} "
                           f"WHERE id = ? AND state IN ({marks})",
                           (to, now, *fields.values(), order_id, *from_states))
        if cursor.rowcount != 1:
            return None
        OrderStore.log(c, order_id, now, to, actor, note)
        return OrderStore.get(c, order_id)

    @staticmethod
    def history(c: sqlite3.Connection, order_id: str) -> list[dict[str, Any]]:
        return [{"at": format_time(r["at"]), "status": r["status"], "actor": r["actor"], "note": r["note"]}
                for r in c.execute("SELECT * FROM order_events WHERE order_id = ? ORDER BY id",
                                   (order_id,))]


class OrdersMixin:
    """Payments and orders of the commerce plugin (see the module docstring)."""

    provider: Any = None

    def _payment_migrations(self) -> list[Any]:
        return PAYMENT_MIGRATIONS

    async def _start_payments(self, app: Any, nursery: trio.Nursery) -> None:
        cfg = app.config.payments
        self.payments_cfg = cfg
        self.payments_secret = await trio.to_thread.run_sync(load_secret, cfg.secret, app.data_dir)
        self.logistics_secret = await trio.to_thread.run_sync(
            load_secret, "", app.data_dir, LOGISTICS_SECRET_FILE)
        webhook_url = cfg.webhook_url or f"https://127.0.0.1:{app.port}/api/v1/payments/webhook/test"
        self.provider = TestProvider(db=app.db, cfg=cfg, secret=self.payments_secret,
                                     # Relative: the page is on whichever origin the buyer uses.
                                     base_url="", webhook_url=webhook_url,
                                     ca_file=None if cfg.webhook_url else str(app.certificate.cert_path))
        self.provider.register_routes(app.router)
        self.events_applied = 0
        self._applied = trio.Condition()
        await self.provider.start(nursery)
        # Start-up reconciliation: events of payments made before a crash are
        # delivered again (deduplicated on arrival); holds expire as usual.
        await self.reconcile()
        nursery.start_soon(self._reconcile_forever)

    async def reconcile(self) -> int:
        """Bring orders and the provider's payments together (at start-up and
        every ``payments.reconcile_interval_s``): a succeeded payment of an
        order still pending has its event delivered again (deduplicated on
        arrival, so the order is paid once, by a verified event); one whose
        order can no longer take it (expired, cancelled, paid by another
        payment) is refunded; deliveries given up on are tried again.
        Returns how many payments needed something."""
        intents = await self.provider.succeeded_intents(self.clock() - self.payments_cfg.events_seen_ttl_s)
        ids = sorted({i.order_id for i in intents})
        orders = await self.db.read(lambda c: {o: OrderStore.get(c, o) for o in ids})
        resend, refund = [], []
        for intent in intents:
            order = orders.get(intent.order_id)
            if order is not None and order["state"] == "pending":
                resend.append(order["id"])
            elif order is None or order["state"] not in KEEPS_PAYMENT or order["intent_id"] != intent.id:
                refund.append(intent.id)
        now = self.clock()

        def note(c: sqlite3.Connection) -> None:
            for intent in intents:
                order = OrderStore.get(c, intent.order_id)
                if intent.id in refund and order is not None:
                    _note_unpayable(c, order, intent.id, now)

        if refund:
            await self.db.write(note)
        for intent_id in refund:
            try:
                await self.provider.refund(intent_id)
            except HTTPError as exc:
                log.error("refund_failed", intent=intent_id, reason=exc.message)
        resent = await self.provider.resend_succeeded(resend)
        if resent or refund:
            log.info("reconciled", resent=resent, refunded=len(refund))
        return resent + len(refund)

    async def _reconcile_forever(self) -> None:
        while True:
            await trio.sleep(self.payments_cfg.reconcile_interval_s)
            try:
                await self.reconcile()
            except Exception:
                log.error("reconcile_failed", exc_info=True)

    # --- routes ---------------------------------------------------------------------------

    def _register_order_routes(self, api: Api, order_schema: dict[str, Any]) -> None:
        cfg = self.cfg
        tag = "commerce"
        error = {"$ref": "#/components/schemas/Error"}
        users = ("viewer", "host", "operator", "service")
        order_detail = {"type": "object", "required": ["order", "history"],
                        "properties": {"order": order_schema, "history": {"type": "array"}}}
        api.route("GET", "/api/v1/orders/{order_id}", self.show_order, name="orders_show", tag=tag,
                  roles=users, summary="An order (its buyer, the room's team, operators, the platform), "
                                       "with `history` of its status changes.",
                  responses={200: ("The order.", order_schema)})
        api.route("POST", "/api/v1/orders/{order_id}/payment", self.start_payment, name="orders_pay",
                  tag=tag, roles=("viewer", "host", "operator"),
                  summary="Start paying a pending order: the provider's payment page URL.",
                  responses={200: ("The payment intent.", {
                      "type": "object", "required": ["payment_url", "intent_id"],
                      "properties": {"payment_url": {"type": "string"}, "intent_id": {"type": "string"},
                                     "order_id": {"type": "string"}, "amount_minor": {"type": "integer"},
                                     "currency": {"type": "string"}}}),
                             409: ("The order is not pending or its hold expired.", error)})
        text = {"type": "string", "minLength": 1, "maxLength": cfg.tracking_number_max_chars}
        for action, (sources, target, who) in TRANSITIONS.items():
            request = example = None
            if action == "ship":
                example = {"tracking_number": "1Z999AA10123456784", "carrier": "UPS"}
                request = {"type": "object", "additionalProperties": False,
                           "required": ["tracking_number", "carrier"],
                           "properties": {"tracking_number": text, "carrier": text}}
            api.route("POST", f"/api/v1/orders/{{order_id}}/{action}",
                      _bind_action(self.change_order, action), name=f"orders_{action}", tag=tag,
                      roles=users, request=request, example=example,
                      summary=f"{action.capitalize()} the order: {', '.join(sources)} -> {target} "
                              f"({' or '.join(who)}).",
                      responses={200: ("The order.", order_schema),
                                 409: ("The order's current status does not allow it (named).", error)})
        complaint = {"type": "object", "properties": {
            "id": {"type": "string"}, "order_id": {"type": "string"}, "text": {"type": "string"},
            "state": {"type": "string", "enum": ["open", "resolved"]}, "created_at": {"type": "string"},
            "resolution": {"type": ["string", "null"]}, "resolved_at": {"type": ["string", "null"]}}}
        api.route("POST", "/api/v1/complaints/{complaint_id}/resolve", self.resolve_complaint,
                  name="complaints_resolve", tag=tag, roles=("host", "operator", "service"),
                  request={"type": "object", "additionalProperties": False, "required": ["resolution"],
                           "properties": {"resolution": {"type": "string", "minLength": 1,
                                                         "maxLength": cfg.complaint_max_chars}}},
                  example={"resolution": "A replacement was sent with tracking 1Z999AA10123456785."},
                  summary="Resolve a complaint with a text the buyer sees (the room's owner, "
                          "operators, the platform).",
                  responses={200: ("The complaint, resolved.", complaint),
                             409: ("The complaint is resolved already.", error)})
        api.route("POST", "/api/v1/orders/{order_id}/complaints", self.add_complaint,
                  name="orders_complain", tag=tag, roles=("viewer", "host", "operator"),
                  request={"type": "object", "additionalProperties": False, "required": ["text"],
                           "properties": {"text": {"type": "string", "minLength": 1,
                                                   "maxLength": cfg.complaint_max_chars}}},
                  example={"text": "The parcel arrived damaged."},
                  summary="A complaint about an order (its buyer).",
                  responses={201: ("The complaint.", complaint),
                             409: ("Too many complaints on this order.", error)})
        api.route("GET", "/api/v1/orders/{order_id}/complaints", self.list_complaints,
                  name="orders_complaints", tag=tag, roles=users,
                  summary="The complaints on an order.",
                  responses={200: ("The complaints.", {"type": "object", "properties": {
                      "complaints": {"type": "array", "items": complaint}}})})
        api.route("GET", "/api/v1/me/orders", self.my_orders, name="me_orders", tag=tag,
                  roles=("viewer", "host", "operator"),
                  query=(Query("status", {"type": "string", "enum": list(_ALL_STATES)},
                               "Only orders in this status."),),
                  summary="The caller's orders, newest first.",
                  responses={200: ("The orders.", {"type": "object", "properties": {
                      "orders": {"type": "array", "items": order_schema}}})})
        api.route("GET", "/api/v1/rooms/{room_id}/sales", self.room_sales, name="room_sales", tag=tag,
                  roles=("host", "operator", "service"),
                  summary="The host's live sales view: orders, units per product, GMV.",
                  responses={200: ("The sales.", {"type": "object", "required": [
                      "orders", "paid_orders", "units_by_product", "gmv_minor", "currency", "recent"]})})
        api.router.add("POST", "/api/v1/payments/webhook/{provider}", self.payment_webhook,
                       "payments_webhook")
        api.document_route("POST", "/api/v1/payments/webhook/{provider}", name="payments_webhook",
                           tag=tag, summary="The payments provider's signed events "
                                            "(Payment-Signature: t=...,v1=...).",
                           responses={200: ("Applied, or a duplicate.", None),
                                      400: ("Bad signature, stale or future timestamp, bad event.",
                                            error)})
        for method, name in (("GET", "pay_test_page"), ("POST", "pay_test_submit")):
            api.document_route(method, "/pay/test/{intent_id}", name=name,
                               tag=tag, content_type="text/html",
                               summary="The test provider's hosted payment page (a card number "
                                       "form; POST submits it).",
                               responses={200: ("The page.", {"type": "string"}),
                                          400: ("The card number is not valid (the form again).", None),
                                          402: ("Declined, or not a test card (the form again).", None),
                                          409: ("Already paid.", None),
                                          413: ("The form is too large.", None)})
        api.router.add("POST", "/api/v1/logistics/webhook", self.logistics_webhook, "logistics_webhook")
        api.document_route("POST", "/api/v1/logistics/webhook", name="logistics_webhook", tag=tag,
                           summary="A logistics partner's signed shipment update "
                                   "(Logistics-Signature: t=...,v1=..., key in "
                                   "data_dir/logistics-secret): {event_id, order_id, status: "
                                   "shipped|delivered, tracking_number?, carrier?}.",
                           responses={200: ("Applied, or a duplicate.", None),
                                      400: ("Bad signature or body.", error),
                                      404: ("No such order.", error),
                                      409: ("The order's status does not allow it.", error)})

    # --- who may ----------------------------------------------------------------------------

    async def _order_and_parties(self, claims: Any, order_id: str) -> tuple[dict[str, Any], set[str], str]:
        """The order, the caller's parties in it (buyer, seller) and the actor
        name; 404 when the caller is neither (nothing leaks)."""
        order = await self.db.read(lambda c: OrderStore.get(c, order_id))
        parties: set[str] = set()
        actor = f"{claims.role}:{claims.subject}"
        if order is not None:
            if claims.role in ("operator", "service"):
                parties.add(SELLER)
                if claims.role == "operator":
                    parties.add("operator")
            else:
                account = await self.plugins.get("accounts").require_account(claims)
                actor = account["id"]
                if order["buyer_id"] == account["id"]:
                    parties.add(BUYER)
                rooms = self.plugins.get("rooms")
                try:
                    room = await rooms.get(order["room_id"])
                except HTTPError:
                    room = None
                if room is not None and await rooms._is_team(room, account["id"]):
                    parties.add(SELLER)
        if order is None or not parties:
            raise HTTPError(404, "not_found", f"no order {order_id!r} of yours", "order_id")
        return order, parties, actor

    # --- handlers ---------------------------------------------------------------------------

    async def show_order(self, request, claims, body, query, order_id: str) -> Response:
        order, _, _ = await self._order_and_parties(claims, order_id)
        history = await self.db.read(lambda c: OrderStore.history(c, order_id))
        return Response.json({**order_view(order), "history": history})

    async def start_payment(self, request, claims, body, query, order_id: str) -> Response:
        order, parties, _ = await self._order_and_parties(claims, order_id)
        if BUYER not in parties:
            raise HTTPError(403, "not_buyer", "only the buyer pays an order", "order_id")
        if order["state"] != "pending":
            raise _status_conflict(order, "pay", ("pending",))
        if order["expires_at"] <= self.clock():
            raise HTTPError(409, "hold_expired", "the order's hold has expired; buy again", "order_id")
        intent = await self.provider.create_intent(order, f"/orders/{order_id}")
        await self.db.write(lambda c: c.execute(
            "UPDATE orders SET intent_id = ?, payment_state = CASE WHEN payment_state = 'none' "
            "THEN 'requires_payment_method' ELSE payment_state END WHERE id = ?", (intent.id, order_id)))
        return Response.json({"payment_url": intent.payment_url, "intent_id": intent.id,
                              "order_id": order_id, "amount_minor": intent.amount_minor,
                              "currency": intent.currency})

    async def change_order(self, request, claims, body, query, order_id: str, *, action: str) -> Response:
        order, parties, actor = await self._order_and_parties(claims, order_id)
        sources, target, who = TRANSITIONS[action]
        if not parties & set(who):
            raise HTTPError(403, "not_allowed", f"only the {' or '.join(who)} may {action} an order",
                            "order_id")
        if order["state"] not in sources:
            raise _status_conflict(order, action, sources)
        if action == "refund":
            return Response.json(await self._refund(order, actor))
        fields: dict[str, Any] = {}
        if action == "ship":
            fields = {"tracking_number": body["tracking_number"], "carrier": body["carrier"]}
        moved = await self._move(order_id, sources, target, actor, action, **fields)
        return Response.json(order_view(moved))

    async def _move(self, order_id: str, sources: tuple[str, ...], target: str, actor: str,
                    action: str, note: str = "", **fields: Any) -> dict[str, Any]:
        now = self.clock()

        def move(c: sqlite3.Connection) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
            before = OrderStore.get(c, order_id)
            if (target == "cancelled" and before is not None and before["state"] in ("paid", "confirmed")
                    and before["payment_state"] == "succeeded"):
                # Marked before the provider is asked, so its refund event,
                # however fast, always comes after (and wins).
                fields.update(payment_state="refund_pending", refund_reason="order_cancelled")
            after = OrderStore.move(c, order_id, sources, target, now, actor, note or action, **fields)
            if after is not None and (target == "returned" or (
                    target == "cancelled" and before["state"] in ("pending", "paid", "confirmed"))):
                from shopcast.plugins._commerce import CommerceStore

                # A cancelled hold gives its coupon use back too; a sale's coupon stays used.
                CommerceStore.release(c, before, coupon=before["state"] == "pending")
            return before, after

        before, after = await self.db.write(move)
        if after is None:
            raise _status_conflict(before, action, sources)
        await self._tell(after, before["state"])
        if target == "cancelled" and before["state"] == "pending":
            await self.provider.cancel_intents(order_id, "order_cancelled")
        if after["payment_state"] == "refund_pending" and before["payment_state"] == "succeeded":
            try:
                await self.provider.refund(after["intent_id"])
            except HTTPError as exc:
                # Reconciliation refunds a succeeded payment of a cancelled order later.
                log.error("refund_failed", intent=after["intent_id"], reason=exc.message)
        return after

    async def _refund(self, order: dict[str, Any], actor: str) -> dict[str, Any]:
        refusal = HTTPError(409, "not_refundable", f"the order's payment is {order['payment_state']}; "
                            "only a succeeded payment is refunded", "order_id")
        if order["intent_id"] is None or order["payment_state"] != "succeeded":
            raise refusal
        now = self.clock()

        def mark(c: sqlite3.Connection) -> dict[str, Any] | None:
            # Only from succeeded: marked before the provider is asked, so its
            # refund event (which sets refunded) always comes after.
            if c.execute("UPDATE orders SET payment_state = 'refund_pending', refund_reason = "
                         "'seller_refund', updated_at = ? WHERE id = ? AND payment_state = 'succeeded'",
                         (now, order["id"])).rowcount != 1:
                return None
            OrderStore.log(c, order["id"], now, order["state"], actor, "refund requested")
            return OrderStore.get(c, order["id"])

        marked = await self.db.write(mark)
        if marked is None:
            raise refusal
        try:
            await self.provider.refund(order["intent_id"])
        except HTTPError:
            await self.db.write(lambda c: c.execute(
                "UPDATE orders SET payment_state = 'succeeded', refund_reason = NULL WHERE id = ? "
                "AND payment_state = 'refund_pending'", (order["id"],)))
            raise
        # The status becomes refunded when the provider's verified event arrives.
        return order_view(marked)

    async def _tell(self, order: dict[str, Any], previous: str) -> None:
        view = order_view(order)
        status = order["state"]
        if status == "paid":
            await self.plugins.notify("shopcast_order_paid", order=view)
        elif status in ("cancelled", "refunded"):
            await self.plugins.notify("shopcast_order_cancelled", order=view, reason=status)
        await self.plugins.notify("shopcast_order_updated", order=view, previous=previous)

    async def add_complaint(self, request, claims, body, query, order_id: str) -> Response:
        order, parties, actor = await self._order_and_parties(claims, order_id)
        if BUYER not in parties:
            raise HTTPError(403, "not_buyer", "complaints about an order come from its buyer", "order_id")
        now = self.clock()
        limit = self.cfg.complaints_per_order_max
        complaint = {"id": "c" + secrets.token_hex(8), "order_id": order_id, "author_id": actor,
                     "text": body["text"], "created_at": now, "state": "open"}

        def add(c: sqlite3.Connection) -> None:
            if c.execute("SELECT count(*) FROM complaints WHERE order_id = ?", (order_id,)).fetchone()[0] >= limit:
                raise HTTPError(409, "too_many_complaints", f"at most {limit} complaints per order "
                                "(commerce.complaints_per_order_max)", "text")
            c.execute(f"INSERT INTO complaints ({', '.join(complaint)}) VALUES "
                      f"({', '.join('?' * len(complaint))})", tuple(complaint.values()))
            OrderStore.log(c, order_id, now, order["state"], actor, "complaint " + complaint["id"])

        await self.db.write(add)
        await self.plugins.notify("shopcast_order_updated", order={**order_view(order),
                                                                     "complaint": _complaint_view(complaint)},
                                  previous=order["state"])
        return Response.json(_complaint_view(complaint), status=201)

    async def resolve_complaint(self, request, claims, body, query, complaint_id: str) -> Response:
        found = await self.db.read(lambda c: c.execute(
            "SELECT * FROM complaints WHERE id = ?", (complaint_id,)).fetchone())
        order = found and await self.db.read(lambda c: OrderStore.get(c, found["order_id"]))
        missing = HTTPError(404, "not_found", f"no complaint {complaint_id!r} of yours", "complaint_id")
        if found is None or order is None:
            raise missing
        actor = f"{claims.role}:{claims.subject}"
        if claims.role not in ("operator", "service"):
            account = await self.plugins.get("accounts").require_account(claims)
            actor = account["id"]
            try:
                room = await self.plugins.get("rooms").get(order["room_id"])
            except HTTPError:
                room = None
            if room is None or room["owner_id"] != account["id"]:
                if order["buyer_id"] == account["id"]:
                    raise HTTPError(403, "not_allowed", "the room's owner or an operator resolves a "
                                    "complaint, not its author", "complaint_id")
                raise missing
        now = self.clock()

        def resolve(c: sqlite3.Connection) -> dict[str, Any] | None:
            if c.execute("UPDATE complaints SET state = 'resolved', resolution = ?, resolved_at = ?, "
                         "resolved_by = ? WHERE id = ? AND state = 'open'",
                         (body["resolution"], now, actor, complaint_id)).rowcount != 1:
                return None
            OrderStore.log(c, order["id"], now, order["state"], actor, "complaint resolved " + complaint_id)
            return dict(c.execute("SELECT * FROM complaints WHERE id = ?", (complaint_id,)).fetchone())

        resolved = await self.db.write(resolve)
        if resolved is None:
            raise HTTPError(409, "complaint_resolved", f"complaint {complaint_id} is resolved already",
                            "complaint_id")
        view = _complaint_view(resolved)
        await self.plugins.notify("shopcast_order_updated", order={**order_view(order), "complaint": view},
                                  previous=order["state"])
        return Response.json(view)

    async def list_complaints(self, request, claims, body, query, order_id: str) -> Response:
        await self._order_and_parties(claims, order_id)
        rows = await self.db.read(lambda c: [dict(r) for r in c.execute(
            "SELECT * FROM complaints WHERE order_id = ? ORDER BY created_at", (order_id,))])
        return Response.json({"complaints": [_complaint_view(r) for r in rows]})

    async def my_orders(self, request, claims, body, query) -> Response:
        account = await self.plugins.get("accounts").require_account(claims)
        limit = self.cfg.orders_page_max
        status = query.get("status")

        def load(c: sqlite3.Connection) -> list[dict[str, Any]]:
            sql = "SELECT * FROM orders WHERE buyer_id = ?"
            args: list[Any] = [account["id"]]
            if status:
                sql += " AND state = ?"
                args.append(status)
            return [dict(r) for r in c.execute(sql + " ORDER BY created_at DESC, id LIMIT ?", (*args, limit))]

        return Response.json({"orders": [order_view(o) for o in await self.db.read(load)]})

    async def room_sales(self, request, claims, body, query, room_id: str) -> Response:
        rooms = self.plugins.get("rooms")
        room = await rooms.get(room_id)
        if claims.role not in ("operator", "service"):
            await rooms._team_member(room, claims)
        recent_max = self.cfg.sales_recent_max

        def load(c: sqlite3.Connection) -> dict[str, Any]:
            sold = tuple(SOLD)
            marks = ", ".join("?" * len(sold))
            orders = c.execute("SELECT count(*) FROM orders WHERE room_id = ?", (room_id,)).fetchone()[0]
            paid = c.execute(f"SELECT count(*) FROM orders WHERE room_id = ? AND state IN ({marks})",
                             (room_id, *sold)).fetchone()[0]
            units = {r[0]: r[1] for r in c.execute(
                f"SELECT product_id, sum(quantity) FROM orders WHERE room_id = ? AND state IN ({marks}) "
                "GROUP BY product_id ORDER BY product_id", (room_id, *sold))}
            gmv = {r[0]: r[1] for r in c.execute(
                f"SELECT currency, sum(total) FROM orders WHERE room_id = ? AND state IN ({marks}) "
                "GROUP BY currency ORDER BY sum(total) DESC", (room_id, *sold))}
            pending = c.execute("SELECT count(*), coalesce(sum(quantity), 0) FROM orders WHERE room_id = ? "
                                "AND state = 'pending'", (room_id,)).fetchone()
            recent = [dict(r) for r in c.execute("SELECT * FROM orders WHERE room_id = ? ORDER BY "
                                                 "created_at DESC, id LIMIT ?", (room_id, recent_max))]
            return {"orders": orders, "paid_orders": paid, "units_by_product": units, "gmv": gmv,
                    "pending": pending, "recent": recent}

        data = await self.db.read(load)
        currency = next(iter(data["gmv"]), None)
        return Response.json({
            "room_id": room_id, "orders": data["orders"], "paid_orders": data["paid_orders"],
            "pending_orders": data["pending"][0], "units_held": data["pending"][1],
            "units_by_product": data["units_by_product"],
            "gmv_minor": data["gmv"].get(currency, 0) if currency else 0, "currency": currency,
            "gmv_by_currency": data["gmv"],
            "recent": [{k: v for k, v in order_view(o).items()} for o in data["recent"]]})

    # --- webhooks in ------------------------------------------------------------------------

    async def wait_events_applied(self, count: int) -> None:
        """Return once ``count`` payment events were applied since start (tests)."""
        async with self._applied:
            while self.events_applied < count:
                await self._applied.wait()

    async def payment_webhook(self, request: Request, provider: str) -> Response:
        if self.provider is None or provider != self.provider.name:
            raise HTTPError(404, "not_found", f"no payments provider {provider!r}", "provider")
        try:
            event = self.provider.verify_event_untrusted(
                {k: v for k, v in request.headers}, request.body, self.clock())
        except SignatureError as exc:
            log.info("payment_event_refused", reason=str(exc))
            raise HTTPError(400, "bad_signature", str(exc), "Payment-Signature") from None
        except ValueError as exc:
            raise HTTPError(400, "bad_event", str(exc), "body") from None
        outcome = await self.apply_payment_event(event)
        return Response.json({"received": True, "event_id": event.id, "outcome": outcome})

    async def apply_payment_event(self, event: Any) -> str:
        """Apply a verified event exactly once (by its id); returns what it did."""
        now = self.clock()
        ttl = self.payments_cfg.events_seen_ttl_s

        def apply(c: sqlite3.Connection) -> tuple[str, dict[str, Any] | None, str | None]:
            try:
                c.execute("INSERT INTO payment_events_seen VALUES (?, ?, ?, ?, ?)",
                          (event.id, event.type, event.order_id, now, "applying"))
            except sqlite3.IntegrityError:
                return "duplicate", None, None
            c.execute("DELETE FROM payment_events_seen WHERE received_at < ?", (now - ttl,))
            order = OrderStore.get(c, event.order_id)
            outcome, moved = _apply_to_order(c, event, order, now)
            c.execute("UPDATE payment_events_seen SET outcome = ? WHERE event_id = ?", (outcome, event.id))
            return outcome, moved, order["state"] if order else None

        outcome, moved, previous = await self.db.write(apply)
        log.info("payment_event", event_id=event.id, kind=event.type, order=event.order_id, outcome=outcome)
        if outcome == "refund_unpayable":
            # Paid after the hold ended (or twice): the money goes back.
            try:
                await self.provider.refund(event.intent_id)
            except HTTPError as exc:
                log.error("refund_failed", intent=event.intent_id, reason=exc.message)
        if moved is not None:
            await self._tell(moved, previous)
        self.events_applied += 1
        async with self._applied:
            self._applied.notify_all()
        return outcome

    async def logistics_webhook(self, request: Request) -> Response:
        try:
            verify_signature_untrusted(self.logistics_secret, request.header(LOGISTICS_SIGNATURE_HEADER),
                                       request.body, now=self.clock(),
                                       tolerance_s=self.payments_cfg.webhook_tolerance_s,
                                       max_chars=self.payments_cfg.signature_max_chars)
        except SignatureError as exc:
            raise HTTPError(400, "bad_signature", str(exc), "Logistics-Signature") from None
        data = request.json()
        text_max, id_max = self.cfg.tracking_number_max_chars, self.cfg.name_max_chars
        for name, required, longest in (("event_id", True, id_max), ("order_id", True, id_max),
                                        ("status", True, id_max), ("tracking_number", False, text_max),
                                        ("carrier", False, text_max)):
            value = data.get(name)
            if value is None and not required:
                continue
            if not isinstance(value, str) or not 1 <= len(value) <= longest:
                raise field_error(name, f"expected a string of 1 to {longest} characters")
        if data["status"] not in ("shipped", "delivered"):
            raise field_error("status", "expected 'shipped' or 'delivered'")
        now = self.clock()
        action = "ship" if data["status"] == "shipped" else "deliver"
        sources, target, _ = TRANSITIONS[action]
        fields = {}
        if action == "ship":
            fields = {"tracking_number": data.get("tracking_number"), "carrier": data.get("carrier")}

        def apply(c: sqlite3.Connection) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
            """(order before, after); the event id is remembered only with its
            effect, so a refused event's retry is applied once it can be.
            Raising rolls both back."""
            if c.execute("SELECT 1 FROM payment_events_seen WHERE event_id = ?",
                         ("logistics:" + data["event_id"],)).fetchone():
                return None, None
            before = OrderStore.get(c, data["order_id"])
            if before is None:
                raise HTTPError(404, "not_found", f"no order {data['order_id']!r}", "order_id")
            after = OrderStore.move(c, before["id"], sources, target, now, "logistics", action, **fields)
            if after is None:
                raise _status_conflict(before, action, sources)
            c.execute("INSERT INTO payment_events_seen VALUES (?, ?, ?, ?, ?)",
                      ("logistics:" + data["event_id"], "logistics." + data["status"], before["id"],
                       now, target))
            return before, after

        before, after = await self.db.write(apply)
        if after is None:
            return Response.json({"received": True, "outcome": "duplicate"})
        await self._tell(after, before["state"])
        return Response.json({"received": True, "outcome": target, "order": order_view(after)})


def _apply_to_order(c: sqlite3.Connection, event: Any, order: dict[str, Any] | None,
                    now: float) -> tuple[str, dict[str, Any] | None]:
    """The effect of one verified payment event on its order (in the caller's transaction)."""
    if order is None:
        return "unknown_order", None
    if event.amount_minor != order["total"] or event.currency != order["currency"]:
        return "amount_mismatch", None
    if event.type == "payment_intent.succeeded":
        if order["state"] in KEEPS_PAYMENT and order["intent_id"] == event.intent_id:
            # Another event about the payment that already paid it: nothing to do.
            return "duplicate_payment", None
        moved = OrderStore.move(c, order["id"], ("pending",), "paid", now, "payments",
                                f"payment {event.intent_id}", paid_at=now, payment_state="succeeded",
                                intent_id=event.intent_id) if order["expires_at"] > now else None
        if moved is None:
            _note_unpayable(c, order, event.intent_id, now)
            return "refund_unpayable", None
        return "paid", moved
    if event.type == "payment_intent.payment_failed":
        if order["state"] == "pending":
            c.execute("UPDATE orders SET payment_state = 'failed', updated_at = ? WHERE id = ?",
                      (now, order["id"]))
            OrderStore.log(c, order["id"], now, "pending", "payments", f"payment {event.intent_id} declined")
        return "declined", None
    # charge.refunded
    if order["intent_id"] != event.intent_id:
        return "refunded_other_payment", None
    previous = order["state"]
    target = "refunded" if previous in TRANSITIONS["refund"][0] else previous
    c.execute("UPDATE orders SET state = ?, payment_state = 'refunded', updated_at = ? WHERE id = ?",
              (target, now, order["id"]))
    OrderStore.log(c, order["id"], now, target, "payments", f"refund of {event.intent_id}")
    if previous in _RELEASE_ON_REFUND:
        from shopcast.plugins._commerce import CommerceStore

        CommerceStore.release(c, order, coupon=False)
    moved = OrderStore.get(c, order["id"])
    return "refunded", moved if target != previous else None


def _note_unpayable(c: sqlite3.Connection, order: dict[str, Any], intent_id: str, now: float) -> None:
    """Record on the order that a payment it could not take is refunded
    automatically, and why (shown as ``refund_reason`` and in its history)."""
    if order["payment_state"] in ("succeeded", "refund_pending", "refunded"):
        # The order has a payment of its own (kept, or being refunded already).
        if order["intent_id"] != intent_id:
            OrderStore.log(c, order["id"], now, order["state"], "payments",
                           f"another payment {intent_id} refunded automatically: the order "
                           "already had one")
        return
    if order["state"] == "pending":
        reason = "hold_expired"  # past its time, not yet swept
    else:
        reason = "hold_expired" if order["state"] == "expired" else f"order_{order['state']}"
    c.execute("UPDATE orders SET refund_reason = ?, payment_state = 'refund_pending', intent_id = ?, "
              "updated_at = ? WHERE id = ?", (reason, intent_id, now, order["id"]))
    OrderStore.log(c, order["id"], now, order["state"], "payments",
                   f"payment {intent_id} arrived after the order was {order['state']} "
                   f"({reason}): refunded automatically")


_ALL_STATES = ("pending", "paid", "confirmed", "shipped", "delivered", "completed", "cancelled",
               "refunded", "returned", "expired")
SOLD = ("paid", "confirmed", "shipped", "delivered", "completed")
KEEPS_PAYMENT = (*SOLD, "returned")
"""An order in these statuses keeps its succeeded payment (a return awaits its refund)."""


def _status_conflict(order: dict[str, Any], action: str, sources: tuple[str, ...]) -> HTTPError:
    return HTTPError(409, "order_status", f"the order is {order['state']}; {action} needs it to be "
                     f"{' or '.join(sources)}", "status")


def _complaint_view(c: dict[str, Any]) -> dict[str, Any]:
    return {"id": c["id"], "order_id": c["order_id"], "text": c["text"], "state": c["state"],
            "created_at": format_time(c["created_at"]), "resolution": c.get("resolution"),
            "resolved_at": format_time(c.get("resolved_at"))}


def _bind_action(handler, action: str):
    async def bound(request, claims, body, query, order_id: str) -> Response:
        return await handler(request, claims, body, query, order_id, action=action)

    return bound


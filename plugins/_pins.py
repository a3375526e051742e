"""Pins in step with the video (issue 9 part 3): product, flash-sale and
coupon cards that a room's host pins and unpins, published on the room
broadcast's ``commerce`` track stamped with the media timestamp of the frame
the host had on screen.

Each frame of the track is a hang frame: a varint timestamp in µs (the pin's
``media_us``) and a msgpack map, ``{"type": "pin", "pin": ...}``,
``{"type": "unpin", "pin_id", "media_us"}``, or ``{"type": "state", "pins",
"media_us"}``. Every group starts with a state object, and a new group starts
every ``commerce.pins_state_interval_s``, so a late joiner knows what is
pinned. A player shows a card when its own playout reaches the timestamp.

The publishing runs on the event loop beside the media (one relay write per
pin, one per room and interval), never inside the media path.
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

import msgpack
import trio

from shopcast.plugins._api import EVERYONE, Api, field_error, format_time, validate_untrusted
from shopcast.server._interaction import live_edge_us
from shopcast.server._log import get_logger
from shopcast.server._routing import HTTPError, Response
from shopcast.server.moq import encode_frame

__all__ = ["COMMERCE_TRACK", "PIN_KINDS", "PinStore", "PinsMixin", "encode_message", "pin_view"]

log = get_logger("commerce")
COMMERCE_TRACK = "commerce"
PIN_KINDS = ("product", "flash_sale", "coupon")
MEDIA_US_MAX = (1 << 53) - 1
PIN_ROLES = ("host", "operator", "service")
_PINNABLE_ROOM_STATES = ("rehearsal", "live")


def encode_message(media_us: int, message: dict[str, Any]) -> bytes:
    """One frame of the commerce track: hang timestamp varint, msgpack payload."""
    return encode_frame(media_us, msgpack.packb(message))


class PinStore:
    """The SQL of pins (tables in plugins/_commerce.py, migration 2)."""

    @staticmethod
    def active(c: sqlite3.Connection, room_id: str | None = None) -> list[dict[str, Any]]:
        """Pins not yet unpinned (of one room, or of every room), oldest first."""
        if room_id is None:
            rows = c.execute("SELECT * FROM pins WHERE unpinned_at IS NULL ORDER BY created_at, id")
        else:
            rows = c.execute("SELECT * FROM pins WHERE room_id = ? AND unpinned_at IS NULL "
                             "ORDER BY created_at, id", (room_id,))
        return [dict(r) for r in rows]

    @staticmethod
    def get(c: sqlite3.Connection, pin_id: str) -> dict[str, Any] | None:
        row = c.execute("SELECT * FROM pins WHERE id = ?", (pin_id,)).fetchone()
        return dict(row) if row else None

    @staticmethod
    def views(c: sqlite3.Connection, pins: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Pin objects (with their products' current stock and coupons)."""
        from shopcast.plugins._commerce import CommerceStore

        out = []
        for pin in pins:
            product = CommerceStore.product(c, pin["product_id"])
            coupon = None
            if pin["coupon_code"] is not None:
                row = c.execute("SELECT * FROM coupons WHERE room_id = ? AND code = ?",
                                (pin["room_id"], pin["coupon_code"])).fetchone()
                coupon = dict(row) if row else None
            out.append(pin_view(pin, product, coupon))
        return out


def _product_card(p: dict[str, Any] | None) -> dict[str, Any] | None:
    if p is None:
        return None
    skus = [{"id": s["id"], "name": s["name"], "price_minor": s["price"], "currency": s["currency"],
             "stock": s["stock"]} for s in p["skus"]]
    return {"id": p["id"], "title": p["title"], "description": p["description"],
            "images": p["images"], "price_minor": min(s["price_minor"] for s in skus),
            "currency": skus[0]["currency"], "stock": sum(s["stock"] for s in skus), "skus": skus}


def pin_view(pin: dict[str, Any], product: dict[str, Any] | None,
             coupon: dict[str, Any] | None) -> dict[str, Any]:
    """The pin object of CONTRACTS.md ("Pins: REST")."""
    flash = None
    if pin["kind"] == "flash_sale":
        flash = {"price_minor": pin["flash_price"], "sku_id": pin["flash_sku_id"],
                 "starts_at": format_time(pin["flash_starts_at"]),
                 "ends_at": format_time(pin["flash_ends_at"]),
                 "per_buyer_limit": pin["flash_per_buyer_limit"], "stock_cap": pin["flash_stock_cap"],
                 "sold": pin["flash_sold"]}
    coupon_view = None
    if coupon is not None:
        coupon_view = {"code": coupon["code"]}
        if coupon["kind"] == "percent":
            coupon_view["percent"] = coupon["value"]
        else:
            coupon_view.update({"amount_minor": coupon["value"], "currency": coupon["currency"]})
    return {"id": pin["id"], "room_id": pin["room_id"], "kind": pin["kind"], "media_us": pin["media_us"],
            "at": format_time(pin["created_at"]), "product": _product_card(product),
            "flash_sale": flash, "coupon": coupon_view}


class PinsMixin:
    """Pins of the commerce plugin: REST handlers and the commerce track.

    Needs ``self.app``, ``self.plugins``, ``self.db``, ``self.cfg`` and
    ``self.clock`` (plugins/_commerce.py's CommercePlugin)."""

    # --- the track ------------------------------------------------------------------------

    def _commerce_track(self, room_id: str):
        broadcast = self.app.relay.broadcasts.get(room_id)
        if broadcast is None or broadcast.ended.is_set():
            return None, None
        return broadcast, broadcast.track(COMMERCE_TRACK)

    def _write_state(self, room_id: str, pins: list[dict[str, Any]]) -> None:
        """Start a new group of the room's commerce track with the state of its pins."""
        broadcast, track = self._commerce_track(room_id)
        if track is None:
            return
        media_us = live_edge_us(broadcast)
        track.write_frame(encode_message(media_us, {"type": "state", "pins": pins,
                                                    "media_us": media_us}), keyframe=True)

    async def _publish_pin_event(self, room_id: str, media_us: int, message: dict[str, Any]) -> None:
        broadcast, track = self._commerce_track(room_id)
        if track is None:
            return
        if track.current is None or track.current.ended:
            # A group must open with the state; the event follows it.
            self._write_state(room_id, await self._pin_views(room_id))
        track.write_frame(encode_message(media_us, message), keyframe=False)

    async def _pin_views(self, room_id: str) -> list[dict[str, Any]]:
        return await self.db.read(lambda c: PinStore.views(c, PinStore.active(c, room_id)))

    async def publish_pin_states(self) -> None:
        """One round: a new group with the pins' state on every room broadcast
        that has a commerce track (live rooms and rehearsals, and the demo room).
        Other broadcasts' commerce tracks (a platform's own) are theirs: left alone."""
        from shopcast.plugins._demo_shop import demo_room

        room_ids = [name for name, b in list(self.app.relay.broadcasts.items())
                    if COMMERCE_TRACK in b.tracks and not b.ended.is_set()]
        if not room_ids:
            return

        def load(c: sqlite3.Connection) -> dict[str, list[dict[str, Any]]]:
            marks = ", ".join("?" * len(room_ids))
            rooms = {row[0] for row in c.execute(f"SELECT id FROM rooms WHERE id IN ({marks})", room_ids)}
            by_room: dict[str, list[dict[str, Any]]] = {
                r: [] for r in room_ids if r in rooms or demo_room(self.app, r) is not None}
            for pin in PinStore.active(c):
                if pin["room_id"] in by_room:
                    by_room[pin["room_id"]].append(pin)
            return {r: PinStore.views(c, pins) for r, pins in by_room.items()}

        for room_id, pins in (await self.db.read(load)).items():
            self._write_state(room_id, pins)

    async def _pin_states_forever(self) -> None:
        while True:
            await trio.sleep(self.cfg.pins_state_interval_s)
            try:
                await self.publish_pin_states()
            except Exception:
                log.error("pin_state_failed", exc_info=True)

    # --- routes ---------------------------------------------------------------------------

    def _register_pin_routes(self, api: Api) -> None:
        cfg = self.cfg
        tag = "commerce"
        error = {"$ref": "#/components/schemas/Error"}
        media_us = {"type": "integer", "minimum": 0, "maximum": MEDIA_US_MAX,
                    "description": "Media timestamp (µs, the hang frame timestamp) of the frame "
                                   "on the host's screen; default: the broadcast's live edge."}
        pin = api.schema("Pin", {
            "type": "object", "required": ["id", "kind", "media_us", "at", "product", "flash_sale",
                                           "coupon"],
            "properties": {"id": {"type": "string"}, "room_id": {"type": "string"},
                           "kind": {"type": "string", "enum": list(PIN_KINDS)},
                           "media_us": {"type": "integer"}, "at": {"type": "string"},
                           "product": {"type": "object"},
                           "flash_sale": {"type": ["object", "null"]},
                           "coupon": {"type": ["object", "null"]}}})
        request = {"type": "object", "additionalProperties": False, "required": ["kind", "product_id"],
                   "properties": {
                       "kind": {"type": "string", "enum": list(PIN_KINDS)},
                       "product_id": {"type": "string", "minLength": 1, "maxLength": 64},
                       "media_us": media_us,
                       "flash_sale": {
                           "type": "object", "additionalProperties": False,
                           "required": ["price_minor", "countdown_s", "duration_s", "per_buyer_limit",
                                        "stock_cap"],
                           "properties": {
                               "price_minor": {"type": "integer", "minimum": 0,
                                               "maximum": cfg.price_max_minor},
                               "countdown_s": {"type": "integer", "minimum": cfg.flash_countdown_min_s,
                                               "maximum": cfg.flash_countdown_max_s},
                               "duration_s": {"type": "integer", "minimum": cfg.flash_duration_min_s,
                                              "maximum": cfg.flash_duration_max_s},
                               "per_buyer_limit": {"type": "integer", "minimum": 1,
                                                   "maximum": cfg.quantity_max},
                               "stock_cap": {"type": "integer", "minimum": 1, "maximum": cfg.stock_max},
                               "sku_id": {"type": "string", "minLength": 1, "maxLength": 64}}},
                       "coupon_code": {"type": "string", "pattern": "^[A-Za-z0-9_-]{3,32}$"}}}
        api.route("POST", "/api/v1/rooms/{room_id}/pins", self.create_pin, name="pins_create", tag=tag,
                  roles=PIN_ROLES, request=request,
                  example={"kind": "flash_sale", "product_id": "p0123456789abcdef",
                           "media_us": 12_345_678,
                           "flash_sale": {"price_minor": 2999, "countdown_s": 30, "duration_s": 300,
                                          "per_buyer_limit": 1, "stock_cap": 100}},
                  summary="Pin a product, flash-sale or coupon card, stamped with a media timestamp; "
                          "published on the room broadcast's commerce track.",
                  responses={201: ("The pin.", pin),
                             409: ("Too many pins (commerce.pins_max), or the room is not live.", error)})
        api.route("DELETE", "/api/v1/rooms/{room_id}/pins/{pin_id}", self.delete_pin,
                  name="pins_delete", tag=tag, roles=PIN_ROLES,
                  description="The body is optional: `{\"media_us\": int}` (µs), the frame on "
                              "the host's screen; default: the live edge.",
                  summary="Unpin a card (optionally at a media timestamp).",
                  responses={200: ("The pin as it was.", pin),
                             400: ("The body's media_us is not a timestamp.", error),
                             409: ("The room is not live.", error)})
        api.route("GET", "/api/v1/rooms/{room_id}/pins", self.list_pins, name="pins_list", tag=tag,
                  roles=EVERYONE, summary="The cards pinned now.",
                  responses={200: ("The pins.", {"type": "object", "required": ["pins"],
                                                 "properties": {"pins": {"type": "array",
                                                                         "items": pin}}})})

    async def _pin_room(self, room_id: str, claims: Any) -> dict[str, Any]:
        rooms = self.plugins.get("rooms")
        room = await rooms.get(room_id)
        if claims.role not in ("operator", "service"):
            await rooms._team_member(room, claims)
        if room["state"] not in _PINNABLE_ROOM_STATES:
            raise HTTPError(409, "room_not_live", f"the room is {room['state']}; cards are pinned "
                            "while it is live (or in rehearsal)", "room_id")
        return room

    _UNPIN_SCHEMA = {"type": "object", "additionalProperties": False,
                     "properties": {"media_us": {"type": "integer", "minimum": 0,
                                                 "maximum": MEDIA_US_MAX}}}

    def _media_us(self, room_id: str, body: dict[str, Any] | None) -> int:
        if body and "media_us" in body:
            return body["media_us"]
        broadcast = self.app.relay.broadcasts.get(room_id)
        return live_edge_us(broadcast) if broadcast is not None else 0

    async def create_pin(self, request, claims, body, query, room_id: str) -> Response:
        await self._pin_room(room_id, claims)
        kind = body["kind"]
        for name in ("flash_sale", "coupon_code"):
            wanted = (name == "flash_sale" and kind == "flash_sale") or (
                name == "coupon_code" and kind == "coupon")
            if wanted and name not in body:
                raise field_error(name, f"is required for a {kind} pin")
            if not wanted and name in body:
                raise field_error(name, f"is only for {'flash_sale' if name == 'flash_sale' else 'coupon'} "
                                  "pins")
        view = await self.pin_card(room_id, kind, body["product_id"], self._media_us(room_id, body),
                                   flash=body.get("flash_sale"), coupon_code=body.get("coupon_code"))
        return Response.json(view, status=201)

    async def pin_card(self, room_id: str, kind: str, product_id: str, media_us: int, *,
                       flash: dict[str, Any] | None = None,
                       coupon_code: str | None = None) -> dict[str, Any]:
        """Store a pin and publish it on the room's commerce track; the pin object.
        The REST handler (after its checks) and the demo room's show
        (plugins/_demo_shop.py) pin through here: one pin format."""
        now = self.clock()
        limit = self.cfg.pins_max
        pin = {"id": "pin" + secrets.token_hex(8), "room_id": room_id, "kind": kind,
               "product_id": product_id, "media_us": media_us, "created_at": now,
               "coupon_code": coupon_code, "flash_price": None, "flash_sku_id": None,
               "flash_starts_at": None, "flash_ends_at": None, "flash_per_buyer_limit": None,
               "flash_stock_cap": None, "flash_sold": 0, "unpinned_at": None, "unpin_media_us": None}

        def add(c: sqlite3.Connection) -> dict[str, Any]:
            from shopcast.plugins._commerce import CommerceStore

            if c.execute("SELECT 1 FROM room_products WHERE room_id = ? AND product_id = ?",
                         (room_id, product_id)).fetchone() is None:
                raise HTTPError(404, "not_found", f"product {product_id!r} is not on the "
                                "room's list", "product_id")
            product = CommerceStore.product(c, product_id)
            if flash is not None:
                sku_id = flash.get("sku_id") or product["skus"][0]["id"]
                sku = next((s for s in product["skus"] if s["id"] == sku_id), None)
                if sku is None:
                    raise field_error("flash_sale.sku_id", "is not a variant of the product")
                starts = now + flash["countdown_s"]
                pin.update({"flash_price": flash["price_minor"], "flash_sku_id": sku_id,
                            "flash_starts_at": starts, "flash_ends_at": starts + flash["duration_s"],
                            "flash_per_buyer_limit": flash["per_buyer_limit"],
                            "flash_stock_cap": flash["stock_cap"]})
            if pin["coupon_code"] is not None and c.execute(
                    "SELECT 1 FROM coupons WHERE room_id = ? AND code = ?",
                    (room_id, pin["coupon_code"])).fetchone() is None:
                raise HTTPError(404, "not_found", f"the room has no coupon {pin['coupon_code']!r}",
                                "coupon_code")
            pinned = c.execute("SELECT count(*) FROM pins WHERE room_id = ? AND unpinned_at IS NULL",
                               (room_id,)).fetchone()[0]
            if pinned >= limit:
                raise HTTPError(409, "too_many_pins", f"at most {limit} cards are pinned at once "
                                "(commerce.pins_max); unpin one first", "kind")
            c.execute(f"INSERT INTO pins ({', '.join(pin)}) VALUES ({', '.join('?' * len(pin))})",
                      tuple(pin.values()))
            return PinStore.views(c, [pin])[0]

        view = await self.db.write(add)
        log.info("pinned", room=room_id, pin=view["id"], kind=kind, media_us=media_us)
        await self._publish_pin_event(room_id, media_us, {"type": "pin", "pin": view})
        return view

    async def delete_pin(self, request, claims, body, query, room_id: str, pin_id: str) -> Response:
        await self._pin_room(room_id, claims)
        body = request.json() if request.body.strip() else {}
        validate_untrusted(self._UNPIN_SCHEMA, body)
        return Response.json(await self.unpin_card(room_id, pin_id, self._media_us(room_id, body)))

    async def unpin_card(self, room_id: str, pin_id: str, media_us: int) -> dict[str, Any]:
        """Mark a pin unpinned and publish that on the commerce track; the pin as it was."""
        now = self.clock()

        def remove(c: sqlite3.Connection) -> dict[str, Any]:
            pin = PinStore.get(c, pin_id)
            if pin is None or pin["room_id"] != room_id or pin["unpinned_at"] is not None:
                raise HTTPError(404, "not_found", f"no card {pin_id!r} pinned in this room", "pin_id")
            c.execute("UPDATE pins SET unpinned_at = ?, unpin_media_us = ? WHERE id = ?",
                      (now, media_us, pin_id))
            return PinStore.views(c, [pin])[0]

        view = await self.db.write(remove)
        log.info("unpinned", room=room_id, pin=pin_id, media_us=media_us)
        await self._publish_pin_event(room_id, media_us, {"type": "unpin", "pin_id": pin_id,
                                                          "media_us": media_us})
        return view

    async def list_pins(self, request, claims, body, query, room_id: str) -> Response:
        from shopcast.plugins._demo_shop import demo_room

        if demo_room(self.app, room_id) is None:
            await self.plugins.get("rooms").get(room_id)
        return Response.json({"pins": await self._pin_views(room_id)})


def flash_window_error(pin: dict[str, Any], now: float) -> str | None:
    """Why a flash sale cannot be bought now, or None."""
    if now < pin["flash_starts_at"]:
        return f"the flash sale opens at {format_time(pin['flash_starts_at'])}"
    if now >= pin["flash_ends_at"]:
        return f"the flash sale ended at {format_time(pin['flash_ends_at'])}"
    return None


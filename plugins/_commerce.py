"""The commerce plugin (issue 9; IWA 41 §5.4, §5.5, §6.2 d): the product
catalog, a room's product list, the published catalogue of restricted and
prohibited goods, coupons, and Buy Now with inventory holds; pins in step
with the video (plugins/_pins.py); payments through a provider
(plugins/_payments.py, docs/payments.md) and orders after sale
(plugins/_orders.py).

Money is integers of the currency's minor unit (cents), never floats; every
price is computed here (``price_order``), whatever the client sends; a
flash-sale card's price and limits apply only on the server.

Buy Now is one write transaction (plugins/_storage.py has one writer
connection): the idempotency record is looked up, the stock taken with
``UPDATE skus SET stock = stock - ? WHERE id = ? AND stock >= ?`` (a row count
of 0 means sold out), a flash sale's cap and the coupon use taken the same
way, the order and its idempotency record inserted. Nothing can oversell,
however many requests race.

A hold (a pending order) lasts ``commerce.hold_expiry_s``; ``expire_holds``
(run every ``hold_check_interval_s``, called directly by tests with a fake
``self.clock``) expires the unpaid ones and gives back their stock, flash-sale
units and coupon use. An order becomes paid only through the payments
provider's verified webhook event (plugins/_orders.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sqlite3
import time
import unicodedata
from typing import Any

import trio
from shopcast.plugins._accounts import subject_digest
from shopcast.plugins._api import ANONYMOUS, Api, Query, _is_web_url, field_error, format_time
from shopcast.plugins._demo_shop import demo_room
from shopcast.plugins._hookspecs import hookimpl
from shopcast.plugins._orders import OrdersMixin, OrderStore
from shopcast.plugins._orders import order_view as _order_view
from shopcast.plugins._rooms import RoomStore
from shopcast.plugins._pins import COMMERCE_TRACK, PinsMixin, PinStore, flash_window_error
from shopcast.plugins._storage import Migration
from shopcast.server._log import get_logger
from shopcast.server._routing import HTTPError, Response
from shopcast.server._static import _etag_matches_untrusted as etag_matches_untrusted

__all__ = ["CommercePlugin", "CommerceStore", "ImageStore", "fold_untrusted", "price_order",
           "restricted_match", "sniff_image_untrusted"]

log = get_logger("commerce")

EVERYONE = (ANONYMOUS, "viewer", "host", "operator", "service")
USERS = ("viewer", "host", "operator")
RULE_KINDS = ("category", "keyword")
COUPON_KINDS = ("percent", "amount")
ORDER_STATES = ("pending", "paid", "confirmed", "shipped", "delivered", "completed", "cancelled",
                "refunded", "returned", "expired")
HOLDING_STATES = ("pending", "paid", "confirmed", "shipped", "delivered", "completed")
"""Orders that count against stock, per-buyer limits and flash-sale caps."""
SOLD_STATES = ("paid", "confirmed", "shipped", "delivered", "completed")
"""Orders that are sales (paid, not given back)."""
_EDITABLE_ROOM_STATES = ("scheduled", "rehearsal")
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
"""The product image types accepted, and the file extension each is kept under."""
IMAGE_PATH = "/api/v1/product-images/"
"""Where an uploaded product image is served: IMAGE_PATH + <sha256>.<extension>."""
_IMAGE_NAME = re.compile(r"([0-9a-f]{64})\.(png|jpg|webp)")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")

MIGRATIONS = [
    Migration("commerce", 1, """
CREATE TABLE products (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    category TEXT NOT NULL,
    brand TEXT NOT NULL,
    images TEXT NOT NULL,
    external_ref TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX products_owner ON products(owner_id);
CREATE TABLE skus (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    price INTEGER NOT NULL CHECK (price >= 0),
    currency TEXT NOT NULL,
    stock INTEGER NOT NULL CHECK (stock >= 0),
    per_buyer_limit INTEGER
);
CREATE INDEX skus_product ON skus(product_id, position);
CREATE TABLE room_products (
    room_id TEXT NOT NULL,
    product_id TEXT NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    added_at REAL NOT NULL,
    PRIMARY KEY (room_id, product_id)
);
CREATE TABLE restricted_rules (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    folded TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (kind, folded)
);
CREATE TABLE coupons (
    room_id TEXT NOT NULL,
    code TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    value INTEGER NOT NULL,
    currency TEXT,
    max_uses INTEGER NOT NULL,
    uses INTEGER NOT NULL CHECK (uses >= 0 AND uses <= max_uses),
    created_at REAL NOT NULL,
    PRIMARY KEY (room_id, code)
);
CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    buyer_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    sku_id TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    unit_price INTEGER NOT NULL,
    subtotal INTEGER NOT NULL,
    discount INTEGER NOT NULL,
    total INTEGER NOT NULL CHECK (total >= 0),
    currency TEXT NOT NULL,
    coupon_code TEXT,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    paid_at REAL,
    ended_at REAL
);
CREATE INDEX orders_pending ON orders(state, expires_at);
CREATE INDEX orders_buyer_sku ON orders(buyer_id, sku_id, state);
CREATE TABLE idempotency_keys (
    buyer_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,
    status INTEGER NOT NULL,
    response TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (buyer_id, key)
);
CREATE INDEX idempotency_age ON idempotency_keys(created_at);
"""),
    Migration("commerce", 2, """
CREATE TABLE pins (
    id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    product_id TEXT NOT NULL,
    media_us INTEGER NOT NULL,
    created_at REAL NOT NULL,
    coupon_code TEXT,
    flash_price INTEGER,
    flash_sku_id TEXT,
    flash_starts_at REAL,
    flash_ends_at REAL,
    flash_per_buyer_limit INTEGER,
    flash_stock_cap INTEGER,
    flash_sold INTEGER NOT NULL DEFAULT 0
        CHECK (flash_sold >= 0 AND (flash_stock_cap IS NULL OR flash_sold <= flash_stock_cap)),
    unpinned_at REAL,
    unpin_media_us INTEGER
);
CREATE INDEX pins_room ON pins(room_id, unpinned_at);
ALTER TABLE orders ADD COLUMN pin_id TEXT;
ALTER TABLE orders ADD COLUMN updated_at REAL;
ALTER TABLE orders ADD COLUMN payment_state TEXT NOT NULL DEFAULT 'none';
ALTER TABLE orders ADD COLUMN intent_id TEXT;
ALTER TABLE orders ADD COLUMN tracking_number TEXT;
ALTER TABLE orders ADD COLUMN carrier TEXT;
CREATE INDEX orders_room ON orders(room_id, created_at);
CREATE INDEX orders_buyer ON orders(buyer_id, created_at);
CREATE INDEX orders_pin_buyer ON orders(pin_id, buyer_id, state);
CREATE TABLE order_events (
    id INTEGER PRIMARY KEY,
    order_id TEXT NOT NULL,
    at REAL NOT NULL,
    status TEXT NOT NULL,
    actor TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX order_events_order ON order_events(order_id, id);
CREATE TABLE complaints (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    author_id TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX complaints_order ON complaints(order_id, created_at);
"""),
    Migration("commerce", 3, """
ALTER TABLE complaints ADD COLUMN resolution TEXT;
ALTER TABLE complaints ADD COLUMN resolved_at REAL;
ALTER TABLE complaints ADD COLUMN resolved_by TEXT;
ALTER TABLE orders ADD COLUMN refund_reason TEXT;
CREATE INDEX products_external_ref ON products(external_ref);
"""),
]


# --- pure functions -------------------------------------------------------------------------


def fold_untrusted(text: str) -> str:
    """The form compared with the restricted goods catalogue: compatibility
    forms unified (NFKC: full-width letters, ligatures), accents dropped,
    case folded, runs of white space made one space."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(unicodedata.normalize("NFKC", bare).casefold().split())


def restricted_match(product: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first rule the product breaks, or None. A category rule matches the
    product's category exactly (folded); a keyword rule matches a whole word or
    phrase of its title, description, brand or category (folded)."""
    category = fold_untrusted(product["category"])
    text = fold_untrusted(" \n ".join((product["title"], product["description"], product["brand"],
                                       product["category"])))
    for rule in rules:
        if rule["kind"] == "category" and rule["folded"] == category:
            return rule
        if rule["kind"] == "keyword" and re.search(
                r"(?<!\w)" + re.escape(rule["folded"]) + r"(?!\w)", text):
            return rule
    return None


def price_order(unit_price: int, quantity: int, coupon: dict[str, Any] | None) -> tuple[int, int, int]:
    """(subtotal, discount, total) in minor units. A percent coupon's discount
    is rounded half up to the minor unit; an amount coupon takes at most the
    subtotal. The total is never below zero. Integers only."""
    for name, value in (("unit_price", unit_price), ("quantity", quantity)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer")
    subtotal = unit_price * quantity
    discount = 0
    if coupon is not None:
        value = coupon["value"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError("coupon value must be a non-negative integer")
        if coupon["kind"] == "percent":
            if value > 100:
                raise ValueError("a percent coupon is at most 100")
            discount = (subtotal * value + 50) // 100
        elif coupon["kind"] == "amount":
            discount = value
        else:
            raise ValueError(f"unknown coupon kind {coupon['kind']!r}")
    discount = min(discount, subtotal)
    return subtotal, discount, subtotal - discount


def sniff_image_untrusted(body: bytes) -> str | None:
    """The image type the bytes start with (PNG, JPEG or WebP magic), or None."""
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if body.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(body) >= 12 and body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "image/webp"
    return None


class ImageStore:
    """Product images in ``data_dir/product-images``, named by the SHA-256 of
    their bytes: the same image uploaded twice is kept once, and a name never
    changes content (so it is served immutable). Blocking: call from a thread."""

    def __init__(self, root: os.PathLike[str] | str) -> None:
        self.root = os.fspath(root)

    def save(self, body: bytes, content_type: str) -> str:
        """Keep ``body``; returns its file name ``<sha256>.<extension>``."""
        name = f"{hashlib.sha256(body).hexdigest()}.{IMAGE_TYPES[content_type]}"
        path = os.path.join(self.root, name)
        if not os.path.exists(path):
            os.makedirs(self.root, exist_ok=True)
            temporary = f"{path}.{secrets.token_hex(4)}.tmp"
            with open(temporary, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)  # whole or absent, even after a crash
        return name

    def path_untrusted(self, name: str) -> str | None:
        """The file of an image name from a URL, or None when the name is not
        one of ours or no such image was kept."""
        if not _IMAGE_NAME.fullmatch(name):
            return None
        path = os.path.join(self.root, name)
        return path if os.path.isfile(path) else None


class GroupCommit:
    """Buy Now transactions that arrive together share one write transaction
    and one commit: each runs in its own savepoint (one that raises is rolled
    back alone and its caller gets the exception), and none is answered
    before the commit. Under a flash sale the single writer's cost per
    commit is shared by up to ``max_batch`` buyers; alone, a request waits
    for one write as before.

    Resource handling: ``serve`` runs in the plugin's nursery; ``run``
    waits for it. Error handling: a failed commit fails every caller of
    the batch with its exception."""

    def __init__(self, db: Any, max_batch: int) -> None:
        self.db = db
        self.max_batch = max_batch
        self._pending: list[tuple[Any, dict[str, Any]]] = []
        self._wake = trio.Event()
        self.batches = 0
        self.transactions = 0

    async def run(self, fn: Any) -> Any:
        """``fn(connection)`` inside the next batch; its result or exception."""
        slot: dict[str, Any] = {"done": trio.Event()}
        self._pending.append((fn, slot))
        self._wake.set()
        await slot["done"].wait()
        if "error" in slot:
            raise slot["error"]
        return slot["result"]

    async def serve(self) -> None:
        """Never returns unless cancelled."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._pending:
                batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]

                def transaction(c: sqlite3.Connection, batch=batch) -> list[tuple[Any, Any]]:
                    out = []
                    for fn, _ in batch:
                        c.execute("SAVEPOINT one")
                        try:
                            out.append((fn(c), None))
                        except Exception as exc:  # noqa: BLE001 - handed to its own caller
                            c.execute("ROLLBACK TO one")
                            out.append((None, exc))
                        c.execute("RELEASE one")
                    return out

                try:
                    results = await self.db.write(transaction)
                except Exception as exc:  # noqa: BLE001 - every caller of the batch hears it
                    results = [(None, exc)] * len(batch)
                self.batches += 1
                self.transactions += len(batch)
                for (_, slot), (result, error) in zip(batch, results):
                    if error is not None:
                        slot["error"] = error
                    else:
                        slot["result"] = result
                    slot["done"].set()


class _Refusal(Exception):
    """A Buy Now refused for a business reason: kept under the idempotency key."""

    def __init__(self, error: HTTPError) -> None:
        self.error = error


# --- storage --------------------------------------------------------------------------------


class CommerceStore:
    """Every SQL statement of the commerce plugin (see plugins/_storage.py)."""

    @staticmethod
    def insert_product(c: sqlite3.Connection, product: dict[str, Any], skus: list[dict[str, Any]]) -> None:
        c.execute("INSERT INTO products VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (product["id"], product["owner_id"], product["title"], product["description"],
                   product["category"], product["brand"], json.dumps(product["images"]),
                   product["external_ref"], product["created_at"]))
        c.executemany("INSERT INTO skus VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
            (s["id"], product["id"], i, s["name"], s["price"], s["currency"], s["stock"],
             s.get("per_buyer_limit")) for i, s in enumerate(skus)])

    @staticmethod
    def product(c: sqlite3.Connection, product_id: str) -> dict[str, Any] | None:
        row = c.execute("SELECT * FROM products WHERE id = ?", (product_id,)).fetchone()
        if row is None:
            return None
        product = dict(row)
        product["images"] = json.loads(product["images"])
        product["skus"] = [dict(r) for r in c.execute(
            "SELECT id, name, price, currency, stock, per_buyer_limit FROM skus "
            "WHERE product_id = ? ORDER BY position", (product_id,))]
        return product

    @staticmethod
    def update_product(c: sqlite3.Connection, product_id: str, fields: dict[str, Any]) -> None:
        """Set some of title, description, category, brand, images, external_ref."""
        values = {k: json.dumps(v) if k == "images" else v for k, v in fields.items()}
        if values:
            c.execute(f"UPDATE products SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                      (*values.values(), product_id))

    @staticmethod
    def room_product_ids(c: sqlite3.Connection, room_id: str) -> list[str]:
        return [r[0] for r in c.execute("SELECT product_id FROM room_products WHERE room_id = ? "
                                        "ORDER BY added_at, product_id", (room_id,))]

    @staticmethod
    def rules(c: sqlite3.Connection) -> list[dict[str, Any]]:
        return [dict(r) for r in c.execute("SELECT * FROM restricted_rules ORDER BY id")]

    @staticmethod
    def order(c: sqlite3.Connection, order_id: str) -> dict[str, Any] | None:
        row = c.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        return dict(row) if row else None

    @staticmethod
    def take_stock(c: sqlite3.Connection, sku_id: str, quantity: int) -> bool:
        """The atomic conditional decrement: False when fewer than ``quantity`` are left."""
        cursor = c.execute("UPDATE skus SET stock = stock - ? WHERE id = ? AND stock >= ?",
                           (quantity, sku_id, quantity))
        return cursor.rowcount == 1

    @staticmethod
    def expire(c: sqlite3.Connection, now: float) -> list[dict[str, Any]]:
        """Expire every unpaid hold past its time; their stock and coupon use come back."""
        expired = []
        for row in c.execute("SELECT * FROM orders WHERE state = 'pending' AND expires_at <= ?",
                             (now,)).fetchall():
            cursor = c.execute("UPDATE orders SET state = 'expired', ended_at = ? "
                               "WHERE id = ? AND state = 'pending'", (now, row["id"]))
            if cursor.rowcount != 1:
                continue
            CommerceStore.release(c, dict(row))
            OrderStore.log(c, row["id"], now, "expired", "system", "hold expired unpaid")
            expired.append({**dict(row), "state": "expired", "ended_at": now})
        return expired

    @staticmethod
    def release(c: sqlite3.Connection, order: dict[str, Any], *, coupon: bool = True) -> None:
        """Give an order's units back: the variant's stock, the flash sale's
        cap and (unless ``coupon`` is False) the coupon use."""
        c.execute("UPDATE skus SET stock = stock + ? WHERE id = ?", (order["quantity"], order["sku_id"]))
        if order.get("pin_id") is not None:
            c.execute("UPDATE pins SET flash_sold = flash_sold - ? WHERE id = ? AND kind = 'flash_sale' "
                      "AND flash_sold >= ?", (order["quantity"], order["pin_id"], order["quantity"]))
        if coupon and order["coupon_code"] is not None:
            c.execute("UPDATE coupons SET uses = uses - 1 WHERE room_id = ? AND code = ? "
                      "AND uses > 0", (order["room_id"], order["coupon_code"]))

    @staticmethod
    def forget(c: sqlite3.Connection, account_id: str) -> None:
        c.execute("DELETE FROM idempotency_keys WHERE buyer_id = ?", (account_id,))
        c.execute("DELETE FROM complaints WHERE author_id = ?", (account_id,))
        c.execute("UPDATE orders SET buyer_id = ? WHERE buyer_id = ?",
                  (subject_digest(account_id), account_id))
        c.execute("DELETE FROM coupons WHERE owner_id = ?", (account_id,))
        c.execute("DELETE FROM products WHERE owner_id = ?", (account_id,))


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- views ----------------------------------------------------------------------------------


def _product_view(p: dict[str, Any]) -> dict[str, Any]:
    return {"id": p["id"], "title": p["title"], "description": p["description"],
            "category": p["category"], "brand": p["brand"], "images": p["images"],
            "external_ref": p["external_ref"], "created_at": format_time(p["created_at"]),
            "skus": [{"id": s["id"], "name": s["name"], "price": s["price"], "currency": s["currency"],
                      "stock": s["stock"], "per_buyer_limit": s["per_buyer_limit"]} for s in p["skus"]]}


def _rule_view(r: dict[str, Any]) -> dict[str, Any]:
    return {"id": r["id"], "kind": r["kind"], "value": r["value"], "reason": r["reason"],
            "created_at": format_time(r["created_at"])}


def _coupon_view(c: dict[str, Any]) -> dict[str, Any]:
    return {"code": c["code"], "room_id": c["room_id"], "kind": c["kind"], "value": c["value"],
            "currency": c["currency"], "max_uses": c["max_uses"], "uses": c["uses"]}


def _rule_text(rule: dict[str, Any]) -> str:
    reason = f" ({rule['reason']})" if rule["reason"] else ""
    return f"restricted {rule['kind']} rule {rule['id']} {rule['value']!r}{reason}"


# --- the plugin -----------------------------------------------------------------------------


class CommercePlugin(PinsMixin, OrdersMixin):
    """Catalog, restricted goods, coupons, pins, Buy Now, payments and orders;
    see the module docstring (pins: plugins/_pins.py; payments and orders:
    plugins/_orders.py and plugins/_payments.py)."""

    requires = ("accounts", "rooms")

    def __init__(self) -> None:
        self.app: Any = None
        self.plugins: Any = None
        self.db: Any = None
        self.clock = time.time
        self._rules_cache: list[dict[str, Any]] | None = None

    # --- hooks ------------------------------------------------------------------------------

    @hookimpl
    def shopcast_configure(self, app: Any, plugins: Any) -> None:
        self.app, self.plugins = app, plugins
        self.cfg = app.config.commerce

    @hookimpl
    def shopcast_register_tables(self) -> list[Migration]:
        return [*MIGRATIONS, *self._payment_migrations()]

    @hookimpl
    def shopcast_register_room_tracks(self, room: dict[str, Any]) -> list[str]:
        return [COMMERCE_TRACK]

    @hookimpl
    async def shopcast_room_live(self, room: dict[str, Any]) -> None:
        # The track opens with the state, so the first viewer knows what is pinned.
        self._write_state(room["id"], await self._pin_views(room["id"]))

    @hookimpl
    def shopcast_register_permissions(self) -> dict[str, tuple[str, ...]]:
        return {"commerce.products.create": ("host", "service"),
                "commerce.room_products.edit": ("host",),
                "commerce.restricted_goods.edit": ("operator",),
                "commerce.coupons.create": ("host",),
                "commerce.buy": USERS}

    @hookimpl
    async def shopcast_startup(self, app: Any, nursery: trio.Nursery) -> None:
        self.db = app.db
        self.images = ImageStore(app.data_dir / "product-images")
        self._buy_commits = GroupCommit(self.db, self.cfg.buy_batch_max)
        nursery.start_soon(self._buy_commits.serve)
        await self._start_payments(app, nursery)
        nursery.start_soon(self._expire_forever)
        nursery.start_soon(self._pin_states_forever)

    @hookimpl
    async def shopcast_account_forget(self, account_id: str) -> None:
        await self.db.write(lambda c: CommerceStore.forget(c, account_id))

    @hookimpl
    async def shopcast_room_closed(self, room: dict[str, Any]) -> None:
        def delete(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM room_products WHERE room_id = ?", (room["id"],))
            c.execute("DELETE FROM coupons WHERE room_id = ?", (room["id"],))

        await self.db.write(delete)

    @hookimpl
    def shopcast_order_may_place(self, order: dict[str, Any]) -> str | None:
        rule = order.get("_restricted_rule")
        return f"the product matches {_rule_text(rule)}" if rule else None

    # --- background -------------------------------------------------------------------------

    async def expire_holds(self) -> list[dict[str, Any]]:
        """Expire unpaid holds past their time (stock and coupon uses come back)
        and forget idempotency keys older than ``idempotency_ttl_s``; returns
        the orders expired. Runs every ``hold_check_interval_s``; tests call it."""
        now = self.clock()
        ttl = self.cfg.idempotency_ttl_s

        def run(c: sqlite3.Connection) -> list[dict[str, Any]]:
            c.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (now - ttl,))
            return CommerceStore.expire(c, now)

        expired = await self.db.write(run)
        for order in expired:
            log.info("hold_expired", order=order["id"], sku=order["sku_id"], quantity=order["quantity"])
            # The payment page refuses it from now on (a payment that won the race is refunded).
            await self.provider.cancel_intents(order["id"], "hold_expired")
            await self.plugins.notify("shopcast_order_cancelled", order=_order_view(order),
                                      reason="hold_expired")
        return expired

    async def _expire_forever(self) -> None:
        while True:
            await trio.sleep(self.cfg.hold_check_interval_s)
            try:
                await self.expire_holds()
            except Exception:
                log.error("hold_expiry_failed", exc_info=True)

    # --- routes -----------------------------------------------------------------------------

    @hookimpl
    def shopcast_register_routes(self, api: Api) -> None:
        cfg = self.cfg
        tag = "commerce"
        error = {"$ref": "#/components/schemas/Error"}
        url_max = self.app.config.accounts.url_max_chars
        currency = {"type": "string", "enum": list(cfg.currencies),
                    "description": "ISO 4217 code, one of commerce.currencies."}
        minor = {"type": "integer", "minimum": 0, "maximum": cfg.price_max_minor,
                 "description": "Integer minor units of the currency (cents)."}
        sku_fields = {
            "name": {"type": "string", "minLength": 1, "maxLength": cfg.name_max_chars},
            "price": minor,
            "currency": currency,
            "stock": {"type": "integer", "minimum": 0, "maximum": cfg.stock_max},
            "per_buyer_limit": {"type": "integer", "minimum": 1, "maximum": cfg.stock_max,
                                "description": "Units one buyer may hold or buy; default "
                                               "commerce.per_buyer_limit_default."},
        }
        sku_fields_edit = {k: v for k, v in sku_fields.items() if k != "currency"}
        product_fields = {
            "title": {"type": "string", "minLength": 1, "maxLength": cfg.title_max_chars},
            "description": {"type": "string", "maxLength": cfg.description_max_chars},
            "category": {"type": "string", "minLength": 1, "maxLength": cfg.name_max_chars},
            "brand": {"type": "string", "maxLength": cfg.name_max_chars},
            "images": {"type": "array", "maxItems": cfg.images_max,
                       "items": {"type": "string", "minLength": 1, "maxLength": url_max},
                       "description": "http(s) URLs, or /api/v1/product-images/<name> of images "
                                      "uploaded with POST /api/v1/products/{product_id}/images."},
            "external_ref": {"type": "string", "minLength": 1, "maxLength": cfg.name_max_chars,
                             "description": "The platform's own id of the product."},
            "skus": {"type": "array", "minItems": 1, "maxItems": cfg.skus_max,
                     "items": {"type": "object", "additionalProperties": False,
                               "required": ["name", "price", "currency", "stock"],
                               "properties": sku_fields}},
        }
        create_product = {"type": "object", "additionalProperties": False,
                          "required": ["title", "category", "skus"], "properties": product_fields}
        sku_out = {"type": "object", "required": ["id", "name", "price", "currency", "stock"],
                   "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                                  "price": {"type": "integer"}, "currency": {"type": "string"},
                                  "stock": {"type": "integer"},
                                  "per_buyer_limit": {"type": ["integer", "null"]}}}
        product = api.schema("Product", {
            "type": "object", "required": ["id", "title", "category", "skus"],
            "properties": {"id": {"type": "string"}, "title": {"type": "string"},
                           "description": {"type": "string"}, "category": {"type": "string"},
                           "brand": {"type": "string"},
                           "images": {"type": "array", "items": {"type": "string"}},
                           "external_ref": {"type": ["string", "null"]},
                           "created_at": {"type": "string"},
                           "skus": {"type": "array", "items": sku_out}}})
        api.route("POST", "/api/v1/products", self.create_product, name="products_create", tag=tag,
                  roles=("host", "service"), request=create_product,
                  example={"title": "Trail runner 2", "description": "Light trail shoe.",
                           "category": "footwear", "brand": "Acme",
                           "images": ["https://cdn.example/p/trail2.jpg"], "external_ref": "sku-8841",
                           "skus": [{"name": "EU 42", "price": 5999, "currency": "EUR", "stock": 100}]},
                  summary="Add a product with its variants (hosts, marketers, platforms); prices "
                          "in integer minor units.",
                  responses={201: ("The product.", product)})
        api.route("GET", "/api/v1/products/{product_id}", self.show_product, name="products_show",
                  tag=tag, roles=EVERYONE, summary="A product with its variants and stock.",
                  responses={200: ("The product.", product)})
        api.route("GET", "/api/v1/products", self.list_products, name="products_list", tag=tag,
                  roles=("host", "service", "operator"),
                  query=(Query("external_ref", {"type": "string", "minLength": 1,
                                                "maxLength": cfg.name_max_chars},
                               "Only products with this external reference (the platform's id)."),),
                  summary="The caller's products, newest first (operators: everyone's), at most "
                          "commerce.products_page_max.",
                  responses={200: ("The products.", {"type": "object", "required": ["products"],
                                                     "properties": {"products": {
                                                         "type": "array", "items": product}}})})
        edit_fields = {k: product_fields[k] for k in ("title", "description", "category", "brand",
                                                       "images", "external_ref")}
        api.route("PATCH", "/api/v1/products/{product_id}", self.edit_product, name="products_edit",
                  tag=tag, roles=("host", "service", "operator"),
                  request={"type": "object", "additionalProperties": False, "minProperties": 1,
                           "properties": {**edit_fields, "price": {
                               **minor, "description": "The price of every variant (minor units); "
                                                       "one variant's: PATCH its skus/{sku_id}."}}},
                  example={"title": "Trail runner 2 (2026)", "price": 5499},
                  summary="Change a product (its owner, operators); the restricted goods "
                          "catalogue is checked again.",
                  responses={200: ("The product.", product),
                             409: ("The product would match the restricted goods catalogue "
                                   "(the message names the rule).", error)})
        api.route("PATCH", "/api/v1/products/{product_id}/skus/{sku_id}", self.edit_sku,
                  name="products_sku_edit", tag=tag, roles=("host", "service", "operator"),
                  request={"type": "object", "additionalProperties": False, "minProperties": 1,
                           "properties": sku_fields_edit},
                  example={"stock": 250},
                  summary="Restock or reprice a variant (the product's owner, operators): stock is "
                          "the number left to sell; units held by pending orders stay held.",
                  responses={200: ("The product.", product)})
        api.route("POST", "/api/v1/products/{product_id}/images", self.upload_image,
                  name="products_image_upload", tag=tag, roles=("host", "service", "operator"),
                  description="The body is the image itself (Content-Type image/png, image/jpeg "
                              "or image/webp, at most commerce.image_max_bytes). It is kept in the "
                              "data directory under its SHA-256 and added to the product's images.",
                  summary="Upload a product image (the product's owner, operators).",
                  responses={201: ("The image's URL and the product.", {
                                 "type": "object", "required": ["url", "product"],
                                 "properties": {"url": {"type": "string"}, "product": product}}),
                             409: ("The product has commerce.images_max images.", error),
                             413: ("The image is larger than commerce.image_max_bytes.", error),
                             415: ("Not a PNG, JPEG or WebP image, or not the declared type.",
                                   error)})
        api.route("GET", IMAGE_PATH + "{name}", self.serve_image, name="product_images_show",
                  tag=tag, roles=EVERYONE, content_type="image/*",
                  summary="An uploaded product image (image/png, image/jpeg or image/webp), "
                          "cached immutable for commerce.image_max_age_s; ETag and 304.",
                  responses={200: ("The image.", {"type": "string", "format": "binary"}),
                             304: ("Not modified (If-None-Match).", None)})
        room_products = {"type": "object", "required": ["room_id", "products"],
                         "properties": {"room_id": {"type": "string"},
                                        "products": {"type": "array", "items": product}}}
        api.route("GET", "/api/v1/rooms/{room_id}/products", self.list_room_products,
                  name="room_products_list", tag=tag, roles=EVERYONE,
                  summary="The room's product list.",
                  responses={200: ("The products.", room_products)})
        api.route("PUT", "/api/v1/rooms/{room_id}/products/{product_id}", self.add_room_product,
                  name="room_products_add", tag=tag, roles=("host",),
                  summary="Put a product on the room's list before the room starts (owner and "
                          "team); refused when it matches the restricted goods catalogue.",
                  responses={200: ("The room's products.", room_products),
                             409: (("The room has started, the list is full, or the product is "
                                    "restricted (the message names the rule)."), error)})
        api.route("DELETE", "/api/v1/rooms/{room_id}/products/{product_id}", self.remove_room_product,
                  name="room_products_remove", tag=tag, roles=("host",),
                  summary="Take a product off the room's list before the room starts (owner and team).",
                  responses={204: ("Removed.", None), 409: ("The room has started.", error)})
        rule = api.schema("RestrictedRule", {
            "type": "object", "required": ["id", "kind", "value", "reason"],
            "properties": {"id": {"type": "integer"}, "kind": {"type": "string", "enum": list(RULE_KINDS)},
                           "value": {"type": "string"}, "reason": {"type": "string"},
                           "created_at": {"type": "string"}}})
        api.route("GET", "/api/v1/restricted-goods", self.list_rules, name="restricted_goods_list",
                  tag=tag, roles=EVERYONE,
                  summary="The published catalogue of restricted and prohibited goods "
                          "(IWA 41 §6.2 d): categories and keywords.",
                  responses={200: ("The catalogue.", {
                      "type": "object", "required": ["rules"],
                      "properties": {"rules": {"type": "array", "items": rule}}})})
        api.route("POST", "/api/v1/restricted-goods", self.add_rule, name="restricted_goods_add",
                  tag=tag, roles=("operator",),
                  request={"type": "object", "additionalProperties": False,
                           "required": ["kind", "value"],
                           "properties": {"kind": {"type": "string", "enum": list(RULE_KINDS)},
                                          "value": {"type": "string", "minLength": 1,
                                                    "maxLength": cfg.name_max_chars},
                                          "reason": {"type": "string",
                                                     "maxLength": cfg.description_max_chars}}},
                  example={"kind": "keyword", "value": "e-cigarette", "reason": "tobacco products"},
                  summary="Add a category or keyword to the catalogue (compared case- and "
                          "accent-insensitively).",
                  responses={201: ("The rule.", rule), 409: ("The same rule exists.", error)})
        api.route("DELETE", "/api/v1/restricted-goods/{rule_id}", self.remove_rule,
                  name="restricted_goods_remove", tag=tag, roles=("operator",),
                  summary="Remove a rule from the catalogue.",
                  responses={204: ("Removed.", None)})
        coupon = api.schema("Coupon", {
            "type": "object", "required": ["code", "room_id", "kind", "value", "max_uses", "uses"],
            "properties": {"code": {"type": "string"}, "room_id": {"type": "string"},
                           "kind": {"type": "string", "enum": list(COUPON_KINDS)},
                           "value": {"type": "integer"}, "currency": {"type": ["string", "null"]},
                           "max_uses": {"type": "integer"}, "uses": {"type": "integer"}}})
        api.route("POST", "/api/v1/rooms/{room_id}/coupons", self.create_coupon,
                  name="coupons_create", tag=tag, roles=("host",),
                  request={"type": "object", "additionalProperties": False,
                           "required": ["code", "kind", "value", "max_uses"],
                           "properties": {
                               "code": {"type": "string", "pattern": "^[A-Za-z0-9_-]{3,32}$"},
                               "kind": {"type": "string", "enum": list(COUPON_KINDS)},
                               "value": {"type": "integer", "minimum": 1,
                                         "maximum": cfg.price_max_minor,
                                         "description": "percent: 1 to commerce.coupon_percent_max; "
                                                        "amount: minor units."},
                               "currency": {**currency, "description": "Required for amount coupons."},
                               "max_uses": {"type": "integer", "minimum": 1,
                                            "maximum": cfg.coupon_uses_max}}},
                  example={"code": "SPRING10", "kind": "percent", "value": 10, "max_uses": 500},
                  summary="A coupon valid for Buy Now in this room (owner and team).",
                  responses={201: ("The coupon.", coupon), 409: ("The code exists in this room.", error)})
        order = api.schema("Order", {
            "type": "object",
            "required": ["id", "room_id", "sku_id", "quantity", "unit_price", "subtotal", "discount",
                         "total", "currency", "state", "expires_at"],
            "properties": {**{k: {"type": "string"} for k in ("id", "room_id", "product_id", "sku_id",
                                                               "currency", "created_at", "expires_at",
                                                               "hold_expires_at", "payment_state")},
                           **{k: {"type": "integer"} for k in ("quantity", "unit_price", "subtotal",
                                                                "discount", "total", "total_minor")},
                           **{k: {"type": ["string", "null"]} for k in (
                               "coupon_code", "paid_at", "pin_id", "tracking_number", "carrier",
                               "updated_at", "refund_reason")},
                           "state": {"type": "string", "enum": list(ORDER_STATES),
                                     "description": "The same as status (kept for early clients)."},
                           "status": {"type": "string", "enum": list(ORDER_STATES)}}})
        api.route("POST", "/api/v1/rooms/{room_id}/orders", self.buy_now, name="orders_buy_now",
                  tag=tag, roles=USERS,
                  request={"type": "object", "additionalProperties": False,
                           "required": ["sku_id", "quantity"],
                           "properties": {"sku_id": {"type": "string", "minLength": 1, "maxLength": 64},
                                          "quantity": {"type": "integer", "minimum": 1,
                                                       "maximum": cfg.quantity_max},
                                          "coupon_code": {"type": "string",
                                                          "pattern": "^[A-Za-z0-9_-]{3,32}$"},
                                          "pin_id": {"type": "string", "minLength": 1, "maxLength": 64,
                                                     "description": "The card tapped; a flash-sale "
                                                                    "card's price and limits apply."}}},
                  example={"sku_id": "s0123456789abcdef", "quantity": 1, "coupon_code": "SPRING10"},
                  description="Creates an order holding the stock for commerce.hold_expiry_s; the "
                              "price is computed by the server. With an `Idempotency-Key` header "
                              "(1 to 255 visible ASCII characters) a retry with the same body gets "
                              "the same answer, and another body gets 409.",
                  summary="Buy Now: an order with an inventory hold, in a live room.",
                  responses={201: ("The order, pending payment.", order),
                             409: (("Sold out, over the per-buyer limit, the room is not live, the "
                                    "coupon cannot be used, the product is restricted, or the "
                                    "idempotency key was used with another body."), error)})
        self._register_pin_routes(api)
        self._register_order_routes(api, order)

    # --- helpers ----------------------------------------------------------------------------

    async def _rules(self) -> list[dict[str, Any]]:
        """The restricted goods catalogue, kept in memory between its edits
        (this process is its only writer)."""
        if self._rules_cache is None:
            self._rules_cache = await self.db.read(CommerceStore.rules)
        return self._rules_cache

    async def _product(self, product_id: str) -> dict[str, Any]:
        product = await self.db.read(lambda c: CommerceStore.product(c, product_id))
        if product is None:
            raise HTTPError(404, "not_found", f"no product {product_id!r}", "product_id")
        return product

    async def _room_products_view(self, room_id: str) -> dict[str, Any]:
        def load(c: sqlite3.Connection) -> list[dict[str, Any]]:
            return [CommerceStore.product(c, p) for p in CommerceStore.room_product_ids(c, room_id)]

        return {"room_id": room_id, "products": [_product_view(p) for p in await self.db.read(load)]}

    async def _editable_room(self, room_id: str, claims: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        rooms = self.plugins.get("rooms")
        room = await rooms.get(room_id)
        account = await rooms._team_member(room, claims)
        if room["state"] not in _EDITABLE_ROOM_STATES:
            raise HTTPError(409, "room_started", f"the room is {room['state']}; its product list "
                            "and coupons are prepared before it starts", "room_id")
        return room, account

    # --- handlers: catalog ------------------------------------------------------------------

    async def create_product(self, request, claims, body, query) -> Response:
        if claims.role == "service":
            owner_id = "service:" + claims.subject
        else:
            account = await self.plugins.get("accounts").require_account(claims)
            if account["role"] not in ("host", "marketer"):
                raise HTTPError(403, "not_a_seller", "only hosts, marketers and platforms add "
                                "products", "authorization")
            owner_id = account["id"]
        names = [s["name"] for s in body["skus"]]
        if len(set(names)) != len(names):
            raise field_error("skus", "variant names must differ")
        await self._check_images(body.get("images", []))
        now = time.time()
        product = {"id": "p" + secrets.token_hex(8), "owner_id": owner_id, "title": body["title"],
                   "description": body.get("description", ""), "category": body["category"],
                   "brand": body.get("brand", ""), "images": body.get("images", []),
                   "external_ref": body.get("external_ref"), "created_at": now}
        skus = [{**s, "id": "s" + secrets.token_hex(8)} for s in body["skus"]]
        await self.db.write(lambda c: CommerceStore.insert_product(c, product, skus))
        return Response.json(_product_view(await self._product(product["id"])), status=201)

    async def show_product(self, request, claims, body, query, product_id: str) -> Response:
        return Response.json(_product_view(await self._product(product_id)))

    async def list_products(self, request, claims, body, query) -> Response:
        """The caller's products (an operator: everyone's), by external reference."""
        owner = None
        if claims.role != "operator":
            owner = await self._seller_id(claims)
        limit = self.cfg.products_page_max
        external_ref = query.get("external_ref")

        def load(c: sqlite3.Connection) -> list[dict[str, Any]]:
            sql, args = "SELECT id FROM products WHERE 1 = 1", []
            if owner is not None:
                sql += " AND owner_id = ?"
                args.append(owner)
            if external_ref is not None:
                sql += " AND external_ref = ?"
                args.append(external_ref)
            ids = [r[0] for r in c.execute(sql + " ORDER BY created_at DESC, id LIMIT ?", (*args, limit))]
            return [CommerceStore.product(c, i) for i in ids]

        return Response.json({"products": [_product_view(p) for p in await self.db.read(load)]})

    async def _seller_id(self, claims: Any) -> str:
        """The owner id the caller's products carry (a platform's: service:<subject>)."""
        if claims.role == "service":
            return "service:" + claims.subject
        return (await self.plugins.get("accounts").require_account(claims))["id"]

    async def _own_product(self, claims: Any, product_id: str) -> dict[str, Any]:
        """The product, when the caller may change it: its owner (the account or
        platform that added it) or an operator; else 403."""
        product = await self._product(product_id)
        if claims.role != "operator" and product["owner_id"] != await self._seller_id(claims):
            raise HTTPError(403, "not_your_product", "only the product's owner and operators may "
                            "change it", "product_id")
        return product

    async def _check_images(self, images: list[str]) -> None:
        """Each image is an outside http(s) URL or one uploaded here (which must exist)."""
        for index, url in enumerate(images):
            if url.startswith(IMAGE_PATH):
                name = url[len(IMAGE_PATH):]
                if await trio.to_thread.run_sync(self.images.path_untrusted, name) is None:
                    raise field_error(f"images[{index}]", f"no uploaded image {name!r}; upload it "
                                      "with POST /api/v1/products/{product_id}/images")
            elif not _is_web_url(url):
                raise field_error(f"images[{index}]", "expected an http:// or https:// URL, or "
                                  f"{IMAGE_PATH}<name> of an uploaded image")

    async def edit_product(self, request, claims, body, query, product_id: str) -> Response:
        product = await self._own_product(claims, product_id)
        fields = {k: body[k] for k in ("title", "description", "category", "brand", "images",
                                        "external_ref") if k in body}
        if not fields and "price" not in body:
            raise field_error("body", "name at least one field to change")
        if "images" in fields:
            await self._check_images(fields["images"])
        # The restricted goods catalogue applies to the product as it would become.
        rule = restricted_match({**product, **fields}, await self._rules())
        if rule is not None:
            raise HTTPError(409, "restricted_goods", f"the product would match {_rule_text(rule)}; "
                            "nothing was changed", next(iter(fields), "product_id"))

        def edit(c: sqlite3.Connection) -> None:
            CommerceStore.update_product(c, product_id, fields)
            if "price" in body:
                c.execute("UPDATE skus SET price = ? WHERE product_id = ?", (body["price"], product_id))

        await self.db.write(edit)
        return Response.json(_product_view(await self._product(product_id)))

    async def edit_sku(self, request, claims, body, query, product_id: str, sku_id: str) -> Response:
        product = await self._own_product(claims, product_id)
        if sku_id not in {s["id"] for s in product["skus"]}:
            raise HTTPError(404, "not_found", f"no variant {sku_id!r} of product {product_id}", "sku_id")
        fields = {k: body[k] for k in ("name", "price", "stock", "per_buyer_limit") if k in body}
        if not fields:
            raise field_error("body", "name at least one field to change")

        def edit(c: sqlite3.Connection) -> None:
            if "name" in fields and c.execute("SELECT 1 FROM skus WHERE product_id = ? AND name = ? "
                                              "AND id != ?", (product_id, fields["name"], sku_id)).fetchone():
                raise field_error("name", "another variant of the product has this name")
            if fields:
                # stock is what is left to sell now: held units stay held.
                c.execute(f"UPDATE skus SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                          (*fields.values(), sku_id))

        await self.db.write(edit)
        log.info("sku_edited", product=product_id, sku=sku_id, fields=sorted(fields))
        return Response.json(_product_view(await self._product(product_id)))

    async def upload_image(self, request, claims, body, query, product_id: str) -> Response:
        await self._own_product(claims, product_id)
        cfg = self.cfg
        declared = (request.header("content-type") or "").split(";")[0].strip().lower()
        if declared not in IMAGE_TYPES:
            raise HTTPError(415, "unsupported_media_type", f"Content-Type {declared or 'none'!r}: "
                            f"expected one of {', '.join(IMAGE_TYPES)}", "Content-Type")
        data = request.body
        if len(data) > cfg.image_max_bytes:
            raise HTTPError(413, "image_too_large", f"the image has {len(data)} bytes; at most "
                            f"{cfg.image_max_bytes} (commerce.image_max_bytes)", "body")
        found = sniff_image_untrusted(data)
        if found is None:
            raise HTTPError(415, "not_an_image", "the body is not a PNG, JPEG or WebP image "
                            "(its first bytes are not one of theirs)", "body")
        if found != declared:
            raise HTTPError(415, "unsupported_media_type", f"the body is {found} but Content-Type "
                            f"says {declared}", "Content-Type")
        name = await trio.to_thread.run_sync(self.images.save, data, found)
        url = IMAGE_PATH + name
        limit = cfg.images_max

        def attach(c: sqlite3.Connection) -> None:
            images = json.loads(c.execute("SELECT images FROM products WHERE id = ?",
                                          (product_id,)).fetchone()[0])
            if url in images:
                return
            if len(images) >= limit:
                raise HTTPError(409, "images_full", f"a product has at most {limit} images "
                                "(commerce.images_max); remove one with PATCH first", "body")
            CommerceStore.update_product(c, product_id, {"images": [*images, url]})

        await self.db.write(attach)
        log.info("product_image", product=product_id, image=name, bytes=len(data))
        return Response.json({"url": url, "product": _product_view(await self._product(product_id))},
                             status=201)

    async def serve_image(self, request, claims, body, query, name: str) -> Response:
        path = await trio.to_thread.run_sync(self.images.path_untrusted, name)
        if path is None:
            raise HTTPError(404, "not_found", f"no product image {name!r}", "name")
        etag = '"' + name.split(".")[0] + '"'
        headers = (("cache-control", f"public, max-age={self.cfg.image_max_age_s}, immutable"),
                   ("etag", etag))
        if etag_matches_untrusted(request.header("if-none-match"), etag):
            return Response(304, headers)
        data = await trio.to_thread.run_sync(_read_bytes, path)
        content_type = next(t for t, ext in IMAGE_TYPES.items() if name.endswith("." + ext))
        return Response(200, (("content-type", content_type), ("x-content-type-options", "nosniff"),
                              *headers), data)

    async def list_room_products(self, request, claims, body, query, room_id: str) -> Response:
        if demo_room(self.app, room_id) is None:
            await self.plugins.get("rooms").get(room_id)
        return Response.json(await self._room_products_view(room_id))

    async def add_room_product(self, request, claims, body, query, room_id: str,
                               product_id: str) -> Response:
        room, account = await self._editable_room(room_id, claims)
        product = await self._product(product_id)
        rooms = self.plugins.get("rooms")
        owner = product["owner_id"]
        if not (owner.startswith("service:") or owner == account["id"]
                or await rooms._is_team(room, owner)):
            raise HTTPError(403, "not_your_product", "only products of the room's owner and team, "
                            "or a platform's, may be put on its list", "product_id")
        rule = restricted_match(product, await self._rules())
        if rule is not None:
            raise HTTPError(409, "restricted_goods", f"product {product_id} matches "
                            f"{_rule_text(rule)}; it cannot be sold in a room", "product_id")
        limit = self.cfg.products_per_room_max
        now = time.time()

        def add(c: sqlite3.Connection) -> None:
            ids = CommerceStore.room_product_ids(c, room_id)
            if product_id in ids:
                return
            if len(ids) >= limit:
                raise HTTPError(409, "room_products_full", f"a room lists at most {limit} products "
                                "(commerce.products_per_room_max)", "product_id")
            c.execute("INSERT INTO room_products VALUES (?, ?, ?)", (room_id, product_id, now))

        await self.db.write(add)
        return Response.json(await self._room_products_view(room_id))

    async def remove_room_product(self, request, claims, body, query, room_id: str,
                                  product_id: str) -> Response:
        await self._editable_room(room_id, claims)
        removed = await self.db.write(lambda c: c.execute(
            "DELETE FROM room_products WHERE room_id = ? AND product_id = ?",
            (room_id, product_id)).rowcount)
        if not removed:
            raise HTTPError(404, "not_found", f"product {product_id!r} is not on the room's list",
                            "product_id")
        return Response(204)

    # --- handlers: restricted goods ---------------------------------------------------------

    async def list_rules(self, request, claims, body, query) -> Response:
        rules = await self._rules()
        return Response.json({"rules": [_rule_view(r) for r in rules]},
                             headers=(("cache-control", "public, max-age=60"),))

    async def add_rule(self, request, claims, body, query) -> Response:
        folded = fold_untrusted(body["value"])
        if not folded:
            raise field_error("value", "must contain more than white space")
        now = time.time()
        limit = self.cfg.restricted_rules_max

        def add(c: sqlite3.Connection) -> dict[str, Any]:
            if c.execute("SELECT count(*) FROM restricted_rules").fetchone()[0] >= limit:
                raise HTTPError(409, "catalogue_full", f"at most {limit} rules "
                                "(commerce.restricted_rules_max)", "value")
            try:
                rule_id = c.execute("INSERT INTO restricted_rules (kind, value, folded, reason, "
                                    "created_at) VALUES (?, ?, ?, ?, ?)",
                                    (body["kind"], body["value"].strip(), folded,
                                     body.get("reason", ""), now)).lastrowid
            except sqlite3.IntegrityError:
                raise HTTPError(409, "rule_exists", f"the {body['kind']} {body['value']!r} is "
                                "already in the catalogue", "value") from None
            c.execute("INSERT INTO audit_log (at, actor, action, subject, reason) VALUES (?, ?, ?, ?, ?)",
                      (now, claims.subject, "restricted_goods_add", str(rule_id), body["value"]))
            return dict(c.execute("SELECT * FROM restricted_rules WHERE id = ?", (rule_id,)).fetchone())

        rule = await self.db.write(add)
        self._rules_cache = None
        return Response.json(_rule_view(rule), status=201)

    async def remove_rule(self, request, claims, body, query, rule_id: str) -> Response:
        if not re.fullmatch(r"\d{1,12}", rule_id):
            raise HTTPError(404, "not_found", f"no rule {rule_id!r}", "rule_id")
        now = time.time()

        def remove(c: sqlite3.Connection) -> int:
            count = c.execute("DELETE FROM restricted_rules WHERE id = ?", (int(rule_id),)).rowcount
            if count:
                c.execute("INSERT INTO audit_log (at, actor, action, subject, reason) "
                          "VALUES (?, ?, ?, ?, ?)", (now, claims.subject, "restricted_goods_remove",
                                                     rule_id, ""))
            return count

        removed = await self.db.write(remove)
        self._rules_cache = None
        if not removed:
            raise HTTPError(404, "not_found", f"no rule {rule_id!r}", "rule_id")
        return Response(204)

    # --- handlers: coupons ------------------------------------------------------------------

    async def create_coupon(self, request, claims, body, query, room_id: str) -> Response:
        _, account = await self._editable_room(room_id, claims)
        cfg = self.cfg
        if body["kind"] == "percent":
            if body["value"] > cfg.coupon_percent_max:
                raise field_error("value", f"a percent coupon is at most {cfg.coupon_percent_max} "
                                  "(commerce.coupon_percent_max)")
            if "currency" in body:
                raise field_error("currency", "only amount coupons have a currency")
        elif "currency" not in body:
            raise field_error("currency", "is required for amount coupons")
        row = {"room_id": room_id, "code": body["code"], "owner_id": account["id"],
               "kind": body["kind"], "value": body["value"], "currency": body.get("currency"),
               "max_uses": body["max_uses"], "uses": 0, "created_at": time.time()}

        def add(c: sqlite3.Connection) -> None:
            try:
                c.execute(f"INSERT INTO coupons ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                          tuple(row.values()))
            except sqlite3.IntegrityError:
                raise HTTPError(409, "coupon_exists", f"the room already has a coupon "
                                f"{body['code']!r}", "code") from None

        await self.db.write(add)
        return Response.json(_coupon_view(row), status=201)

    # --- handlers: Buy Now ------------------------------------------------------------------

    async def buy_now(self, request, claims, body, query, room_id: str) -> Response:
        key = request.header("idempotency-key")
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            raise HTTPError(400, "invalid_field", "Idempotency-Key: expected 1 to 255 visible ASCII "
                            "characters", "Idempotency-Key")
        account = await self.plugins.get("accounts").require_account(claims)
        buyer_id = account["id"]
        digest = hashlib.sha256(json.dumps({"room_id": room_id, "body": body}, sort_keys=True,
                                           separators=(",", ":")).encode()).hexdigest()
        rules = await self._rules()

        def look_up(c: sqlite3.Connection) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
            # One read for both: Buy Now is the request a flash sale multiplies.
            room = RoomStore.get(c, room_id)
            sku = c.execute("SELECT product_id FROM skus WHERE id = ?", (body["sku_id"],)).fetchone()
            return room, CommerceStore.product(c, sku["product_id"]) if sku else None

        # Vetoes are synchronous hooks, asked here on the event loop, not in the
        # database thread; the answer is kept under the idempotency key like any refusal.
        veto = None
        room, product = await self.db.read(look_up)
        if room is None:
            room = demo_room(self.app, room_id)  # the demo room: live, no row of its own
        if room is None:
            raise HTTPError(404, "not_found", f"no room {room_id!r}", "room_id")
        # An ended room sells on from its replay while stock remains.
        replays = getattr(self.app, "replays", None)
        from_replay = (room["state"] in ("ended", "replay") and replays is not None
                       and await trio.to_thread.run_sync(replays.has_replay, room_id))
        if product is not None:
            veto = self.plugins.veto("shopcast_order_may_place", order={
                "room_id": room_id, "buyer_id": buyer_id, "product_id": product["id"],
                "sku_id": body["sku_id"], "quantity": body["quantity"],
                "_restricted_rule": restricted_match(product, rules)})
        cfg = self.cfg
        now = self.clock()
        expires_at = now + cfg.hold_expiry_s

        def refuse(status: int, code: str, message: str, field: str | None) -> None:
            raise _Refusal(HTTPError(status, code, message, field))

        def place(c: sqlite3.Connection) -> tuple[int, dict[str, Any], bool]:
            """(status, response body, whether an order was placed now)."""
            if key is not None:
                stored = c.execute("SELECT request_sha256, status, response FROM idempotency_keys "
                                   "WHERE buyer_id = ? AND key = ?", (buyer_id, key)).fetchone()
                if stored is not None:
                    if stored["request_sha256"] != digest:
                        raise HTTPError(409, "idempotency_key_reused", "this Idempotency-Key was "
                                        "used with another request", "Idempotency-Key")
                    return stored["status"], json.loads(stored["response"]), False
            c.execute("SAVEPOINT buy")
            try:
                status, view = 201, place_order(c)
                placed = True
            except _Refusal as refusal:
                c.execute("ROLLBACK TO buy")
                error = refusal.error
                status, view = error.status, {"error": {"code": error.code, "message": error.message,
                                                        "field": error.field}}
                placed = False
            c.execute("RELEASE buy")
            if key is not None:
                c.execute("INSERT INTO idempotency_keys VALUES (?, ?, ?, ?, ?, ?)",
                          (buyer_id, key, digest, status, json.dumps(view), now))
            return status, view, placed

        def place_order(c: sqlite3.Connection) -> dict[str, Any]:
            if room["state"] != "live" and not from_replay:
                refuse(409, "room_not_live", f"the room is {room['state']}; Buy Now works while "
                       "it is live, and from its replay once it has ended", "room_id")
            sku = c.execute("SELECT * FROM skus WHERE id = ?", (body["sku_id"],)).fetchone()
            if sku is None or c.execute("SELECT 1 FROM room_products WHERE room_id = ? AND "
                                        "product_id = ?", (room_id, sku["product_id"])).fetchone() is None:
                refuse(404, "not_found", f"no variant {body['sku_id']!r} on this room's list", "sku_id")
            quantity = body["quantity"]
            order = {"id": "o" + secrets.token_hex(8), "buyer_id": buyer_id, "room_id": room_id,
                     "product_id": sku["product_id"], "sku_id": sku["id"], "quantity": quantity,
                     "currency": sku["currency"]}
            if veto is not None:
                refuse(409, "order_refused", f"the order cannot be placed: {veto}", "sku_id")
            limit = sku["per_buyer_limit"] or cfg.per_buyer_limit_default
            unit_price = sku["price"]
            pin = None
            if "pin_id" in body:
                pin = PinStore.get(c, body["pin_id"])
                if pin is None or pin["room_id"] != room_id:
                    refuse(404, "not_found", f"no card {body['pin_id']!r} in this room", "pin_id")
                if pin["product_id"] != sku["product_id"]:
                    refuse(409, "wrong_product", "the variant is not of the pinned product", "sku_id")
                order["pin_id"] = pin["id"]
            if pin is not None and pin["kind"] == "flash_sale":
                # The flash price and limits apply, whatever the client sends.
                if sku["id"] != pin["flash_sku_id"]:
                    refuse(409, "wrong_variant", f"the flash sale is for variant {pin['flash_sku_id']}",
                           "sku_id")
                closed = flash_window_error(pin, now)
                if closed is not None:
                    refuse(409, "flash_sale_closed", closed, "pin_id")
                limit = pin["flash_per_buyer_limit"]
                held = c.execute("SELECT coalesce(sum(quantity), 0) FROM orders WHERE pin_id = ? AND "
                                 f"buyer_id = ? AND state IN {HOLDING_STATES}",
                                 (pin["id"], buyer_id)).fetchone()[0]
                if held + quantity > limit:
                    refuse(409, "per_buyer_limit", f"one buyer may have at most {limit} in this flash "
                           f"sale (already {held})", "quantity")
                if c.execute("UPDATE pins SET flash_sold = flash_sold + ? WHERE id = ? AND "
                             "flash_sold + ? <= flash_stock_cap",
                             (quantity, pin["id"], quantity)).rowcount != 1:
                    refuse(409, "sold_out", "the flash sale's units are sold out", "quantity")
                unit_price = pin["flash_price"]
            else:
                limit = sku["per_buyer_limit"] or cfg.per_buyer_limit_default
                held = c.execute("SELECT coalesce(sum(quantity), 0) FROM orders WHERE buyer_id = ? AND "
                                 f"sku_id = ? AND state IN {HOLDING_STATES}",
                                 (buyer_id, sku["id"])).fetchone()[0]
                if held + quantity > limit:
                    refuse(409, "per_buyer_limit", f"one buyer may have at most {limit} of this "
                           f"variant (already {held})", "quantity")
            if not CommerceStore.take_stock(c, sku["id"], quantity):
                refuse(409, "sold_out", "not enough stock left for this quantity", "quantity")
            coupon = None
            if "coupon_code" in body:
                coupon = c.execute("SELECT * FROM coupons WHERE room_id = ? AND code = ?",
                                   (room_id, body["coupon_code"])).fetchone()
                if coupon is None:
                    refuse(409, "coupon_invalid", "no such coupon in this room", "coupon_code")
                if coupon["kind"] == "amount" and coupon["currency"] != sku["currency"]:
                    refuse(409, "coupon_invalid", f"the coupon is in {coupon['currency']}, the "
                           f"price in {sku['currency']}", "coupon_code")
                if c.execute("UPDATE coupons SET uses = uses + 1 WHERE room_id = ? AND code = ? AND "
                             "uses < max_uses", (room_id, coupon["code"])).rowcount != 1:
                    refuse(409, "coupon_used_up", "the coupon has no uses left", "coupon_code")
            subtotal, discount, total = price_order(unit_price, quantity, coupon and dict(coupon))
            order.update({"unit_price": unit_price, "subtotal": subtotal, "discount": discount,
                          "total": total, "coupon_code": coupon["code"] if coupon else None,
                          "state": "pending", "created_at": now, "expires_at": expires_at,
                          "paid_at": None, "ended_at": None, "updated_at": now,
                          "payment_state": "none"})
            order.setdefault("pin_id", None)
            order.update({"intent_id": None, "tracking_number": None, "carrier": None})
            OrderStore.log(c, order["id"], now, "pending", buyer_id, "")
            c.execute(f"INSERT INTO orders ({', '.join(order)}) VALUES ({', '.join('?' * len(order))})",
                      tuple(order.values()))
            return _order_view(order)

        status, view, placed = await self._buy_commits.run(place)
        if placed:
            log.info("order_placed", order=view["id"], sku=view["sku_id"], quantity=view["quantity"])
            await self.plugins.notify("shopcast_order_placed", order=view)
        return Response.json(view, status=status)

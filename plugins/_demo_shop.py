"""The demo room's shop: what makes ``shopcast serve``'s demo room (server/_app.py
``run_demo_room``, ``[demo]``) a room one can buy from.

- Two products of the system account ``DEMO_OWNER`` (a platform owner, as
  ``service:`` products are), with fixed ids, variants, stock and a bundled
  image (server/static/img/demo-*.svg), on the demo room's product list.
  ``prepare`` inserts them once per data directory (a restart finds them and
  only tops their stock up to ``demo.shop_stock``) and unpins the cards a
  previous run left pinned.
- ``run_show`` pins and unpins cards on the demo broadcast's ``commerce`` track
  like a host does, through the commerce plugin's own ``pin_card`` and
  ``unpin_card`` (plugins/_pins.py; one pin format), each stamped with the
  broadcast's live edge: a product card every ``demo.cycle_s``, a flash-sale
  card every ``demo.flash_sale_every``-th cycle. At each cycle's start the
  demo cards unpinned over a cycle ago that no order refers to are deleted
  (the table stays bounded however long the demo runs).
- ``demo_room`` is the one rule that lets Buy Now (and the pins and product
  lists) accept the demo room, which has no row in the rooms table: while the
  demo is enabled, its room id is a live room owned by ``DEMO_OWNER``. A real
  room of the same id would win (it is looked up first).
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import trio

from shopcast.server._interaction import live_edge_us
from shopcast.server._log import get_logger

__all__ = ["DEMO_OWNER", "DEMO_PRODUCTS", "demo_room", "prepare", "run_show"]

log = get_logger("demo")

DEMO_OWNER = "service:shopcast-demo"
"""The system account that owns the demo products and the demo room."""

DEMO_PRODUCTS: tuple[dict[str, Any], ...] = (
    {"id": "pdemo-tee", "title": "shopcast demo tee", "category": "apparel", "brand": "shopcast",
     "description": "A soft cotton tee with the shopcast LIVE print. A demo product: paid with "
                    "the test card, never shipped.",
     "images": ["/static/img/demo-tee.svg"],
     "skus": [{"id": "sdemo-tee-s", "name": "S", "price": 1900, "currency": "EUR"},
              {"id": "sdemo-tee-m", "name": "M", "price": 1900, "currency": "EUR"},
              {"id": "sdemo-tee-l", "name": "L", "price": 2100, "currency": "EUR"}]},
    {"id": "pdemo-mug", "title": "shopcast demo mug", "category": "kitchen", "brand": "shopcast",
     "description": "A 300 ml stoneware mug. A demo product: paid with the test card, never "
                    "shipped.",
     "images": ["/static/img/demo-mug.svg"],
     "skus": [{"id": "sdemo-mug-yellow", "name": "Yellow", "price": 1200, "currency": "EUR"},
              {"id": "sdemo-mug-black", "name": "Black", "price": 1200, "currency": "EUR"}]},
)
_CARD_PRODUCT = "pdemo-tee"
"""The product of the regular card."""
_FLASH_PRODUCT, _FLASH_SKU = "pdemo-mug", "sdemo-mug-yellow"


def demo_room(app: Any, room_id: str) -> dict[str, Any] | None:
    """The demo room as Buy Now and the pins see it (live, owned by
    ``DEMO_OWNER``) when ``room_id`` is the enabled demo room; else None."""
    demo = app.config.demo
    if not demo.enabled or room_id != demo.room:
        return None
    return {"id": room_id, "state": "live", "owner_id": DEMO_OWNER, "title": "shopcast demo"}


async def prepare(commerce: Any) -> None:
    """Create the demo products once (idempotent), top their stock up, put
    them on the demo room's list, and unpin what a previous run left pinned."""
    demo = commerce.app.config.demo
    room_id, stock = demo.room, demo.shop_stock
    now = time.time()

    def run(c: sqlite3.Connection) -> int:
        for position, product in enumerate(DEMO_PRODUCTS):
            c.execute("INSERT OR IGNORE INTO products VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (product["id"], DEMO_OWNER, product["title"], product["description"],
                       product["category"], product["brand"], json.dumps(product["images"]), None, now))
            for i, sku in enumerate(product["skus"]):
                c.execute("INSERT OR IGNORE INTO skus VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          (sku["id"], product["id"], i, sku["name"], sku["price"], sku["currency"],
                           stock, None))
                c.execute("UPDATE skus SET stock = ? WHERE id = ? AND stock < ?", (stock, sku["id"], stock))
            c.execute("INSERT OR IGNORE INTO room_products VALUES (?, ?, ?)",
                      (room_id, product["id"], now + position * 1e-3))
        return c.execute("UPDATE pins SET unpinned_at = ? WHERE room_id = ? AND unpinned_at IS NULL",
                         (now, room_id)).rowcount

    left_pinned = await commerce.db.write(run)
    log.info("demo_shop_ready", room=room_id, products=len(DEMO_PRODUCTS), stock=stock,
             unpinned_left_over=left_pinned)


def _schedule(demo: Any, cycle: int) -> list[tuple[float, str]]:
    """The steps of one cycle, (seconds into the cycle, step), in time order;
    at the same instant an unpin goes first."""
    steps = [(demo.product_pin_s, "pin_product"), (demo.product_unpin_s, "unpin_product")]
    if demo.flash_sale_every and cycle % demo.flash_sale_every == 0:
        steps += [(demo.flash_pin_s, "pin_flash"), (demo.flash_unpin_s, "unpin_flash")]
    return sorted(steps, key=lambda s: (s[0], not s[1].startswith("unpin")))


def _forget_old_pins(c: sqlite3.Connection, room_id: str, before: float) -> int:
    """Delete the demo room's cards unpinned before ``before`` (unix s) that no
    order refers to, so that a demo running for months keeps a bounded pins
    table; a card unpinned within the last cycle stays, for a checkout still open."""
    return c.execute("DELETE FROM pins WHERE room_id = ? AND unpinned_at < ? AND NOT EXISTS "
                     "(SELECT 1 FROM orders WHERE orders.pin_id = pins.id)", (room_id, before)).rowcount


def _flash_error(demo: Any, cfg: Any) -> str | None:
    if not cfg.flash_countdown_min_s <= demo.flash_countdown_s <= cfg.flash_countdown_max_s:
        return (f"demo.flash_countdown_s must be within commerce.flash_countdown_min_s.."
                f"flash_countdown_max_s ({cfg.flash_countdown_min_s}..{cfg.flash_countdown_max_s})")
    if not cfg.flash_duration_min_s <= demo.flash_duration_s <= cfg.flash_duration_max_s:
        return (f"demo.flash_duration_s must be within commerce.flash_duration_min_s.."
                f"flash_duration_max_s ({cfg.flash_duration_min_s}..{cfg.flash_duration_max_s})")
    return None


async def run_show(commerce: Any, broadcast: Any) -> None:
    """Pin and unpin the demo cards on ``broadcast``'s commerce track, cycle
    after cycle, until cancelled (the demo room stops) or the broadcast ends.
    A step that fails is logged and the show goes on."""
    demo = commerce.app.config.demo
    room_id = demo.room
    flash_error = _flash_error(demo, commerce.cfg)
    if flash_error is not None and demo.flash_sale_every:
        log.error("demo_flash_sale_off", reason=flash_error)
    flash_sku = next(s for p in DEMO_PRODUCTS if p["id"] == _FLASH_PRODUCT
                     for s in p["skus"] if s["id"] == _FLASH_SKU)
    flash = {"price_minor": flash_sku["price"] * demo.flash_price_percent // 100,
             "countdown_s": demo.flash_countdown_s, "duration_s": demo.flash_duration_s,
             "per_buyer_limit": demo.flash_per_buyer_limit, "stock_cap": demo.flash_stock_cap,
             "sku_id": _FLASH_SKU}
    pinned: dict[str, str] = {}  # "product" / "flash" -> pin id
    started = trio.current_time()
    cycle = 0
    while not broadcast.ended.is_set():
        try:
            before = commerce.clock() - demo.cycle_s
            await commerce.db.write(lambda c: _forget_old_pins(c, room_id, before))
        except Exception:  # noqa: BLE001 - the show goes on; the next cycle tries again
            log.error("demo_pins_prune_failed", exc_info=True)
        for offset_s, step in _schedule(demo, cycle):
            await trio.sleep_until(started + cycle * demo.cycle_s + offset_s)
            if broadcast.ended.is_set():
                return
            what = step.split("_", 1)[1]
            if what == "flash" and flash_error is not None:
                continue
            media_us = live_edge_us(broadcast)
            try:
                if step.startswith("pin_"):
                    if what == "product":
                        view = await commerce.pin_card(room_id, "product", _CARD_PRODUCT, media_us)
                    else:
                        view = await commerce.pin_card(room_id, "flash_sale", _FLASH_PRODUCT, media_us,
                                                       flash=flash)
                    pinned[what] = view["id"]
                elif what in pinned:
                    await commerce.unpin_card(room_id, pinned.pop(what), media_us)
            except Exception:  # noqa: BLE001 - one failed step (a full disk ...) must not end the demo
                log.error("demo_show_step_failed", step=step, exc_info=True)
        cycle += 1

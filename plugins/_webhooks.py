"""The webhooks plugin: events to the platform's URLs (``[webhooks] urls``),
signed, retried with exponential backoff, from an outbox in the database so
that none is lost across a restart.

Each delivery is ``POST`` of ``{"id", "type", "created_at", "data"}`` with

    Shopcast-Event:     room.live
    Shopcast-Event-Id:  the event's id (the same on every retry: deduplicate on it)
    Shopcast-Timestamp: Unix seconds of this attempt
    Shopcast-Signature: v1=hex(HMAC-SHA256(secret, timestamp + "." + body))

as payment providers sign theirs: a receiver recomputes the HMAC over the
timestamp it got and the raw body, compares in constant time, and refuses
old timestamps. A 2xx answer is a delivery; anything else, or no answer
within ``timeout_s``, is retried after ``retry_base_s x 2^(attempt-1)``
(at most ``retry_max_s``) until ``max_attempts``, then kept as failed.
Delivered events are deleted from the outbox.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import secrets
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Any

import trio

from shopcast.plugins._api import format_time
from shopcast.plugins._hookspecs import hookimpl
from shopcast.plugins._storage import Migration
from shopcast.server._log import get_logger

__all__ = ["SECRET_FILE", "OutboxStore", "WebhooksPlugin", "sign"]

log = get_logger("webhooks")
SECRET_FILE = "webhook-secret"

MIGRATIONS = [
    Migration("webhooks", 1, """
CREATE TABLE webhook_outbox (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox(state, next_attempt_at);
"""),
]


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The Shopcast-Signature value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


class OutboxStore:
    """Every SQL statement of the webhooks plugin."""

    @staticmethod
    def enqueue(c: sqlite3.Connection, event_id: str, event: str, urls: tuple[str, ...], body: str,
                now: float) -> None:
        c.executemany("INSERT INTO webhook_outbox (event_id, event, url, body, created_at, "
                      "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                      [(event_id, event, url, body, now, now) for url in urls])

    @staticmethod
    def due(c: sqlite3.Connection, now: float, limit: int) -> list[dict[str, Any]]:
        return [dict(r) for r in c.execute(
            "SELECT * FROM webhook_outbox WHERE state = 'pending' AND next_attempt_at <= ? "
            "ORDER BY next_attempt_at, id LIMIT ?", (now, limit))]

    @staticmethod
    def next_due(c: sqlite3.Connection) -> float | None:
        return c.execute("SELECT min(next_attempt_at) FROM webhook_outbox WHERE state = 'pending'"
                         ).fetchone()[0]

    @staticmethod
    def delivered(c: sqlite3.Connection, row_id: int) -> None:
        c.execute("DELETE FROM webhook_outbox WHERE id = ?", (row_id,))

    @staticmethod
    def failed(c: sqlite3.Connection, row_id: int, attempts: int, next_at: float | None, error: str) -> None:
        c.execute("UPDATE webhook_outbox SET attempts = ?, next_attempt_at = coalesce(?, next_attempt_at), "
                  "state = CASE WHEN ? IS NULL THEN 'failed' ELSE 'pending' END, last_error = ? "
                  "WHERE id = ?", (attempts, next_at, next_at, error[:500], row_id))

    @staticmethod
    def forget(c: sqlite3.Connection, account_id: str) -> None:
        """Queued events that carry the account's data."""
        c.execute("DELETE FROM webhook_outbox WHERE instr(body, ?) > 0", (json.dumps(account_id),))


def _post(url: str, headers: dict[str, str], body: bytes, timeout_s: float) -> int:
    """POST ``body``; the status code. Blocking: run in a thread."""
    parts = urllib.parse.urlsplit(url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=timeout_s)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        response.read(65536)
        return response.status
    finally:
        connection.close()


class WebhooksPlugin:
    """The outbox and its sender; see the module docstring."""

    def __init__(self) -> None:
        self.app: Any = None
        self.db: Any = None
        self._wake = trio.Event()
        self._progress = trio.Condition()
        self.delivered = 0
        """Events delivered since start (for /metrics and tests)."""

    @hookimpl
    def shopcast_configure(self, app: Any, plugins: Any) -> None:
        self.app = app
        self.cfg = app.config.webhooks

    @hookimpl
    def shopcast_register_tables(self) -> list[Migration]:
        return MIGRATIONS

    @hookimpl
    async def shopcast_startup(self, app: Any, nursery: trio.Nursery) -> None:
        self.db = app.db
        self.secret = await trio.to_thread.run_sync(self._load_secret, app.data_dir)
        app.metrics.counter_callback("shopcast_webhooks_delivered_total",
                                     "Webhook events delivered (2xx) since start.",
                                     callback=lambda: self.delivered)
        nursery.start_soon(self._send_forever)

    def _load_secret(self, data_dir: Path) -> bytes:
        if self.cfg.secret:
            return self.cfg.secret.encode()
        path = Path(data_dir) / SECRET_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip().encode()
        with os.fdopen(fd, "w") as f:
            value = secrets.token_urlsafe(32)
            f.write(value + "\n")
        return value.encode()

    # --- events -----------------------------------------------------------------------------

    async def enqueue(self, event: str, data: dict[str, Any]) -> None:
        """Queue ``event`` for every configured URL (nothing when there is none)."""
        if not self.cfg.urls:
            return
        now = time.time()
        event_id = "evt_" + secrets.token_hex(12)
        body = json.dumps({"id": event_id, "type": event, "created_at": format_time(now), "data": data},
                          separators=(",", ":"), ensure_ascii=False)
        await self.db.write(lambda c: OutboxStore.enqueue(c, event_id, event, self.cfg.urls, body, now))
        self._wake.set()

    @staticmethod
    def _room(room: dict[str, Any]) -> dict[str, Any]:
        keys = ("id", "title", "scheduled_start", "scheduled_end", "state", "share_url", "started_at",
                "ended_at", "end_reason", "shutdown_reason")
        return {"room": {k: room.get(k) for k in keys}}

    @hookimpl
    async def shopcast_room_created(self, room: dict[str, Any]) -> None:
        await self.enqueue("room.scheduled", self._room(room))

    @hookimpl
    async def shopcast_room_live(self, room: dict[str, Any]) -> None:
        await self.enqueue("room.live", self._room(room))

    @hookimpl
    async def shopcast_room_ended(self, room: dict[str, Any], reason: str) -> None:
        await self.enqueue("room.ended", self._room(room))

    @hookimpl
    async def shopcast_account_forget(self, account_id: str) -> None:
        await self.db.write(lambda c: OutboxStore.forget(c, account_id))

    @hookimpl
    async def shopcast_account_deleted(self, account_id: str, forced: bool, reason: str) -> None:
        await self.enqueue("account.deleted", {"account": {"id": account_id, "forced": forced}})

    @hookimpl
    async def shopcast_order_placed(self, order: dict[str, Any]) -> None:
        await self.enqueue("order.placed", {"order": order})

    @hookimpl
    async def shopcast_order_paid(self, order: dict[str, Any]) -> None:
        await self.enqueue("order.paid", {"order": order})

    @hookimpl
    async def shopcast_order_cancelled(self, order: dict[str, Any], reason: str) -> None:
        await self.enqueue("order.cancelled", {"order": order, "reason": reason})

    @hookimpl
    async def shopcast_order_updated(self, order: dict[str, Any], previous: str) -> None:
        # order.paid and order.cancelled come from their own hooks above.
        if "complaint" in order:
            await self.enqueue("order.complaint", {"order": order})
        elif order["status"] not in ("paid", "cancelled", "expired") and order["status"] != previous:
            await self.enqueue(f"order.{order['status']}", {"order": order, "previous": previous})

    # --- the sender -------------------------------------------------------------------------

    async def wait_delivered(self, count: int) -> None:
        """Return once ``count`` events have been delivered since start."""
        async with self._progress:
            while self.delivered < count:
                await self._progress.wait()

    async def _send_forever(self) -> None:
        """Deliver due events; sleep until the next one is due or a new one is
        queued. Never returns unless cancelled."""
        while True:
            self._wake = trio.Event()
            try:
                await self.send_due()
                next_at = await self.db.read(OutboxStore.next_due)
            except Exception:
                log.error("webhook_round_failed", exc_info=True)
                next_at = time.time() + self.cfg.retry_base_s
            wait_s = self.cfg.retry_max_s if next_at is None else max(0.0, next_at - time.time())
            with trio.move_on_after(wait_s):
                await self._wake.wait()

    async def send_due(self) -> int:
        """One round: attempt every due event once; returns how many were delivered."""
        cfg = self.cfg
        rows = await self.db.read(lambda c: OutboxStore.due(c, time.time(), cfg.batch_events))
        sent = 0
        for row in rows:
            body = row["body"].encode()
            timestamp = int(time.time())
            headers = {"content-type": "application/json", "user-agent": "shopcast-webhooks",
                       "shopcast-event": row["event"], "shopcast-event-id": row["event_id"],
                       "shopcast-timestamp": str(timestamp),
                       "shopcast-signature": sign(self.secret, timestamp, body)}
            try:
                status = await trio.to_thread.run_sync(
                    _post, row["url"], headers, body, cfg.timeout_s, abandon_on_cancel=True)
                error = None if 200 <= status < 300 else f"HTTP {status}"
            except (OSError, http.client.HTTPException) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if error is None:
                await self.db.write(lambda c, i=row["id"]: OutboxStore.delivered(c, i))
                self.delivered += 1
                sent += 1
                async with self._progress:
                    self._progress.notify_all()
                continue
            attempts = row["attempts"] + 1
            next_at = None
            if attempts < cfg.max_attempts:
                next_at = time.time() + min(cfg.retry_max_s, cfg.retry_base_s * 2 ** (attempts - 1))
            log.info("webhook_failed", kind=row["event"], url=row["url"], attempts=attempts,
                     error=error, gave_up=next_at is None)
            await self.db.write(lambda c, i=row["id"]: OutboxStore.failed(c, i, attempts, next_at, error))
        return sent

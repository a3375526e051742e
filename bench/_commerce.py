"""Commerce load: Buy Now in a flash sale, N buyers for S units, against a real
server process (``shopcast serve``) on its embedded SQLite, over real HTTPS
(HTTP/1.1 keep-alive, several connections at once).

Measured: Buy Now answers per second (holds granted and sold-out refusals
alike), latency p50 and p99 as the client sees it; apart from that, the hold
rate (holds granted per second, from the first tap to the last hold) and the
p99 latency of the Buy Nows that got a hold; and two oversell counts, which
must be 0: units held or sold beyond the stock in the database afterwards, and
holds granted beyond the stock in the answers. Beside it, in the same run, the
same clients ask ``GET /healthz`` (no database): the HTTPS request floor that
the Buy Now figures are compared with.

The size of the sale and the number of concurrent client connections are the
bench's own settings (``SALES``), not the server's.

The driver (``FlashSale``) is also what tests/commerce/test_durability.py
runs, with payments and a SIGKILL in the middle.
"""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import ssl
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import trio

from shopcast.bench._record import Record

__all__ = ["FlashSale", "SALES", "SaleSize", "ServerProcess", "run"]


@dataclass(frozen=True)
class SaleSize:
    """One flash sale the bench runs."""

    buyers: int
    """Accounts that each tap Buy Now once (count)."""
    stock: int
    """Units on sale (count)."""
    connections: int
    """Concurrent HTTPS connections the buyers share, each with a request in
    flight at a time (count): how many Buy Nows the server has at once."""


SALES = {"full": SaleSize(buyers=10_000, stock=1_000, connections=96),
         "quick": SaleSize(buyers=200, stock=20, connections=32)}
"""The bench's sales: the issue's 10,000 buyers for 1,000 units, and a smoke run (--quick)."""

SALE_SETTINGS = {
    "demo.enabled": "false",
    "log.level": "warning",
    "accounts.scrypt_n": "1024",  # registering thousands of buyers is set-up, not the measure
    "commerce.flash_countdown_min_s": "0",  # the sale opens at once
}
"""What every run sets (as SHOPCAST_* variables, over the caller's config file)."""


class ServerProcess:
    """``shopcast serve`` on a data directory, on a free port; killed or
    stopped by its owner. Blocking calls: run them in a thread."""

    def __init__(self, data_dir: Path, config: Path | None = None) -> None:
        self.data_dir = data_dir
        self.config = config
        self.process = None
        self.port = 0
        self.certificate_sha256 = ""

    def start(self, timeout_s: float = 120.0) -> None:
        import subprocess

        from shopcast.bench._fanout import _read_until

        env = {**os.environ, **{"SHOPCAST_" + k.upper().replace(".", "__"): v
                                for k, v in SALE_SETTINGS.items()}}
        command = [sys.executable, "-m", "shopcast.server._cli", "serve", "--host", "127.0.0.1",
                   "--port", "0", "--data-dir", str(self.data_dir)]
        if self.config is not None:
            command += ["--config", str(self.config)]
        log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        with open(log_path, "a") as log_file:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file,
                                            text=True, env=env)
        try:
            self.port = int(_read_until(self.process.stdout, r"https://localhost:(\d+)/",
                                        timeout_s).group(1))
            self.certificate_sha256 = _read_until(self.process.stdout, r"sha256 ([0-9a-f]{64})",
                                                  10).group(1)
        except RuntimeError:
            self.process.kill()
            self.process.wait()
            raise RuntimeError("shopcast serve did not start: " + log_path.read_text()[-2000:]) from None

    def kill(self) -> None:
        """SIGKILL: no drain, no shutdown hooks."""
        self.process.kill()
        self.process.wait()
        self.process.stdout.close()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM and wait for the graceful shutdown."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except Exception:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


class Http:
    """One kept-alive HTTPS/1.1 connection (blocking; one thread at a time)."""

    def __init__(self, port: int) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self._make = lambda: http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
        self._connection = self._make()
        self.limiter = trio.CapacityLimiter(1)

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any]:
        headers = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        if token:
            headers["authorization"] = f"Bearer {token}"
        for attempt in range(2):
            try:
                self._connection.request(method, path, body=data, headers=headers)
                response = self._connection.getresponse()
                payload = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self._connection.close()
                self._connection = self._make()
                if attempt:
                    raise
        if response.getheader("content-type", "").startswith("application/json"):
            return response.status, json.loads(payload)
        return response.status, payload.decode("utf-8", "replace")

    async def call(self, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        return await trio.to_thread.run_sync(lambda: self.request(*args, **kwargs), limiter=self.limiter)

    def close(self) -> None:
        self._connection.close()


def _iso(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


@dataclass
class SaleResult:
    """What the buyers saw."""

    latencies_s: list[float] = field(default_factory=list)
    holds: list[str] = field(default_factory=list)
    hold_latencies_s: list[float] = field(default_factory=list)
    """Latency of the Buy Nows answered with a hold."""
    last_hold_s: float = 0.0
    """When the last hold was answered, from the start of the sale."""
    answers: dict[int, tuple[int, str]] = field(default_factory=dict)
    """Per buyer index: (status, the order id or the error code)."""
    sold_out: int = 0
    other: dict[int, int] = field(default_factory=dict)
    paid_pages: int = 0
    """Payment pages that answered "succeeded" or "processing" (a payment the provider took)."""
    errors: int = 0
    """Requests that got no answer (the server was killed)."""
    wall_s: float = 0.0


class FlashSale:
    """A host, a live room publishing the demo clip, a product of ``stock``
    units on a flash-sale card, and ``buyers`` accounts with tokens."""

    def __init__(self, server: ServerProcess, *, stock: int, buyers: int, connections: int) -> None:
        self.server = server
        self.stock = stock
        self.buyer_count = buyers
        self.connections = connections

    async def setup(self, nursery: trio.Nursery, progress: TextIO | None = None) -> None:
        from shopcast.server._tokens import TokenAuthority, load_or_create_api_key

        http_ = Http(self.server.port)
        try:
            status, terms = await http_.call("GET", "/api/v1/terms")
            self.terms = terms["version"]
            self.host_token = await self._account(http_, "host0", "host", login=True)
            self.start_at = int(time.time()) + 1
            status, room = await http_.call("POST", "/api/v1/rooms", {
                "title": "Flash sale", "scheduled_start": _iso(self.start_at), "duration_s": 7200,
                "orientation": "portrait", "language": "en", "region": "US"}, token=self.host_token)
            assert status == 201, room
            self.room_id = room["room"]["id"]
            status, product = await http_.call("POST", "/api/v1/products", {
                "title": "Flash sneaker", "category": "footwear",
                "skus": [{"name": "one size", "price": 5999, "currency": "EUR", "stock": self.stock}]},
                token=self.host_token)
            assert status == 201, product
            self.product_id, self.sku_id = product["id"], product["skus"][0]["id"]
            status, listed = await http_.call("PUT", f"/api/v1/rooms/{self.room_id}/products/{self.product_id}",
                                              token=self.host_token)
            assert status == 200, listed
            live_from = time.monotonic()
            await self._go_live(http_, nursery)
            if progress:
                print(f"bench commerce: room live in {time.monotonic() - live_from:.1f} s", file=progress)
            status, pin = await http_.call("POST", f"/api/v1/rooms/{self.room_id}/pins", {
                "kind": "flash_sale", "product_id": self.product_id,
                "flash_sale": {"price_minor": 2999, "countdown_s": 0, "duration_s": 1200,
                               "per_buyer_limit": 1, "stock_cap": self.stock}}, token=self.host_token)
            assert status == 201, pin
            self.pin_id = pin["id"]
        finally:
            http_.close()
        key, _ = load_or_create_api_key(self.server.data_dir)
        authority = TokenAuthority([key])
        ids: list[str] = [""] * self.buyer_count
        pool = [Http(self.server.port) for _ in range(self.connections)]
        if progress:
            print(f"bench commerce: registering {self.buyer_count} buyers", file=progress)

        async def register(worker: int) -> None:
            for index in range(worker, self.buyer_count, len(pool)):
                status, account = await pool[worker].call("POST", "/api/v1/accounts", {
                    "name": f"buyer{index}", "password": f"password-{index}", "role": "audience",
                    "terms_version": self.terms, "accept_terms": True})
                assert status == 201, account
                ids[index] = account["id"]

        async with trio.open_nursery() as inner:
            for worker in range(len(pool)):
                inner.start_soon(register, worker)
        for connection in pool:
            connection.close()
        now = time.time()
        self.buyer_tokens = [authority.mint(subject=i, role="viewer", room="-", ttl_s=3 * 3600, now=now)
                             for i in ids]

    async def _account(self, http_: Http, name: str, role: str, *, login: bool) -> str:
        status, body = await http_.call("POST", "/api/v1/accounts", {
            "name": name, "password": "password-" + name, "role": role, "terms_version": self.terms,
            "accept_terms": True})
        assert status == 201, body
        status, body = await http_.call("POST", "/api/v1/auth/login",
                                        {"name": name, "password": "password-" + name})
        assert status == 200, body
        return body["access_token"]

    async def _go_live(self, http_: Http, nursery: trio.Nursery) -> None:
        """Publish the demo clip into the room (as its host, over moq-lite)
        once its start has come; return when it is live."""
        import shopcast.server
        from shopcast.client import connect

        status, media = await http_.call("POST", f"/api/v1/rooms/{self.room_id}/media-token",
                                         {"publish": True}, token=self.host_token)
        assert status == 200, media
        clip = Path(shopcast.server.__file__).parent / "media" / "demo.flv"

        async def publish() -> None:
            async with connect(f"https://127.0.0.1:{self.server.port}/moq", token=media["token"],
                               certificate_sha256=self.server.certificate_sha256) as host:
                await host.publish_flv(self.room_id, clip, loops=1000)

        # A push before the scheduled start is a rehearsal; the room goes
        # live with a push after it (a wall-clock time, at most 2 s after creation).
        await trio.sleep(max(0.0, self.start_at + 0.2 - time.time()))
        nursery.start_soon(publish)
        with trio.fail_after(30):
            while True:
                _, room = await http_.call("GET", f"/api/v1/rooms/{self.room_id}")
                if room["state"] == "live":
                    return
                await trio.sleep(0.1)

    @property
    def buy_body(self) -> dict[str, Any]:
        return {"sku_id": self.sku_id, "quantity": 1, "pin_id": self.pin_id}

    async def buy_again(self, indices: list[int]) -> dict[int, tuple[int, str]]:
        """These buyers send their Buy Now again with the same Idempotency-Key
        and body (a client retrying after a lost answer): (status, order id or
        error code) per buyer."""
        connection = Http(self.server.port)
        answers = {}
        try:
            for index in indices:
                status, answer = await connection.call(
                    "POST", f"/api/v1/rooms/{self.room_id}/orders", self.buy_body,
                    token=self.buyer_tokens[index], headers={"idempotency-key": f"buy-{index}"})
                answers[index] = (status, answer["id"] if status == 201 else answer["error"]["code"])
        finally:
            connection.close()
        return answers

    async def run(self, *, pay_card: Any = None, stop_when: Any = None,
                  stopped: trio.Event | None = None) -> SaleResult:
        """Every buyer taps Buy Now once (``connections`` at a time); with
        ``pay_card(index)`` giving a card number, buyers with a hold pay.
        With ``stop_when(result)``, ``stopped`` is set once it holds (the
        caller kills the server then)."""
        result = SaleResult()
        pool = [Http(self.server.port) for _ in range(self.connections)]
        path = f"/api/v1/rooms/{self.room_id}/orders"
        body = self.buy_body
        # Connections open (TLS handshakes done) before the sale: the figures
        # are of Buy Now, not of connection set-up.
        async with trio.open_nursery() as nursery:
            for connection in pool:
                nursery.start_soon(connection.call, "GET", "/healthz")
        start = time.perf_counter()

        async def buyer(worker: int) -> None:
            connection = pool[worker]
            for index in range(worker, self.buyer_count, len(pool)):
                token = self.buyer_tokens[index]
                sent = time.perf_counter()
                try:
                    status, answer = await connection.call("POST", path, body, token=token,
                                                           headers={"idempotency-key": f"buy-{index}"})
                except (OSError, http.client.HTTPException):
                    result.errors += 1
                    return  # the server is gone
                answered = time.perf_counter()
                result.latencies_s.append(answered - sent)
                result.answers[index] = (status, answer["id"] if status == 201 else
                                         answer["error"]["code"] if isinstance(answer, dict) else "")
                if status == 201:
                    result.holds.append(answer["id"])
                    result.hold_latencies_s.append(answered - sent)
                    result.last_hold_s = answered - start
                elif status == 409 and answer["error"]["code"] == "sold_out":
                    result.sold_out += 1
                else:
                    result.other[status] = result.other.get(status, 0) + 1
                if stopped is not None and stop_when is not None and stop_when(result):
                    stopped.set()
                if status == 201 and pay_card is not None and not await self._pay(
                        connection, answer["id"], token, pay_card(index), result):
                    return

        async with trio.open_nursery() as nursery:
            for worker in range(len(pool)):
                nursery.start_soon(buyer, worker)
        result.wall_s = time.perf_counter() - start
        for connection in pool:
            connection.close()
        return result

    async def http_floor(self, requests: int) -> tuple[float, list[float]]:
        """The same clients and connections asking ``GET /healthz`` (no
        database): the server's HTTPS request floor, measured beside the sale."""
        pool = [Http(self.server.port) for _ in range(self.connections)]
        latencies: list[float] = []
        start = time.perf_counter()

        async def client(worker: int) -> None:
            for _ in range(worker, requests, len(pool)):
                sent = time.perf_counter()
                await pool[worker].call("GET", "/healthz")
                latencies.append(time.perf_counter() - sent)

        async with trio.open_nursery() as nursery:
            for worker in range(len(pool)):
                nursery.start_soon(client, worker)
        wall_s = time.perf_counter() - start
        for connection in pool:
            connection.close()
        return len(latencies) / wall_s, latencies

    async def _pay(self, connection: Http, order_id: str, token: str, card: str, result: SaleResult) -> bool:
        try:
            status, intent = await connection.call("POST", f"/api/v1/orders/{order_id}/payment", token=token)
            if status != 200:
                return True
            page = urllib.parse.urlsplit(intent["payment_url"]).path
            status, text = await connection.call("POST", page, raw=urllib.parse.urlencode({"card": card}).encode(),
                                                 headers={"content-type": "application/x-www-form-urlencoded"})
        except (OSError, http.client.HTTPException):
            result.errors += 1
            return False
        if status == 200 and ("succeeded" in text or "processing" in text):
            result.paid_pages += 1
        return True


def ledger(data_dir: Path, sku_id: str) -> dict[str, int]:
    """The sale as the database has it (read-only, beside a running server or after it)."""
    connection = sqlite3.connect(f"file:{data_dir / 'shopcast.db'}?mode=ro", uri=True)
    try:
        one = lambda sql, *args: connection.execute(sql, args).fetchone()[0]  # noqa: E731
        sold = ("paid", "confirmed", "shipped", "delivered", "completed")
        marks = ", ".join("?" * len(sold))
        return {
            "stock_left": one("SELECT stock FROM skus WHERE id = ?", sku_id),
            "held_units": one("SELECT coalesce(sum(quantity), 0) FROM orders WHERE sku_id = ? AND state = 'pending'",
                              sku_id),
            "sold_units": one(f"SELECT coalesce(sum(quantity), 0) FROM orders WHERE sku_id = ? AND state IN ({marks})",
                              sku_id, *sold),
            "paid_orders": one(f"SELECT count(*) FROM orders WHERE sku_id = ? AND state IN ({marks})", sku_id, *sold),
            "pending_orders": one("SELECT count(*) FROM orders WHERE state = 'pending'"),
            "succeeded_payments": one("SELECT count(*) FROM payment_intents WHERE state = 'succeeded'"),
            "taken_payments": one("SELECT count(*) FROM payment_intents WHERE state IN ('succeeded', 'refunded')"),
            "refunded_payments": one("SELECT count(*) FROM payment_intents WHERE state = 'refunded'"),
            "events_undelivered": one("SELECT count(*) FROM payment_outbox WHERE state != 'delivered'"),
            "paid_twice": one("SELECT count(*) FROM (SELECT order_id FROM order_events WHERE status = 'paid' "
                              "GROUP BY order_id HAVING count(*) > 1)"),
        }
    finally:
        connection.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else -1.0


async def _bench(buyers: int, stock: int, connections: int, config: str | None,
                 progress: TextIO) -> tuple[SaleResult, tuple[float, list[float]], dict[str, int]]:
    with tempfile.TemporaryDirectory(prefix="shopcast-bench-commerce-") as tmp:
        server = ServerProcess(Path(tmp) / "data", Path(config) if config else None)
        started = time.monotonic()
        await trio.to_thread.run_sync(server.start)
        print(f"bench commerce: server up in {time.monotonic() - started:.1f} s", file=progress)
        try:
            async with trio.open_nursery() as nursery:
                sale = FlashSale(server, stock=stock, buyers=buyers, connections=connections)
                started = time.monotonic()
                await sale.setup(nursery, progress)
                print(f"bench commerce: set up in {time.monotonic() - started:.1f} s", file=progress)
                print(f"bench commerce: {buyers} buyers tap Buy Now for {stock} units "
                      f"over {connections} connections", file=progress)
                result = await sale.run()
                print(f"bench commerce: sale over in {result.wall_s:.1f} s", file=progress)
                floor = await sale.http_floor(max(200, buyers // 5))
                nursery.cancel_scope.cancel()
            return result, floor, ledger(server.data_dir, sale.sku_id)
        finally:
            stopping = time.monotonic()
            await trio.to_thread.run_sync(server.stop)
            print(f"bench commerce: server stopped in {time.monotonic() - stopping:.1f} s", file=progress)


def run(quick: bool, progress: TextIO, config: str | None = None) -> list[Record]:
    size = SALES["quick" if quick else "full"]
    buyers, stock, connections = size.buyers, size.stock, size.connections
    result, (floor_rate, floor_latencies), book = trio.run(_bench, buyers, stock, connections, config,
                                                            progress)
    answered = len(result.latencies_s)
    # Two views, reported apart (adding them would count the same units twice):
    # what the database holds and sold beyond the stock, and what the buyers were told.
    oversold_db = max(0, book["held_units"] + book["sold_units"] - stock)
    holds_beyond_stock = max(0, len(result.holds) - stock)
    name = f"flash-sale/{buyers}-buyers-{stock}-units"
    floor = f"flash-sale/{connections}-connections/healthz"
    rate = answered / result.wall_s
    hold_rate = len(result.holds) / result.last_hold_s if result.last_hold_s else 0.0
    p50, p99 = (_percentile(result.latencies_s, q) * 1000 for q in (0.5, 0.99))
    hold_p99 = _percentile(result.hold_latencies_s, 0.99) * 1000
    floor_p50, floor_p99 = (_percentile(floor_latencies, q) * 1000 for q in (0.5, 0.99))
    return [
        Record("commerce", f"{floor}/rate", floor_rate, "requests/s"),
        Record("commerce", f"{floor}/latency-p50", floor_p50, "ms"),
        Record("commerce", f"{floor}/latency-p99", floor_p99, "ms"),
        Record("commerce", f"{name}/buy-now-rate", rate, "orders/s", f"{floor}/rate", rate / floor_rate),
        Record("commerce", f"{name}/latency-p50", p50, "ms", f"{floor}/latency-p50", p50 / floor_p50),
        Record("commerce", f"{name}/latency-p99", p99, "ms", f"{floor}/latency-p99", p99 / floor_p99),
        Record("commerce", f"{name}/hold-rate", hold_rate, "holds/s", f"{floor}/rate", hold_rate / floor_rate),
        Record("commerce", f"{name}/hold-latency-p99", hold_p99, "ms", f"{floor}/latency-p99",
               hold_p99 / floor_p99),
        Record("commerce", f"{name}/holds-granted", len(result.holds), "orders"),
        Record("commerce", f"{name}/sold-out-answers", result.sold_out, "orders"),
        Record("commerce", f"{name}/other-answers", sum(result.other.values()) + result.errors, "orders"),
        Record("commerce", f"{name}/oversell-db", oversold_db, "units"),
        Record("commerce", f"{name}/holds-beyond-stock", holds_beyond_stock, "orders"),
    ]

"""Fixtures of the commerce tests: the rooms tests' ApiClient (loaded from
tests/rooms/conftest.py by path), a client that can send extra headers
(Idempotency-Key), and a ``shop``: a host with a room, a product with one
variant on the room's list, a buyer and an operator."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from typing import Any

import pytest

_spec = importlib.util.spec_from_file_location(
    "_shopcast_rooms_conftest", os.path.join(os.path.dirname(__file__), "..", "rooms", "conftest.py"))
rooms_conftest = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = rooms_conftest
_spec.loader.exec_module(rooms_conftest)

ApiClient = rooms_conftest.ApiClient
Reply = rooms_conftest.Reply
FAST = rooms_conftest.FAST
room_fields = rooms_conftest.room_fields  # the fixture, re-exported


class Connection(ApiClient):
    """One more kept-alive HTTPS connection to the same server (the rooms
    tests' ApiClient, which can send extra headers such as Idempotency-Key)."""

    def __init__(self, port: int) -> None:
        super().__init__(_Server(port))


class _Server:
    """What ApiClient needs of a started server, when only the port is known."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.app = None


@pytest.fixture
async def api(server_factory):
    """An ApiClient on a fresh server (fast scrypt, no demo room)."""
    client = ApiClient(await server_factory(FAST))
    yield client
    client.close()


@pytest.fixture
def connections(api):
    """``connections(n)``: n more HTTPS connections to the ``api`` server, closed at the end."""
    made: list[Connection] = []

    def make(n: int = 1) -> list[Connection]:
        new = [Connection(api.port) for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for connection in made:
        connection.close()


PRODUCT = {"title": "Trail runner 2", "description": "A light trail shoe.", "category": "footwear",
           "brand": "Acme", "images": ["https://cdn.example/p/trail2.jpg"], "external_ref": "ext-1",
           "skus": [{"name": "EU 42", "price": 5999, "currency": "EUR", "stock": 10}]}


def product_body(**overrides: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(PRODUCT))
    body.update(overrides)
    return body


class Shop:
    """A host's room with one product on its list, a buyer and an operator."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.commerce = api.app.plugins.get("commerce")
        self.rooms = api.app.plugins.get("rooms")

    async def setup(self, room_fields: Any) -> Shop:
        api = self.api
        self.host = await api.user("hostess", "host")
        self.buyer = await api.user("buyer", "audience")
        self.operator = await api.operator()
        reply = await api.call("POST", "/api/v1/rooms", room_fields(), token=self.host)
        assert reply.status == 201, reply.body
        self.room_id = reply.body["room"]["id"]
        self.product = await self.add_product()
        self.sku_id = self.product["skus"][0]["id"]
        return self

    async def add_product(self, **overrides: Any) -> dict[str, Any]:
        reply = await self.api.call("POST", "/api/v1/products", product_body(**overrides), token=self.host)
        assert reply.status == 201, reply.body
        listed = await self.api.call("PUT", f"/api/v1/rooms/{self.room_id}/products/{reply.body['id']}",
                                     token=self.host)
        assert listed.status == 200, listed.body
        return reply.body

    async def go_live(self) -> None:
        await self.rooms._update(self.room_id, {"state": "live", "started_at": time.time()})

    async def buy(self, body: dict[str, Any] | None = None, *, token: str | None = None,
                  key: str | None = None, connection: Connection | None = None) -> Reply:
        body = {"sku_id": self.sku_id, "quantity": 1} if body is None else body
        path = f"/api/v1/rooms/{self.room_id}/orders"
        headers = {"idempotency-key": key} if key is not None else {}
        if connection is not None:
            return await connection.call("POST", path, body, token=token or self.buyer, headers=headers)
        if key is None:
            return await self.api.call("POST", path, body, token=token or self.buyer)
        connection = Connection(self.api.port)
        try:
            return await connection.call("POST", path, body, token=token or self.buyer, headers=headers)
        finally:
            connection.close()

    async def stock(self, sku_id: str | None = None) -> int:
        sku_id = sku_id or self.sku_id
        return await self.api.app.db.read(lambda c: c.execute(
            "SELECT stock FROM skus WHERE id = ?", (sku_id,)).fetchone()[0])


@pytest.fixture
async def shop(api, room_fields):
    """A Shop (see the class): the room scheduled, not live yet."""
    return await Shop(api).setup(room_fields)


@pytest.fixture
def make_shop(server_factory, room_fields, make_client):
    """``await make_shop(config_overrides)``: a Shop on a server of its own."""

    async def make(overrides: dict[str, Any]) -> Shop:
        layered = {**FAST, **overrides}
        return await Shop(make_client(await server_factory(layered))).setup(room_fields)

    return make


@pytest.fixture(name="product_body")
def product_body_fixture():
    """``product_body(**overrides)``: a valid product creation body."""
    return product_body


make_client = rooms_conftest.make_client

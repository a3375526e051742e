"""Fixtures for the plugin tests: a server with fast scrypt and webhooks, and
a real HTTPS client (http.client in a worker thread) for its API."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

import pytest
import trio

FAST = {
    "accounts": {"scrypt_n": 1024, "scrypt_r": 8, "scrypt_p": 1},
    "demo": {"enabled": False},
    "rtmp": {"port": 0},
}


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def error_field(self) -> str | None:
        return self.body["error"]["field"] if isinstance(self.body, dict) and "error" in self.body else None


class ApiClient:
    """Requests to one running server over HTTPS (HTTP/1.1)."""

    def __init__(self, started: Any) -> None:
        self.started = started
        self.app = started.app
        self.port = started.port
        self._context = ssl.create_default_context()
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE
        self._connection: http.client.HTTPSConnection | None = None
        self._limiter = trio.CapacityLimiter(1)

    def _request(self, method: str, path: str, body: Any, token: str | None,
                 raw: bytes | None, extra_headers: dict[str, str] | None = None) -> Reply:
        headers = dict(extra_headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["content-type"] = "application/json"
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        # One kept-alive connection: thousands of short ones would fill the
        # ephemeral port range that later servers bind from.
        for attempt in range(2):
            if self._connection is None:
                self._connection = http.client.HTTPSConnection(
                    "127.0.0.1", self.port, context=self._context, timeout=30)
            try:
                self._connection.request(method, path, body=data, headers=headers)
                response = self._connection.getresponse()
                payload = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self._connection.close()
                self._connection = None
                if attempt:
                    raise
        reply_headers = {k.lower(): v for k, v in response.getheaders()}
        if reply_headers.get("connection", "").lower() == "close":
            self._connection.close()
            self._connection = None
        parsed: Any = payload
        if reply_headers.get("content-type", "").startswith("application/json"):
            parsed = json.loads(payload)
        elif reply_headers.get("content-type", "").startswith("text/"):
            parsed = payload.decode()
        return Reply(response.status, parsed, reply_headers)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def call(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                   raw: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
        # Its own thread token: many clients waiting on replies must not take
        # the threads the server in this process needs for its database.
        return await trio.to_thread.run_sync(self._request, method, path, body, token, raw, headers,
                                             limiter=self._limiter)

    async def register(self, name: str, role: str = "host", **extra: Any) -> dict[str, Any]:
        terms = (await self.call("GET", "/api/v1/terms")).body["version"]
        reply = await self.call("POST", "/api/v1/accounts", {
            "name": name, "password": "password-" + name, "role": role, "terms_version": terms,
            "accept_terms": True, **extra})
        assert reply.status == 201, reply.body
        return reply.body

    async def login(self, name: str, password: str | None = None) -> dict[str, Any]:
        reply = await self.call("POST", "/api/v1/auth/login",
                                {"name": name, "password": password or "password-" + name})
        assert reply.status == 200, reply.body
        return reply.body

    async def user(self, name: str, role: str = "host", **extra: Any) -> str:
        """Register and log in; the access token."""
        await self.register(name, role, **extra)
        return (await self.login(name))["access_token"]

    async def operator(self, name: str = "op") -> str:
        await self.app.plugins.get("accounts").create_operator(name, "password-" + name)
        return (await self.login(name))["access_token"]

    def service_token(self) -> str:
        return self.app.tokens.mint(subject="platform", role="service", room="*", ttl_s=600,
                                    now=time.time())


def iso(unix_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


def room_body(**overrides: Any) -> dict[str, Any]:
    """A room with every IWA 41 field, starting in an hour."""
    body = {"title": "Spring sneakers launch", "scheduled_start": iso(time.time() + 3600),
            "duration_s": 1800, "keywords": ["sneakers", "running"],
            "hashtags": ["#springsale", "shoes"], "cover_image_url": "https://cdn.example/c.jpg",
            "description": "New season sneakers at launch prices.", "orientation": "portrait",
            "language": "es", "region": "ES", "target_regions": ["PT", "FR"], "team": []}
    body.update(overrides)
    return body


@pytest.fixture
async def api(server_factory):
    """An ApiClient on a fresh server (fast scrypt, no demo room)."""
    client = ApiClient(await server_factory(FAST))
    yield client
    client.close()


@pytest.fixture
def make_client():
    """``make_client(started)``: an ApiClient, closed at the end of the test."""
    clients = []

    def make(started: Any) -> ApiClient:
        clients.append(ApiClient(started))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def room_fields():
    """``room_fields(**overrides)``: a room body with every IWA 41 field."""
    return room_body


@pytest.fixture
def iso_time():
    """``iso_time(unix_s)``: RFC 3339 UTC."""
    return iso


@pytest.fixture
def fast_config():
    """Config overrides for fast tests (cheap scrypt, no demo room, RTMP on a free port)."""
    return {section: dict(values) for section, values in FAST.items()}

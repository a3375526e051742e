"""Fixtures for the recording and statistics tests: the HTTPS API client of
tests/rooms/conftest.py (loaded from that file, so both drive the API the
same way) and a server with cheap scrypt and no demo room."""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import pytest

_path = os.path.join(os.path.dirname(__file__), "..", "rooms", "conftest.py")
_spec = importlib.util.spec_from_file_location("_shopcast_rooms_api", _path)
rooms_api = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = rooms_api  # its dataclasses look their module up there
_spec.loader.exec_module(rooms_api)


class FakeClock:
    """Unix time that a test moves by hand (the rooms' and statistics' clock)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def api_server(server_factory):
    """``api_server(overrides)``: an ApiClient on a fresh server with cheap
    scrypt, no demo room and ``overrides``; closed at the end."""
    clients = []

    async def make(overrides: dict | None = None):
        layered = {section: dict(values) for section, values in rooms_api.FAST.items()}
        for section, values in (overrides or {}).items():
            layered.setdefault(section, {}).update(values)
        clients.append(rooms_api.ApiClient(await server_factory(layered)))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def clock() -> FakeClock:
    """A FakeClock at the current time."""
    return FakeClock(time.time())


@pytest.fixture(name="rooms_api")
def rooms_api_fixture():
    """tests/rooms/conftest.py as a module: ``room_body``, ``iso``, ``ApiClient``."""
    return rooms_api

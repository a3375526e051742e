"""Fixtures of the page tests: the rooms tests' HTTPS ApiClient (loaded by path), a server
with the demo room and cheap scrypt, and a Playwright driver for headless Chromium that runs
in a worker thread (its own asyncio loop) while the server runs in the test's trio loop."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "_shopcast_rooms_conftest_web", os.path.join(os.path.dirname(__file__), "..", "rooms", "conftest.py"))
rooms_conftest = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = rooms_conftest
_spec.loader.exec_module(rooms_conftest)

ApiClient = rooms_conftest.ApiClient
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "web"
# Cheap password hashing; the demo room on; RTMP on a free port.
WEB_CONFIG = {"accounts": {"scrypt_n": 1024, "scrypt_r": 8, "scrypt_p": 1}, "rtmp": {"port": 0}}


@pytest.fixture
async def web_server(server_factory):
    """The whole server with the demo room (fast scrypt); the Started record."""
    return await server_factory(WEB_CONFIG)


@pytest.fixture
def web_config() -> dict:
    """The config overrides of ``web_server``, for tests that start their own."""
    return {section: dict(values) for section, values in WEB_CONFIG.items()}


@pytest.fixture
def web_api(web_server):
    """An ApiClient on ``web_server``."""
    client = ApiClient(web_server)
    yield client
    client.close()


@pytest.fixture
def artifacts() -> Path:
    """Where screenshots go (test-artifacts/web/, gitignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def make_client():
    """``make_client(started)``: an ApiClient on another server, closed at the end."""
    clients = []

    def make(started):
        clients.append(ApiClient(started))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def run_browser(chromium, chromium_flags):
    """``await run_browser(scenario)``: start headless Chromium (Debian's, through Playwright)
    in a worker thread, run ``async def scenario(browser)`` there on its own asyncio loop and
    return its result; the browser is closed whatever happens. The scenario may call back
    into the test's trio loop with ``trio.from_thread.run``."""
    import asyncio

    import trio

    async def run(scenario):
        def in_thread():
            from playwright.async_api import async_playwright

            async def main():
                async with async_playwright() as playwright:
                    browser = await playwright.chromium.launch(executable_path=chromium,
                                                               args=chromium_flags)
                    try:
                        return await scenario(browser)
                    finally:
                        await browser.close()

            return asyncio.run(main())

        return await trio.to_thread.run_sync(in_thread)

    return run

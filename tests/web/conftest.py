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


def _room_body(title: str, *, orientation: str = "landscape", base: str = "", start_in_s: float = 3600,
              hashtags: tuple[str, ...] = ("#shoes",)) -> dict:
    """The body of POST /api/v1/rooms for a page test's room."""
    import time

    body = {"title": title, "scheduled_start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + start_in_s)),
            "duration_s": 1800, "keywords": ["test"], "hashtags": list(hashtags),
            "description": f"{title}.", "orientation": orientation, "language": "en", "region": "ES",
            "target_regions": [], "team": []}
    if base:
        body["cover_image_url"] = f"{base}/static/img/product.svg"
    return body


@pytest.fixture
def room_body():
    """``room_body(title, orientation=..., base=..., start_in_s=..., hashtags=...)``: the body of
    POST /api/v1/rooms for a page test's room."""
    return _room_body


@pytest.fixture
def make_clip(ffmpeg, tmp_path):
    """``make_clip(width, height, seconds)``: an FLV (H.264 + AAC) made by ffmpeg, GOP 1 s."""
    import subprocess

    def make(width: int, height: int, seconds: float = 4.0) -> Path:
        out = tmp_path / f"clip-{width}x{height}.flv"
        subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"testsrc2=size={width}x{height}:rate=25:duration={seconds}",
                        "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
                        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
                        "-pix_fmt", "yuv420p", "-g", "25", "-bf", "0", "-c:a", "aac", "-b:a", "64k",
                        "-f", "flv", str(out)], check=True, timeout=120)
        return out

    return make


@pytest.fixture
def go_live(nursery):
    """``await go_live(started, host_name, room_id, clip, loops)``: make the room's scheduled
    start now (one offset clock for the rooms and statistics plugins), publish ``clip`` into it with shopcast.client (in the test's nursery) and wait
    until the room is live. Returns (a trio.Event set when the publish has ended, the
    publish's trio.CancelScope, to stop it)."""
    import time

    import trio

    async def run(started, host_name: str, room_id: str, clip: Path, loops: float = 30):
        from shopcast.client import connect

        app = started.app
        rooms = app.plugins.get("rooms")
        # The scheduled start is now: the rooms' and the statistics' clocks run on from it
        # (the same clock, so that joins and orders fall within the live).
        offset = max(0.0, rooms._cache[room_id]["scheduled_start"] - time.time())
        rooms.clock = lambda: time.time() + offset
        statistics = app.plugins.get("statistics")
        if statistics is not None:
            statistics.clock = rooms.clock
        token = app.tokens.mint(subject=host_name, role="host", room=room_id, ttl_s=600, now=time.time())
        done = trio.Event()
        scope = trio.CancelScope()

        async def publish() -> None:
            try:
                with scope:
                    async with connect(f"https://127.0.0.1:{started.port}/moq", token=token,
                                       certificate_sha256=app.certificate.sha256_hex) as client:
                        await client.publish_flv(room_id, clip, loops=loops)
            finally:
                done.set()

        nursery.start_soon(publish)
        with trio.fail_after(15):
            await rooms.wait_for_state(room_id, "live")
        return done, scope

    return run

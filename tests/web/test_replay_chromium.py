"""An ended broadcast's replay plays on /replay/ROOM, and seeking (ROOM/replay@START_US)
plays from there (CONTRACTS.md, recording). Skipped, saying why, while the recording branch's
replay is not in the tree."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.e2e

DEMO_CLIP = Path(__file__).resolve().parents[2] / "server" / "media" / "demo.flv"
ROOM = "replayroom"
PLAY_TIMEOUT_MS = 25_000
"""From page load to decoded frames of the replay."""


async def test_replay_page_plays_an_ended_broadcast_and_seeks(web_server, run_browser, artifacts):
    from shopcast.client import connect

    app = web_server.app
    base = f"https://127.0.0.1:{web_server.port}"
    token = app.tokens.mint(subject="replay-host", role="host", room=ROOM, ttl_s=600, now=time.time())
    async with connect(f"{base}/moq", token=token, certificate_sha256=app.certificate.sha256_hex) as client:
        await client.publish_flv(ROOM, DEMO_CLIP, loops=2)
    with trio.fail_after(10):
        while ROOM in app.relay.broadcasts:
            await trio.sleep(0.05)
    recorder = getattr(app, "recorder", None)
    if recorder is not None:
        with trio.fail_after(10):
            while any(b.name == ROOM for b in recorder.recordings):
                await recorder.flushed.wait()

    async def scenario(browser):
        context = await browser.new_context(ignore_https_errors=True, base_url=base)
        page = await context.new_page()
        await page.goto(f"/replay/{ROOM}")
        await page.wait_for_function("() => window.shopcast.stats && window.shopcast.stats().framesDecoded > 10",
                                     timeout=PLAY_TIMEOUT_MS)
        await page.screenshot(path=str(artifacts / "replay.png"))
        await page.get_by_label("Seek (seconds)").fill("5")
        await page.get_by_role("button", name="Go").click()
        await page.wait_for_function("() => window.shopcast.stats().framesDecoded > 5 && "
                                     "window.shopcast.stats().frameTimestampMs >= 4000", timeout=PLAY_TIMEOUT_MS)
        after_seek = await page.evaluate("() => window.shopcast.stats()")
        await context.close()
        return after_seek

    after_seek = await run_browser(scenario)
    assert after_seek["frameTimestampMs"] >= 4000, after_seek

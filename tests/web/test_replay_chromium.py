"""An ended broadcast's replay plays on /replay/ROOM, and seeking (ROOM/replay@START_US) plays
from there: the first frame after the seek is at the point asked for, further on than playing
on could have reached in the time the seek took (CONTRACTS.md, recording)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.e2e

DEMO_CLIP = Path(__file__).resolve().parents[2] / "server" / "media" / "demo.flv"
"""4 s; looped LOOPS times into a recording of 4 * LOOPS s."""
LOOPS = 10
ROOM = "replayroom"
SEEK_S = 30
"""Where the test seeks to: well past where plain playback gets while the page loads and seeks."""
PLAY_TIMEOUT_MS = 25_000
"""From page load (or the seek) to decoded frames of the replay."""


async def test_replay_page_plays_an_ended_broadcast_and_seeks(web_server, run_browser, artifacts):
    from shopcast.client import connect

    app = web_server.app
    base = f"https://127.0.0.1:{web_server.port}"
    token = app.tokens.mint(subject="replay-host", role="host", room=ROOM, ttl_s=600, now=time.time())
    async with connect(f"{base}/moq", token=token, certificate_sha256=app.certificate.sha256_hex) as client:
        await client.publish_flv(ROOM, DEMO_CLIP, loops=LOOPS)
    with trio.fail_after(10):
        while ROOM in app.relay.broadcasts:
            await trio.sleep(0.05)
    with trio.fail_after(10):
        while any(b.name == ROOM for b in app.recorder.recordings):
            await app.recorder.flushed.wait()

    async def scenario(browser):
        context = await browser.new_context(ignore_https_errors=True, base_url=base)
        page = await context.new_page()
        await page.goto(f"/replay/{ROOM}")
        await page.wait_for_function("() => window.shopcast.stats && window.shopcast.stats().framesDecoded > 10",
                                     timeout=PLAY_TIMEOUT_MS)
        await page.screenshot(path=str(artifacts / "replay.png"))
        before = await page.evaluate("() => window.shopcast.stats().frameTimestampMs")
        seek_started = time.monotonic()
        await page.get_by_label("Seek (seconds)").fill(str(SEEK_S))
        await page.get_by_role("button", name="Go").click()
        # The first frame the new player draws.
        # Decoded is not yet drawn: wait until the new player has a frame's timestamp too.
        await page.wait_for_function("() => window.shopcast.playerStarts === 2 && "
                                     "window.shopcast.stats().framesDecoded > 0 && "
                                     "window.shopcast.stats().frameTimestampMs !== null",
                                     timeout=PLAY_TIMEOUT_MS)
        first_after = await page.evaluate("() => window.shopcast.stats().frameTimestampMs")
        seek_took_ms = (time.monotonic() - seek_started) * 1000
        await page.screenshot(path=str(artifacts / "replay-seeked.png"))
        await context.close()
        return before, first_after, seek_took_ms

    before, first_after, seek_took_ms = await run_browser(scenario)
    print(f"before the seek {before} ms, first frame after it {first_after} ms, the seek took {seek_took_ms:.0f} ms")
    # A group starts at most a GOP (1 s in the demo clip) before the point asked for.
    assert first_after >= (SEEK_S - 1.5) * 1000, (before, first_after)
    assert first_after - before > seek_took_ms + 5000, ("further than playing on could reach", before, first_after)

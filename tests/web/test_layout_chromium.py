"""The player has the video's shape: a portrait room (360x640, published by shopcast.client
from an ffmpeg clip) is drawn tall on wide and narrow windows, the landscape demo room wide;
the canvas's displayed width:height is the frame's, never a fixed 16:9."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

PLAY_TIMEOUT_MS = 25_000
"""From page load to decoded frames."""
ASPECT_TOLERANCE = 0.03
"""Relative difference allowed between the canvas box's and the frame's width:height (pixel
rounding of the layout)."""

SHAPE = """() => { const c = document.querySelector('moq-watch canvas'); const r = c.getBoundingClientRect();
  return { boxW: r.width, boxH: r.height, frameW: c.width, frameH: c.height, right: r.right,
           innerW: innerWidth, portrait: document.querySelector('main').classList.contains('portrait') }; }"""


async def test_portrait_and_landscape_rooms_keep_their_shape(server_factory, web_config, make_client, make_clip, room_body,
                                                             go_live, run_browser, artifacts):
    started = await server_factory(web_config)
    api = make_client(started)
    base = f"https://127.0.0.1:{started.port}"
    host = await api.user("tallhost", "host")
    room = await api.call("POST", "/api/v1/rooms", room_body("Tall room", orientation="portrait", base=base), token=host)
    assert room.status == 201, room.body
    room_id = room.body["room"]["id"]
    await go_live(started, "tallhost", room_id, make_clip(360, 640), loops=60)

    async def scenario(browser):
        shapes = {}
        for window, viewport in (("wide", {"width": 1280, "height": 800}), ("narrow", {"width": 390, "height": 844})):
            for name, path in (("portrait", f"/live/{room_id}"), ("landscape", "/live/demo")):
                context = await browser.new_context(ignore_https_errors=True, base_url=base, viewport=viewport)
                page = await context.new_page()
                await page.goto(path)
                # Before the first frame the room's orientation alone sizes the player.
                if name == "portrait":
                    await page.wait_for_function("() => document.querySelector('main.portrait moq-watch canvas')",
                                                 timeout=PLAY_TIMEOUT_MS)
                    shapes[f"{name}-{window}-before"] = await page.evaluate(SHAPE)
                await page.wait_for_function("() => window.shopcast.stats && window.shopcast.stats().framesDecoded > 2"
                                             " && window.shopcast.shape.width === window.shopcast.stats().width",
                                             timeout=PLAY_TIMEOUT_MS)
                shapes[f"{name}-{window}"] = await page.evaluate(SHAPE)
                await page.screenshot(path=str(artifacts / f"layout-{name}-{window}.png"), full_page=True)
                await context.close()
        return shapes

    shapes = await run_browser(scenario)
    for key, s in shapes.items():
        print(key, s)
        frame_w, frame_h = (360, 640) if key.startswith("portrait") else (640, 360)
        if not key.endswith("before"):
            assert (s["frameW"], s["frameH"]) == (frame_w, frame_h), (key, s)
        ratio = s["boxW"] / s["boxH"]
        assert abs(ratio / (frame_w / frame_h) - 1) < ASPECT_TOLERANCE, (key, s)
        assert s["portrait"] == key.startswith("portrait"), (key, s)
        assert s["right"] <= s["innerW"] + 1, ("the player fits the window", key, s)

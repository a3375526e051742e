"""In headless Chromium: an unmodified @moq/watch plays an ended room's replay
(the same page that plays it live), and the exported MP4 plays in a
``<video>`` element and through Media Source Extensions."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import trio

from shopcast.client import connect
from shopcast.server._hang_mux import HangMuxer, load_flv_clip, play_clip
from shopcast.server._recording import export_mp4

DEMO = Path(__file__).parents[2] / "server" / "media" / "demo.flv"
ROOM = "room1"

MP4_PAGE = """<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head>
<body><video id="v" src="room.mp4" muted playsinline></video>
<script>
window.mse = (async () => {
  const type = 'video/mp4; codecs="CODECS"';
  if (!MediaSource.isTypeSupported(type)) return {supported: false};
  const media = new MediaSource();
  const video = document.createElement("video");
  video.src = URL.createObjectURL(media);
  await new Promise(r => media.addEventListener("sourceopen", r, {once: true}));
  const buffer = media.addSourceBuffer(type);
  const data = await (await fetch("room.mp4")).arrayBuffer();
  const done = new Promise((ok, fail) => {
    buffer.addEventListener("updateend", ok, {once: true});
    buffer.addEventListener("error", () => fail("SourceBuffer error"), {once: true});
  });
  buffer.appendBuffer(data);
  await done;
  return {supported: true, ranges: buffer.buffered.length,
          end: buffer.buffered.length ? buffer.buffered.end(0) : 0};
})().catch(e => ({error: String(e)}));
</script></body></html>
"""


async def _record(started, loops: int) -> None:
    app = started.app
    token = app.tokens.mint(subject="h", role="host", room=ROOM, ttl_s=600, now=time.time())
    async with connect(f"https://127.0.0.1:{started.port}/moq", token=token,
                       certificate_sha256=app.certificate.sha256_hex) as client:
        broadcast = await client.publish_flv(ROOM, DEMO, loops=loops)
        broadcast.end()
    with trio.fail_after(10):
        while ROOM in app.relay.broadcasts or any(b.name == ROOM for b in app.recorder.recordings):
            await app.recorder.flushed.wait()


@pytest.mark.e2e
async def test_moq_watch_plays_the_replay_of_an_ended_room(
        api_server, clock, rooms_api, chromium, chromium_flags, web_packages, directory_server, tmp_path,
        moq_watch_helpers):
    api = await api_server({"rooms": {"push_lost_end_after_s": 0.0}})
    app = api.app
    rooms = app.plugins.get("rooms")
    rooms.clock = clock
    host = await api.user("hana", "host", display_name="Hana")
    body = rooms_api.room_body(scheduled_start=rooms_api.iso(clock.now + 3600))
    room_id = (await api.call("POST", "/api/v1/rooms", body, token=host)).body["room"]["id"]
    clock.now = rooms._cache[room_id]["scheduled_start"] + 1
    broadcast = app.relay.publish(room_id)  # a local publisher, as the demo room is
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "live")
    await play_clip(HangMuxer(broadcast), load_flv_clip(DEMO.read_bytes()), loops=4)  # about 16 s
    broadcast.end()
    with trio.fail_after(10):
        await rooms.wait_for_state(room_id, "ended")  # over: what plays is the replay
    bundle = tmp_path / "web"
    bundle.mkdir()
    helpers = moq_watch_helpers
    await trio.to_thread.run_sync(helpers.build_bundle, web_packages, bundle)
    with directory_server(bundle) as page_url:
        records = await trio.to_thread.run_sync(
            helpers.watch_rooms, chromium, chromium_flags, page_url, api.port, [room_id])
    record = records[room_id]
    assert record.get("first") is not None, helpers._explain(record)
    first, later = record["first"], record["later"]
    assert helpers._is_picture(later) and later["hash"] != first["hash"], helpers._explain(record)
    assert later["frameTimestampMs"] > first["frameTimestampMs"], helpers._explain(record)
    assert app.replays.replays_started >= 1


@pytest.mark.e2e
async def test_the_exported_mp4_plays_in_chromium(server_factory, chromium, chromium_flags,
                                                  directory_server, tmp_path):
    started = await server_factory({"demo": {"enabled": False}})
    await _record(started, loops=2)
    site = tmp_path / "site"
    site.mkdir()
    path = started.app.recorder.path(ROOM)
    with open(site / "room.mp4", "wb") as out:
        summary = await trio.to_thread.run_sync(export_mp4, path, out)
    catalog = (await started.app.replays.index(ROOM)).catalogs[-1][1].decode()
    root = json.loads(catalog)
    codecs = ", ".join([*root["video"]["renditions"]["video"]["codec"].split(",")[:1],
                        root["audio"]["renditions"]["audio"]["codec"]])
    (site / "index.html").write_text(MP4_PAGE.replace("CODECS", codecs))

    def play(page_url: str) -> dict:
        from playwright.async_api import async_playwright

        async def main() -> dict:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=chromium, args=chromium_flags)
                try:
                    page = await browser.new_page()
                    await page.goto(page_url + "index.html")
                    mse = await page.evaluate("window.mse")
                    await page.evaluate("document.getElementById('v').play()")
                    state = {}
                    for _ in range(80):
                        state = await page.evaluate(
                            "(() => { const v = document.getElementById('v'); return {t: v.currentTime, "
                            "d: v.duration, w: v.videoWidth, h: v.videoHeight, e: v.error && v.error.message,"
                            " frames: v.getVideoPlaybackQuality().totalVideoFrames}; })()")
                        if state["t"] > 2.0 or state["e"]:
                            break
                        await asyncio.sleep(0.25)
                    return {"mse": mse, "video": state}
                finally:
                    await browser.close()

        return asyncio.run(main())

    with directory_server(site) as page_url:
        result = await trio.to_thread.run_sync(play, page_url)
    video = result["video"]
    assert video["e"] is None and video["t"] > 2.0, result
    assert (video["w"], video["h"]) == (640, 360) and video["frames"] > 30, result
    assert abs(video["d"] - summary["duration_s"]) < 0.1, result
    mse = result["mse"]
    assert mse.get("supported") and mse["ranges"] == 1, result
    assert abs(mse["end"] - summary["duration_s"]) < 0.2, result

"""End to end: ffmpeg pushes RTMP, and an unmodified ``@moq/watch`` in headless
Chromium decodes and draws the room (the same player and checks as
tests/relay/test_moq_watch_chromium.py)."""

from __future__ import annotations

import pytest
import trio

pytestmark = pytest.mark.e2e


async def test_ffmpeg_to_moq_watch_in_chromium(server_factory, rtmp_helpers, ffmpeg, chromium,
                                               chromium_flags, web_packages, directory_server,
                                               moq_watch_helpers, tmp_path, nursery):
    started = await server_factory({"demo": {"enabled": False}})
    room = "shop-live"
    url = await rtmp_helpers.push_url(started, room)
    # Long enough for the browser to start, find the picture and see it change;
    # stopped as soon as the browser is done.
    command = rtmp_helpers.ffmpeg_command(
        ffmpeg, url, seconds=60, video="testsrc2=size=640x360:rate=30",
        video_args=("-preset", "veryfast", "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p"))
    run = rtmp_helpers.FfmpegRun()
    bundle_dir = tmp_path / "web"
    bundle_dir.mkdir()
    await trio.to_thread.run_sync(moq_watch_helpers.build_bundle, web_packages, bundle_dir)
    async with trio.open_nursery() as ffmpeg_nursery:
        await ffmpeg_nursery.start(rtmp_helpers.run_ffmpeg, command, run)
        await rtmp_helpers.wait_for_tracks(started, room)
        with directory_server(bundle_dir) as page_url:
            records = await trio.to_thread.run_sync(
                moq_watch_helpers.watch_rooms, chromium, chromium_flags, page_url, started.port, [room])
        ffmpeg_nursery.cancel_scope.cancel()
    record = records[room]
    explain = moq_watch_helpers._explain(record)
    print(f"{room}: first picture {record.get('first_picture_s')} s after load")
    assert record.get("first") is not None, f"no decoded picture drawn; {explain}"
    first, later = record["first"], record["later"]
    assert (first["width"], first["height"]) == (640, 360), explain
    assert moq_watch_helpers._is_picture(later), f"picture went blank; {explain}"
    assert later["hash"] != first["hash"], f"canvas did not change; {explain}"
    assert later["frameTimestampMs"] > first["frameTimestampMs"], explain
    assert later["audioBytes"] > first["audioBytes"], f"no audio arriving; {explain}"

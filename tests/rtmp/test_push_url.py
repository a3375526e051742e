"""Push URLs and stream keys: the HTTP API, `shopcast push-url` while the
server runs, rotation, hashed storage and the key's use by a publisher."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
import trio

from shopcast.server._client import http3_request


def bearer(started, role: str, room: str) -> list[tuple[str, str]]:
    token = started.app.tokens.mint(subject=f"{role}-1", role=role, room=room, ttl_s=600, now=time.time())
    return [("authorization", f"Bearer {token}")]


async def api(started, method: str, path: str, headers=()) -> tuple[int, dict]:
    response = await http3_request(f"https://127.0.0.1:{started.port}{path}", method,
                                   headers=list(headers), verify=False)
    return response.status, json.loads(response.body)


async def test_api_issues_shows_and_rotates_keys(server_factory, rtmp_helpers):
    started = await server_factory({"demo": {"enabled": False}})
    path = "/api/v1/rooms/shop7/push"
    status, body = await api(started, "GET", path, bearer(started, "host", "shop7"))
    assert status == 201 and body["created"] is True
    key = body["stream_key"]
    assert body["push_url"] == f"rtmp://localhost:{started.app.rtmp_port}/live/{key}"
    assert body["server_url"] == f"rtmp://localhost:{started.app.rtmp_port}/live"
    status, again = await api(started, "GET", path, bearer(started, "operator", "*"))
    assert status == 200 and again["stream_key"] == key and again["created"] is False
    status, rotated = await api(started, "POST", path + "/rotate", bearer(started, "host", "shop7"))
    assert status == 200 and rotated["stream_key"] != key

    # The database holds no key, only hashes.
    db = sqlite3.connect(started.app.data_dir / "shopcast.db")
    dump = "\n".join(db.iterdump())
    db.close()
    assert key not in dump and rotated["stream_key"] not in dump

    for headers, expected in (((), 401), (bearer(started, "viewer", "shop7"), 403),
                              (bearer(started, "host", "other"), 403)):
        status, error = await api(started, "GET", path, headers)
        assert status == expected and error["error"]["field"] == "authorization"
    status, error = await api(started, "GET", "/api/v1/rooms/bad%20room/push", bearer(started, "operator", "*"))
    assert status == 400 and error["error"]["field"] == "room_id"

    # The rotated key publishes; the old one is refused.
    client = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
    assert (await client.publish(rotated["stream_key"])).arguments[0]["code"] == "NetStream.Publish.Start"
    status, live = await api(started, "GET", path, bearer(started, "host", "shop7"))
    assert live["live"] is True
    await client.aclose()
    client = await rtmp_helpers.RawPublisher.connect(started.app.rtmp_port)
    assert (await client.publish(key)).arguments[0]["code"] == "NetStream.Publish.BadName"
    await client.aclose()


@pytest.mark.e2e
async def test_push_url_command_while_the_server_runs(server_factory, rtmp_helpers, ffmpeg):
    started = await server_factory({"demo": {"enabled": False}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPCAST_")}
    command = [sys.executable, "-m", "shopcast.server._cli", "push-url", "cli-room",
               "--data-dir", str(started.app.data_dir)]
    first = await trio.to_thread.run_sync(
        lambda: subprocess.run(command, capture_output=True, text=True, timeout=60, env=env))
    assert first.returncode == 0, first.stderr
    url = first.stdout.strip()
    assert url.startswith("rtmp://localhost:1935/live/") and "made room cli-room" in first.stderr
    second = await trio.to_thread.run_sync(
        lambda: subprocess.run(command, capture_output=True, text=True, timeout=60, env=env))
    assert second.stdout.strip() == url, "the same key is shown again"
    # The running server (on its own port) knows the key made by the other process.
    key = url.rsplit("/", 1)[1]
    push = f"rtmp://127.0.0.1:{started.app.rtmp_port}/live/{key}"
    run = rtmp_helpers.FfmpegRun()
    async with trio.open_nursery() as nursery:
        await nursery.start(rtmp_helpers.run_ffmpeg, rtmp_helpers.ffmpeg_command(
            ffmpeg, push, seconds=2, video_args=("-preset", "ultrafast")), run)
        await rtmp_helpers.wait_for_tracks(started, "cli-room")
    assert run.returncode == 0, run.stderr
    await rtmp_helpers.wait_until(lambda: "cli-room" not in started.app.relay.broadcasts,
                                  what="the broadcast to end with its publisher")
    bad = subprocess.run(command[:-3] + ["no room!"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "invalid room id" in bad.stderr


@pytest.mark.e2e
async def test_ffmpeg_with_a_wrong_key_is_told_why(server_factory, rtmp_helpers, ffmpeg):
    started = await server_factory({"demo": {"enabled": False}})
    url = f"rtmp://127.0.0.1:{started.app.rtmp_port}/live/not-a-key"
    run = rtmp_helpers.FfmpegRun()
    async with trio.open_nursery() as nursery:
        await nursery.start(rtmp_helpers.run_ffmpeg, rtmp_helpers.ffmpeg_command(
            ffmpeg, url, seconds=2, video_args=("-preset", "ultrafast")), run)
    assert run.returncode != 0
    assert "invalid stream key" in run.stderr, run.stderr
    assert started.app.metrics.get("shopcast_rtmp_errors_total").value("wrong_key") == 1

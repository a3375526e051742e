"""A SIGKILL of `shopcast serve` while it records loses at most the last
second: the file reads up to there, and a new server replays it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from shopcast.client import connect
from shopcast.server._hang_mux import HangMuxer, load_flv_clip, play_clip
from shopcast.server._recording import FRAME, read_index, read_records
from shopcast.server.moq import decode_frame_untrusted

DEMO = Path(__file__).parents[2] / "server" / "media" / "demo.flv"
ROOM = "room1"


class Capture:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def group_started(self, track, group): pass
    def frame(self, track, group, payload): self.frames.append(payload)
    def group_ended(self, track, group): pass
    def track_ended(self, track): pass


def _shopcast(*args: str) -> list[str]:
    return [sys.executable, "-m", "shopcast.server._cli", *args]


async def test_sigkill_while_recording_loses_at_most_the_last_second(tmp_path, server_factory):
    data = tmp_path / "data"
    env = {**os.environ, "SHOPCAST_DEMO__ENABLED": "false", "SHOPCAST_RTMP__PORT": "0"}
    token = subprocess.run(_shopcast("token", "--data-dir", str(data), "--role", "host", "--room", ROOM),
                           check=True, capture_output=True, text=True, env=env).stdout.strip()
    server = subprocess.Popen(_shopcast("serve", "--data-dir", str(data), "--host", "127.0.0.1",
                                        "--port", "0"),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        banner = ""
        with trio.fail_after(60):
            while "certificate:" not in banner:
                line = await trio.to_thread.run_sync(server.stdout.readline)
                assert line, "the server exited before listening"
                banner += line
        port = int(re.search(r"https://localhost:(\d+)/", banner).group(1))
        sha = re.search(r"sha256 ([0-9a-f]{64})", banner).group(1)
        video = Capture()
        seen: list[bytes] = []  # what a live viewer got: frames the server surely had
        url = f"https://127.0.0.1:{port}/moq"
        async with connect(url, token=token, certificate_sha256=sha) as client, \
                connect(url, certificate_sha256=sha) as viewer, trio.open_nursery() as nursery:
            broadcast = client.publish(ROOM)
            client._relay.track_listeners.append(
                lambda track: track.tap(video, from_cache=False) if track.name == "video" else None)

            async def watch() -> None:
                # As a player does: the catalog first, whose tracks exist once
                # it arrives (an announced broadcast may not have it yet).
                await viewer.wait_announced(ROOM)
                for _ in range(100):
                    try:
                        await viewer.catalog(ROOM)
                        break
                    except LookupError:
                        await trio.sleep(0.05)
                upstream = await viewer.subscribe(ROOM, "video")
                async for frame in upstream.frames:
                    seen.append(frame.payload)

            nursery.start_soon(watch)
            with trio.move_on_after(6):
                await play_clip(HangMuxer(broadcast), load_flv_clip(DEMO.read_bytes()))
            sent_at_kill = list(video.frames)
            seen_at_kill = list(seen)
            server.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(server.wait)
            nursery.cancel_scope.cancel()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stdout.close()
    assert seen_at_kill, "the live viewer got nothing"
    # The newest frame the server had certainly received (a viewer got it).
    killed_us = decode_frame_untrusted(seen_at_kill[-1])[0]
    path = data / "recordings" / f"{ROOM}.rec"
    index = read_index(path)
    recorded = [p for k, t, _, p in read_records(path, index, 0, len(index.offsets))
                if k == FRAME and t == "video"]
    assert recorded == sent_at_kill[: len(recorded)]  # a prefix, byte for byte
    last_us = decode_frame_untrusted(recorded[-1])[0]
    assert killed_us - last_us <= 1_000_000, (killed_us, last_us)
    # A new server on the same data directory replays it up to there.
    started = await server_factory({"server": {"data_dir": str(data)}, "demo": {"enabled": False}})
    async with connect(f"https://127.0.0.1:{started.port}/moq",
                       certificate_sha256=started.app.certificate.sha256_hex) as viewer:
        upstream = await viewer.subscribe(ROOM, "video")
        with trio.fail_after(30):
            replayed = [f.payload async for f in upstream.frames]
    assert replayed == recorded

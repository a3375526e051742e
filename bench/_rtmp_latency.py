"""RTMP ingest latency: ffmpeg (``-tune zerolatency``) pushes to the server,
one subscriber watches; measured is the server-added delay from the
arrival of an RTMP message (the read that completed it) to the subscriber's
receipt of that frame. Server and subscriber run in this process so both
ends read one clock; ffmpeg runs beside them.

Also the pieces the latency suite's loss runs share: the server in this
process with an observer of RTMP arrivals, and the ffmpeg push command.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator, TextIO

import trio

from shopcast.bench._record import Record, percentile
from shopcast.codecs import TagType, parse_video_tag_untrusted

__all__ = ["run", "ffmpeg_push_command", "serve_with_rtmp_observer"]

ROOM = "bench-rtmp"


def ffmpeg_push_command(ffmpeg: str, url: str, seconds: float, bitrate_bps: int = 2_000_000) -> list[str]:
    """ffmpeg pushing a 640x360 30 fps test pattern at ``bitrate_bps`` with a tone,
    ``-tune zerolatency``, one keyframe a second, for ``seconds``, in real time."""
    rate = str(bitrate_bps)
    return [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-re", "-f", "lavfi",
            "-i", "sine", "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast",
            "-tune", "zerolatency", "-g", "30", "-b:v", rate, "-maxrate", rate,
            "-bufsize", rate, "-c:a", "aac", "-f", "flv", url]


class IngestTimes:
    """RTMP video arrivals per room: frame timestamp (µs, as the relay stamps it) ->
    CLOCK_MONOTONIC µs of the read that completed the message, comparable across processes."""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[int, int]] = {}

    def observe(self, room_id: str, tag, arrival_s: float) -> None:
        if tag.tag_type != TagType.VIDEO:
            return
        video = parse_video_tag_untrusted(tag.body)
        if video.packet_type == 1:
            # arrival_s is trio's clock; carried over to CLOCK_MONOTONIC by the time since.
            monotonic_us = time.monotonic_ns() // 1000 - int((trio.current_time() - arrival_s) * 1e6)
            self.rooms.setdefault(room_id, {})[(tag.timestamp_ms + video.composition_time_ms) * 1000] = \
                monotonic_us


@contextlib.asynccontextmanager
async def serve_with_rtmp_observer(config_path: str | None, data_dir: Path) -> AsyncIterator[tuple[Any, Any, IngestTimes]]:
    """The server in this process on loopback ports of its own, with RTMP arrivals observed;
    yields (started server, app, ingest times); shuts down on exit."""
    from shopcast.server._app import run_server
    from shopcast.server._config import load_config

    config = load_config(config_path, environ={}, overrides={
        "server": {"host": "127.0.0.1", "port": 0, "data_dir": str(data_dir)},
        "rtmp": {"port": 0}, "demo": {"enabled": False}, "log": {"level": "warning"}})
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        started = await nursery.start(lambda task_status: run_server(
            config, shutdown=shutdown, task_status=task_status))
        ingest = IngestTimes()
        started.app.rtmp.media_observer = ingest.observe
        try:
            yield started, started.app, ingest
        finally:
            shutdown.set()


async def rtmp_url(app, room: str) -> str:
    """The push URL of ``room`` on this server (its key made when new)."""
    from shopcast.server._rtmp import push_url

    key = await trio.to_thread.run_sync(lambda: app.stream_keys.get_or_create(room).key)
    return push_url("127.0.0.1", app.rtmp_port, app.config.rtmp.app, key)


async def _measure(ffmpeg: str, seconds: float, config_path: str | None, data_dir: Path) -> list[float]:
    from shopcast.client import connect, decode_frame_untrusted

    delays_ms: list[float] = []
    async with serve_with_rtmp_observer(config_path, data_dir) as (started, app, ingest):
        command = ffmpeg_push_command(ffmpeg, await rtmp_url(app, ROOM), seconds)
        encoder = await trio.lowlevel.open_process(command, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL)
        try:
            async with connect(f"https://127.0.0.1:{started.port}/moq",
                               certificate_sha256=app.certificate.sha256_hex) as viewer:
                with trio.fail_after(60):
                    await viewer.wait_announced(ROOM)  # the encoder has connected
                    await viewer.catalog(ROOM)
                video = await viewer.subscribe(ROOM, "video")
                await video.accepted.wait()
                subscribed_us = time.monotonic_ns() // 1000
                offset_us = subscribed_us - int(trio.current_time() * 1e6)  # trio clock -> monotonic
                with trio.move_on_after(seconds + 10):
                    async for frame in video.frames:
                        ts_us, _ = decode_frame_untrusted(frame.payload)
                        arrived_at_server = ingest.rooms.get(ROOM, {}).get(ts_us)
                        # The cached group a joining viewer gets is not delay.
                        if arrived_at_server is not None and arrived_at_server > subscribed_us:
                            received_us = int(frame.arrival_s * 1e6) + offset_us
                            delays_ms.append((received_us - arrived_at_server) / 1000)
        finally:
            encoder.kill()
            await encoder.wait()
    return delays_ms


def run(quick: bool, progress: TextIO, config: str | None = None) -> list[Record]:
    """RTMP ingest delay p50 and p99 (needs ffmpeg; no records without it)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("bench rtmp: ffmpeg is not installed (apt-get install ffmpeg); skipped", file=progress)
        return []
    seconds = 3.0 if quick else 10.0
    print(f"bench rtmp: ffmpeg -tune zerolatency pushing for {seconds:g} s", file=progress)
    with tempfile.TemporaryDirectory(prefix="shopcast-bench-") as tmp:
        delays = trio.run(_measure, ffmpeg, seconds, config, Path(tmp))
    return [
        Record("latency", "latency/rtmp-ingest/server-added-p50", percentile(delays, 0.50), "ms"),
        Record("latency", "latency/rtmp-ingest/server-added-p99", percentile(delays, 0.99), "ms"),
        Record("latency", "latency/rtmp-ingest/frames", float(len(delays)), "frames"),
    ]

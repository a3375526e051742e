"""RTMP ingest latency: ffmpeg (``-tune zerolatency``) pushes to the server,
one subscriber watches; measured is the server-added delay from the
arrival of an RTMP message (the read that completed it) to the subscriber's
receipt of that frame. Server and subscriber run in this process so both
ends read one clock; ffmpeg runs beside them.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TextIO

import trio

from shopcast.bench._record import Record
from shopcast.codecs import TagType, parse_video_tag_untrusted

__all__ = ["run"]

ROOM = "bench-rtmp"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else -1.0


async def _measure(ffmpeg: str, seconds: float, config_path: str | None, data_dir: Path) -> list[float]:
    from shopcast.client import connect, decode_frame_untrusted
    from shopcast.server._app import run_server
    from shopcast.server._config import load_config
    from shopcast.server._rtmp import push_url

    config = load_config(config_path, environ={}, overrides={
        "server": {"host": "127.0.0.1", "port": 0, "data_dir": str(data_dir)},
        "rtmp": {"port": 0}, "demo": {"enabled": False}, "log": {"level": "warning"}})
    arrivals: dict[int, float] = {}
    delays_ms: list[float] = []
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        started = await nursery.start(lambda task_status: run_server(
            config, shutdown=shutdown, task_status=task_status))
        app = started.app

        def observe(room_id: str, tag, arrival_s: float) -> None:
            if tag.tag_type == TagType.VIDEO:
                video = parse_video_tag_untrusted(tag.body)
                if video.packet_type == 1:
                    arrivals[(tag.timestamp_ms + video.composition_time_ms) * 1000] = arrival_s

        app.rtmp.media_observer = observe
        key = await trio.to_thread.run_sync(lambda: app.stream_keys.get_or_create(ROOM).key)
        command = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
                   "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-re", "-f", "lavfi",
                   "-i", "sine", "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast",
                   "-tune", "zerolatency", "-g", "30", "-c:a", "aac", "-f", "flv",
                   push_url("127.0.0.1", app.rtmp_port, config.rtmp.app, key)]
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
                subscribed_at = trio.current_time()
                with trio.move_on_after(seconds + 10):
                    async for frame in video.frames:
                        ts_us, _ = decode_frame_untrusted(frame.payload)
                        arrived_at_server = arrivals.get(ts_us)
                        # The cached group a joining viewer gets is not delay.
                        if arrived_at_server is not None and arrived_at_server > subscribed_at:
                            delays_ms.append((frame.arrival_s - arrived_at_server) * 1000)
        finally:
            encoder.kill()
            await encoder.wait()
        shutdown.set()
    return delays_ms


def run(quick: bool, progress: TextIO, config: str | None = None) -> list[Record]:
    """RTMP ingest delay p50 and p99 (needs ffmpeg; no records without it)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("bench rtmp: ffmpeg is not installed; skipped", file=progress)
        return []
    seconds = 3.0 if quick else 10.0
    print(f"bench rtmp: ffmpeg -tune zerolatency pushing for {seconds:g} s", file=progress)
    with tempfile.TemporaryDirectory(prefix="shopcast-bench-") as tmp:
        delays = trio.run(_measure, ffmpeg, seconds, config, Path(tmp))
    return [
        Record("latency", "latency/rtmp-ingest/server-added-p50", _percentile(delays, 0.50), "ms"),
        Record("latency", "latency/rtmp-ingest/server-added-p99", _percentile(delays, 0.99), "ms"),
        Record("latency", "latency/rtmp-ingest/frames", float(len(delays)), "frames"),
    ]

"""The latency suite: delay of frames from the publisher to a viewer behind a
lossy link, stream delivery against datagram delivery.

ffmpeg (``-tune zerolatency``) pushes over RTMP to the server, which runs in
this process and notes when each video frame's RTMP message arrived. The
viewer runs as a process of its own (bench/_latency_clients.py) behind a
lossy UDP relay, another process (bench/_udp_proxy.py), dropping 0%, 2% or 5%
of datagrams each way, seeded. Every process reads CLOCK_MONOTONIC, so each
received frame gives one delay sample: RTMP arrival at the server to receipt
by the viewer. Without ffmpeg, a Python publisher over QUIC in this process
feeds the same runs, stamping each frame's payload with its send time.

Reported per delivery mode and loss rate: delay p50 and p99 and the share of
frames delivered, with the datagram figures against the stream figures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import trio

from shopcast.bench._fanout import MBIT
from shopcast.bench._latency_clients import MODES
from shopcast.bench._record import Record, percentile
from shopcast.bench._rtmp_latency import ffmpeg_push_command, rtmp_url, serve_with_rtmp_observer

__all__ = ["run"]

FPS = 30
GOP_FRAMES = 30
LOSS_RATES = (0.0, 0.02, 0.05)
TAIL_S = 1.0  # the viewer keeps receiving this long after the measured window, for late frames
STARTUP_S = 30.0  # bound on the proxy's and the viewer's start-up (imports, the first subscribe)


def _now_us() -> int:
    return time.monotonic_ns() // 1000


async def _read_line(process: trio.Process, buffer: bytearray, timeout_s: float) -> str:
    """The next line of ``process``'s stdout (``buffer`` keeps what came after it)."""
    with trio.fail_after(timeout_s):
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some(1 << 16)
            if not chunk:
                raise RuntimeError(f"{process.args[2]} ended before answering")
            buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def _spawn(module: str, *args: str) -> trio.Process:
    return await trio.lowlevel.open_process([sys.executable, "-m", module, *args],
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


async def _python_publisher(port: int, sha: str, token: str, room: str, frame_bytes: int,
                            seconds: float, sent: list[int]) -> None:
    """Without ffmpeg: frames of ``frame_bytes`` at 30 fps whose payload starts with the send
    time (µs, CLOCK_MONOTONIC)."""
    from shopcast.client import connect
    from shopcast.server._moq_server import MoqSettings
    from shopcast.server.moq import CATALOG_TRACK, Catalog, VideoRendition, encode_catalog, encode_frame

    async with connect(f"https://127.0.0.1:{port}/moq", token=token, certificate_sha256=sha,
                       settings=MoqSettings(latency_budget_s=60)) as publisher:
        broadcast = publisher.publish(room)
        video = broadcast.track("video")
        broadcast.track(CATALOG_TRACK).write_frame(
            encode_catalog(Catalog(video=(VideoRendition(track="video", codec="avc1.42c01f"),))),
            keyframe=True)
        start = trio.current_time()
        for index in range(int(seconds * FPS)):
            await trio.sleep_until(start + index / FPS)
            sent.append(_now_us())
            payload = sent[-1].to_bytes(8, "big") + bytes(frame_bytes - 8)
            video.write_frame(encode_frame(index * 1_000_000 // FPS, payload),
                              keyframe=(index % GOP_FRAMES == 0))
        broadcast.end()


async def _one_run(started, app, ingest, ffmpeg: str | None, mode: str, loss: float,
                   seconds: float, bitrate_bps: int) -> tuple[list[float], int]:
    """One viewer in ``mode`` behind ``loss``: (delays in ms, frames sent in its window)."""
    room = f"bench-{mode}-{round(loss * 100)}"
    ingest.rooms.pop(room, None)
    sha = app.certificate.sha256_hex
    push_s = STARTUP_S + seconds + TAIL_S
    processes: list[trio.Process] = []
    published: list[int] = []  # send times of the Python publisher's frames (µs)
    async with trio.open_nursery() as nursery:
        try:
            proxy = await _spawn("shopcast.bench._udp_proxy", str(started.port), str(loss), "7")
            processes.append(proxy)
            proxy_port = int((await _read_line(proxy, bytearray(), STARTUP_S)).split()[1])
            if ffmpeg is not None:
                processes.append(await trio.lowlevel.open_process(
                    ffmpeg_push_command(ffmpeg, await rtmp_url(app, room), push_s, bitrate_bps),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            else:
                token = app.tokens.mint(subject="bench", role="host", room=room, ttl_s=3600,
                                        now=time.time())
                nursery.start_soon(_python_publisher, started.port, sha, token, room,
                                   bitrate_bps // 8 // FPS, push_s,
                                   published)
            with trio.fail_after(STARTUP_S):  # the publisher's track exists before the viewer asks
                while "video" not in getattr(app.relay.broadcasts.get(room), "tracks", {}):
                    await trio.sleep(0.02)
            viewer = await _spawn("shopcast.bench._latency_clients", mode, str(proxy_port), sha, room,
                                  str(seconds + TAIL_S))
            processes.append(viewer)
            output = bytearray()
            ready_us = int((await _read_line(viewer, output, STARTUP_S)).split()[1])
            samples = json.loads(await _read_line(viewer, output, seconds + TAIL_S + STARTUP_S))
        finally:
            for process in processes:
                process.kill()
                await process.wait()
        nursery.cancel_scope.cancel()
    window = (ready_us, ready_us + int(seconds * 1e6))
    if ffmpeg is not None:
        sent_at = ingest.rooms.get(room, {})  # frame timestamp -> RTMP arrival at the server
        received = {ts: arrival for ts, _, arrival in samples}
    else:
        # The payload carries the send time, which names each frame.
        sent_at = {stamp: stamp for stamp in published}
        received = {stamp: arrival for _, stamp, arrival in samples}
    in_window = {ts: at for ts, at in sent_at.items() if window[0] <= at < window[1]}
    delays = [(received[ts] - at) / 1000 for ts, at in in_window.items() if ts in received]
    return delays, len(in_window)


async def _measure_all(ffmpeg: str | None, modes: tuple[str, ...], losses: tuple[float, ...],
                       seconds: float, bitrate_bps: int, config: str | None, data_dir: Path,
                       progress: TextIO) -> list[Record]:
    records: list[Record] = []
    async with serve_with_rtmp_observer(config, data_dir) as (started, app, ingest):
        for mode in modes:
            for loss in losses:
                source = "ffmpeg over RTMP" if ffmpeg else "a Python publisher over QUIC (no ffmpeg)"
                print(f"bench latency: {source}, {mode} delivery at {loss:.0%} loss", file=progress)
                delays, sent = await _one_run(started, app, ingest, ffmpeg, mode, loss, seconds, bitrate_bps)
                tag = f"latency/{mode}/loss-{round(loss * 100)}pct"
                records += [
                    Record("latency", f"{tag}/delay-p50", percentile(delays, 0.50), "ms"),
                    Record("latency", f"{tag}/delay-p99", percentile(delays, 0.99), "ms"),
                    Record("latency", f"{tag}/delivered", 100 * len(delays) / max(1, sent), "%"),
                ]
    return records


def run(quick: bool, progress: TextIO, config: str | None = None,
        modes: tuple[str, ...] = MODES, bitrate_bps: int = 2 * MBIT) -> list[Record]:
    """Run the latency suite for each delivery mode and loss rate."""
    ffmpeg = shutil.which("ffmpeg")
    seconds = 2.0 if quick else 10.0
    with tempfile.TemporaryDirectory(prefix="shopcast-bench-") as tmp:
        # The quick smoke run takes the highest loss only, to stay within its minute.
        losses = LOSS_RATES[-1:] if quick else LOSS_RATES
        records = trio.run(_measure_all, ffmpeg, modes, losses, seconds, bitrate_bps,
                           config, Path(tmp), progress)
    _add_ratios(records)
    return records


def _add_ratios(records: list[Record]) -> None:
    """Datagram delay p50 and p99 against stream delay at the same loss."""
    by_name = {r.name: r for r in records}
    for record in list(records):
        for quantile in ("p50", "p99"):
            if record.name.startswith("latency/datagram/") and record.name.endswith(f"/delay-{quantile}"):
                stream = by_name.get(record.name.replace("/datagram/", "/stream/"))
                if stream is not None and stream.value > 0:
                    records.append(Record("latency", record.name.replace(f"/delay-{quantile}",
                                                                         f"/{quantile}-vs-stream"),
                                          record.value / stream.value, "x delay", against=stream.name,
                                          ratio=record.value / stream.value))

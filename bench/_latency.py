"""The latency suite: publish-to-receipt delay of frames under packet loss.

The server runs in its own process; a publisher and one subscriber run here,
the subscriber's path going through a lossy UDP proxy on loopback (0%, 2%
and 5% loss, seeded). Frames carry their publish time (CLOCK_MONOTONIC, the
same clock in every process), so each received frame gives one delay
sample. Reported per loss rate: delay p50 and p99 and the share of frames
delivered, for stream delivery (moq-lite, a QUIC stream per group) and, when
the server offers it, datagram delivery (packetizer, FEC and jitter buffer).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable, TextIO

import trio

from shopcast.bench._fanout import MBIT, _host_token, _start_shopcast
from shopcast.bench._record import Record
from shopcast.bench._udp_proxy import UdpProxy

__all__ = ["run", "DeliveryMode"]

FPS = 30
GOP_FRAMES = 30
LOSS_RATES = (0.0, 0.02, 0.05)

# A delivery mode: given the server URL parts, the proxy port and a frame
# callback, subscribe to room "bench" track "video" and call back with
# (publish_time_us, arrival_time_us) for every frame received.
DeliveryMode = Callable[..., Awaitable[None]]


def _now_us() -> int:
    return time.monotonic_ns() // 1000


async def stream_mode(*, port: int, proxy_port: int, sha: str, on_frame, ready: trio.Event) -> None:
    """Receive over moq-lite streams (through the proxy)."""
    from shopcast.client import connect, decode_frame_untrusted

    async with connect(f"https://127.0.0.1:{proxy_port}/moq", certificate_sha256=sha) as client:
        for _ in range(200):
            upstream = await client.subscribe("bench", "video")
            await upstream.accepted.wait()
            if not upstream.ended.is_set():
                break
            await trio.sleep(0.05)  # the relay has not made the track yet: ask again
        ready.set()
        async for frame in upstream.frames:
            _, payload = decode_frame_untrusted(frame.payload)
            on_frame(int.from_bytes(payload[:8], "big"), _now_us())


async def _measure(mode: DeliveryMode, port: int, sha: str, token: str, loss: float,
                   seconds: float, frame_bytes: int) -> tuple[list[int], int]:
    from shopcast.client import connect
    from shopcast.server._moq_server import MoqSettings
    from shopcast.server.moq import CATALOG_TRACK, Catalog, VideoRendition, encode_catalog, encode_frame

    delays: list[int] = []
    sent = 0
    async with trio.open_nursery() as nursery:
        proxy = UdpProxy(("127.0.0.1", port), loss=loss, seed=7)
        proxy_port = await nursery.start(proxy.run)
        async with connect(f"https://127.0.0.1:{port}/moq", token=token, certificate_sha256=sha,
                           settings=MoqSettings(latency_budget_s=60)) as publisher:
            broadcast = publisher.publish("bench")
            video = broadcast.track("video")
            broadcast.track(CATALOG_TRACK).write_frame(
                encode_catalog(Catalog(video=(VideoRendition(track="video", codec="avc1.42c01f"),))),
                keyframe=True)
            ready = trio.Event()
            nursery.start_soon(lambda: mode(port=port, proxy_port=proxy_port, sha=sha, ready=ready,
                                            on_frame=lambda published, arrived:
                                            delays.append(arrived - published)))
            with trio.fail_after(60):
                await ready.wait()
            start = trio.current_time()
            for index in range(int(seconds * FPS)):
                await trio.sleep_until(start + index / FPS)
                payload = _now_us().to_bytes(8, "big") + bytes(frame_bytes - 8)
                video.write_frame(encode_frame(index, payload), keyframe=(index % GOP_FRAMES == 0))
                sent += 1
            with trio.move_on_after(2):
                while len(delays) < sent:
                    await trio.sleep(0.02)
            broadcast.end()
        nursery.cancel_scope.cancel()
    return delays, sent


def _percentile(samples: list[int], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] / 1000 if ordered else -1.0


def run(quick: bool, progress: TextIO, config: str | None = None,
        modes: dict[str, DeliveryMode] | None = None, bitrate_bps: int = 2 * MBIT) -> list[Record]:
    """Run the latency suite for each delivery mode and loss rate."""
    modes = modes or available_modes()
    seconds = 2.0 if quick else 10.0
    frame_bytes = bitrate_bps // 8 // FPS
    records: list[Record] = []
    with tempfile.TemporaryDirectory(prefix="shopcast-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        server, port, sha = _start_shopcast(data_dir, config)
        try:
            token = _host_token(data_dir)
            for name, mode in modes.items():
                for loss in LOSS_RATES:
                    print(f"bench latency: {name} delivery at {loss:.0%} loss", file=progress)
                    delays, sent = trio.run(_measure, mode, port, sha, token, loss, seconds, frame_bytes)
                    tag = f"latency/{name}/loss-{round(loss * 100)}pct"
                    records += [
                        Record("latency", f"{tag}/delay-p50", _percentile(delays, 0.50), "ms"),
                        Record("latency", f"{tag}/delay-p99", _percentile(delays, 0.99), "ms"),
                        Record("latency", f"{tag}/delivered", 100 * len(delays) / max(1, sent), "%"),
                    ]
        finally:
            server.terminate()
            server.wait(timeout=30)
            server.stdout.close()
    _add_ratios(records)
    return records


def _add_ratios(records: list[Record]) -> None:
    """Datagram delay p99 against stream delay p99 at the same loss."""
    by_name = {r.name: r for r in records}
    for record in list(records):
        if record.name.startswith("latency/datagram/") and record.name.endswith("/delay-p99"):
            stream = by_name.get(record.name.replace("/datagram/", "/stream/"))
            if stream is not None and stream.value > 0:
                records.append(Record("latency", record.name.replace("/delay-p99", "/p99-vs-stream"),
                                      record.value / stream.value, "x delay", against=stream.name,
                                      ratio=record.value / stream.value))


def available_modes() -> dict[str, DeliveryMode]:
    """Stream delivery always; datagram delivery when the server has it."""
    modes: dict[str, DeliveryMode] = {"stream": stream_mode}
    try:
        from shopcast.bench._latency_datagram import datagram_mode
    except ImportError:
        return modes
    modes["datagram"] = datagram_mode
    return modes


if __name__ == "__main__":  # pragma: no cover - manual runs
    from shopcast.bench._record import format_table
    print(format_table(run("--quick" in sys.argv, sys.stderr)))

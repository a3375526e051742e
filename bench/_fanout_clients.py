"""The other side of the fan-out benchmark: one publisher and N subscribers
as real QUIC clients, in their own process.

Frames carry their publish time (CLOCK_MONOTONIC, shared by every process on
the machine), so each subscriber measures publish-to-receipt delay. Protocol
with the orchestrator on stdin/stdout: print "READY" once every subscriber is
subscribed, wait for "GO" on stdin, publish, print "DONE" and then one JSON
line of results.

Run: python -m shopcast.bench._fanout_clients MODE URL_OR_PORT SHA256 TOKEN N BITRATE_BPS SECONDS
with MODE "shopcast" (moq-lite over WebTransport) or "baseline" (bench/_baseline_relay.py).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time

FPS = 30
GOP_FRAMES = 30
ROOM = "bench"


def _now_us() -> int:
    return time.monotonic_ns() // 1000


def _frame_payload(index: int, size: int) -> bytes:
    return _now_us().to_bytes(8, "big") + index.to_bytes(4, "big") + bytes(size - 12)


def _summary(received: list[int], delays_us: list[int], sent: int, frame_bytes: int) -> dict:
    delays_us.sort()

    def pct(p: float) -> float:
        return delays_us[min(len(delays_us) - 1, int(p * len(delays_us)))] / 1000 if delays_us else -1.0

    return {"frames_sent": sent, "frames_received": sum(received), "subscribers": len(received),
            "min_received": min(received) if received else 0, "frame_bytes": frame_bytes,
            "delay_p50_ms": pct(0.50), "delay_p99_ms": pct(0.99)}


# --- shopcast -----------------------------------------------------------------------------------

async def _run_shopcast(url: str, sha: str, token: str, n: int, frame_bytes: int, seconds: float) -> dict:
    import trio

    from shopcast.client import connect, decode_frame_untrusted
    from shopcast.server._moq_server import MoqSettings
    from shopcast.server.moq import CATALOG_TRACK, Catalog, VideoRendition, encode_catalog, encode_frame

    received = [0] * n
    delays: list[int] = []
    subscribed = trio.Semaphore(0)
    # The publisher must not drop groups on its own uplink while the server is loaded.
    settings = MoqSettings(latency_budget_s=60)

    async def subscriber(index: int) -> None:
        async with connect(url, certificate_sha256=sha) as client:
            for _ in range(200):
                upstream = await client.subscribe(ROOM, "video")
                await upstream.accepted.wait()
                if not upstream.ended.is_set():
                    break
                await trio.sleep(0.05)  # the relay has not made the track yet: ask again
            subscribed.release()
            async for frame in upstream.frames:
                arrival = _now_us()
                _, payload = decode_frame_untrusted(frame.payload)
                delays.append(arrival - int.from_bytes(payload[:8], "big"))
                received[index] += 1

    async with connect(url, token=token, certificate_sha256=sha, settings=settings) as publisher:
        broadcast = publisher.publish(ROOM)
        video = broadcast.track("video")
        broadcast.track(CATALOG_TRACK).write_frame(
            encode_catalog(Catalog(video=(VideoRendition(track="video", codec="avc1.42c01f"),))),
            keyframe=True)
        async with trio.open_nursery() as nursery:
            for index in range(n):
                nursery.start_soon(subscriber, index)
            for _ in range(n):
                await subscribed.acquire()
            print("READY", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            sent = 0
            start = trio.current_time()
            total = int(seconds * FPS)
            for index in range(total):
                await trio.sleep_until(start + index / FPS)
                video.write_frame(encode_frame(_now_us(), _frame_payload(index, frame_bytes)),
                                  keyframe=(index % GOP_FRAMES == 0))
                sent += 1
            with trio.move_on_after(3):
                while sum(received) < sent * n:
                    await trio.sleep(0.02)
            print("DONE", flush=True)
            nursery.cancel_scope.cancel()
    return _summary(received, delays, sent, frame_bytes)


# --- baseline ---------------------------------------------------------------------------------------

async def _run_baseline(port: int, n: int, frame_bytes: int, seconds: float) -> dict:
    from aioquic.asyncio import connect as quic_connect
    from aioquic.quic.configuration import QuicConfiguration

    from shopcast.bench._baseline_relay import ALPN

    received = [0] * n
    delays: list[int] = []

    def configuration() -> QuicConfiguration:
        config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN],
                                   max_stream_data=4 << 20, max_data=64 << 20)
        config.verify_mode = ssl.CERT_NONE
        return config

    async def subscriber(index: int, ready: asyncio.Event) -> None:
        async with quic_connect("127.0.0.1", port, configuration=configuration()) as client:
            reader, writer = await client.create_stream()
            writer.write(b"S")
            await writer.drain()
            assert await reader.readexactly(1) == b"K"  # the relay has registered us
            ready.set()
            while True:
                header = await reader.readexactly(4)
                frame = await reader.readexactly(int.from_bytes(header, "big"))
                delays.append(_now_us() - int.from_bytes(frame[:8], "big"))
                received[index] += 1

    async with quic_connect("127.0.0.1", port, configuration=configuration()) as publisher:
        _, writer = await publisher.create_stream()
        writer.write(b"P")
        readies = [asyncio.Event() for _ in range(n)]
        tasks = [asyncio.create_task(subscriber(i, readies[i])) for i in range(n)]
        for ready in readies:
            await ready.wait()
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        loop = asyncio.get_running_loop()
        start = loop.time()
        total = int(seconds * FPS)
        for index in range(total):
            delay = start + index / FPS - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            payload = _frame_payload(index, frame_bytes)
            writer.write(len(payload).to_bytes(4, "big") + payload)
        deadline = loop.time() + 3
        while sum(received) < total * n and loop.time() < deadline:
            await asyncio.sleep(0.02)
        print("DONE", flush=True)
        for task in tasks:
            task.cancel()
    return _summary(received, delays, total, frame_bytes)


def main(argv: list[str]) -> int:
    mode, target, sha, token, n, bitrate_bps, seconds = argv
    frame_bytes = max(64, int(bitrate_bps) // 8 // FPS)
    if mode == "shopcast":
        import trio
        result = trio.run(_run_shopcast, target, sha, token, int(n), frame_bytes, float(seconds))
    else:
        result = asyncio.run(_run_baseline(int(target), int(n), frame_bytes, float(seconds)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The latency suite's viewer, run as its own process behind the lossy proxy:
``python -m shopcast.bench._latency_clients MODE PROXY_PORT SHA256 ROOM SECONDS``.

MODE is ``stream`` (moq-lite, a QUIC stream per group) or ``datagram``
(packetizer, FEC, jitter buffer and resends). Prints ``READY <monotonic µs>``
once subscribed, then, SECONDS later (or once the broadcast ends), one JSON list
of ``[frame timestamp µs, first 8 payload bytes as an integer, arrival
monotonic µs]`` per video frame received. CLOCK_MONOTONIC is the same clock in
every process on the machine, so the bench compares arrivals with its own times.
"""

from __future__ import annotations

import json
import sys
import time

import trio

from shopcast.server.moq import decode_frame_untrusted

__all__ = ["MODES"]

MODES = ("stream", "datagram")
SUBSCRIBE_ATTEMPTS = 200  # tries while the relay has not made the track yet (50 ms apart)
STARTUP_S = 30.0  # bound on connecting and subscribing


def _now_us() -> int:
    return time.monotonic_ns() // 1000


def _sample(payload: bytes) -> list[int]:
    timestamp_us, media = decode_frame_untrusted(payload)
    return [timestamp_us, int.from_bytes(bytes(media[:8]).ljust(8, b"\0"), "big"), _now_us()]


def _ready(scope: trio.CancelScope, seconds: float) -> None:
    print(f"READY {_now_us()}", flush=True)
    scope.deadline = trio.current_time() + seconds


async def _stream(url: str, sha: str, room: str, samples: list, ready) -> None:
    from shopcast.client import connect

    async with connect(url, certificate_sha256=sha) as client:
        for _ in range(SUBSCRIBE_ATTEMPTS):
            video = await client.subscribe(room, "video")
            await video.accepted.wait()
            if not video.ended.is_set():
                break
            await trio.sleep(0.05)
        ready()
        async for frame in video.frames:
            samples.append(_sample(frame.payload))


async def _datagram(url: str, sha: str, room: str, samples: list, ready) -> None:
    from shopcast.server._datagram_client import DatagramRefused, subscribe_datagrams

    for _ in range(SUBSCRIBE_ATTEMPTS):
        try:
            async with subscribe_datagrams(url.replace("/moq", "/dgram"), room, "video",
                                           certificate_sha256=sha) as subscription:
                ready()
                async for frame in subscription.frames:
                    samples.append(_sample(frame.payload))
                return
        except DatagramRefused:
            await trio.sleep(0.05)


async def _main(mode: str, proxy_port: int, sha: str, room: str, seconds: float) -> None:
    samples: list[list[int]] = []
    receive = {"stream": _stream, "datagram": _datagram}[mode]
    with trio.move_on_after(STARTUP_S) as scope:
        await receive(f"https://127.0.0.1:{proxy_port}/moq", sha, room, samples,
                      lambda: _ready(scope, seconds))
    print(json.dumps(samples), flush=True)


if __name__ == "__main__":
    mode_, port_, sha_, room_, seconds_ = sys.argv[1:6]
    trio.run(_main, mode_, int(port_), sha_, room_, float(seconds_))

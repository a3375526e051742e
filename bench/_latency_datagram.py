"""The latency suite's datagram delivery mode: the packetizer's datagrams
with FEC, the jitter buffer and resends (server/_datagram.py)."""

from __future__ import annotations

import time

import trio

from shopcast.server._datagram_client import DatagramRefused, subscribe_datagrams
from shopcast.server.moq import decode_frame_untrusted

__all__ = ["datagram_mode"]


async def datagram_mode(*, port: int, proxy_port: int, sha: str, on_frame, ready: trio.Event) -> None:
    """Receive over datagrams (through the proxy), with the default playout delay."""
    for _ in range(200):
        try:
            async with subscribe_datagrams(f"https://127.0.0.1:{proxy_port}/dgram", "bench", "video",
                                           certificate_sha256=sha) as subscription:
                ready.set()
                async for frame in subscription.frames:
                    _, payload = decode_frame_untrusted(frame.payload)
                    on_frame(int.from_bytes(payload[:8], "big"), time.monotonic_ns() // 1000)
                return
        except DatagramRefused:
            await trio.sleep(0.05)  # the relay has not made the track yet: ask again

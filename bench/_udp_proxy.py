"""A UDP proxy on loopback that loses, or stops passing, datagrams on purpose:
how the tests freeze a viewer and how the benchmarks make loss without netem.

Each client address gets its own upstream socket, so the server sees one
peer per client, as through a NAT.
"""

from __future__ import annotations

import random
import socket

import trio

__all__ = ["UdpProxy"]

DATAGRAM_BYTES = 65536


class UdpProxy:
    """Forwards datagrams between clients and ``upstream``.

    ``loss`` is the probability each datagram is dropped, in each direction,
    drawn from a generator seeded with ``seed`` (repeatable runs). Setting
    ``frozen`` drops everything, as a viewer whose machine stopped would.
    Counters: ``forwarded`` and ``dropped``.
    """

    def __init__(self, upstream: tuple[str, int], *, loss: float = 0.0, seed: int = 1) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss must be from 0 to below 1")
        self.upstream = upstream
        self.loss = loss
        self.frozen = False
        self.forwarded = 0
        self.dropped = 0
        self._random = random.Random(seed)
        self._peers: dict[tuple, trio.socket.SocketType] = {}

    def _passes(self) -> bool:
        if self.frozen or (self.loss and self._random.random() < self.loss):
            self.dropped += 1
            return False
        self.forwarded += 1
        return True

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1 and forward until cancelled; started() with the port."""
        listener = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await listener.bind(("127.0.0.1", 0))
        with listener:
            async with trio.open_nursery() as nursery:
                task_status.started(listener.getsockname()[1])
                while True:
                    data, client = await listener.recvfrom(DATAGRAM_BYTES)
                    upstream = self._peers.get(client)
                    if upstream is None:
                        upstream = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        await upstream.bind(("127.0.0.1", 0))
                        await upstream.connect(self.upstream)
                        self._peers[client] = upstream
                        nursery.start_soon(self._downstream, listener, upstream, client)
                    if self._passes():
                        await upstream.send(data)

    async def _downstream(self, listener, upstream, client: tuple) -> None:
        with upstream:
            while True:
                data = await upstream.recv(DATAGRAM_BYTES)
                if self._passes():
                    await listener.sendto(data, client)


def _main(argv: list[str]) -> None:
    """``python -m shopcast.bench._udp_proxy UPSTREAM_PORT LOSS SEED``: a lossy relay process
    in front of 127.0.0.1:UPSTREAM_PORT; prints ``PORT <n>`` once listening, runs until killed."""
    upstream_port, loss, seed = int(argv[0]), float(argv[1]), int(argv[2])
    proxy = UdpProxy(("127.0.0.1", upstream_port), loss=loss, seed=seed)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(proxy.run)
            print(f"PORT {port}", flush=True)

    trio.run(serve)


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])

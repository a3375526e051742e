"""The baseline the fan-out benchmark compares shopcast with: a relay written
the straightforward way on stock aioquic and asyncio, forwarding each frame
to each subscriber's stream as it arrives.

Protocol (ALPN "bench-relay"): a client opens one bidirectional stream and
writes b"P" (publisher) or b"S" (subscriber, acknowledged with b"K" once
registered). A publisher then writes frames
as a 4-byte big-endian length plus payload; the relay writes each frame,
framed the same way, to every subscriber's stream.

Run: python -m shopcast.bench._baseline_relay CERT KEY  (prints "PORT n").
"""

from __future__ import annotations

import asyncio
import sys

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived

ALPN = "bench-relay"


class _Hub:
    def __init__(self) -> None:
        self.subscribers: list[tuple["_RelayProtocol", int]] = []


class _RelayProtocol(QuicConnectionProtocol):
    hub: _Hub

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._roles: dict[int, bytes] = {}
        self._buffers: dict[int, bytearray] = {}

    def quic_event_received(self, event) -> None:
        if not isinstance(event, StreamDataReceived):
            return
        data = event.data
        role = self._roles.get(event.stream_id)
        if role is None:
            if not data:
                return
            role, data = data[:1], data[1:]
            self._roles[event.stream_id] = role
            if role == b"S":
                self.hub.subscribers.append((self, event.stream_id))
                self._quic.send_stream_data(event.stream_id, b"K")
                self.transmit()
            self._buffers[event.stream_id] = bytearray()
        if role != b"P":
            return
        buffer = self._buffers[event.stream_id]
        buffer += data
        while len(buffer) >= 4:
            size = int.from_bytes(buffer[:4], "big")
            if len(buffer) < 4 + size:
                break
            frame = bytes(buffer[:4 + size])
            del buffer[:4 + size]
            for protocol, stream_id in self.hub.subscribers:
                protocol._quic.send_stream_data(stream_id, frame)
                protocol.transmit()


async def main(cert: str, key: str) -> None:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN],
                                      max_stream_data=4 << 20, max_data=64 << 20)
    configuration.load_cert_chain(cert, key)
    hub = _Hub()
    _RelayProtocol.hub = hub
    server = await serve("127.0.0.1", 0, configuration=configuration, create_protocol=_RelayProtocol)
    print(f"PORT {server._transport.get_extra_info('sockname')[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

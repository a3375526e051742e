"""shopcast.client: publish and watch shopcast rooms from Python over
moq-lite / WebTransport (also used by the tests and benchmarks).

    async with connect("https://localhost:8443/moq", token=token,
                       certificate_sha256=sha256) as client:
        upstream = await client.subscribe("demo", "video")
        async for frame in upstream.frames:
            ...

Datagram mode (low latency, FEC and resends; docs/datagram-mode.md):

    async with subscribe_datagrams("https://localhost:8443/dgram", "demo", "video",
                                   certificate_sha256=sha256) as subscription:
        async for frame in subscription.frames:
            ...

Chat (a token for the room; see the README's "Chat and view counts"):

    async with connect_chat("https://localhost:8443", "demo", token,
                            certificate_sha256=sha256) as chat:
        reply = await chat.request(type="message", text="hello 👋")
"""

from shopcast.server._chat_client import ChatClient, connect_chat
from shopcast.server._datagram_client import (
    DatagramClient,
    DatagramFrame,
    DatagramRefused,
    DatagramSubscription,
    connect_datagrams,
    subscribe_datagrams,
)
from shopcast.server._moq_client import MoqClient, connect
from shopcast.server._moq_server import ReceivedFrame, Upstream
from shopcast.server.moq import decode_frame_untrusted

__all__ = [
    "ChatClient",
    "DatagramClient",
    "DatagramFrame",
    "DatagramRefused",
    "DatagramSubscription",
    "MoqClient",
    "ReceivedFrame",
    "Upstream",
    "connect",
    "connect_chat",
    "connect_datagrams",
    "decode_frame_untrusted",
    "subscribe_datagrams",
]

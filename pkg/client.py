"""shopcast.client: publish and watch shopcast rooms from Python over
moq-lite / WebTransport (also used by the tests and benchmarks).

    async with connect("https://localhost:8443/moq", token=token,
                       certificate_sha256=sha256) as client:
        upstream = await client.subscribe("demo", "video")
        async for frame in upstream.frames:
            ...
"""

from shopcast.server._moq_client import MoqClient, connect
from shopcast.server._moq_server import ReceivedFrame, Upstream
from shopcast.server.moq import decode_frame_untrusted

__all__ = ["MoqClient", "ReceivedFrame", "Upstream", "connect", "decode_frame_untrusted"]

"""The Python moq-lite client: publish and subscribe over WebTransport with
the same session objects the server uses. ``shopcast.client`` re-exports it.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import urlencode, urlsplit, urlunsplit

import trio

from shopcast.server._client import open_webtransport
from shopcast.server._config import Config
from shopcast.server._hang_mux import HangMuxer, load_flv_clip, play_clip
from shopcast.server._moq_server import MoqConnection, MoqSettings, SubscriberStats, Upstream
from shopcast.server._relay import Broadcast, Relay
from shopcast.server.moq import (
    CATALOG_TRACK,
    Catalog,
    Role,
    TrackPriority,
    decode_catalog_untrusted,
)

__all__ = ["MoqClient", "connect"]


class MoqClient:
    """A connected moq-lite client.

    ``publish(name)`` returns a Broadcast whose tracks you write frames to
    (``broadcast.track("video").write_frame(payload, keyframe=True)``); the
    server subscribes to what it needs. ``subscribe`` returns an Upstream
    whose ``frames`` channel yields ReceivedFrame records with arrival times.
    """

    def __init__(self, connection: MoqConnection, relay: Relay) -> None:
        self.connection = connection
        self._relay = relay

    @property
    def session(self):
        """The underlying WebTransportSession."""
        return self.connection.session

    def publish(self, name: str) -> Broadcast:
        """Start publishing the broadcast ``name`` (a room id)."""
        return self._relay.publish(name)

    async def publish_flv(self, name: str, path: str | Path, *, loops: float = 1) -> Broadcast:
        """Publish an FLV file (H.264 + AAC) as a live broadcast in real time;
        returns the broadcast after the last loop, still published."""
        clip = load_flv_clip(Path(path).read_bytes())
        broadcast = self.publish(name)
        await play_clip(HangMuxer(broadcast), clip, loops=loops)
        return broadcast

    async def subscribe(self, broadcast: str, track: str,
                        priority: int = TrackPriority.VIDEO, *, queue_frames: int = 4096) -> Upstream:
        """Subscribe to a track; wait on ``.accepted``, read ``.frames``."""
        return await self.connection.subscribe(broadcast, track, priority, queue_frames=queue_frames)

    async def catalog(self, broadcast: str, *, max_size_bytes: int = 65536) -> Catalog:
        """The broadcast's current catalog (its first catalog.json frame)."""
        upstream = await self.subscribe(broadcast, CATALOG_TRACK, TrackPriority.CATALOG)
        async for frame in upstream.frames:
            return decode_catalog_untrusted(frame.payload, max_size_bytes=max_size_bytes)
        raise LookupError(f"broadcast {broadcast} ended before sending a catalog "
                          f"(code {upstream.end_code})")

    async def wait_announced(self, name: str) -> None:
        """Return once the server announces ``name`` as live."""
        await self.connection.wait_announced(name)


def _with_token(url: str, token: str | None) -> str:
    if token is None:
        return url
    parts = urlsplit(url)
    query = (parts.query + "&" if parts.query else "") + urlencode({"token": token})
    return urlunsplit(parts._replace(query=query))


@asynccontextmanager
async def connect(url: str, *, token: str | None = None, certificate_sha256: str | None = None,
                  verify: bool = True, config: Config | None = None,
                  settings: MoqSettings | None = None) -> AsyncIterator[MoqClient]:
    """Connect to a shopcast (or any moq-lite draft-02) relay at ``url``
    (``https://host:port/moq``) and complete the moq-lite SETUP."""
    async with open_webtransport(_with_token(url, token), certificate_sha256=certificate_sha256,
                                 verify=verify, config=config) as session:
        relay = Relay()
        connection = MoqConnection(session, role=Role.CLIENT, relay=relay,
                                   settings=settings or MoqSettings(), stats=SubscriberStats())
        async with trio.open_nursery() as nursery:
            await nursery.start(connection.run)
            try:
                yield MoqClient(connection, relay)
            finally:
                for broadcast in list(relay.broadcasts.values()):
                    broadcast.end()
                session.close(0, "client done")
                nursery.cancel_scope.cancel()

"""The Python chat client: a session at the chat path, requests out and
replies in on the stream the server opens (server/_interaction.py)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator
from urllib.parse import urlencode

import msgpack

from shopcast.server._client import open_webtransport
from shopcast.server._webtransport import WebTransportSession

__all__ = ["ChatClient", "connect_chat"]

LENGTH_BYTES = 2


class ChatClient:
    """One chat session. ``history`` holds the messages sent on joining."""

    def __init__(self, session: WebTransportSession, stream) -> None:
        self.session = session
        self._stream = stream
        self._buffer = bytearray()
        self.history: list[dict[str, Any]] = []

    async def request(self, **fields: Any) -> dict[str, Any]:
        """Send one request (``type="message", text=...``) and return the reply."""
        await self.send_raw(msgpack.packb(fields))
        return await self.receive()

    async def send_raw(self, payload: bytes) -> None:
        """Send bytes as one request, whatever they hold (tests of bad input)."""
        await self._stream.send_all(len(payload).to_bytes(LENGTH_BYTES, "big") + payload)

    async def receive(self) -> dict[str, Any]:
        """The next message from the server."""
        while True:
            if len(self._buffer) >= LENGTH_BYTES:
                size = int.from_bytes(self._buffer[:LENGTH_BYTES], "big")
                if len(self._buffer) >= LENGTH_BYTES + size:
                    message = msgpack.unpackb(bytes(self._buffer[LENGTH_BYTES:LENGTH_BYTES + size]))
                    del self._buffer[:LENGTH_BYTES + size]
                    return message
            chunk = await self._stream.receive_some()
            if not chunk:
                raise EOFError("the chat stream ended")
            self._buffer += chunk


@asynccontextmanager
async def connect_chat(base_url: str, room_id: str, token: str, *,
                       certificate_sha256: str | None = None, verify: bool = True,
                       path: str = "/chat") -> AsyncIterator[ChatClient]:
    """Join the chat of ``room_id`` at ``base_url`` (``https://host:port``)
    with a token for that room; ``history`` is filled on return."""
    url = f"{base_url}{path}?{urlencode({'room': room_id, 'token': token})}"
    async with open_webtransport(url, certificate_sha256=certificate_sha256, verify=verify) as session:
        stream = await session.accept_stream()  # the server opens the chat stream
        client = ChatClient(session, stream)
        first = await client.receive()
        client.history = first.get("messages", [])
        yield client

"""Live interaction beside the media: chat sessions over WebTransport, and the
room tracks that carry chat batches and view counts.

A viewer with a token for the room opens a WebTransport session at the chat
path (``/chat?room=ID&token=...``); the server opens one bidirectional
stream to it (a peer's stream is visible only once it carries data, so the
server, which speaks first, opens it). Each message either way is a 2-byte
big-endian length and a msgpack map. The server answers every request (``ok``, ``held`` or a ``notice`` naming the
field at fault) on that stream, sends the recent history first, and
publishes what everyone sees on the room's broadcast: a ``chat`` track (one
object per tick) and a ``viewers`` track (about once a second), so they
share the video's timeline and are recorded with it. None of it runs on the
media path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import msgpack
import trio

from shopcast.plugins._chat_engine import (
    Author,
    ChatError,
    ChatLimits,
    ChatRoom,
    Role,
    decode_request_untrusted,
    encode_batch,
    message_record,
)
from shopcast.server._log import get_logger
from shopcast.server._relay import Broadcast, Relay
from shopcast.server._webtransport import SessionClosed, StreamReset, WebTransportSession
from shopcast.server.moq import decode_frame_untrusted

__all__ = ["CHAT_TRACK", "VIEWERS_TRACK", "InteractionService", "InteractionSettings"]

log = get_logger("chat")
CHAT_TRACK = "chat"
VIEWERS_TRACK = "viewers"
LENGTH_BYTES = 2
# WebTransport close codes (moq-lite numbering, docs/moq-lite.md).
UNAUTHORIZED = 6
NOT_FOUND = 13
PROTOCOL_VIOLATION = 15


@dataclass(frozen=True)
class InteractionSettings:
    """The ``[chat]`` values of the service."""

    limits: ChatLimits = ChatLimits()
    viewers_interval_s: float = 1.0
    """How often view counts are published (s)."""
    chat_group_s: float = 2.0
    """A new chat track group starts this often, so late joiners get the
    recent batches from the cache (s)."""
    global_blocklist: tuple[str, ...] = ()


def live_edge_us(broadcast: Broadcast) -> int:
    """The media timestamp of the newest video (else audio) frame, in µs."""
    for name in ("video", "audio"):
        track = broadcast.tracks.get(name)
        if track is not None and track.current is not None and track.current.frames:
            try:
                return decode_frame_untrusted(track.current.frames[-1])[0]
            except Exception:  # noqa: BLE001 - a publisher's frame we cannot read: no timestamp
                return 0
    return 0


def author_from_claims(claims, room_id: str) -> Author:
    """Who a token says its holder is in ``room_id``, until accounts supply
    display names, follows and moderators."""
    if claims.role in ("operator", "service"):
        role = Role.OPERATOR
    elif claims.role == "host" and claims.room == room_id:
        role = Role.HOST
    else:
        role = Role.VIEWER
    return Author(claims.subject, claims.subject, role, registered=True)


async def _no_lookup(room_id: str, claims: Any) -> Author | None:
    return None


class InteractionService:
    """Chat rooms and view counts for every live broadcast of ``relay``."""

    def __init__(self, relay: Relay, settings: InteractionSettings | None = None) -> None:
        self.relay = relay
        self.settings = settings or InteractionSettings()
        self.rooms: dict[str, ChatRoom] = {}
        self._sessions: dict[str, dict[WebTransportSession, Author]] = {}
        self._chat_group_at: dict[str, float] = {}
        self._global_blocklist = {t.casefold() for t in self.settings.global_blocklist}
        self.requests_refused = 0
        # Who a token's holder is in a room's chat (set by the server to ask
        # the accounts plugins); None falls back to the token's own claims.
        self.author_lookup: Callable[[str, Any], Awaitable[Author | None]] = _no_lookup
        relay.listen(self._on_broadcast)

    def _on_broadcast(self, broadcast: Broadcast, active: bool) -> None:
        # Every live room has its interaction tracks from the start, so a
        # viewer can subscribe before the first message or count.
        if active:
            broadcast.track(CHAT_TRACK)
            broadcast.track(VIEWERS_TRACK)

    def room(self, room_id: str) -> ChatRoom:
        """The chat of ``room_id``, made on first use."""
        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = ChatRoom(room_id, self.settings.limits, self._global_blocklist)
        return room

    # --- sessions ------------------------------------------------------------------------

    async def handle_session(self, session: WebTransportSession) -> None:
        """The WebTransport handler for the chat path."""
        room_id = session.query.get("room", "")
        claims = session.claims
        if claims is None or not claims.allows_room(room_id):
            session.close(UNAUTHORIZED, "chat needs a token for this room")
            return
        broadcast = self.relay.broadcasts.get(room_id)
        if broadcast is None:
            session.close(NOT_FOUND, f"room {room_id} is not live")
            return
        room = self.room(room_id)
        author = await self.author_lookup(room_id, claims) or author_from_claims(claims, room_id)
        if room.is_banned(author.account_id):
            session.close(UNAUTHORIZED, "you are banned from this room")
            return
        stream = await session.open_bidi_stream()
        self._sessions.setdefault(room_id, {})[session] = author
        try:
            await self._send(stream, {"type": "history",
                                      "messages": [message_record(m) for m in room.history()]})
            await self._serve_requests(session, stream, room, broadcast, author)
        except (SessionClosed, StreamReset, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._sessions.get(room_id, {}).pop(session, None)

    async def _serve_requests(self, session, stream, room: ChatRoom, broadcast: Broadcast,
                              author: Author) -> None:
        limits = self.settings.limits
        buffer = bytearray()
        while True:
            chunk = await stream.receive_some(limits.max_request_bytes + LENGTH_BYTES)
            if not chunk:
                return
            buffer += chunk
            while len(buffer) >= LENGTH_BYTES:
                size = int.from_bytes(buffer[:LENGTH_BYTES], "big")
                if size > limits.max_request_bytes:
                    # The framing cannot be trusted past this point.
                    session.close(PROTOCOL_VIOLATION,
                                  f"chat request of {size} bytes exceeds {limits.max_request_bytes}")
                    return
                if len(buffer) < LENGTH_BYTES + size:
                    break
                data = bytes(buffer[LENGTH_BYTES:LENGTH_BYTES + size])
                del buffer[:LENGTH_BYTES + size]
                await self._send(stream, self._answer(room, broadcast, author, data))
                if room.is_banned(author.account_id):
                    session.close(UNAUTHORIZED, "you are banned from this room")
                    return

    def _answer(self, room: ChatRoom, broadcast: Broadcast, author: Author, data: bytes) -> dict:
        now_s = trio.current_time()
        try:
            request = decode_request_untrusted(data, room.limits)
            reply = room.handle(author, request, now_s=now_s, media_timestamp_us=live_edge_us(broadcast))
        except ChatError as exc:
            self.requests_refused += 1
            return {"type": "notice", "code": exc.code, "message": str(exc), "field": exc.field,
                    "retry_after_s": exc.retry_after_s}
        if request["type"] == "ban":
            self._disconnect(room.room_id, request["account"])
        return reply

    def disconnect_room(self, room_id: str, code: int, reason: str) -> None:
        """Close every chat session of ``room_id`` (an emergency shutdown)."""
        for session in list(self._sessions.get(room_id, {})):
            session.close(code, reason)

    def _disconnect(self, room_id: str, account_id: str) -> None:
        for session, author in list(self._sessions.get(room_id, {}).items()):
            if author.account_id == account_id:
                session.close(UNAUTHORIZED, "you are banned from this room")

    @staticmethod
    async def _send(stream, message: dict) -> None:
        payload = msgpack.packb(message)
        await stream.send_all(len(payload).to_bytes(LENGTH_BYTES, "big") + payload)

    # --- publishing ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish chat batches every tick and view counts about once a
        second, on every live broadcast. Never returns unless cancelled."""
        task_status.started()
        next_viewers = -math.inf
        while True:
            now = trio.current_time()
            for room_id, room in list(self.rooms.items()):
                broadcast = self.relay.broadcasts.get(room_id)
                batch = room.tick(now_s=now)
                if batch is None or broadcast is None:
                    continue
                new_group = now - self._chat_group_at.get(room_id, -math.inf) >= self.settings.chat_group_s
                if new_group:
                    self._chat_group_at[room_id] = now
                broadcast.track(CHAT_TRACK).write_frame(encode_batch(batch), keyframe=new_group)
            if now >= next_viewers:
                next_viewers = now + self.settings.viewers_interval_s
                for broadcast in list(self.relay.broadcasts.values()):
                    # Every snapshot is whole, so each is its own group.
                    broadcast.track(VIEWERS_TRACK).write_frame(
                        msgpack.packb(broadcast.viewers.snapshot()), keyframe=True)
            await trio.sleep(self.settings.limits.tick_s)

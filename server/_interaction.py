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
media path. A chat track subscriber that falls more than
``subscriber_backlog_bytes`` behind is dropped from the track (its
subscription ends with BOUNDS_EXCEEDED, counted) and may subscribe again.
The transcript, moderation actions and moderation state are stored in SQLite
(server/_chat_store.py) in batches, every ``save_interval_s``, off the event
loop.
"""

from __future__ import annotations

import math
import time
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
    AuditEntry,
    decode_request_untrusted,
    encode_batch,
    message_record,
    normalize_for_matching,
)
from shopcast.plugins._storage import Repository
from shopcast.server._chat_store import ChatStore
from shopcast.server._log import get_logger
from shopcast.server._relay import Broadcast, Relay
from shopcast.server._webtransport import SessionClosed, StreamReset, WebTransportSession
from shopcast.server.moq import decode_frame_untrusted

__all__ = ["CHAT_TRACK", "VIEWERS_TRACK", "InteractionService", "InteractionSettings",
           "author_from_claims", "documented_chat_routes"]

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
    subscriber_backlog_bytes: int = 64 * 1024
    """A chat track subscriber with more unacknowledged than this is dropped
    from the track (bytes)."""
    save_interval_s: float = 1.0
    """Chat changes are written to the database this often (s)."""
    ended_room_keep_s: float = 600.0
    """An ended room's chat stays in memory this long, then only in the database (s)."""


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


GUEST_PREFIX = "guest:"


def author_from_claims(claims, room_id: str) -> Author:
    """Who a token says its holder is in ``room_id`` when no accounts plugin
    knows the subject: never registered; a guest (``guest:<id>``) is shown
    as "Guest" and the last 4 characters of its id."""
    if claims.role in ("operator", "service"):
        role = Role.OPERATOR
    elif claims.role == "host" and claims.room == room_id:
        role = Role.HOST
    else:
        role = Role.VIEWER
    subject = claims.subject
    name = f"Guest{subject[-4:]}" if subject.startswith(GUEST_PREFIX) else subject
    return Author(subject, name, role, registered=False)


async def _no_lookup(room_id: str, claims: Any) -> Author | None:
    return None


class InteractionService:
    """Chat rooms and view counts for every live broadcast of ``relay``.

    Resource handling: ``run`` publishes and saves until cancelled; give it
    the database with ``attach`` first (without one, nothing outlives the
    process). Error handling: a refused request gets a notice on its own
    stream; a failed save is logged and retried with the next batch.
    """

    def __init__(self, relay: Relay, settings: InteractionSettings | None = None) -> None:
        self.relay = relay
        self.settings = settings or InteractionSettings()
        self.rooms: dict[str, ChatRoom] = {}
        self._sessions: dict[str, dict[WebTransportSession, Author]] = {}
        self._chat_group_at: dict[str, float] = {}
        self._global_blocklist = {normalize_for_matching(t) for t in self.settings.global_blocklist}
        self._loaded: dict[str, trio.Event] = {}
        self._ended_at: dict[str, float] = {}
        self._save_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self.db: Repository | None = None
        self.clock: Callable[[], float] = time.time
        """Wall-clock time (Unix s) for stamps, mutes and the audit log."""
        self.requests_refused = 0
        self.subscribers_dropped = 0
        """Chat track subscribers dropped for falling behind, every room."""
        self.save_failures = 0
        # Who a token's holder is in a room's chat (set by the server to ask
        # the accounts plugins); None falls back to the token's own claims.
        self.author_lookup: Callable[[str, Any], Awaitable[Author | None]] = _no_lookup
        relay.listen(self._on_broadcast)

    def attach(self, db: Repository) -> None:
        """Store chats in ``db`` (migrated with server/_chat_store.MIGRATIONS)."""
        self.db = db

    def _on_broadcast(self, broadcast: Broadcast, active: bool) -> None:
        # Every live room has its interaction tracks from the start, so a
        # viewer can subscribe before the first message or count.
        if not active:
            self._ended_at[broadcast.name] = trio.current_time()
            return
        self._ended_at.pop(broadcast.name, None)
        if self._nursery is not None:
            self._nursery.start_soon(self._load, broadcast.name)
        chat = broadcast.track(CHAT_TRACK)
        chat.end_subscribers_past_bytes = self.settings.subscriber_backlog_bytes
        chat.on_subscriber_ended = self._subscriber_dropped
        chat.may_subscribe = self._may_subscribe
        broadcast.track(VIEWERS_TRACK)

    def _subscriber_dropped(self, track) -> None:
        self.subscribers_dropped += 1
        self.room(track.broadcast.name).subscribers_dropped += 1
        log.info("chat_subscriber_dropped", room=track.broadcast.name,
                 backlog_bytes=self.settings.subscriber_backlog_bytes)

    def _may_subscribe(self, track, subject: str | None) -> bool:
        room = self.rooms.get(track.broadcast.name)
        return room is None or subject is None or not room.is_banned(subject)

    def room(self, room_id: str) -> ChatRoom:
        """The chat of ``room_id`` in memory, made on first use (``open_room``
        also loads what was stored)."""
        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = ChatRoom(room_id, self.settings.limits, self._global_blocklist)
        return room

    async def open_room(self, room_id: str) -> ChatRoom:
        """The chat of ``room_id`` with its stored state (modes, bans, mutes,
        blocklist, message ids and recent messages) loaded once."""
        room = self.room(room_id)
        if self.db is None:
            return room
        loaded = self._loaded.get(room_id)
        if loaded is not None:
            await loaded.wait()
            return room
        loaded = self._loaded[room_id] = trio.Event()
        try:
            state, next_id, recent = await self.db.read(
                lambda c: ChatStore.load(c, room_id, self.settings.limits.history_messages))
            room.restore(state, next_id=next_id, recent=recent)
        finally:
            loaded.set()
        return room

    async def _load(self, room_id: str) -> None:
        try:
            await self.open_room(room_id)
        except Exception:
            log.error("chat_load_failed", room=room_id, exc_info=True)

    # --- what outlives the process --------------------------------------------------------

    async def save(self) -> None:
        """Write every room's changes since the last save, in one transaction."""
        if self.db is None:
            return
        async with self._save_lock:
            changes = {room_id: unsaved for room_id, room in list(self.rooms.items())
                       if (unsaved := room.take_unsaved())}
            if not changes:
                return
            try:
                await self.db.write(lambda c: ChatStore.save(c, changes))
            except Exception:
                # Put them back (in front of anything newer) for the next save.
                self.save_failures += 1
                log.error("chat_save_failed", exc_info=True)
                for room_id, unsaved in changes.items():
                    self.room(room_id).put_back(unsaved)

    async def transcript(self, room_id: str) -> list[tuple[Any, str]]:
        """The room's whole chat, oldest first, with each message's status."""
        if self.db is None:
            room = self.rooms.get(room_id)
            return [] if room is None else room.transcript()
        await self.save()
        return await self.db.read(lambda c: ChatStore.transcript(c, room_id))

    async def audit(self, room_id: str) -> list[AuditEntry]:
        """The room's moderation actions (the newest ``audit_entries``), oldest first."""
        if self.db is None:
            room = self.rooms.get(room_id)
            return [] if room is None else list(room.audit)
        await self.save()
        return await self.db.read(lambda c: ChatStore.audit(c, room_id, self.settings.limits.audit_entries))

    async def _save_forever(self) -> None:
        while True:
            await trio.sleep(self.settings.save_interval_s)
            now_s = self.clock()
            for room in list(self.rooms.values()):
                room.trim(now_s=now_s)
            await self.save()
            # Ended rooms leave memory once saved (the database keeps them).
            now = trio.current_time()
            for room_id, ended in list(self._ended_at.items()):
                if now - ended >= self.settings.ended_room_keep_s and room_id not in self.relay.broadcasts:
                    self._ended_at.pop(room_id)
                    room = self.rooms.get(room_id)
                    if room is not None and self.db is not None and room.has_unsaved():
                        self._ended_at[room_id] = ended  # not saved yet: next round
                        continue
                    self.rooms.pop(room_id, None)
                    self._loaded.pop(room_id, None)
                    self._chat_group_at.pop(room_id, None)

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
        room = await self.open_room(room_id)
        author = await self.author_lookup(room_id, claims) or author_from_claims(claims, room_id)
        if room.is_banned(author.account_id):
            session.close(UNAUTHORIZED, "you are banned from this room")
            return
        room.note_author(author)
        stream = await session.open_bidi_stream()
        self._sessions.setdefault(room_id, {})[session] = author
        try:
            await self._send(stream, {"type": "history",
                                      "messages": [message_record(m) for m in room.history()]})
            await self._serve_requests(session, stream, room, broadcast, author)
        except (SessionClosed, StreamReset, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            sessions = self._sessions.get(room_id, {})
            sessions.pop(session, None)
            if not sessions:
                self._sessions.pop(room_id, None)

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
        now_s = self.clock()
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
        second, on every live broadcast, and save chat changes every
        ``save_interval_s``. Never returns unless cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._save_forever)
            # Rooms already live load their stored state (bans among it) now,
            # the others when they start.
            for name in list(self.relay.broadcasts):
                nursery.start_soon(self._load, name)
            task_status.started()
            next_viewers = -math.inf
            while True:
                now = trio.current_time()
                wall_s = self.clock()
                for room_id, room in list(self.rooms.items()):
                    broadcast = self.relay.broadcasts.get(room_id)
                    batch = room.tick(now_s=wall_s)
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


def audit_record(entry: AuditEntry) -> dict[str, Any]:
    """An audit entry as the audit route answers it."""
    return {"t": entry.time_s, "actor": entry.actor_id, "actor_role": entry.actor_role,
            "action": entry.action, "target": entry.target, "detail": entry.detail}


def documented_chat_routes() -> list[tuple[str, str, str, str, str, tuple[str, ...], dict]]:
    """(method, pattern, name, summary, content type, roles, responses) of the
    chat routes server/_app.py adds, for the OpenAPI document (plugins/_openapi.py)."""
    error = {"$ref": "#/components/schemas/Error"}
    entry = {"type": "object", "required": ["t", "actor", "action", "target", "detail"],
             "properties": {"t": {"type": "number", "description": "Unix time (s)"},
                            "actor": {"type": "string"}, "actor_role": {"type": "string"},
                            "action": {"type": "string"}, "target": {"type": "string"},
                            "detail": {"type": "string"}}}
    return [("GET", "/api/v1/rooms/{room_id}/chat/audit", "room_chat_audit",
             "The room's chat moderation actions, oldest first (the room's owner, its team "
             "moderators and operators).", "application/json", ("host", "operator", "service"),
             {200: ("The audit log.", {"type": "object", "required": ["room_id", "entries"],
                                       "properties": {"room_id": {"type": "string"},
                                                      "entries": {"type": "array", "items": entry}}}),
              401: ("No token, or an invalid one.", error),
              403: ("A token of another role or room, or a host who is not the room's owner or "
                    "on its team.", error)})]

"""The chat of one live room, sans-IO: message validation, rate limits, slow
mode, moderation, batching per tick and reaction counts.

Nothing here does I/O or reads a clock: the caller passes ``now_s`` (server
wall-clock time, Unix seconds) and the live edge's media timestamp, and publishes what ``tick``
returns as one object on the room's chat track. What must outlive the
process (the transcript, moderation actions, modes, bans and mutes) is
handed to the caller by ``take_unsaved`` for it to store in batches. Bytes from viewers are
untrusted: ``decode_request_untrusted`` refuses anything that is not a small,
shallow msgpack map of the expected fields.
"""

from __future__ import annotations

import enum
import unicodedata
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = [
    "Author",
    "AuditEntry",
    "ChatBatch",
    "ChatError",
    "ChatLimits",
    "ChatMessage",
    "ChatRoom",
    "RoomState",
    "Unsaved",
    "Notice",
    "Role",
    "REQUEST_TYPES",
    "decode_request_untrusted",
    "encode_batch",
    "message_record",
]


class Role(str, enum.Enum):
    """What an author is in a room."""

    VIEWER = "viewer"
    HOST = "host"
    MODERATOR = "moderator"
    OPERATOR = "operator"


MODERATORS = (Role.HOST, Role.MODERATOR, Role.OPERATOR)
# Who may moderate whom: a moderator the viewers, the host the moderators
# too, operators everyone (operators included).
RANK = {Role.VIEWER: 0, Role.MODERATOR: 1, Role.HOST: 2, Role.OPERATOR: 3}


class ChatError(Exception):
    """A request refused: ``code`` for programs, ``field`` naming the part at fault."""

    def __init__(self, code: str, message: str, field: str | None = None,
                 retry_after_s: float | None = None) -> None:
        self.code = code
        self.field = field
        self.retry_after_s = retry_after_s
        super().__init__(message)


@dataclass(frozen=True)
class ChatLimits:
    """The ``[chat]`` bounds of one room."""

    max_message_bytes: int = 500
    """Largest message text, UTF-8 (bytes)."""
    max_request_bytes: int = 2048
    """Largest msgpack request from a viewer (bytes)."""
    history_messages: int = 50
    """Messages a joining viewer is sent (count)."""
    transcript_messages: int = 100_000
    """Messages kept for replay and download (count)."""
    bucket_capacity: int = 5
    """Messages an account may send in a burst (count)."""
    bucket_refill_per_s: float = 0.5
    """Messages per second an account earns back (1/s)."""
    flood_strikes: int = 3
    """Refusals for sending too fast before a temporary mute (count)."""
    flood_mute_s: float = 60.0
    """Length of that mute (s)."""
    tick_s: float = 0.05
    """Messages are published together once per tick (s)."""
    reaction_interval_s: float = 0.1
    """Reaction counts are published at most this often (s)."""
    reactions: tuple[str, ...] = ("like", "heart", "fire", "clap", "laugh")
    """Reaction kinds viewers may send."""
    max_blocklist_terms: int = 1000
    """Terms in one blocklist (count)."""
    reaction_bucket_capacity: int = 20
    """Reactions an account may send in a burst (count)."""
    reaction_refill_per_s: float = 5.0
    """Reactions per second an account earns back (1/s)."""
    min_mute_s: float = 1.0
    """Shortest mute a moderator may give (s)."""
    max_mute_s: float = 30 * 86400.0
    """Longest mute a moderator may give (s)."""
    max_request_fields: int = 8
    """Entries in a request's msgpack map (count)."""
    reply_window_messages: int = 1000
    """Recent visible messages that may be replied to or deleted (count)."""
    audit_entries: int = 1000
    """Moderation actions kept in memory per room, and answered by the audit route (count)."""


@dataclass(frozen=True)
class Author:
    """Who sends a request, as the caller's accounts say."""

    account_id: str
    display_name: str
    role: Role = Role.VIEWER
    registered: bool = False
    """False for a guest (subject ``guest:...``) or a subject no account has."""
    follows_host: bool = False


@dataclass(frozen=True)
class ChatMessage:
    """An accepted message, as every viewer receives it."""

    id: int
    author_id: str
    author_name: str
    author_role: str
    text: str
    reply_to: int | None
    server_time_s: float
    """Wall-clock time it was accepted (Unix s)."""
    media_timestamp_us: int
    """The live edge's media time when the message was accepted: players show
    it when their playout reaches that moment; replays show it there too."""

    @property
    def from_host(self) -> bool:
        return self.author_role == Role.HOST.value


@dataclass(frozen=True)
class Notice:
    """Something only the sender is told (a refusal, a mute)."""

    account_id: str
    code: str
    message: str
    field: str | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One moderation action."""

    time_s: float
    """Wall-clock time (Unix s)."""
    actor_id: str
    actor_role: str
    action: str
    target: str
    detail: str = ""


@dataclass(frozen=True)
class RoomState:
    """A room's moderation state that outlives the process."""

    slow_mode_s: float = 0.0
    registered_only: bool = False
    followers_only: bool = False
    hold_for_review: bool = False
    blocklist: tuple[str, ...] = ()
    banned: tuple[str, ...] = ()
    muted_until: tuple[tuple[str, float], ...] = ()
    """(account, wall-clock Unix s) of mutes still running."""


@dataclass
class Unsaved:
    """What changed since the last ``take_unsaved``, for the caller to store."""

    messages: list[tuple[ChatMessage, str]]
    """Messages new or whose status changed, with their status now."""
    audit: list[AuditEntry]
    state: RoomState | None
    """The whole moderation state when any of it changed, else None."""

    def __bool__(self) -> bool:
        return bool(self.messages or self.audit or self.state is not None)


@dataclass
class ChatBatch:
    """What one tick publishes on the chat track."""

    sequence: int
    server_time_s: float
    messages: list[ChatMessage] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    reactions: dict[str, int] = field(default_factory=dict)


def message_record(message: ChatMessage) -> dict[str, Any]:
    """A message as viewers receive it (msgpack or JSON)."""
    return {"id": message.id, "author": message.author_id, "name": message.author_name,
            "role": message.author_role, "host": message.from_host, "text": message.text,
            "reply_to": message.reply_to, "t": message.server_time_s,
            "media_us": message.media_timestamp_us}


def encode_batch(batch: ChatBatch) -> bytes:
    """The batch as the msgpack object the chat track carries."""
    return msgpack.packb({
        "seq": batch.sequence,
        "t": batch.server_time_s,
        "messages": [message_record(m) for m in batch.messages],
        "deleted": batch.deleted,
        "reactions": batch.reactions,
    })


# Each request type: its fields and (type check, required). Numbers accept
# ints and floats; bools are never numbers.
_NUMBER = (int, float)
_SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "message": {"text": ((str,), True), "reply_to": ((int,), False)},
    "reaction": {"kind": ((str,), True)},
    "delete": {"message_id": ((int,), True)},
    "approve": {"message_id": ((int,), True)},
    "reject": {"message_id": ((int,), True)},
    "held": {},
    "mute": {"account": ((str,), True), "seconds": (_NUMBER, True)},
    "unmute": {"account": ((str,), True)},
    "ban": {"account": ((str,), True)},
    "unban": {"account": ((str,), True)},
    "mode": {"slow_mode_s": (_NUMBER, False), "registered_only": ((bool,), False),
             "followers_only": ((bool,), False), "hold_for_review": ((bool,), False)},
    "blocklist": {"terms": ((list,), True)},
}
REQUEST_TYPES = tuple(_SCHEMAS)


def decode_request_untrusted(data: bytes, limits: ChatLimits) -> dict[str, Any]:
    """A request from a chat session: a small msgpack map with a ``type``
    (message, reaction, or a moderation action) and that type's fields.
    Raises ChatError naming the field at fault."""
    if len(data) > limits.max_request_bytes:
        raise ChatError("too_large", f"request exceeds {limits.max_request_bytes} bytes", "request")
    unpacker = msgpack.Unpacker(
        max_buffer_size=limits.max_request_bytes, max_str_len=limits.max_request_bytes,
        max_bin_len=0, max_array_len=limits.max_blocklist_terms, max_map_len=limits.max_request_fields,
        max_ext_len=0,
        raw=False, strict_map_key=True)
    unpacker.feed(data)
    malformed = (ValueError, msgpack.StackError, msgpack.FormatError, UnicodeDecodeError)
    try:
        request = unpacker.unpack()
    except msgpack.OutOfData:
        raise ChatError("malformed", "request is incomplete msgpack", "request") from None
    except malformed as exc:
        raise ChatError("malformed", f"request is not a small msgpack map ({exc.__class__.__name__})",
                        "request") from None
    try:
        unpacker.unpack()
    except msgpack.OutOfData:
        pass  # exactly one object, as wanted
    except malformed:
        raise ChatError("malformed", "one msgpack object per request", "request") from None
    else:
        raise ChatError("malformed", "one msgpack object per request", "request")
    if not isinstance(request, dict):
        raise ChatError("malformed", "request must be a map", "request")
    kind = request.get("type")
    schema = _SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ChatError("bad_type", "type must be one of " + ", ".join(REQUEST_TYPES), "type")
    for name in request:
        if name != "type" and name not in schema:
            raise ChatError("unknown_field", f"unknown field {name!r} for {kind}", str(name))
    for name, (types, required) in schema.items():
        value = request.get(name)
        if value is None:
            if required:
                raise ChatError(f"missing_{name}", f"{kind} needs {name}", name)
            continue
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ChatError(f"bad_{name}", f"{name} has the wrong type", name)
    if kind == "blocklist" and not all(isinstance(t, str) for t in request["terms"]):
        raise ChatError("bad_terms", "terms must be strings", "terms")
    return request


def normalize_for_matching(text: str) -> str:
    """Fold case and compatibility forms, so blocklists catch look-alikes."""
    return unicodedata.normalize("NFKC", text).casefold()


def _clean_text(text: str, limits: ChatLimits) -> str:
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        raise ChatError("empty", "message text is empty", "text")
    if len(text.encode("utf-8")) > limits.max_message_bytes:
        raise ChatError("too_long", f"message exceeds {limits.max_message_bytes} bytes", "text")
    # Control characters (other than none at all) would let a message
    # rewrite how others' lines look; emoji and every script are welcome.
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise ChatError("control_characters", "message contains control characters", "text")
    return text


class _Bucket:
    """A token bucket: ``capacity`` in a burst, ``refill_per_s`` earned back."""

    __slots__ = ("tokens", "updated_s", "strikes")

    def __init__(self, capacity: float, now_s: float) -> None:
        self.tokens = capacity
        self.updated_s = now_s
        self.strikes = 0

    def take(self, capacity: float, refill_per_s: float, now_s: float) -> bool:
        self.tokens = min(capacity, self.tokens + max(0.0, now_s - self.updated_s) * refill_per_s)
        self.updated_s = now_s
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def full_at(self, capacity: float, refill_per_s: float) -> float:
        """When it holds ``capacity`` again (and so need not be kept)."""
        return self.updated_s + (capacity - self.tokens) / refill_per_s


class ChatRoom:
    """The chat of one room. Settings: ``slow_mode_s`` (0 or 1 to 300),
    ``registered_only``, ``followers_only``, ``hold_for_review``, and the
    room blocklist; ``global_blocklist`` is shared by every room (terms
    normalised with ``normalize_for_matching``)."""

    def __init__(self, room_id: str, limits: ChatLimits | None = None,
                 global_blocklist: set[str] | None = None) -> None:
        self.room_id = room_id
        self.limits = limits or ChatLimits()
        self.global_blocklist = global_blocklist if global_blocklist is not None else set()
        self.blocklist: set[str] = set()
        self.slow_mode_s = 0.0
        self.registered_only = False
        self.followers_only = False
        self.hold_for_review = False
        self.audit: deque[AuditEntry] = deque(maxlen=self.limits.audit_entries)
        """The latest moderation actions (all of them are handed over by ``take_unsaved``)."""
        self.unsaved_audit: list[AuditEntry] = []
        """Moderation actions not yet handed over by ``take_unsaved``."""
        self._unsaved_messages: dict[int, tuple[ChatMessage, str]] = {}
        self._state_changed = False
        self._next_id = 1
        self._sequence = 0
        self._visible: dict[int, ChatMessage] = {}
        self._history: deque[ChatMessage] = deque(maxlen=self.limits.history_messages)
        self._transcript: dict[int, tuple[ChatMessage, str]] = {}
        self._pending: list[ChatMessage] = []
        self._pending_deleted: list[int] = []
        self._held: dict[int, ChatMessage] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._reaction_buckets: dict[str, _Bucket] = {}
        self._last_message_s: dict[str, float] = {}
        self._muted_until: dict[str, float] = {}
        self._banned: set[str] = set()
        self._roles: dict[str, Role] = {}
        """Accounts seen here with more than a viewer's role (for rank checks)."""
        self._reactions: dict[str, int] = {}
        self.reactions_total: dict[str, int] = {}
        """Reactions counted since the room began, by kind (for statistics)."""
        self.subscribers_dropped = 0
        """Chat track subscribers dropped for falling behind (set by the caller)."""
        self._last_reactions_s = float("-inf")
        self._last_tick_s = float("-inf")

    # --- one entry point ---------------------------------------------------------------

    def handle(self, author: Author, request: dict[str, Any], *, now_s: float,
               media_timestamp_us: int) -> dict[str, Any]:
        """Carry out a decoded request of any type; returns the reply for its
        sender. Raises ChatError for a refusal."""
        kind = request["type"]
        if kind in ("message", "reaction"):
            message = self.submit(author, request, now_s=now_s, media_timestamp_us=media_timestamp_us)
            if message is not None:
                return {"type": "ok", "id": message.id}
            return {"type": "held" if kind == "message" else "ok"}
        if kind == "delete":
            self.delete(author, request["message_id"], now_s=now_s)
        elif kind == "approve":
            self.approve(author, request["message_id"], now_s=now_s)
        elif kind == "reject":
            self.reject(author, request["message_id"], now_s=now_s)
        elif kind == "held":
            self._require_moderator(author)
            return {"type": "held_messages", "messages": [message_record(m) for m in self.held()]}
        elif kind == "mute":
            self.mute(author, request["account"], float(request["seconds"]), now_s=now_s)
        elif kind == "unmute":
            self.unmute(author, request["account"], now_s=now_s)
        elif kind == "ban":
            self.ban(author, request["account"], now_s=now_s)
        elif kind == "unban":
            self.unban(author, request["account"], now_s=now_s)
        elif kind == "mode":
            self.set_mode(author, now_s=now_s, **{k: v for k, v in request.items() if k != "type"})
        elif kind == "blocklist":
            self.set_blocklist(author, request["terms"], now_s=now_s)
        return {"type": "ok"}

    # --- viewers -----------------------------------------------------------------------

    def note_author(self, author: Author) -> None:
        """Remember an author's role in this room (a session joined), so a
        moderator cannot mute the host before the host has spoken."""
        if author.role is not Role.VIEWER:
            self._roles[author.account_id] = author.role

    def submit(self, author: Author, request: dict[str, Any], *, now_s: float,
               media_timestamp_us: int) -> ChatMessage | None:
        """Take a decoded request; returns the message when accepted (it is
        published at the next tick), None when held for review or a reaction.
        Raises ChatError (to be sent to this author only) when refused."""
        if request["type"] == "reaction":
            self.react(author, request["kind"], now_s=now_s)
            return None
        self._check_may_speak(author, now_s)
        text = _clean_text(request["text"], self.limits)
        reply_to = request.get("reply_to")
        if reply_to is not None and reply_to not in self._visible:
            raise ChatError("unknown_reply", "the message replied to is not in the chat", "reply_to")
        flagged = self._blocked_term(text)
        if flagged is not None and not self.hold_for_review:
            raise ChatError("blocked", "the message contains a blocked term", "text")
        self._take_token(author, now_s)
        self.note_author(author)
        message = ChatMessage(self._next_id, author.account_id, author.display_name,
                              author.role.value, text, reply_to, now_s, media_timestamp_us)
        self._next_id += 1
        self._last_message_s[author.account_id] = now_s
        if flagged is not None:
            # Hold-for-review mode: flagged messages wait for a moderator.
            self._held[message.id] = message
            self._record(message, "held")
            return None
        self._accept(message)
        return message

    def react(self, author: Author, kind: str, *, now_s: float) -> None:
        """Count a reaction; counts go out every reaction interval, never one
        by one. Banned and muted accounts may not react; each account has its
        own token bucket of reactions."""
        if kind not in self.limits.reactions:
            raise ChatError("unknown_reaction", f"reaction must be one of {', '.join(self.limits.reactions)}",
                            "kind")
        self._check_not_silenced(author, now_s)
        limits = self.limits
        bucket = self._reaction_buckets.get(author.account_id)
        if bucket is None:
            bucket = self._reaction_buckets[author.account_id] = _Bucket(limits.reaction_bucket_capacity, now_s)
        if not bucket.take(limits.reaction_bucket_capacity, limits.reaction_refill_per_s, now_s):
            raise ChatError("rate_limited", "reacting too fast", "kind",
                            retry_after_s=(1 - bucket.tokens) / limits.reaction_refill_per_s)
        self._reactions[kind] = self._reactions.get(kind, 0) + 1
        self.reactions_total[kind] = self.reactions_total.get(kind, 0) + 1

    def history(self) -> list[ChatMessage]:
        """The last messages still visible, oldest first, for a joining viewer."""
        return [m for m in self._history if m.id in self._visible]

    def is_banned(self, account_id: str) -> bool:
        return account_id in self._banned

    def transcript(self) -> list[tuple[ChatMessage, str]]:
        """The messages kept in memory (the last ``transcript_messages``),
        oldest first, with their status: visible, deleted, held or rejected.
        The whole transcript is what the caller stored from ``take_unsaved``."""
        return list(self._transcript.values())

    # --- publishing --------------------------------------------------------------------

    def tick(self, *, now_s: float) -> ChatBatch | None:
        """What to publish now: the messages and deletions since the last
        tick and, once per reaction interval, the reaction counts. None when
        there is nothing, or the tick interval has not passed."""
        if now_s - self._last_tick_s < self.limits.tick_s:
            return None
        reactions: dict[str, int] = {}
        if self._reactions and now_s - self._last_reactions_s >= self.limits.reaction_interval_s:
            reactions, self._reactions = self._reactions, {}
            self._last_reactions_s = now_s
        if not (self._pending or self._pending_deleted or reactions):
            return None
        self._last_tick_s = now_s
        self._sequence += 1
        batch = ChatBatch(self._sequence, now_s, self._pending, self._pending_deleted, reactions)
        self._pending, self._pending_deleted = [], []
        return batch

    # --- what outlives the process ---------------------------------------------------------

    def state(self) -> RoomState:
        return RoomState(self.slow_mode_s, self.registered_only, self.followers_only,
                         self.hold_for_review, tuple(sorted(self.blocklist)), tuple(sorted(self._banned)),
                         tuple(sorted(self._muted_until.items())))

    def has_unsaved(self) -> bool:
        return bool(self._unsaved_messages or self.unsaved_audit or self._state_changed)

    def take_unsaved(self) -> Unsaved:
        """What changed since the last call: new messages and status changes,
        moderation actions, and the moderation state if it changed."""
        unsaved = Unsaved(list(self._unsaved_messages.values()), self.unsaved_audit,
                          self.state() if self._state_changed else None)
        self._unsaved_messages, self.unsaved_audit, self._state_changed = {}, [], False
        return unsaved

    def put_back(self, unsaved: Unsaved) -> None:
        """Take back what ``take_unsaved`` handed over and could not be stored,
        ahead of anything newer, for the next attempt."""
        self.unsaved_audit[:0] = unsaved.audit
        for message, status in unsaved.messages:
            self._unsaved_messages.setdefault(message.id, (message, status))
        if unsaved.state is not None:
            self._state_changed = True

    def restore(self, state: RoomState, *, next_id: int, recent: list[ChatMessage] = ()) -> None:
        """Take back what was stored: the moderation state, the next message
        id, and the most recent visible messages (for history and replies)."""
        self.slow_mode_s = state.slow_mode_s
        self.registered_only = state.registered_only
        self.followers_only = state.followers_only
        self.hold_for_review = state.hold_for_review
        self.blocklist = set(state.blocklist)
        self._banned = set(state.banned)
        self._muted_until = dict(state.muted_until)
        self._next_id = max(self._next_id, next_id)
        for message in recent:
            self._visible[message.id] = message
            self._history.append(message)
        self._trim_visible()

    def trim(self, *, now_s: float) -> None:
        """Forget per-account state that no longer matters: buckets full
        again, mutes over, slow-mode stamps past the slow-mode interval."""
        limits = self.limits
        for buckets, capacity, refill in ((self._buckets, limits.bucket_capacity, limits.bucket_refill_per_s),
                                          (self._reaction_buckets, limits.reaction_bucket_capacity,
                                           limits.reaction_refill_per_s)):
            for account in [a for a, b in buckets.items()
                            if b.strikes == 0 and b.full_at(capacity, refill) <= now_s]:
                del buckets[account]
        expired = [a for a, until in self._muted_until.items() if until <= now_s]
        for account in expired:
            del self._muted_until[account]
        if expired:
            self._state_changed = True
        for account in [a for a, t in self._last_message_s.items() if now_s - t >= self.slow_mode_s]:
            del self._last_message_s[account]

    # --- moderation --------------------------------------------------------------------

    def delete(self, actor: Author, message_id: int, *, now_s: float) -> None:
        self._require_moderator(actor)
        message = self._visible.get(message_id)
        if message is None:
            raise ChatError("unknown_message", "no such message in the chat", "message_id")
        self._require_outranks(actor, Role(message.author_role), "message_id")
        self._remove(message_id)
        self._log(now_s, actor, "delete", str(message_id), f"by {message.author_id}")

    def mute(self, actor: Author, account_id: str, seconds: float, *, now_s: float) -> None:
        """Silence an account for ``seconds``; its messages disappear from view."""
        self._require_moderator(actor)
        limits = self.limits
        if not limits.min_mute_s <= seconds <= limits.max_mute_s:
            raise ChatError("bad_duration", f"mute for {limits.min_mute_s:g} to {limits.max_mute_s:g} s",
                            "seconds")
        self._require_outranks(actor, self._role_of(account_id), "account")
        self._muted_until[account_id] = now_s + seconds
        self._state_changed = True
        self._remove_author(account_id)
        self._log(now_s, actor, "mute", account_id, f"{seconds:g} s")

    def unmute(self, actor: Author, account_id: str, *, now_s: float) -> None:
        self._require_moderator(actor)
        if self._muted_until.pop(account_id, None) is None:
            raise ChatError("not_muted", f"{account_id} is not muted", "account")
        self._state_changed = True
        self._log(now_s, actor, "unmute", account_id)

    def ban(self, actor: Author, account_id: str, *, now_s: float) -> None:
        """Ban an account from the room (the caller also ends its sessions)."""
        self._require_moderator(actor)
        self._require_outranks(actor, self._role_of(account_id), "account")
        self._banned.add(account_id)
        self._state_changed = True
        self._remove_author(account_id)
        self._log(now_s, actor, "ban", account_id)

    def unban(self, actor: Author, account_id: str, *, now_s: float) -> None:
        self._require_moderator(actor)
        if account_id not in self._banned:
            raise ChatError("not_banned", f"{account_id} is not banned", "account")
        self._banned.discard(account_id)
        self._state_changed = True
        self._log(now_s, actor, "unban", account_id)

    def set_blocklist(self, actor: Author, terms: list[str], *, now_s: float) -> None:
        self._require_moderator(actor)
        if len(terms) > self.limits.max_blocklist_terms:
            raise ChatError("too_many_terms", f"at most {self.limits.max_blocklist_terms} terms", "terms")
        self.blocklist = {normalize_for_matching(t) for t in terms if t.strip()}
        self._state_changed = True
        self._log(now_s, actor, "blocklist", self.room_id, f"{len(self.blocklist)} terms")

    def set_mode(self, actor: Author, *, now_s: float, slow_mode_s: float | None = None,
                 registered_only: bool | None = None, followers_only: bool | None = None,
                 hold_for_review: bool | None = None) -> None:
        self._require_moderator(actor)
        if slow_mode_s is not None:
            if slow_mode_s != 0 and not 1 <= slow_mode_s <= 300:
                raise ChatError("bad_slow_mode", "slow mode is 0 (off) or 1 to 300 s", "slow_mode_s")
            self.slow_mode_s = slow_mode_s
        for name, value in (("registered_only", registered_only), ("followers_only", followers_only),
                            ("hold_for_review", hold_for_review)):
            if value is not None:
                setattr(self, name, value)
        self._state_changed = True
        self._log(now_s, actor, "mode", self.room_id,
                  f"slow={self.slow_mode_s:g} registered={self.registered_only} "
                  f"followers={self.followers_only} review={self.hold_for_review}")

    def held(self) -> list[ChatMessage]:
        """Messages waiting for review, oldest first."""
        return list(self._held.values())

    def approve(self, actor: Author, message_id: int, *, now_s: float) -> None:
        self._require_moderator(actor)
        message = self._held.pop(message_id, None)
        if message is None:
            raise ChatError("unknown_message", "no such held message", "message_id")
        self._accept(message)
        self._log(now_s, actor, "approve", str(message_id))

    def reject(self, actor: Author, message_id: int, *, now_s: float) -> None:
        self._require_moderator(actor)
        message = self._held.pop(message_id, None)
        if message is None:
            raise ChatError("unknown_message", "no such held message", "message_id")
        self._record(message, "rejected")
        self._log(now_s, actor, "reject", str(message_id))

    # --- internals ---------------------------------------------------------------------

    def _check_not_silenced(self, author: Author, now_s: float) -> None:
        if author.account_id in self._banned:
            raise ChatError("banned", "you are banned from this room", "account")
        until = self._muted_until.get(author.account_id)
        if until is not None and now_s < until:
            raise ChatError("muted", "you are muted", "account", retry_after_s=until - now_s)

    def _check_may_speak(self, author: Author, now_s: float) -> None:
        self._check_not_silenced(author, now_s)
        if author.role in MODERATORS:
            return
        if self.registered_only and not author.registered:
            raise ChatError("registered_only", "only registered accounts may chat here", "account")
        if self.followers_only and not author.follows_host:
            raise ChatError("followers_only", "only followers of the host may chat here", "account")
        last = self._last_message_s.get(author.account_id)
        if self.slow_mode_s and last is not None and now_s - last < self.slow_mode_s:
            wait = self.slow_mode_s - (now_s - last)
            raise ChatError("slow_mode", f"slow mode: wait {wait:.0f} s", "text", retry_after_s=wait)

    def _take_token(self, author: Author, now_s: float) -> None:
        if author.role in MODERATORS:
            return
        limits = self.limits
        bucket = self._buckets.get(author.account_id)
        if bucket is None:
            bucket = self._buckets[author.account_id] = _Bucket(limits.bucket_capacity, now_s)
        if bucket.take(limits.bucket_capacity, limits.bucket_refill_per_s, now_s):
            return
        bucket.strikes += 1
        if bucket.strikes >= limits.flood_strikes:
            bucket.strikes = 0
            self._muted_until[author.account_id] = now_s + limits.flood_mute_s
            self._state_changed = True
            self._log(now_s, Author("system", "system", Role.OPERATOR), "mute", author.account_id,
                      f"flooding: {limits.flood_mute_s:g} s")
            raise ChatError("flood_muted", f"too many messages: muted for {limits.flood_mute_s:g} s",
                            "text", retry_after_s=limits.flood_mute_s)
        raise ChatError("rate_limited", "sending too fast", "text",
                        retry_after_s=(1 - bucket.tokens) / limits.bucket_refill_per_s)

    def _blocked_term(self, text: str) -> str | None:
        folded = normalize_for_matching(text)
        for term in (*self.blocklist, *self.global_blocklist):
            if term and term in folded:
                return term
        return None

    def _record(self, message: ChatMessage, status: str) -> None:
        self._transcript[message.id] = (message, status)
        self._unsaved_messages[message.id] = (message, status)
        if len(self._transcript) > self.limits.transcript_messages:
            del self._transcript[next(iter(self._transcript))]

    def _accept(self, message: ChatMessage) -> None:
        self._visible[message.id] = message
        self._trim_visible()
        self._history.append(message)
        self._record(message, "visible")
        self._pending.append(message)

    def _trim_visible(self) -> None:
        while len(self._visible) > self.limits.reply_window_messages:
            del self._visible[next(iter(self._visible))]

    def _remove(self, message_id: int) -> None:
        message = self._visible.pop(message_id, None)
        if message is not None:
            self._record(message, "deleted")
            self._pending = [m for m in self._pending if m.id != message_id]
            self._pending_deleted.append(message_id)

    def _remove_author(self, account_id: str) -> None:
        for message_id in [i for i, m in self._visible.items() if m.author_id == account_id]:
            self._remove(message_id)
        for message_id in [i for i, m in self._held.items() if m.author_id == account_id]:
            self._record(self._held.pop(message_id), "rejected")

    def _role_of(self, account_id: str) -> Role:
        return self._roles.get(account_id, Role.VIEWER)

    def _require_moderator(self, actor: Author) -> None:
        if actor.role not in MODERATORS:
            raise ChatError("forbidden", "only the host, moderators and operators may moderate", "role")

    def _require_outranks(self, actor: Author, target: Role, field: str) -> None:
        if actor.role is Role.OPERATOR or RANK[actor.role] > RANK[target]:
            return
        raise ChatError("outranked", f"a {actor.role.value} may not moderate a {target.value}", field)

    def _log(self, now_s: float, actor: Author, action: str, target: str, detail: str = "") -> None:
        entry = AuditEntry(now_s, actor.account_id, actor.role.value, action, target, detail)
        self.audit.append(entry)
        self.unsaved_audit.append(entry)

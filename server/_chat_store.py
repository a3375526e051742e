"""The chat's SQLite tables: every room's transcript, moderation actions (the
audit log) and moderation state (modes, blocklist, bans, mutes), written in
batches by server/_interaction.py so that they outlive a restart."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from shopcast.plugins._chat_engine import AuditEntry, ChatMessage, RoomState, Unsaved
from shopcast.plugins._storage import Migration

__all__ = ["MIGRATIONS", "ChatStore"]

MIGRATIONS = [
    Migration("chat", 1, """
CREATE TABLE chat_messages (
    room_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    author_id TEXT NOT NULL,
    author_name TEXT NOT NULL,
    author_role TEXT NOT NULL,
    text TEXT NOT NULL,
    reply_to INTEGER,
    t REAL NOT NULL,
    media_us INTEGER NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (room_id, id)
);
CREATE TABLE chat_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    t REAL NOT NULL,
    actor TEXT NOT NULL,
    actor_role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX chat_audit_room ON chat_audit(room_id, seq);
CREATE TABLE chat_rooms (
    room_id TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
"""),
]

_COLUMNS = "id, author_id, author_name, author_role, text, reply_to, t, media_us, status"


def _message(row: sqlite3.Row) -> ChatMessage:
    return ChatMessage(row["id"], row["author_id"], row["author_name"], row["author_role"], row["text"],
                       row["reply_to"], row["t"], row["media_us"])


class ChatStore:
    """The chat's SQL; each method takes a connection (``Database.read`` /
    ``Database.write`` run it off the event loop)."""

    @staticmethod
    def save(connection: sqlite3.Connection, changes: dict[str, Unsaved]) -> None:
        """Store what rooms changed since the last save, in one transaction."""
        for room_id, unsaved in changes.items():
            connection.executemany(
                f"INSERT INTO chat_messages (room_id, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (room_id, id) DO UPDATE SET status = excluded.status",
                [(room_id, m.id, m.author_id, m.author_name, m.author_role, m.text, m.reply_to,
                  m.server_time_s, m.media_timestamp_us, status) for m, status in unsaved.messages])
            connection.executemany(
                "INSERT INTO chat_audit (room_id, t, actor, actor_role, action, target, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(room_id, e.time_s, e.actor_id, e.actor_role, e.action, e.target, e.detail)
                 for e in unsaved.audit])
            if unsaved.state is not None:
                connection.execute(
                    "INSERT INTO chat_rooms (room_id, state) VALUES (?, ?) "
                    "ON CONFLICT (room_id) DO UPDATE SET state = excluded.state",
                    (room_id, json.dumps(_state_record(unsaved.state))))

    @staticmethod
    def load(connection: sqlite3.Connection, room_id: str,
             recent: int) -> tuple[RoomState, int, list[ChatMessage]]:
        """A room's stored moderation state, its next message id, and its
        last ``recent`` visible messages, oldest first."""
        row = connection.execute("SELECT state FROM chat_rooms WHERE room_id = ?", (room_id,)).fetchone()
        state = _state_from_record(json.loads(row["state"])) if row else RoomState()
        top = connection.execute("SELECT MAX(id) FROM chat_messages WHERE room_id = ?", (room_id,)).fetchone()
        rows = connection.execute(
            f"SELECT {_COLUMNS} FROM chat_messages WHERE room_id = ? AND status = 'visible' "
            "ORDER BY id DESC LIMIT ?", (room_id, recent)).fetchall()
        return state, (top[0] or 0) + 1, [_message(r) for r in reversed(rows)]

    @staticmethod
    def transcript(connection: sqlite3.Connection, room_id: str) -> list[tuple[ChatMessage, str]]:
        rows = connection.execute(f"SELECT {_COLUMNS} FROM chat_messages WHERE room_id = ? ORDER BY id",
                                  (room_id,)).fetchall()
        return [(_message(r), r["status"]) for r in rows]

    @staticmethod
    def audit(connection: sqlite3.Connection, room_id: str, limit: int) -> list[AuditEntry]:
        """The room's last ``limit`` moderation actions, oldest first."""
        rows = connection.execute(
            "SELECT t, actor, actor_role, action, target, detail FROM chat_audit WHERE room_id = ? "
            "ORDER BY seq DESC LIMIT ?", (room_id, limit)).fetchall()
        return [AuditEntry(r["t"], r["actor"], r["actor_role"], r["action"], r["target"], r["detail"])
                for r in reversed(rows)]


def _state_record(state: RoomState) -> dict[str, Any]:
    return {"slow_mode_s": state.slow_mode_s, "registered_only": state.registered_only,
            "followers_only": state.followers_only, "hold_for_review": state.hold_for_review,
            "blocklist": list(state.blocklist), "banned": list(state.banned),
            "muted_until": [[a, t] for a, t in state.muted_until]}


def _state_from_record(record: dict[str, Any]) -> RoomState:
    return RoomState(float(record["slow_mode_s"]), bool(record["registered_only"]),
                     bool(record["followers_only"]), bool(record["hold_for_review"]),
                     tuple(record["blocklist"]), tuple(record["banned"]),
                     tuple((a, float(t)) for a, t in record["muted_until"]))

"""The rooms plugin (ISO IWA 41 §5.2, §6.2 f): live rooms from scheduling to
their end, with push and publish URLs, a public share page with Open Graph
tags, ratings and comments, automatic start and end, and emergency shutdown.

States and what moves a room between them (anything else changes nothing):

    scheduled --push before start--------------> rehearsal (private broadcast)
    scheduled --push at/after start, no veto----> live
    rehearsal --start time reached, no veto-----> live (broadcast made public)
    rehearsal --push stopped--------------------> scheduled
    live      --push stopped for push_lost_end_after_s, or
                duration + auto_end_grace_s past--> ended
    scheduled --duration + grace past, no push--> ended ("no_show")
    any but ended --operator shutdown------------> ended ("shutdown")

"ended" is the last state: whether an ended room can be watched again is
not a state but the replay service's answer (``app.replays.has_replay``),
which changes on its own (retention deletes recordings, an emergency
shutdown withholds one, a room may not be recorded at all). Times are Unix
seconds from ``self.clock`` (``time.time``), which tests replace.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import sqlite3
import time
import urllib.parse
from typing import Any

import trio

from shopcast.plugins._accounts import subject_digest
from shopcast.plugins._api import (
    ANONYMOUS,
    PAGE_SCHEMA_FIELDS,
    Api,
    field_error,
    format_time,
    page_params,
    parse_time_untrusted,
)
from shopcast.plugins._hookspecs import hookimpl
from shopcast.plugins._storage import Migration
from shopcast.server._log import get_logger
from shopcast.server._routing import HTTPError, Response

__all__ = ["ROOM_STATES", "RoomStore", "RoomsPlugin"]

log = get_logger("rooms")
# WebTransport close code of sessions ended by an emergency shutdown (moq-lite's "app" range).
SHUTDOWN_CLOSE_CODE = 64 + 1

ROOM_STATES = ("scheduled", "rehearsal", "live", "ended")
ORIENTATIONS = ("landscape", "portrait")
USERS = ("viewer", "host", "operator")
EVERYONE = (ANONYMOUS, "viewer", "host", "operator", "service")
_JSON_LIST_FIELDS = ("keywords", "hashtags", "target_regions")
# Edits allowed until the room starts.
_EDITABLE_STATES = ("scheduled", "rehearsal")
_ROOM_ID = re.compile(r"r[0-9a-f]{16}")

MIGRATIONS = [
    Migration("rooms", 1, """
CREATE TABLE rooms (
    id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL REFERENCES accounts(id),
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    scheduled_start REAL NOT NULL,
    duration_s INTEGER NOT NULL,
    keywords TEXT NOT NULL,
    hashtags TEXT NOT NULL,
    cover_image_url TEXT,
    orientation TEXT NOT NULL,
    language TEXT NOT NULL,
    region TEXT NOT NULL,
    target_regions TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    end_reason TEXT,
    shutdown_reason TEXT,
    shutdown_by TEXT,
    push_lost_at REAL
);
CREATE INDEX rooms_start ON rooms(state, scheduled_start);
CREATE INDEX rooms_owner ON rooms(owner_id);
CREATE TABLE room_team (
    room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    PRIMARY KEY (room_id, account_id)
);
CREATE INDEX room_team_account ON room_team(account_id);
CREATE TABLE room_ratings (
    room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    positive INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (room_id, account_id)
);
CREATE INDEX room_ratings_account ON room_ratings(account_id);
CREATE TABLE room_comments (
    id INTEGER PRIMARY KEY,
    room_id TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    text TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX room_comments_room ON room_comments(room_id, id);
CREATE INDEX room_comments_account ON room_comments(account_id);
"""),
    # Whether the live is recorded (server/_recording.py); 1 unless the host says not.
    Migration("rooms", 2, "ALTER TABLE rooms ADD COLUMN recording INTEGER NOT NULL DEFAULT 1;"),
]


def _decode(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    room = dict(row)
    for key in _JSON_LIST_FIELDS:
        room[key] = json.loads(room[key])
    return room


class RoomStore:
    """Every SQL statement of the rooms plugin (see plugins/_storage.py)."""

    @staticmethod
    def insert(c: sqlite3.Connection, row: dict[str, Any], team: list[str]) -> None:
        row = {k: json.dumps(v) if k in _JSON_LIST_FIELDS else v for k, v in row.items()}
        c.execute(f"INSERT INTO rooms ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                  tuple(row.values()))
        RoomStore.set_team(c, row["id"], team)

    @staticmethod
    def update(c: sqlite3.Connection, room_id: str, changes: dict[str, Any]) -> None:
        changes = {k: json.dumps(v) if k in _JSON_LIST_FIELDS else v for k, v in changes.items()}
        sets = ", ".join(f"{k} = ?" for k in changes)
        c.execute(f"UPDATE rooms SET {sets} WHERE id = ?", (*changes.values(), room_id))

    @staticmethod
    def set_team(c: sqlite3.Connection, room_id: str, team: list[str]) -> None:
        c.execute("DELETE FROM room_team WHERE room_id = ?", (room_id,))
        c.executemany("INSERT INTO room_team VALUES (?, ?)", [(room_id, a) for a in team])

    @staticmethod
    def get(c: sqlite3.Connection, room_id: str) -> dict[str, Any] | None:
        return _decode(c.execute("SELECT * FROM rooms WHERE id = ?", (room_id,)).fetchone())

    @staticmethod
    def team(c: sqlite3.Connection, room_id: str) -> list[str]:
        return [r[0] for r in c.execute("SELECT account_id FROM room_team WHERE room_id = ?", (room_id,))]

    @staticmethod
    def active(c: sqlite3.Connection) -> list[dict[str, Any]]:
        return [_decode(r) for r in c.execute(
            "SELECT * FROM rooms WHERE state IN ('scheduled', 'rehearsal', 'live')")]

    @staticmethod
    def delete(c: sqlite3.Connection, room_id: str) -> None:
        c.execute("DELETE FROM rooms WHERE id = ?", (room_id,))

    @staticmethod
    def rate(c: sqlite3.Connection, room_id: str, account_id: str, positive: bool, now: float) -> None:
        c.execute("INSERT INTO room_ratings VALUES (?, ?, ?, ?) ON CONFLICT (room_id, account_id) "
                  "DO UPDATE SET positive = excluded.positive, at = excluded.at",
                  (room_id, account_id, int(positive), now))

    @staticmethod
    def room_counts(c: sqlite3.Connection, room_id: str) -> dict[str, int]:
        positive, ratings = c.execute("SELECT coalesce(sum(positive), 0), count(*) FROM room_ratings "
                                      "WHERE room_id = ?", (room_id,)).fetchone()
        comments = c.execute("SELECT count(*) FROM room_comments WHERE room_id = ?",
                             (room_id,)).fetchone()[0]
        return {"positive_ratings": positive, "ratings": ratings, "comments": comments}

    @staticmethod
    def add_comment(c: sqlite3.Connection, room_id: str, account_id: str, text: str, now: float) -> int:
        return c.execute("INSERT INTO room_comments (room_id, account_id, text, at) VALUES (?, ?, ?, ?)",
                         (room_id, account_id, text, now)).lastrowid

    @staticmethod
    def comments(c: sqlite3.Connection, room_id: str, limit: int, offset: int) -> tuple[list[dict], int]:
        total = c.execute("SELECT count(*) FROM room_comments WHERE room_id = ?", (room_id,)).fetchone()[0]
        rows = c.execute("SELECT k.id, k.text, k.at, a.name, a.display_name FROM room_comments k "
                         "JOIN accounts a ON a.id = k.account_id WHERE k.room_id = ? "
                         "ORDER BY k.id LIMIT ? OFFSET ?", (room_id, limit, offset)).fetchall()
        return [dict(r) for r in rows], total

    @staticmethod
    def host_stats(c: sqlite3.Connection, account_id: str) -> dict[str, Any]:
        live_events = c.execute("SELECT count(*) FROM rooms WHERE owner_id = ? AND started_at "
                                "IS NOT NULL", (account_id,)).fetchone()[0]
        positive, ratings = c.execute(
            "SELECT coalesce(sum(g.positive), 0), count(*) FROM room_ratings g "
            "JOIN rooms r ON r.id = g.room_id WHERE r.owner_id = ?", (account_id,)).fetchone()
        return {"live_events": live_events, "ratings": ratings,
                "positive_rating": round(positive / ratings, 4) if ratings else None}

    @staticmethod
    def owned(c: sqlite3.Connection, account_id: str) -> list[str]:
        return [r[0] for r in c.execute("SELECT id FROM rooms WHERE owner_id = ?", (account_id,))]

    @staticmethod
    def forget(c: sqlite3.Connection, account_id: str) -> list[str]:
        """Delete the account's rooms (with their team, ratings and comments),
        its ratings and comments elsewhere and its team memberships; returns
        the ids of the rooms deleted."""
        rooms = RoomStore.owned(c, account_id)
        for table in ("room_ratings", "room_comments", "room_team"):
            c.execute(f"DELETE FROM {table} WHERE account_id = ?", (account_id,))
        c.execute("DELETE FROM rooms WHERE owner_id = ?", (account_id,))
        c.execute("UPDATE rooms SET shutdown_by = ? WHERE shutdown_by = ?",
                  (subject_digest(account_id), account_id))
        if c.execute("SELECT 1 FROM sqlite_master WHERE name = 'stream_keys'").fetchone():
            # The RTMP plugin's table (server/_stream_keys.py) names the owner.
            c.execute("DELETE FROM stream_keys WHERE owner = ?", (account_id,))
            c.executemany("DELETE FROM stream_keys WHERE room_id = ?", [(r,) for r in rooms])
        return rooms


def _room_schemas(api: Api, cfg: Any, url_max: int) -> dict[str, Any]:
    tag = {"type": "string", "minLength": 1, "maxLength": cfg.tag_max_chars}
    region = {"type": "string", "pattern": "^[A-Z]{2}$",
              "description": "ISO 3166-1 alpha-2 country code."}
    fields = {
        "title": {"type": "string", "minLength": 1, "maxLength": cfg.title_max_chars},
        "description": {"type": "string", "maxLength": cfg.description_max_chars},
        "scheduled_start": {"type": "string", "format": "date-time",
                            "description": "RFC 3339 with offset; in the future, within "
                                           f"{cfg.schedule_horizon_days} days."},
        "duration_s": {"type": "integer", "minimum": cfg.duration_min_s,
                       "maximum": cfg.duration_max_s, "description": "Planned length (s)."},
        "keywords": {"type": "array", "maxItems": cfg.keywords_max, "uniqueItems": True,
                     "items": {**tag, "pattern": r"^[^\s].*[^\s]$|^[^\s]$"}},
        "hashtags": {"type": "array", "maxItems": cfg.hashtags_max, "uniqueItems": True,
                     "items": {**tag, "pattern": r"^#?\w+$",
                               "description": "Letters, digits and '_', with or without '#'."}},
        "cover_image_url": {"type": "string", "format": "uri", "maxLength": url_max},
        "orientation": {"type": "string", "enum": list(ORIENTATIONS)},
        "language": {"type": "string", "pattern": "^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$",
                     "maxLength": 35, "description": "BCP 47 tag, such as es or pt-BR."},
        "region": region,
        "target_regions": {"type": "array", "maxItems": cfg.target_regions_max, "uniqueItems": True,
                           "items": region,
                           "description": "Where a cross-border room sells, besides region."},
        "recording": {"type": "boolean",
                      "description": "Record the live for its replay and MP4 export (default "
                                     "true; the server's [recording] enabled must also be on)."},
        "team": {"type": "array", "maxItems": cfg.team_max, "uniqueItems": True,
                 "items": {"type": "string", "minLength": 1, "maxLength": 64},
                 "description": "Names of hosts and marketers who may enter the setup."},
    }
    required = ["title", "scheduled_start", "duration_s", "orientation", "language", "region"]
    create = {"type": "object", "additionalProperties": False, "required": required,
              "properties": fields}
    edit = {"type": "object", "additionalProperties": False, "properties": fields}
    host = {"type": "object", "required": ["name", "display_name"],
            "properties": {"name": {"type": "string"}, "display_name": {"type": "string"},
                           "photo_url": {"type": ["string", "null"]}}}
    room_properties = {
        "id": {"type": "string"},
        **{k: {"type": v["type"]} for k, v in fields.items() if k != "team"},
        "cover_image_url": {"type": ["string", "null"]},
        "scheduled_end": {"type": "string", "format": "date-time"},
        "state": {"type": "string", "enum": list(ROOM_STATES)},
        "host": host,
        "share_url": {"type": "string"},
        "started_at": {"type": ["string", "null"]},
        "ended_at": {"type": ["string", "null"]},
        "end_reason": {"type": ["string", "null"]},
        "shutdown_reason": {"type": ["string", "null"]},
        "stats": {"type": "object", "required": ["positive_ratings", "ratings", "comments"],
                  "properties": {"positive_ratings": {"type": "integer"},
                                 "ratings": {"type": "integer"}, "comments": {"type": "integer"}}},
    }
    room = {"type": "object", "required": ["id", "state", "host", "share_url", *required],
            "properties": room_properties}
    push = {"type": ["object", "null"], "required": ["push_url", "server_url", "stream_key"],
            "properties": {"push_url": {"type": "string"}, "server_url": {"type": "string"},
                           "stream_key": {"type": "string"}},
            "description": "RTMP push (OBS: server_url + stream_key); null when RTMP is off."}
    publish = {"type": "object", "required": ["url", "broadcast", "token"],
               "properties": {"url": {"type": "string"}, "broadcast": {"type": "string"},
                              "token": {"type": "string"}},
               "description": "Browser publishing over WebTransport (moq-lite)."}
    setup = {"type": "object", "required": ["room", "team", "push", "publish"],
             "properties": {"room": {"$ref": "#/components/schemas/Room"},
                            "team": {"type": "array", "items": {"type": "string"}},
                            "push": push, "publish": publish}}
    return {"create": create, "edit": edit, "Room": api.schema("Room", room),
            "Setup": api.schema("RoomSetup", setup), "push": push}


class RoomsPlugin:
    """Live rooms; see the module docstring."""

    requires = ("accounts",)

    def __init__(self) -> None:
        self.app: Any = None
        self.plugins: Any = None
        self.db: Any = None
        self.clock = time.time
        self._cache: dict[str, dict[str, Any]] = {}
        """Rooms not ended, by id: what the relay listener needs synchronously."""
        self._handling: set[int] = set()
        self._lock = trio.Lock()
        self._changed = trio.Condition()
        self._push_send, self._push_receive = trio.open_memory_channel[tuple[Any, bool]](1024)

    # --- hooks ------------------------------------------------------------------------------

    @hookimpl
    def shopcast_configure(self, app: Any, plugins: Any) -> None:
        self.app, self.plugins = app, plugins
        self.cfg = app.config.rooms

    @hookimpl
    def shopcast_register_tables(self) -> list[Migration]:
        return MIGRATIONS

    @hookimpl
    def shopcast_register_permissions(self) -> dict[str, tuple[str, ...]]:
        return {"rooms.create": ("host",), "rooms.setup": ("host",),
                "rooms.shutdown": ("operator",)}

    @hookimpl
    async def shopcast_startup(self, app: Any, nursery: trio.Nursery) -> None:
        self.db = app.db
        for room in await self.db.read(RoomStore.active):
            self._cache[room["id"]] = room
        app.relay.listen(self._on_broadcast)
        nursery.start_soon(self._consume_pushes)
        nursery.start_soon(self._tick_forever)

    @hookimpl
    async def shopcast_account_forget(self, account_id: str) -> None:
        rooms = await self.db.write(lambda c: RoomStore.forget(c, account_id))
        for room_id in rooms:
            room = self._cache.pop(room_id, None)
            broadcast = self.app.relay.broadcasts.get(room_id)
            if broadcast is not None:
                broadcast.end()
            await self.plugins.notify("shopcast_room_closed", room={"id": room_id, "owner_id": account_id,
                                                                     "state": room and room["state"]})

    @hookimpl
    def shopcast_account_may_exit(self, account: dict[str, Any]) -> str | None:
        for room in self._cache.values():
            if room["owner_id"] == account["id"] and room["state"] in ("rehearsal", "live"):
                return f"room {room['id']} is {room['state']}; end it first"
        return None

    # --- views ------------------------------------------------------------------------------

    def _base_url(self) -> str:
        return self.app.webtransport_base_url

    async def view(self, room: dict[str, Any]) -> dict[str, Any]:
        """The public form of a room."""
        return (await self.views([room]))[0]

    async def views(self, rooms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = [r["id"] for r in rooms]
        owners = {r["owner_id"] for r in rooms}

        def load(c: sqlite3.Connection) -> tuple[dict, dict]:
            hosts = {o: dict(c.execute("SELECT name, display_name, photo_url FROM accounts WHERE id = ?",
                                       (o,)).fetchone() or {"name": "", "display_name": "",
                                                            "photo_url": None}) for o in owners}
            return hosts, {i: RoomStore.room_counts(c, i) for i in ids}

        hosts, counts = await self.db.read(load)
        return [{
            "id": r["id"], "title": r["title"], "description": r["description"],
            "scheduled_start": format_time(r["scheduled_start"]),
            "scheduled_end": format_time(r["scheduled_start"] + r["duration_s"]),
            "duration_s": r["duration_s"], "keywords": r["keywords"], "hashtags": r["hashtags"],
            "cover_image_url": r["cover_image_url"], "orientation": r["orientation"],
            "language": r["language"], "region": r["region"], "target_regions": r["target_regions"],
            "recording": bool(r["recording"]), "state": r["state"], "host": hosts[r["owner_id"]],
            "share_url": f"{self._base_url()}/r/{r['id']}",
            "started_at": format_time(r["started_at"]), "ended_at": format_time(r["ended_at"]),
            "end_reason": r["end_reason"], "shutdown_reason": r["shutdown_reason"],
            "stats": counts[r["id"]],
        } for r in rooms]

    async def profile_stats(self, account_id: str) -> dict[str, Any]:
        return await self.db.read(lambda c: RoomStore.host_stats(c, account_id))

    @hookimpl
    def shopcast_room_may_record(self, room_id: str) -> str | None:
        room = self._cache.get(room_id)  # rooms on the air are cached
        if room is not None and not room["recording"]:
            return "the room's recording field is false"
        return None

    @hookimpl
    async def shopcast_chat_author(self, room_id: str, subject: str, role: str) -> dict[str, Any] | None:
        accounts = self.plugins.get("accounts")
        account = await accounts.by_id(subject) if accounts is not None else None
        room = await self.db.read(lambda c: RoomStore.get(c, room_id))
        if account is None:
            return None
        if room is None:
            # A broadcast that is no room of ours (the demo room): the account's name, and
            # no host or team to follow.
            return {"display_name": account["display_name"],
                    "role": "operator" if role in ("operator", "service") else "viewer",
                    "registered": True, "follows_host": False}
        team = await self.db.read(lambda c: RoomStore.team(c, room_id))
        if role in ("operator", "service"):
            chat_role = "operator"
        elif account["id"] == room["owner_id"]:
            chat_role = "host"
        elif account["id"] in team:
            chat_role = "moderator"
        else:
            chat_role = "viewer"
        follows = room["owner_id"] in await accounts.followees(account["id"])
        return {"display_name": account["display_name"], "role": chat_role, "registered": True,
                "follows_host": follows}

    async def get(self, room_id: str) -> dict[str, Any]:
        room = await self.db.read(lambda c: RoomStore.get(c, room_id))
        if room is None:
            raise HTTPError(404, "not_found", f"no room {room_id!r}", "room_id")
        return room

    async def _team_member(self, room: dict[str, Any], claims: Any) -> dict[str, Any]:
        """The caller's account if it owns the room or is on its team, else 403."""
        account = await self.plugins.get("accounts").require_account(claims)
        if account["id"] == room["owner_id"]:
            return account
        team = await self.db.read(lambda c: RoomStore.team(c, room["id"]))
        if account["id"] not in team:
            raise HTTPError(403, "not_on_team", "only the room's owner and team may do this",
                            "authorization")
        return account

    async def _is_team(self, room: dict[str, Any], account_id: str) -> bool:
        if account_id == room["owner_id"]:
            return True
        return account_id in await self.db.read(lambda c: RoomStore.team(c, room["id"]))

    # --- routes -----------------------------------------------------------------------------

    @hookimpl
    def shopcast_register_routes(self, api: Api) -> None:
        cfg = self.cfg
        s = _room_schemas(api, cfg, self.app.config.accounts.url_max_chars)
        error = {"$ref": "#/components/schemas/Error"}
        tag = "rooms"
        example = {"title": "Spring shoes, live", "scheduled_start": "2030-04-01T18:00:00Z",
                   "duration_s": 3600, "keywords": ["sneakers"], "hashtags": ["#springsale"],
                   "cover_image_url": "https://cdn.example/cover.jpg",
                   "description": "New season sneakers at launch prices.",
                   "orientation": "portrait", "language": "es", "region": "ES",
                   "target_regions": ["PT", "FR"], "team": []}
        api.route("POST", "/api/v1/rooms", self.create, name="rooms_create", tag=tag,
                  roles=("host",), request=s["create"], example=example,
                  summary="Schedule a room; returns its push URL, stream key and publish URL.",
                  responses={201: ("The room, verified and scheduled.", s["Setup"]),
                             409: ("A plugin refused the room; the message says why.", error)})
        api.route("GET", "/api/v1/rooms/{room_id}", self.show, name="rooms_show", tag=tag,
                  roles=EVERYONE, summary="A room's public data.",
                  responses={200: ("The room.", s["Room"])})
        api.route("PATCH", "/api/v1/rooms/{room_id}", self.edit, name="rooms_edit", tag=tag,
                  roles=("host",), request=s["edit"], example={"title": "Spring shoes, live!"},
                  summary="Edit a room until it starts (owner and team).",
                  responses={200: ("The room.", s["Room"]),
                             409: ("The room has started, or a plugin refused the edit.", error)})
        api.route("DELETE", "/api/v1/rooms/{room_id}", self.cancel, name="rooms_cancel", tag=tag,
                  roles=("host",), summary="Cancel a room before it starts (owner).",
                  responses={204: ("Cancelled and removed.", None),
                             409: ("The room has started.", error)})
        api.route("GET", "/api/v1/rooms/{room_id}/setup", self.setup, name="rooms_setup", tag=tag,
                  roles=("host",), summary="The room's setup: push and publish URLs, team "
                                           "(owner and team only).",
                  responses={200: ("The setup.", s["Setup"])})
        api.route("POST", "/api/v1/rooms/{room_id}/stream-key", self.rotate_key,
                  name="rooms_stream_key_rotate", tag=tag, roles=("host",),
                  summary="A new stream key; the old one is refused from now on (owner and team).",
                  responses={200: ("The new push fields.", {"type": "object", "required": ["push"],
                                                            "properties": {"push": s["push"]}})})
        api.route("POST", "/api/v1/rooms/{room_id}/media-token", self.media_token,
                  name="rooms_media_token", tag=tag, roles=USERS,
                  summary="A token for the room's broadcast: to watch, or (owner and team) to "
                          "publish from a browser; a rehearsal only the team may watch.",
                  request={"type": "object", "additionalProperties": False,
                           "properties": {"publish": {"type": "boolean"}}},
                  example={"publish": False},
                  responses={200: ("A media token.", {
                      "type": "object", "required": ["token", "url", "broadcast", "expires_in"],
                      "properties": {"token": {"type": "string"}, "url": {"type": "string"},
                                     "broadcast": {"type": "string"},
                                     "expires_in": {"type": "integer"}}}),
                             409: ("The room has ended.", error)})
        api.route("POST", "/api/v1/rooms/{room_id}/end", self.end_live, name="rooms_end", tag=tag,
                  roles=("host", "operator"),
                  summary="End the live now (the room's owner and team, or an operator): the "
                          "broadcast ends, viewers' streams finish, the room turns to ended.",
                  responses={200: ("The ended room.", s["Room"]),
                             409: ("The room has already ended.", error)})
        api.route("POST", "/api/v1/rooms/{room_id}/shutdown", self.shutdown, name="rooms_shutdown",
                  tag=tag, roles=("operator",),
                  summary="Emergency shutdown: the broadcast ends at once, viewers are "
                          "disconnected, the reason is recorded and audited.",
                  request={"type": "object", "additionalProperties": False, "required": ["reason"],
                           "properties": {"reason": {"type": "string", "minLength": 3,
                                                     "maxLength": 500}}},
                  example={"reason": "restricted goods on sale"},
                  responses={200: ("The ended room.", s["Room"]),
                             409: ("The room has already ended.", error)})
        og = {"type": "object", "required": ["og:title", "og:type", "og:url"],
              "properties": {k: {"type": "string"} for k in
                             ("og:title", "og:description", "og:type", "og:url", "og:image",
                              "og:locale", "twitter:card")}}
        api.route("GET", "/api/v1/rooms/{room_id}/page", self.page_data, name="rooms_page", tag=tag,
                  roles=EVERYONE, summary="The public page's data: the room, Open Graph tags, "
                                          "share link and where to watch.",
                  responses={200: ("The page data.", {
                      "type": "object", "required": ["room", "open_graph", "share_url", "watch"],
                      "properties": {"room": s["Room"], "open_graph": og,
                                     "share_url": {"type": "string"},
                                     "watch": {"type": "object", "required": ["url", "broadcast"],
                                               "properties": {"url": {"type": "string"},
                                                              "broadcast": {"type": "string"}}}}})})
        api.route("GET", "/r/{room_id}", self.share_page, name="rooms_share_page", tag=tag,
                  roles=EVERYONE, content_type="text/html",
                  summary="The share link: an HTML page with Open Graph tags, so the room "
                          "previews on other social sites.",
                  responses={200: ("The page.", {"type": "string"})})
        api.route("PUT", "/api/v1/rooms/{room_id}/rating", self.rate, name="rooms_rate", tag=tag,
                  roles=USERS, summary="Like (positive) or dislike a room; one rating per account.",
                  request={"type": "object", "additionalProperties": False, "required": ["positive"],
                           "properties": {"positive": {"type": "boolean"}}},
                  example={"positive": True},
                  responses={200: ("The room's counts.", {
                      "type": "object", "required": ["stats"],
                      "properties": {"stats": {"$ref": "#/components/schemas/Room/properties/stats"}}})})
        comment = {"type": "object", "required": ["id", "text", "at", "author"],
                   "properties": {"id": {"type": "integer"}, "text": {"type": "string"},
                                  "at": {"type": "string"},
                                  "author": {"type": "object", "required": ["name", "display_name"],
                                             "properties": {"name": {"type": "string"},
                                                            "display_name": {"type": "string"}}}}}
        comment_ref = api.schema("Comment", comment)
        api.route("POST", "/api/v1/rooms/{room_id}/comments", self.comment, name="rooms_comment",
                  tag=tag, roles=USERS, summary="Comment on a room.",
                  request={"type": "object", "additionalProperties": False, "required": ["text"],
                           "properties": {"text": {"type": "string", "minLength": 1,
                                                   "maxLength": self.app.config.accounts.comment_max_chars}}},
                  example={"text": "Do you ship to Lisbon?"},
                  responses={201: ("The comment.", comment_ref)})
        api.route("GET", "/api/v1/rooms/{room_id}/comments", self.list_comments,
                  name="rooms_comments", tag=tag, roles=EVERYONE, summary="A room's comments, oldest first.",
                  query=page_params(cfg.page_size_default, cfg.page_size_max),
                  responses={200: ("A page of comments.", {
                      "type": "object", "required": ["comments", "page", "per_page", "total"],
                      "properties": {**PAGE_SCHEMA_FIELDS,
                                     "comments": {"type": "array", "items": comment_ref}}})})

    # --- handlers ---------------------------------------------------------------------------

    async def _check_fields(self, body: dict[str, Any], owner_id: str) -> tuple[dict[str, Any], list[str] | None]:
        """Checks beyond the schema, and the stored form of the fields."""
        cfg = self.cfg
        row: dict[str, Any] = {}
        for key, value in body.items():
            if key == "team":
                continue
            row[key] = value
        if "scheduled_start" in body:
            start = parse_time_untrusted(body["scheduled_start"], "scheduled_start")
            now = self.clock()
            if start < now:
                raise field_error("scheduled_start", "must not be in the past")
            if start > now + cfg.schedule_horizon_days * 86400:
                raise field_error("scheduled_start", f"must be within {cfg.schedule_horizon_days} days")
            row["scheduled_start"] = start
        if "hashtags" in body:
            tags = [t.lstrip("#").lower() for t in body["hashtags"]]
            if len(set(tags)) != len(tags):
                raise field_error("hashtags", "must not repeat a hashtag")
            row["hashtags"] = tags
        if "keywords" in body:
            row["keywords"] = [k.strip() for k in body["keywords"]]
        team = None
        if "team" in body:
            team = []
            for index, name in enumerate(body["team"]):
                member = await self.db.read(lambda c, n=name: c.execute(
                    "SELECT id, role FROM accounts WHERE name = ?", (n,)).fetchone())
                if member is None or member["role"] not in ("host", "marketer"):
                    raise field_error(f"team[{index}]", f"{name!r} is not a host or marketer")
                if member["id"] == owner_id:
                    raise field_error(f"team[{index}]", "the owner is always on the team")
                team.append(member["id"])
        return row, team

    async def create(self, request, claims, body, query) -> Response:
        account = await self.plugins.get("accounts").require_account(claims)
        if account["role"] not in ("host", "marketer"):
            raise HTTPError(403, "not_a_host", "only hosts and marketers create rooms", "authorization")
        row, team = await self._check_fields(body, account["id"])
        now = self.clock()
        row.update({
            "id": "r" + secrets.token_hex(8), "owner_id": account["id"], "state": "scheduled",
            "created_at": now, "updated_at": now, "description": row.get("description", ""),
            "keywords": row.get("keywords", []), "hashtags": row.get("hashtags", []),
            "target_regions": row.get("target_regions", []),
            "cover_image_url": row.get("cover_image_url"),
        })
        veto = self.plugins.veto("shopcast_room_may_schedule", room=dict(row))
        if veto is not None:
            raise HTTPError(409, "room_refused", f"the room cannot be scheduled: {veto}")
        await self.db.write(lambda c: RoomStore.insert(c, row, team or []))
        room = await self.get(row["id"])
        self._cache[room["id"]] = room
        view = await self.view(room)
        await self.plugins.notify("shopcast_room_created", room=view)
        return Response.json(await self._setup_view(room, view, account), status=201)

    async def _setup_view(self, room: dict[str, Any], view: dict[str, Any],
                          account: dict[str, Any], *, rotate: bool = False) -> dict[str, Any]:
        team_ids = await self.db.read(lambda c: RoomStore.team(c, room["id"]))
        names = await self.db.read(lambda c: [c.execute("SELECT name FROM accounts WHERE id = ?",
                                                        (i,)).fetchone()[0] for i in team_ids])
        return {"room": view, "team": names,
                "push": await self.push_fields(room, rotate=rotate),
                "publish": self._publish_fields(room, account)}

    async def push_fields(self, room: dict[str, Any], *, rotate: bool = False) -> dict[str, Any] | None:
        """The RTMP push URL and key (server/_stream_keys.py, server/_rtmp.py);
        None when this server has no RTMP ingest."""
        store = getattr(self.app, "stream_keys", None)
        rtmp_config = getattr(self.app.config, "rtmp", None)
        if store is None or rtmp_config is None or not rtmp_config.enabled:
            return None
        from shopcast.server._rtmp import push_url

        method = store.rotate if rotate else store.get_or_create
        key = await trio.to_thread.run_sync(lambda: method(room["id"], owner=room["owner_id"]))
        host = rtmp_config.public_host or self.app.public_host
        server_url = push_url(host, self.app.rtmp_port, rtmp_config.app, "").rstrip("/")
        return {"push_url": f"{server_url}/{key.key}", "server_url": server_url,
                "stream_key": key.key}

    def _publish_fields(self, room: dict[str, Any], account: dict[str, Any]) -> dict[str, Any]:
        token = self.app.tokens.mint(subject=account["id"], role="host", room=room["id"],
                                     ttl_s=self.app.config.tokens.default_ttl_s, now=time.time())
        return {"url": f"{self._base_url()}{self.app.config.relay.path}", "broadcast": room["id"],
                "token": token}

    async def show(self, request, claims, body, query, room_id: str) -> Response:
        return Response.json(await self.view(await self.get(room_id)))

    async def edit(self, request, claims, body, query, room_id: str) -> Response:
        room = await self.get(room_id)
        await self._team_member(room, claims)
        if room["state"] not in _EDITABLE_STATES:
            raise HTTPError(409, "room_started", f"the room is {room['state']}; it can be edited "
                            "only until it starts", "room_id")
        if not body:
            raise field_error("body", "name at least one field to change")
        row, team = await self._check_fields(body, room["owner_id"])
        veto = self.plugins.veto("shopcast_room_may_schedule", room={**room, **row})
        if veto is not None:
            raise HTTPError(409, "room_refused", f"the edit is refused: {veto}")
        row["updated_at"] = self.clock()

        def write(c: sqlite3.Connection) -> dict[str, Any]:
            current = RoomStore.get(c, room_id)
            if current is None or current["state"] not in _EDITABLE_STATES:
                raise HTTPError(409, "room_started", "the room has started meanwhile", "room_id")
            RoomStore.update(c, room_id, row)
            if team is not None:
                RoomStore.set_team(c, room_id, team)
            return RoomStore.get(c, room_id)

        async with self._lock:
            room = await self.db.write(write)
            self._cache[room_id] = room
        view = await self.view(room)
        await self.plugins.notify("shopcast_room_updated", room=view, changes=sorted(body))
        return Response.json(view)

    async def cancel(self, request, claims, body, query, room_id: str) -> Response:
        room = await self.get(room_id)
        account = await self.plugins.get("accounts").require_account(claims)
        if account["id"] != room["owner_id"]:
            raise HTTPError(403, "not_owner", "only the room's owner may cancel it", "authorization")
        async with self._lock:
            room = await self.get(room_id)
            if room["state"] != "scheduled":
                raise HTTPError(409, "room_started", f"the room is {room['state']}; only a scheduled "
                                "room can be cancelled", "room_id")
            view = await self.view(room)
            await self.db.write(lambda c: RoomStore.delete(c, room_id))
            self._cache.pop(room_id, None)
        await self.plugins.notify("shopcast_room_closed", room=view)
        return Response(204)

    async def setup(self, request, claims, body, query, room_id: str) -> Response:
        room = await self.get(room_id)
        account = await self._team_member(room, claims)
        return Response.json(await self._setup_view(room, await self.view(room), account))

    async def rotate_key(self, request, claims, body, query, room_id: str) -> Response:
        room = await self.get(room_id)
        await self._team_member(room, claims)
        return Response.json({"push": await self.push_fields(room, rotate=True)})

    async def media_token(self, request, claims, body, query, room_id: str) -> Response:
        room = await self.get(room_id)
        account = await self.plugins.get("accounts").require_account(claims)
        if room["state"] == "ended":
            raise HTTPError(409, "room_ended", "the room has ended", "room_id")
        team = await self._is_team(room, account["id"]) or claims.role == "operator"
        if body.get("publish") and not await self._is_team(room, account["id"]):
            raise HTTPError(403, "not_on_team", "only the room's owner and team may publish",
                            "publish")
        if room["state"] == "rehearsal" and not team:
            raise HTTPError(403, "rehearsal", "the rehearsal is visible only to the room's team",
                            "room_id")
        role = "host" if body.get("publish") or (team and claims.role != "operator") else "viewer"
        if claims.role == "operator":
            role = "operator"
        ttl = self.app.config.tokens.default_ttl_s
        token = self.app.tokens.mint(subject=account["id"], role=role, room=room_id if role != "operator"
                                     else "*", ttl_s=ttl, now=time.time())
        return Response.json({"token": token, "url": f"{self._base_url()}{self.app.config.relay.path}",
                              "broadcast": room_id, "expires_in": ttl})

    async def end_live(self, request, claims, body, query, room_id: str) -> Response:
        room = await self.get(room_id)
        if claims.role != "operator":
            await self._team_member(room, claims)
        if room["state"] == "ended":
            raise HTTPError(409, "room_ended", "the room has already ended", "room_id")
        await self._end(room_id, "host_ended")
        return Response.json(await self.view(await self.get(room_id)))

    async def shutdown(self, request, claims, body, query, room_id: str) -> Response:
        room = await self.get(room_id)
        if room["state"] == "ended":
            raise HTTPError(409, "room_ended", "the room has already ended", "room_id")
        reason = body["reason"]

        def audit(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO audit_log (at, actor, action, subject, reason) VALUES (?, ?, ?, ?, ?)",
                      (time.time(), claims.subject, "room_shutdown", room_id, reason))

        await self.db.write(audit)
        broadcast = self.app.relay.broadcasts.get(room_id)
        if broadcast is not None:
            # Emergency (IWA 41 §6.2 f): viewers are disconnected, told why.
            message = f"room shut down by the platform: {reason}"
            self.app.moq.disconnect_viewers(broadcast, SHUTDOWN_CLOSE_CODE, message)
            self.app.interaction.disconnect_room(room_id, SHUTDOWN_CLOSE_CODE, message)
        await self._end(room_id, "shutdown", shutdown_reason=reason, shutdown_by=claims.subject)
        if getattr(self.app, "stream_keys", None) is not None:
            # The encoder's reconnect must not bring the room back.
            await trio.to_thread.run_sync(lambda: self.app.stream_keys.rotate(room_id,
                                                                              owner=room["owner_id"]))
        return Response.json(await self.view(await self.get(room_id)))

    def _og(self, view: dict[str, Any]) -> dict[str, str]:
        og = {"og:title": view["title"], "og:description": view["description"][:300],
              "og:type": "video.other", "og:url": view["share_url"],
              "og:locale": view["language"].replace("-", "_"),
              "twitter:card": "summary_large_image" if view["cover_image_url"] else "summary"}
        if view["cover_image_url"]:
            og["og:image"] = view["cover_image_url"]
        return og

    async def page_data(self, request, claims, body, query, room_id: str) -> Response:
        view = await self.view(await self.get(room_id))
        return Response.json({"room": view, "open_graph": self._og(view), "share_url": view["share_url"],
                              "watch": {"url": f"{self._base_url()}{self.app.config.relay.path}",
                                        "broadcast": room_id}})

    async def share_page(self, request, claims, body, query, room_id: str) -> Response:
        view = await self.view(await self.get(room_id))
        esc = html.escape
        metas = "\n".join(f'<meta property="{esc(k)}" content="{esc(v)}">'
                          for k, v in self._og(view).items())
        # Link previews read the Open Graph tags; people are sent on to the room's page, counted
        # as arriving from a share link (CONTRACTS2.md).
        target = f"/live/{urllib.parse.quote(room_id, safe='')}?from=share"
        page = (f"<!doctype html>\n<html lang=\"{esc(view['language'])}\"><head>"
                f"<meta charset=\"utf-8\"><title>{esc(view['title'])}</title>\n{metas}\n"
                f"<meta name=\"description\" content=\"{esc(view['description'][:300])}\">"
                f"<meta http-equiv=\"refresh\" content=\"0; url={esc(target)}\">"
                f"</head><body><h1>{esc(view['title'])}</h1>"
                f"<p>{esc(view['host']['display_name'])} · {esc(view['scheduled_start'])} · "
                f"{esc(view['state'])}</p><p>{esc(view['description'])}</p>"
                f"<p><a href=\"{esc(target)}\" id=\"watch\">Watch</a></p></body></html>\n")
        return Response.text(page, content_type="text/html; charset=utf-8")

    async def rate(self, request, claims, body, query, room_id: str) -> Response:
        room = await self.get(room_id)
        account = await self.plugins.get("accounts").require_account(claims)

        def write(c: sqlite3.Connection) -> dict[str, int]:
            RoomStore.rate(c, room["id"], account["id"], body["positive"], time.time())
            return RoomStore.room_counts(c, room["id"])

        return Response.json({"stats": await self.db.write(write)})

    async def comment(self, request, claims, body, query, room_id: str) -> Response:
        room = await self.get(room_id)
        account = await self.plugins.get("accounts").require_account(claims)
        now = time.time()
        comment_id = await self.db.write(
            lambda c: RoomStore.add_comment(c, room["id"], account["id"], body["text"], now))
        return Response.json({"id": comment_id, "text": body["text"], "at": format_time(now),
                              "author": {"name": account["name"],
                                         "display_name": account["display_name"]}}, status=201)

    async def list_comments(self, request, claims, body, query, room_id: str) -> Response:
        await self.get(room_id)
        page = query.get("page", 1)
        per_page = query.get("per_page", self.cfg.page_size_default)
        rows, total = await self.db.read(
            lambda c: RoomStore.comments(c, room_id, per_page, (page - 1) * per_page))
        return Response.json({"comments": [
            {"id": r["id"], "text": r["text"], "at": format_time(r["at"]),
             "author": {"name": r["name"], "display_name": r["display_name"]}} for r in rows],
            "page": page, "per_page": per_page, "total": total})

    # --- the state machine --------------------------------------------------------------------

    def _on_broadcast(self, broadcast: Any, active: bool) -> None:
        """Relay listener (synchronous, inside ``Relay.publish``): a room's
        broadcast is held private until the rooms task decides, so nobody but
        the team sees a rehearsal even for an instant."""
        if id(broadcast) in self._handling:
            return
        if broadcast.name not in self._cache and not _ROOM_ID.fullmatch(broadcast.name):
            return  # not a room of ours (the demo room, a platform's own broadcast)
        if active:
            broadcast.private = True
        try:
            self._push_send.send_nowait((broadcast, active))
        except trio.WouldBlock:
            log.warning("room_events_dropped", room=broadcast.name)

    async def _consume_pushes(self) -> None:
        async for broadcast, active in self._push_receive:
            try:
                await self._push_changed(broadcast, active)
            except Exception:
                log.error("room_transition_failed", exc_info=True, room=broadcast.name)

    async def _push_changed(self, broadcast: Any, active: bool) -> None:
        room_id = broadcast.name
        async with self._lock:
            room = self._cache.get(room_id)
            if room is None:
                if active and not broadcast.ended.is_set():
                    stored = await self.db.read(lambda c: RoomStore.get(c, room_id))
                    if stored is None:
                        self._publicise(broadcast)  # a room id's shape, but not a room
                    else:
                        broadcast.end()  # ended rooms stay ended
                return
            now = self.clock()
            if not active:
                if self.app.relay.broadcasts.get(room_id) is not None:
                    return  # a newer push of the same room already took over
                if room["state"] == "rehearsal":
                    await self._set_state(room_id, "scheduled", {})
                elif room["state"] == "live":
                    if self.cfg.push_lost_end_after_s == 0:
                        await self._end_locked(room_id, "push_stopped")
                    else:
                        await self._update(room_id, {"push_lost_at": now})
                return
            if room["state"] == "live":
                await self._update(room_id, {"push_lost_at": None})
                self._publicise(broadcast)
            elif room["state"] in ("scheduled", "rehearsal"):
                await self._start_locked(room, broadcast, now)

    async def _start_locked(self, room: dict[str, Any], broadcast: Any, now: float) -> None:
        """Live when the time has come and no plugin vetoes; else rehearsal."""
        veto = None
        if now >= room["scheduled_start"]:
            owner = await self.plugins.get("accounts").by_id(room["owner_id"])
            veto = self.plugins.veto("shopcast_room_may_go_live",
                                     room={**room, "_owner_account": owner})
            if veto is None:
                await self._set_state(room["id"], "live", {"started_at": now, "push_lost_at": None})
                self._publicise(broadcast)
                return
        if veto is not None:
            log.info("room_go_live_vetoed", room=room["id"], reason=veto)
        if room["state"] != "rehearsal":
            await self._set_state(room["id"], "rehearsal", {})

    def _publicise(self, broadcast: Any) -> None:
        """Make a held broadcast public and announce it to every session that
        can now watch it (announcing again is harmless to those that had it)."""
        if not broadcast.private:
            return
        self._handling.add(id(broadcast))
        try:
            self.app.relay.make_public(broadcast)
        finally:
            self._handling.discard(id(broadcast))

    async def _update(self, room_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        room = await self.db.write(lambda c: (RoomStore.update(c, room_id, changes),
                                              RoomStore.get(c, room_id))[1])
        if room["state"] == "ended":
            self._cache.pop(room_id, None)
        else:
            self._cache[room_id] = room
        async with self._changed:
            self._changed.notify_all()
        return room

    async def _set_state(self, room_id: str, state: str, changes: dict[str, Any]) -> None:
        room = await self._update(room_id, {**changes, "state": state})
        if state == "live" and (live := self.app.relay.broadcasts.get(room_id)) is not None:
            # Public before anyone told of the state (waiters run at our next
            # checkpoint) can look at the broadcast.
            self._publicise(live)
        log.info("room_state", room=room_id, state=state)
        view = await self.view(room)
        if state == "rehearsal":
            await self.plugins.notify("shopcast_room_rehearsal", room=view)
        elif state == "live":
            broadcast = self.app.relay.broadcasts.get(room_id)
            for names in await self.plugins.collect("shopcast_register_room_tracks", room=view):
                for name in names or ():
                    if broadcast is not None:
                        broadcast.track(name)  # exists from the start, recorded with the media
            await self.plugins.notify("shopcast_room_live", room=view)

    async def _end(self, room_id: str, reason: str, **extra: Any) -> None:
        async with self._lock:
            await self._end_locked(room_id, reason, **extra)

    async def _end_locked(self, room_id: str, reason: str, **extra: Any) -> None:
        room = self._cache.get(room_id) or await self.get(room_id)
        if room["state"] == "ended":
            return
        await self._update(room_id, {"state": "ended", "ended_at": self.clock(), "end_reason": reason,
                                     "push_lost_at": None, **extra})
        broadcast = self.app.relay.broadcasts.get(room_id)
        if broadcast is not None:
            # Ends every track: subscribers' streams finish and the publisher
            # (RTMP or moq-lite) is closed by its own watcher.
            broadcast.end()
        log.info("room_ended", room=room_id, reason=reason)
        view = await self.view(await self.get(room_id))
        await self.plugins.notify("shopcast_room_ended", room=view, reason=reason)

    async def tick(self) -> None:
        """Apply the transitions that time alone causes; the background task
        calls it every ``rooms.tick_interval_s``, tests call it directly."""
        cfg = self.cfg
        now = self.clock()
        for room_id, room in list(self._cache.items()):
            end_at = room["scheduled_start"] + room["duration_s"] + cfg.auto_end_grace_s
            if room["state"] == "live":
                if now >= end_at:
                    await self._end(room_id, "duration_elapsed")
                elif (room["push_lost_at"] is not None
                      and now - room["push_lost_at"] >= cfg.push_lost_end_after_s
                      and room_id not in self.app.relay.broadcasts):
                    await self._end(room_id, "push_stopped")
            elif room["state"] == "rehearsal" and now >= room["scheduled_start"]:
                broadcast = self.app.relay.broadcasts.get(room_id)
                async with self._lock:
                    if broadcast is not None and self._cache.get(room_id, {}).get("state") == "rehearsal":
                        await self._start_locked(self._cache[room_id], broadcast, now)
            elif room["state"] == "scheduled" and now >= end_at:
                await self._end(room_id, "no_show")

    async def _tick_forever(self) -> None:
        while True:
            await trio.sleep(self.cfg.tick_interval_s)
            try:
                await self.tick()
            except Exception:
                log.error("room_tick_failed", exc_info=True)

    def is_over(self, room_id: str) -> bool:
        """Whether ``room_id`` is not scheduled, in rehearsal or live (it has
        ended, or is no room of ours): its recording may be replayed."""
        return room_id not in self._cache

    async def wait_for_state(self, room_id: str, state: str) -> None:
        """Return once the room is in ``state`` (tests and embedders)."""
        async with self._changed:
            while True:
                room = await self.db.read(lambda c: RoomStore.get(c, room_id))
                if room is not None and room["state"] == state:
                    return
                await self._changed.wait()

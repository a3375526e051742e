"""The discovery plugin (ISO IWA 41 §5.3, warm-up): upcoming rooms, search
(SQLite FTS5, ranked by bm25, paginated) and recommendations whose score
explains itself, reason by reason.

The full-text index is kept in step with rooms through the room lifecycle
hooks, so it is a plugin of its own that a platform can replace (by an
external search engine, say) without touching the rooms plugin.
"""

from __future__ import annotations

import collections
import json
import math
import re
import sqlite3
from typing import Any

from shopcast.plugins._api import (
    ANONYMOUS,
    PAGE_SCHEMA_FIELDS,
    Api,
    Query,
    field_error,
    page_params,
    parse_time_untrusted,
)
from shopcast.plugins._hookspecs import hookimpl
from shopcast.plugins._rooms import ROOM_STATES
from shopcast.plugins._storage import Migration
from shopcast.server._routing import Response

__all__ = ["DiscoveryPlugin", "SearchStore"]

EVERYONE = (ANONYMOUS, "viewer", "host", "operator", "service")
_NOT_OVER = ("scheduled", "rehearsal", "live")
# bm25 weights per column of room_search: room_id (unindexed), title,
# description, keywords, hashtags, host. A title hit counts most.
_BM25 = "bm25(room_search, 0.0, 10.0, 2.0, 4.0, 6.0, 5.0)"

MIGRATIONS = [
    Migration("discovery", 1, """
CREATE VIRTUAL TABLE room_search USING fts5(
    room_id UNINDEXED, title, description, keywords, hashtags, host,
    tokenize = 'unicode61 remove_diacritics 2'
);
"""),
]


def fts_query_untrusted(text: str) -> str:
    """Words of ``text`` as an FTS5 query: every word must match, each as a
    prefix (so "spri sho" finds "Spring shoes"); no FTS5 syntax gets through."""
    words = re.findall(r"\w+", text)
    if not words:
        raise field_error("q", "has no letters or digits to search for")
    return " ".join(f'"{w}"*' for w in words)


class SearchStore:
    """Every SQL statement of the discovery plugin."""

    @staticmethod
    def index(c: sqlite3.Connection, room: dict[str, Any]) -> None:
        c.execute("DELETE FROM room_search WHERE room_id = ?", (room["id"],))
        c.execute("INSERT INTO room_search (room_id, title, description, keywords, hashtags, host) "
                  "VALUES (?, ?, ?, ?, ?, ?)",
                  (room["id"], room["title"], room["description"], " ".join(room["keywords"]),
                   " ".join(room["hashtags"]),
                   f"{room['host']['name']} {room['host']['display_name']}"))

    @staticmethod
    def unindex(c: sqlite3.Connection, room_ids: list[str]) -> None:
        c.executemany("DELETE FROM room_search WHERE room_id = ?", [(r,) for r in room_ids])
        # Merge the index so that deleted text leaves no trace in its segments.
        c.execute("INSERT INTO room_search (room_search) VALUES ('optimize')")

    @staticmethod
    def search(c: sqlite3.Connection, *, match: str | None, hashtag: str | None, host: str | None,
               start_from: float | None, start_to: float | None, states: tuple[str, ...],
               limit: int, offset: int) -> tuple[list[dict], int]:
        where = [f"r.state IN ({', '.join('?' * len(states))})"]
        params: list[Any] = list(states)
        source = "rooms r"
        order = "r.scheduled_start, r.id"
        if match is not None:
            source = "room_search s JOIN rooms r ON r.id = s.room_id"
            where.append("room_search MATCH ?")
            params.append(match)
            order = f"{_BM25}, r.scheduled_start, r.id"
        if hashtag is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(r.hashtags) WHERE value = ?)")
            params.append(hashtag)
        if host is not None:
            where.append("r.owner_id = (SELECT id FROM accounts WHERE name = ?)")
            params.append(host)
        if start_from is not None:
            where.append("r.scheduled_start >= ?")
            params.append(start_from)
        if start_to is not None:
            where.append("r.scheduled_start <= ?")
            params.append(start_to)
        condition = " AND ".join(where)
        total = c.execute(f"SELECT count(*) FROM {source} WHERE {condition}", params).fetchone()[0]
        rows = c.execute(f"SELECT r.* FROM {source} WHERE {condition} ORDER BY {order} "
                         "LIMIT ? OFFSET ?", (*params, limit, offset)).fetchall()
        return [_decode(r) for r in rows], total

    @staticmethod
    def upcoming(c: sqlite3.Connection, now: float, limit: int, offset: int) -> tuple[list[dict], int]:
        condition = "state IN ('scheduled', 'rehearsal') AND scheduled_start + duration_s >= ?"
        total = c.execute(f"SELECT count(*) FROM rooms WHERE {condition}", (now,)).fetchone()[0]
        rows = c.execute(f"SELECT * FROM rooms WHERE {condition} ORDER BY scheduled_start, id "
                         "LIMIT ? OFFSET ?", (now, limit, offset)).fetchall()
        return [_decode(r) for r in rows], total

    @staticmethod
    def taste(c: sqlite3.Connection, account_id: str) -> tuple[collections.Counter, set[str]]:
        """Hashtags and languages of the rooms the account rated positively or
        commented on."""
        rows = c.execute(
            "SELECT hashtags, language FROM rooms WHERE id IN ("
            "SELECT room_id FROM room_ratings WHERE account_id = ? AND positive = 1 "
            "UNION SELECT room_id FROM room_comments WHERE account_id = ?)",
            (account_id, account_id)).fetchall()
        tags: collections.Counter = collections.Counter()
        languages = set()
        for row in rows:
            tags.update(json.loads(row["hashtags"]))
            languages.add(row["language"])
        return tags, languages

    @staticmethod
    def host_popularity(c: sqlite3.Connection, owner_ids: set[str]) -> dict[str, int]:
        out = {}
        for owner in owner_ids:
            out[owner] = c.execute("SELECT count(*) FROM room_ratings g JOIN rooms r ON r.id = g.room_id "
                                   "WHERE r.owner_id = ? AND g.positive = 1", (owner,)).fetchone()[0]
        return out


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    room = dict(row)
    for key in ("keywords", "hashtags", "target_regions"):
        room[key] = json.loads(room[key])
    return room


class DiscoveryPlugin:
    """Upcoming rooms, search and recommendations; see the module docstring."""

    requires = ("rooms", "accounts")

    def __init__(self) -> None:
        self.app: Any = None
        self.plugins: Any = None
        self.db: Any = None

    @hookimpl
    def shopcast_configure(self, app: Any, plugins: Any) -> None:
        self.app, self.plugins = app, plugins
        self.cfg = app.config.rooms

    @hookimpl
    def shopcast_register_tables(self) -> list[Migration]:
        return MIGRATIONS

    @hookimpl
    def shopcast_startup(self, app: Any, nursery: Any) -> None:
        self.db = app.db

    @hookimpl
    async def shopcast_room_created(self, room: dict[str, Any]) -> None:
        await self.db.write(lambda c: SearchStore.index(c, room))

    @hookimpl
    async def shopcast_room_updated(self, room: dict[str, Any], changes: list[str]) -> None:
        await self.db.write(lambda c: SearchStore.index(c, room))

    @hookimpl
    async def shopcast_room_closed(self, room: dict[str, Any]) -> None:
        await self.db.write(lambda c: SearchStore.unindex(c, [room["id"]]))

    def _rooms(self) -> Any:
        return self.plugins.get("rooms")

    @hookimpl
    def shopcast_register_routes(self, api: Api) -> None:
        cfg = self.cfg
        page, per_page = page_params(cfg.page_size_default, cfg.page_size_max)
        rooms_page = {"type": "object", "required": ["rooms", "page", "per_page", "total"],
                      "properties": {**PAGE_SCHEMA_FIELDS, "rooms": {
                          "type": "array", "items": {"$ref": "#/components/schemas/Room"}}}}
        tag = "discovery"
        api.route("GET", "/api/v1/rooms/upcoming", self.upcoming, name="rooms_upcoming", tag=tag,
                  roles=EVERYONE, summary="Rooms not yet started, soonest first (warm-up).",
                  query=(page, per_page), responses={200: ("A page of rooms.", rooms_page)})
        api.route("GET", "/api/v1/rooms/search", self.search, name="rooms_search", tag=tag,
                  roles=EVERYONE, summary="Search rooms by words of the title, description, "
                                          "keywords, hashtags and host; by hashtag, host account "
                                          "and date range. Ranked by relevance when q is given, "
                                          "else by start time.",
                  query=(Query("q", {"type": "string", "maxLength": cfg.search_query_max_chars},
                               "Words; each matches as a prefix (partial titles)."),
                         Query("hashtag", {"type": "string", "pattern": r"^#?\w+$",
                                           "maxLength": cfg.tag_max_chars + 1},
                               "One hashtag, with or without '#'."),
                         Query("host", {"type": "string", "maxLength": 64},
                               "The host's account name."),
                         Query("from", {"type": "string", "format": "date-time"},
                               "Scheduled to start at or after (RFC 3339)."),
                         Query("to", {"type": "string", "format": "date-time"},
                               "Scheduled to start at or before (RFC 3339)."),
                         Query("state", {"type": "string", "enum": [*ROOM_STATES, "any"]},
                               "Only rooms in this state; default: not ended."),
                         page, per_page),
                  responses={200: ("A page of rooms, best first.", rooms_page)})
        reason = {"type": "object", "required": ["reason", "points", "detail"],
                  "properties": {"reason": {"type": "string",
                                            "enum": ["follows_host", "shared_hashtags", "language",
                                                     "popular_host", "upcoming"]},
                                 "points": {"type": "number"}, "detail": {"type": "string"}}}
        api.route("GET", "/api/v1/me/recommendations", self.recommend, name="me_recommendations",
                  tag=tag, roles=("viewer", "host", "operator"),
                  summary="Upcoming rooms for the caller, best first, each with the reasons "
                          "that make up its score.",
                  query=(page, per_page),
                  responses={200: ("A page of recommendations.", {
                      "type": "object", "required": ["recommendations", "page", "per_page", "total"],
                      "properties": {**PAGE_SCHEMA_FIELDS, "recommendations": {"type": "array", "items": {
                          "type": "object", "required": ["room", "score", "reasons"],
                          "properties": {"room": {"$ref": "#/components/schemas/Room"},
                                         "score": {"type": "number"},
                                         "reasons": {"type": "array", "items": reason}}}}}})})

    def _paging(self, query: dict[str, Any]) -> tuple[int, int]:
        return query.get("page", 1), query.get("per_page", self.cfg.page_size_default)

    async def upcoming(self, request, claims, body, query) -> Response:
        page, per_page = self._paging(query)
        now = self._rooms().clock()
        rows, total = await self.db.read(
            lambda c: SearchStore.upcoming(c, now, per_page, (page - 1) * per_page))
        return Response.json({"rooms": await self._rooms().views(rows), "page": page,
                              "per_page": per_page, "total": total})

    async def search(self, request, claims, body, query) -> Response:
        page, per_page = self._paging(query)
        match = fts_query_untrusted(query["q"]) if "q" in query else None
        start_from = parse_time_untrusted(query["from"], "from") if "from" in query else None
        start_to = parse_time_untrusted(query["to"], "to") if "to" in query else None
        if start_from is not None and start_to is not None and start_from > start_to:
            raise field_error("to", "must not be before from")
        state = query.get("state")
        states = _NOT_OVER if state is None else (
            ROOM_STATES if state == "any" else (state,))
        hashtag = query["hashtag"].lstrip("#").lower() if "hashtag" in query else None
        rows, total = await self.db.read(lambda c: SearchStore.search(
            c, match=match, hashtag=hashtag, host=query.get("host"), start_from=start_from,
            start_to=start_to, states=states, limit=per_page, offset=(page - 1) * per_page))
        return Response.json({"rooms": await self._rooms().views(rows), "page": page,
                              "per_page": per_page, "total": total})

    async def recommend(self, request, claims, body, query) -> Response:
        """score = follow_weight x [host followed]
                 + hashtag_weight x (hashtags shared with rooms liked or commented on)
                 + language_weight x [language of such a room]
                 + popularity_weight x ln(1 + positive ratings of the host's rooms)"""
        cfg = self.cfg
        account = await self.plugins.get("accounts").require_account(claims)
        page, per_page = self._paging(query)
        now = self._rooms().clock()
        followees = set(await self.plugins.get("accounts").followees(account["id"]))

        def load(c: sqlite3.Connection):
            candidates, _ = SearchStore.upcoming(c, now, cfg.page_size_max * 10, 0)
            candidates = [r for r in candidates if r["owner_id"] != account["id"]]
            tags, languages = SearchStore.taste(c, account["id"])
            popularity = SearchStore.host_popularity(c, {r["owner_id"] for r in candidates})
            return candidates, tags, languages, popularity

        candidates, tags, languages, popularity = await self.db.read(load)
        views = {v["id"]: v for v in await self._rooms().views(candidates)}
        scored = []
        for room in candidates:
            view = views[room["id"]]
            reasons = []
            if room["owner_id"] in followees:
                reasons.append({"reason": "follows_host", "points": cfg.recommend_follow_weight,
                                "detail": f"you follow {view['host']['name']}"})
            shared = sorted(set(room["hashtags"]) & set(tags))
            if shared:
                reasons.append({"reason": "shared_hashtags",
                                "points": cfg.recommend_hashtag_weight * len(shared),
                                "detail": "like rooms you enjoyed: "
                                          + ", ".join("#" + t for t in shared)})
            if room["language"] in languages:
                reasons.append({"reason": "language", "points": cfg.recommend_language_weight,
                                "detail": f"in {room['language']}, like rooms you enjoyed"})
            liked = popularity.get(room["owner_id"], 0)
            if liked:
                reasons.append({"reason": "popular_host",
                                "points": round(cfg.recommend_popularity_weight * math.log1p(liked), 4),
                                "detail": f"the host's rooms have {liked} positive ratings"})
            if not reasons:
                reasons.append({"reason": "upcoming", "points": 0.0,
                                "detail": "starts soon"})
            score = round(sum(r["points"] for r in reasons), 4)
            scored.append((-score, room["scheduled_start"], room["id"], view, reasons, score))
        scored.sort(key=lambda t: t[:3])
        chosen = scored[(page - 1) * per_page: page * per_page]
        return Response.json({"recommendations": [
            {"room": view, "score": score, "reasons": reasons}
            for _, _, _, view, reasons, score in chosen],
            "page": page, "per_page": per_page, "total": len(scored)})

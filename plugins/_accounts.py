"""The accounts plugin (ISO IWA 41 §5.1, §5.6, §6.1): registration with
explicit terms acceptance, scrypt passwords, login with access and refresh
tokens, profiles, check-in and follows, host identity verification,
digital-human approval, and account exit (own or forced, audited).
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from typing import Any

import trio

from shopcast.plugins._api import (
    ANONYMOUS,
    PAGE_SCHEMA_FIELDS,
    Api,
    field_error,
    format_time,
    page_params,
)
from shopcast.plugins._hookspecs import hookimpl
from shopcast.plugins._storage import Migration
from shopcast.server._routing import HTTPError, Response
from shopcast.server._tokens import ANY_ROOM

__all__ = ["ACCOUNT_TOKEN_ROOM", "AccountStore", "AccountsPlugin", "create_operator", "hash_password"]

ACCOUNT_TOKEN_ROOM = "-"
"""The room claim of account tokens that are not for one room; never a room id
(room ids start with a letter or a digit)."""
SELF_ROLES = ("audience", "host", "marketer")
"""Roles one can register for; operators are made with `shopcast operator`."""
TOKEN_ROLE = {"audience": "viewer", "host": "host", "marketer": "host", "operator": "operator"}
GENDERS = ("female", "male", "non_binary", "undisclosed")
VERIFICATION_STATES = ("none", "pending", "verified", "rejected")
USERS = ("viewer", "host", "operator")
"""Token roles an account holder's token can have."""

MIGRATIONS = [
    Migration("accounts", 1, """
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    display_name TEXT NOT NULL,
    photo_url TEXT,
    gender TEXT,
    region TEXT,
    terms_version TEXT NOT NULL,
    terms_accepted_at REAL NOT NULL,
    created_at REAL NOT NULL,
    verification_state TEXT NOT NULL DEFAULT 'none',
    verification_document TEXT,
    verification_note TEXT,
    digital_human INTEGER NOT NULL DEFAULT 0,
    digital_human_approved INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE refresh_tokens (
    token_sha256 BLOB PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    expires_at REAL NOT NULL
);
CREATE INDEX refresh_tokens_account ON refresh_tokens(account_id);
CREATE TABLE activity_days (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    day TEXT NOT NULL,
    checked_in INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day)
);
CREATE TABLE follows (
    follower_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    followee_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX follows_followee ON follows(followee_id);
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""),
]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int, r: int, p: int) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64), so the parameters can change later."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                            maxmem=128 * n * r * (p + 2), dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    n_, r_, p_ = int(n), int(r), int(p)
    candidate = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=n_, r=r_, p=p_,
                               maxmem=128 * n_ * r_ * (p_ + 2), dklen=32)
    return hmac.compare_digest(candidate, base64.b64decode(digest))


def subject_digest(account_id: str) -> str:
    """What the audit log keeps of an account once it is gone: a digest that
    matches the id for whoever already knows it, and reveals nothing else."""
    return "sha256:" + hashlib.sha256(b"shopcast account\0" + account_id.encode()).hexdigest()[:32]


def _today(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%d")


class AccountStore:
    """Every SQL statement of the accounts plugin. Methods take a connection
    inside a transaction (``Database.write`` / ``Database.read``)."""

    @staticmethod
    def insert(c: sqlite3.Connection, row: dict[str, Any]) -> None:
        columns = ", ".join(row)
        c.execute(f"INSERT INTO accounts ({columns}) VALUES ({', '.join('?' * len(row))})",
                  tuple(row.values()))

    @staticmethod
    def by_name(c: sqlite3.Connection, name: str) -> dict[str, Any] | None:
        row = c.execute("SELECT * FROM accounts WHERE name = ?", (name,)).fetchone()
        return dict(row) if row else None

    @staticmethod
    def by_id(c: sqlite3.Connection, account_id: str) -> dict[str, Any] | None:
        row = c.execute("SELECT * FROM accounts WHERE id = ?", (account_id,)).fetchone()
        return dict(row) if row else None

    @staticmethod
    def update(c: sqlite3.Connection, account_id: str, changes: dict[str, Any]) -> None:
        sets = ", ".join(f"{k} = ?" for k in changes)
        c.execute(f"UPDATE accounts SET {sets} WHERE id = ?", (*changes.values(), account_id))

    @staticmethod
    def add_refresh(c: sqlite3.Connection, token_sha256: bytes, account_id: str, expires_at: float) -> None:
        c.execute("DELETE FROM refresh_tokens WHERE account_id = ? AND expires_at < ?",
                  (account_id, time.time()))
        c.execute("INSERT INTO refresh_tokens VALUES (?, ?, ?)", (token_sha256, account_id, expires_at))

    @staticmethod
    def take_refresh(c: sqlite3.Connection, token_sha256: bytes, now: float) -> str | None:
        row = c.execute("SELECT account_id, expires_at FROM refresh_tokens WHERE token_sha256 = ?",
                        (token_sha256,)).fetchone()
        c.execute("DELETE FROM refresh_tokens WHERE token_sha256 = ?", (token_sha256,))
        if row is None or row["expires_at"] < now:
            return None
        return row["account_id"]

    @staticmethod
    def mark_day(c: sqlite3.Connection, account_id: str, day: str, checked_in: bool) -> None:
        c.execute("INSERT INTO activity_days (account_id, day, checked_in) VALUES (?, ?, ?) "
                  "ON CONFLICT (account_id, day) DO UPDATE SET "
                  "checked_in = max(checked_in, excluded.checked_in)",
                  (account_id, day, int(checked_in)))

    @staticmethod
    def day_counts(c: sqlite3.Connection, account_id: str) -> tuple[int, int]:
        row = c.execute("SELECT count(*), coalesce(sum(checked_in), 0) FROM activity_days "
                        "WHERE account_id = ?", (account_id,)).fetchone()
        return row[0], row[1]

    @staticmethod
    def follow_counts(c: sqlite3.Connection, account_id: str) -> tuple[int, int]:
        followers = c.execute("SELECT count(*) FROM follows WHERE followee_id = ?",
                              (account_id,)).fetchone()[0]
        following = c.execute("SELECT count(*) FROM follows WHERE follower_id = ?",
                              (account_id,)).fetchone()[0]
        return followers, following

    @staticmethod
    def set_follow(c: sqlite3.Connection, follower: str, followee: str, on: bool, now: float) -> None:
        if on:
            c.execute("INSERT OR IGNORE INTO follows VALUES (?, ?, ?)", (follower, followee, now))
        else:
            c.execute("DELETE FROM follows WHERE follower_id = ? AND followee_id = ?",
                      (follower, followee))

    @staticmethod
    def followees(c: sqlite3.Connection, account_id: str) -> list[str]:
        return [r[0] for r in c.execute("SELECT followee_id FROM follows WHERE follower_id = ?",
                                        (account_id,))]

    @staticmethod
    def audit(c: sqlite3.Connection, actor: str, action: str, subject: str, reason: str) -> None:
        c.execute("INSERT INTO audit_log (at, actor, action, subject, reason) VALUES (?, ?, ?, ?, ?)",
                  (time.time(), actor, action, subject, reason))

    @staticmethod
    def audit_page(c: sqlite3.Connection, limit: int, offset: int) -> tuple[list[dict], int]:
        total = c.execute("SELECT count(*) FROM audit_log").fetchone()[0]
        rows = c.execute("SELECT * FROM audit_log ORDER BY id DESC LIMIT ? OFFSET ?",
                         (limit, offset)).fetchall()
        return [dict(r) for r in rows], total

    @staticmethod
    def delete(c: sqlite3.Connection, account_id: str) -> None:
        """The account row and everything that cascades from it; the audit log
        keeps only the digest of the id where it named this account."""
        digest = subject_digest(account_id)
        c.execute("UPDATE audit_log SET actor = ? WHERE actor = ?", (digest, account_id))
        c.execute("UPDATE audit_log SET subject = ? WHERE subject = ?", (digest, account_id))
        c.execute("DELETE FROM accounts WHERE id = ?", (account_id,))


def _account_schemas(api: Api, cfg: Any) -> dict[str, Any]:
    name = {"type": "string", "minLength": cfg.name_min_chars, "maxLength": cfg.name_max_chars,
            "pattern": "^[a-z0-9_]+$", "description": "Unique; lowercase letters, digits and '_'."}
    display = {"type": "string", "minLength": 1, "maxLength": cfg.display_name_max_chars}
    url = {"type": "string", "format": "uri", "maxLength": cfg.url_max_chars}
    region = {"type": "string", "pattern": "^[A-Z]{2}$",
              "description": "ISO 3166-1 alpha-2 country code."}
    profile_fields = {
        "display_name": display,
        "photo_url": {**url, "description": "An http(s) URL of the profile photo."},
        "gender": {"type": "string", "enum": list(GENDERS), "description": "Optional."},
        "region": region,
    }
    stats = {"type": "object", "required": ["online_days", "positive_rating", "live_events",
                                            "followers", "following"],
             "properties": {"online_days": {"type": "integer"},
                            "check_in_days": {"type": "integer"},
                            "positive_rating": {"type": ["number", "null"],
                                                "description": "Share of positive ratings of "
                                                "the account's rooms, 0 to 1; null with none."},
                            "ratings": {"type": "integer"},
                            "live_events": {"type": "integer"},
                            "followers": {"type": "integer"},
                            "following": {"type": "integer"}}}
    public = {
        "type": "object",
        "required": ["name", "display_name", "role", "stats"],
        "properties": {
            "name": {"type": "string"}, "display_name": {"type": "string"},
            "role": {"type": "string", "enum": [*SELF_ROLES, "operator"]},
            "photo_url": {"type": ["string", "null"]}, "gender": {"type": ["string", "null"]},
            "region": {"type": ["string", "null"]},
            "verification_state": {"type": "string", "enum": list(VERIFICATION_STATES)},
            "digital_human": {"type": "boolean"},
            "digital_human_approved": {"type": "boolean"},
            "stats": stats,
        },
    }
    private = {
        "type": "object",
        "required": ["id", "name", "role", "display_name", "terms_version", "terms_accepted_at",
                     "created_at", "verification_state"],
        "properties": {
            **public["properties"], "id": {"type": "string"},
            "terms_version": {"type": "string"},
            "terms_accepted_at": {"type": "string", "format": "date-time"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    }
    return {
        "name": name, "profile_fields": profile_fields,
        "Profile": api.schema("Profile", public),
        "Account": api.schema("Account", private),
        "Session": api.schema("Session", {
            "type": "object",
            "required": ["access_token", "refresh_token", "token_type", "expires_in", "account"],
            "properties": {"access_token": {"type": "string"}, "refresh_token": {"type": "string"},
                           "token_type": {"type": "string", "enum": ["Bearer"]},
                           "expires_in": {"type": "integer"},
                           "account": {"$ref": "#/components/schemas/Account"}}}),
    }


class AccountsPlugin:
    """Accounts, sessions, profiles and exits; see the module docstring."""

    def __init__(self) -> None:
        self.app: Any = None
        self.plugins: Any = None
        self.db: Any = None
        self._failures: dict[str, collections.deque[float]] = {}

    # --- hooks ------------------------------------------------------------------------------

    @hookimpl
    def shopcast_configure(self, app: Any, plugins: Any) -> None:
        self.app, self.plugins = app, plugins
        self.cfg = app.config.accounts

    @hookimpl
    def shopcast_register_tables(self) -> list[Migration]:
        return MIGRATIONS

    @hookimpl
    def shopcast_register_permissions(self) -> dict[str, tuple[str, ...]]:
        return {"accounts.verify_identity": ("operator",),
                "accounts.approve_digital_human": ("operator",),
                "accounts.force_exit": ("operator",),
                "accounts.read_audit_log": ("operator",)}

    @hookimpl
    def shopcast_startup(self, app: Any, nursery: Any) -> None:
        self.db = app.db

    @hookimpl
    def shopcast_room_may_go_live(self, room: dict[str, Any]) -> str | None:
        owner = room.get("_owner_account")
        if owner is None:
            return None
        if owner["digital_human"] and not owner["digital_human_approved"]:
            return "the host is a digital human not yet approved by an operator"
        if self.cfg.require_verified_host and owner["verification_state"] != "verified":
            return "the host's identity is not verified"
        return None

    @hookimpl
    def shopcast_register_routes(self, api: Api) -> None:
        cfg = self.cfg
        s = _account_schemas(api, cfg)
        error = {"$ref": "#/components/schemas/Error"}
        tag = "accounts"
        api.route("GET", "/api/v1/terms", self.terms, name="terms_show", tag=tag,
                  summary="The terms of service a registration must accept.",
                  roles=(ANONYMOUS, "viewer", "host", "operator", "service"),
                  responses={200: ("The current terms.", {
                      "type": "object", "required": ["version", "url"],
                      "properties": {"version": {"type": "string"}, "url": {"type": "string"}}})})
        register = {
            "type": "object", "additionalProperties": False,
            "required": ["name", "password", "role", "terms_version", "accept_terms"],
            "properties": {
                "name": s["name"],
                "password": {"type": "string", "minLength": cfg.password_min_chars,
                             "maxLength": cfg.password_max_chars},
                "role": {"type": "string", "enum": list(SELF_ROLES)},
                "terms_version": {"type": "string", "maxLength": 64,
                                  "description": "The version shown by GET /api/v1/terms."},
                "accept_terms": {"type": "boolean", "enum": [True],
                                 "description": "Must be true: the terms are accepted explicitly."},
                **s["profile_fields"],
                "digital_human": {"type": "boolean",
                                  "description": "A host that is a digital human; it needs an "
                                                 "operator's approval before going live."},
            },
        }
        api.route("POST", "/api/v1/accounts", self.register, name="accounts_register", tag=tag,
                  summary="Register an audience, host or marketer account.",
                  roles=(ANONYMOUS, "viewer", "host", "operator", "service"), request=register,
                  example={"name": "maria_shop", "password": "correct horse battery", "role": "host",
                           "terms_version": cfg.terms_version, "accept_terms": True,
                           "display_name": "Maria", "region": "ES"},
                  responses={201: ("The new account.", s["Account"]),
                             409: ("The name is taken.", error)})
        login = {"type": "object", "additionalProperties": False, "required": ["name", "password"],
                 "properties": {"name": {"type": "string", "maxLength": 64},
                                "password": {"type": "string", "maxLength": cfg.password_max_chars}}}
        api.route("POST", "/api/v1/auth/login", self.login, name="auth_login", tag=tag,
                  summary="Log in: an access token and a refresh token.",
                  roles=(ANONYMOUS, "viewer", "host", "operator", "service"), request=login,
                  example={"name": "maria_shop", "password": "correct horse battery"},
                  responses={200: ("A session.", s["Session"]),
                             401: ("Wrong name or password.", error),
                             429: ("Too many failed attempts; retry later.", error)})
        refresh = {"type": "object", "additionalProperties": False, "required": ["refresh_token"],
                   "properties": {"refresh_token": {"type": "string", "maxLength": 128}}}
        api.route("POST", "/api/v1/auth/refresh", self.refresh, name="auth_refresh", tag=tag,
                  summary="Trade a refresh token for a new session (the old one stops working).",
                  roles=(ANONYMOUS, "viewer", "host", "operator", "service"), request=refresh,
                  example={"refresh_token": "..."},
                  responses={200: ("A new session.", s["Session"]),
                             401: ("Unknown, used or expired refresh token.", error)})
        api.route("GET", "/api/v1/me", self.me, name="me_show", tag=tag, roles=USERS,
                  summary="The caller's account.", responses={200: ("The account.", s["Account"])})
        api.route("PATCH", "/api/v1/me", self.edit_me, name="me_edit", tag=tag, roles=USERS,
                  summary="Edit the caller's profile.",
                  request={"type": "object", "additionalProperties": False,
                           "properties": {**s["profile_fields"],
                                          "gender": {"type": ["string", "null"],
                                                     "enum": [*GENDERS, None]}}},
                  example={"display_name": "Maria R.", "region": "PT"},
                  responses={200: ("The account.", s["Account"])})
        api.route("DELETE", "/api/v1/me", self.exit, name="me_exit", tag=tag, roles=USERS,
                  summary="Leave for good: personal data and generated content are deleted "
                          "(plugins/README.md), once balances and orders are settled.",
                  request={"type": "object", "additionalProperties": False,
                           "required": ["password", "confirm"],
                           "properties": {"password": {"type": "string",
                                                       "maxLength": cfg.password_max_chars},
                                          "confirm": {"type": "boolean", "enum": [True]}}},
                  example={"password": "correct horse battery", "confirm": True},
                  responses={200: ("Deleted.", {"type": "object", "required": ["deleted"],
                                                "properties": {"deleted": {"type": "boolean"}}}),
                             409: ("Not yet: the message says what must be settled first.", error)})
        api.route("POST", "/api/v1/me/check-in", self.check_in, name="me_check_in", tag=tag,
                  roles=USERS, summary="Daily check-in (once a day counts).",
                  responses={200: ("Counts after the check-in.", {
                      "type": "object", "required": ["day", "online_days", "check_in_days"],
                      "properties": {"day": {"type": "string"}, "online_days": {"type": "integer"},
                                     "check_in_days": {"type": "integer"}}})})
        api.route("POST", "/api/v1/me/verification", self.request_verification,
                  name="me_verification_request", tag=tag, roles=("host",),
                  summary="A host asks for identity verification.",
                  request={"type": "object", "additionalProperties": False,
                           "required": ["document_reference"],
                           "properties": {"document_reference": {
                               "type": "string", "minLength": 1, "maxLength": 200,
                               "description": "Where the operator finds the identity document."}}},
                  example={"document_reference": "kyc-provider:case-1234"},
                  responses={200: ("The account, verification pending.", s["Account"]),
                             409: ("Already verified, or not a host.", error)})
        api.route("GET", "/api/v1/accounts/{name}", self.profile, name="accounts_profile", tag=tag,
                  roles=(ANONYMOUS, "viewer", "host", "operator", "service"),
                  summary="A public profile with online days, positive rating and live events.",
                  responses={200: ("The profile.", s["Profile"])})
        follow_result = {"type": "object", "required": ["following"],
                         "properties": {"following": {"type": "boolean"}}}
        api.route("PUT", "/api/v1/accounts/{name}/follow", self.follow, name="accounts_follow",
                  tag=tag, roles=USERS, summary="Follow an account.",
                  responses={200: ("Following.", follow_result),
                             409: ("One cannot follow oneself.", error)})
        api.route("DELETE", "/api/v1/accounts/{name}/follow", self.unfollow,
                  name="accounts_unfollow", tag=tag, roles=USERS, summary="Stop following.",
                  responses={200: ("Not following.", follow_result),
                             409: ("One cannot follow oneself.", error)})
        api.route("PUT", "/api/v1/accounts/{name}/verification", self.decide_verification,
                  name="accounts_verification_decide", tag=tag, roles=("operator",),
                  summary="An operator verifies or rejects a host's identity.",
                  request={"type": "object", "additionalProperties": False, "required": ["state"],
                           "properties": {"state": {"type": "string", "enum": ["verified", "rejected"]},
                                          "note": {"type": "string", "maxLength": 500}}},
                  example={"state": "verified"},
                  responses={200: ("The profile.", s["Profile"]),
                             409: ("Not a host or marketer.", error)})
        api.route("PUT", "/api/v1/accounts/{name}/digital-human-approval", self.approve_digital_human,
                  name="accounts_digital_human_approve", tag=tag, roles=("operator",),
                  summary="An operator approves (or withdraws approval of) a digital-human host.",
                  request={"type": "object", "additionalProperties": False, "required": ["approved"],
                           "properties": {"approved": {"type": "boolean"}}},
                  example={"approved": True},
                  responses={200: ("The profile.", s["Profile"]),
                             409: ("Not a digital-human host.", error)})
        api.route("POST", "/api/v1/accounts/{name}/forced-exit", self.forced_exit,
                  name="accounts_forced_exit", tag=tag, roles=("operator",),
                  summary="An operator removes an account for a violation; the reason is audited.",
                  request={"type": "object", "additionalProperties": False, "required": ["reason"],
                           "properties": {"reason": {"type": "string", "minLength": 3,
                                                     "maxLength": 500}}},
                  example={"reason": "sold counterfeit goods"},
                  responses={200: ("Deleted.", {"type": "object", "required": ["deleted"],
                                                "properties": {"deleted": {"type": "boolean"}}}),
                             409: ("Operators cannot be removed this way.", error)})
        page, per_page = page_params(self.app.config.rooms.page_size_default,
                                     self.app.config.rooms.page_size_max)
        api.route("GET", "/api/v1/audit-log", self.audit_log, name="audit_log_list", tag=tag,
                  roles=("operator",), summary="Operators' actions, newest first.",
                  query=(page, per_page),
                  responses={200: ("A page of entries.", {
                      "type": "object", "required": ["entries", "page", "per_page", "total"],
                      "properties": {**PAGE_SCHEMA_FIELDS, "entries": {"type": "array", "items": {
                          "type": "object",
                          "required": ["at", "actor", "action", "subject", "reason"],
                          "properties": {"at": {"type": "string"}, "actor": {"type": "string"},
                                         "action": {"type": "string"},
                                         "subject": {"type": "string"},
                                         "reason": {"type": "string"}}}}}})})

    # --- helpers used by other plugins ------------------------------------------------------

    async def require_account(self, claims: Any) -> dict[str, Any]:
        """The account a token belongs to, or 403 (a platform token, or a
        deleted account)."""
        if claims is None:
            raise HTTPError(401, "missing_token", "an Authorization: Bearer token is required",
                            "authorization")
        account = await self.db.read(lambda c: AccountStore.by_id(c, claims.subject))
        if account is None:
            raise HTTPError(403, "no_account", "the token's subject is not an account "
                            "(it was deleted, or the token was minted by a platform)",
                            "authorization")
        return account

    async def by_name(self, name: str) -> dict[str, Any]:
        account = await self.db.read(lambda c: AccountStore.by_name(c, name))
        if account is None:
            raise HTTPError(404, "not_found", f"no account is called {name!r}", "name")
        return account

    async def by_id(self, account_id: str) -> dict[str, Any] | None:
        return await self.db.read(lambda c: AccountStore.by_id(c, account_id))

    async def followees(self, account_id: str) -> list[str]:
        return await self.db.read(lambda c: AccountStore.followees(c, account_id))

    def private_view(self, account: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": account["id"], "name": account["name"], "role": account["role"],
            "display_name": account["display_name"], "photo_url": account["photo_url"],
            "gender": account["gender"], "region": account["region"],
            "terms_version": account["terms_version"],
            "terms_accepted_at": format_time(account["terms_accepted_at"]),
            "created_at": format_time(account["created_at"]),
            "verification_state": account["verification_state"],
            "digital_human": bool(account["digital_human"]),
            "digital_human_approved": bool(account["digital_human_approved"]),
        }

    async def public_view(self, account: dict[str, Any]) -> dict[str, Any]:
        account_id = account["id"]

        def counts(c: sqlite3.Connection) -> tuple[tuple[int, int], tuple[int, int]]:
            return AccountStore.day_counts(c, account_id), AccountStore.follow_counts(c, account_id)

        (online, checked), (followers, following) = await self.db.read(counts)
        stats: dict[str, Any] = {"online_days": online, "check_in_days": checked,
                                 "followers": followers, "following": following,
                                 "positive_rating": None, "ratings": 0, "live_events": 0}
        rooms = self.plugins.get("rooms")
        if rooms is not None:
            stats.update(await rooms.profile_stats(account_id))
        return {
            "name": account["name"], "display_name": account["display_name"],
            "role": account["role"], "photo_url": account["photo_url"],
            "gender": account["gender"], "region": account["region"],
            "verification_state": account["verification_state"],
            "digital_human": bool(account["digital_human"]),
            "digital_human_approved": bool(account["digital_human_approved"]),
            "stats": stats,
        }

    # --- handlers ---------------------------------------------------------------------------

    async def terms(self, request, claims, body, query) -> Response:
        return Response.json({"version": self.cfg.terms_version, "url": self.cfg.terms_url})

    async def register(self, request, claims, body, query) -> Response:
        cfg = self.cfg
        if body["terms_version"] != cfg.terms_version:
            raise field_error("terms_version", f"the current terms are version {cfg.terms_version}; "
                              "read them at GET /api/v1/terms and accept that version")
        if body.get("digital_human") and body["role"] != "host":
            raise field_error("digital_human", "only a host can be a digital human")
        account = await self._create(body, role=body["role"])
        await self.plugins.notify("shopcast_account_created", account=self.private_view(account))
        return Response.json(self.private_view(account), status=201)

    async def _create(self, fields: dict[str, Any], *, role: str) -> dict[str, Any]:
        cfg = self.cfg
        password_hash = await trio.to_thread.run_sync(
            lambda: hash_password(fields["password"], n=cfg.scrypt_n, r=cfg.scrypt_r, p=cfg.scrypt_p))
        now = time.time()
        row = {
            "id": "a" + secrets.token_hex(8), "name": fields["name"], "role": role,
            "password_hash": password_hash,
            "display_name": fields.get("display_name") or fields["name"],
            "photo_url": fields.get("photo_url"), "gender": fields.get("gender"),
            "region": fields.get("region"), "terms_version": cfg.terms_version,
            "terms_accepted_at": now, "created_at": now,
            "digital_human": int(bool(fields.get("digital_human"))),
        }

        def insert(c: sqlite3.Connection) -> dict[str, Any]:
            if AccountStore.by_name(c, row["name"]) is not None:
                raise field_error("name", f"{row['name']!r} is taken", status=409, code="name_taken")
            AccountStore.insert(c, row)
            return AccountStore.by_id(c, row["id"])

        return await self.db.write(insert)

    async def create_operator(self, name: str, password: str) -> dict[str, Any]:
        """An operator account (the CLI's `shopcast operator create`)."""
        return await self._create({"name": name, "password": password}, role="operator")

    def _check_rate(self, name: str) -> None:
        now = time.monotonic()
        window = self.cfg.login_failure_window_s
        failures = self._failures.get(name)
        if failures is None:
            return
        while failures and failures[0] < now - window:
            failures.popleft()
        if len(failures) >= self.cfg.login_failures_max:
            retry = int(failures[0] + window - now) + 1
            raise HTTPError(429, "too_many_requests", f"too many failed logins for {name!r}; "
                            f"retry in {retry} s", "name", headers=(("retry-after", str(retry)),))

    def _record_failure(self, name: str) -> None:
        if len(self._failures) > 100_000:
            # Bounded memory under a flood of made-up names: start over.
            self._failures.clear()
        self._failures.setdefault(name, collections.deque(maxlen=self.cfg.login_failures_max)).append(
            time.monotonic())

    async def login(self, request, claims, body, query) -> Response:
        name = body["name"]
        self._check_rate(name)
        account = await self.db.read(lambda c: AccountStore.by_name(c, name))
        stored = account["password_hash"] if account else None
        ok = stored is not None and await trio.to_thread.run_sync(
            check_password, body["password"], stored)
        if not ok:
            self._record_failure(name)
            raise HTTPError(401, "bad_credentials", "wrong name or password", "password")
        self._failures.pop(name, None)
        return Response.json(await self._session(account))

    async def _session(self, account: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        role = TOKEN_ROLE[account["role"]]
        ttl = min(self.cfg.access_token_ttl_s, self.app.config.tokens.max_ttl_s)
        access = self.app.tokens.mint(subject=account["id"], role=role,
                                      room=ANY_ROOM if role == "operator" else ACCOUNT_TOKEN_ROOM,
                                      ttl_s=ttl, now=now)
        refresh = secrets.token_urlsafe(32)
        digest = hashlib.sha256(refresh.encode()).digest()

        def store(c: sqlite3.Connection) -> None:
            AccountStore.add_refresh(c, digest, account["id"], now + self.cfg.refresh_token_ttl_s)
            AccountStore.mark_day(c, account["id"], _today(now), False)

        await self.db.write(store)
        return {"access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                "expires_in": ttl, "account": self.private_view(account)}

    async def refresh(self, request, claims, body, query) -> Response:
        digest = hashlib.sha256(body["refresh_token"].encode()).digest()
        now = time.time()
        account_id = await self.db.write(lambda c: AccountStore.take_refresh(c, digest, now))
        account = await self.by_id(account_id) if account_id else None
        if account is None:
            raise HTTPError(401, "bad_refresh_token", "the refresh token is unknown, used or expired",
                            "refresh_token")
        return Response.json(await self._session(account))

    async def me(self, request, claims, body, query) -> Response:
        return Response.json(self.private_view(await self.require_account(claims)))

    async def edit_me(self, request, claims, body, query) -> Response:
        account = await self.require_account(claims)
        changes = dict(body)
        if "display_name" in changes and changes["display_name"] is None:
            changes["display_name"] = account["name"]
        if changes:
            await self.db.write(lambda c: AccountStore.update(c, account["id"], changes))
        return Response.json(self.private_view(await self.by_id(account["id"])))

    async def check_in(self, request, claims, body, query) -> Response:
        account = await self.require_account(claims)
        day = _today(time.time())

        def mark(c: sqlite3.Connection) -> tuple[int, int]:
            AccountStore.mark_day(c, account["id"], day, True)
            return AccountStore.day_counts(c, account["id"])

        online, checked = await self.db.write(mark)
        return Response.json({"day": day, "online_days": online, "check_in_days": checked})

    async def request_verification(self, request, claims, body, query) -> Response:
        account = await self.require_account(claims)
        if account["role"] not in ("host", "marketer"):
            raise HTTPError(409, "not_a_host", "only hosts and marketers are verified", "authorization")
        if account["verification_state"] == "verified":
            raise HTTPError(409, "already_verified", "the identity is already verified")
        await self.db.write(lambda c: AccountStore.update(c, account["id"], {
            "verification_state": "pending", "verification_document": body["document_reference"]}))
        return Response.json(self.private_view(await self.by_id(account["id"])))

    async def profile(self, request, claims, body, query, name: str) -> Response:
        return Response.json(await self.public_view(await self.by_name(name)))

    async def _follow(self, claims, name: str, on: bool) -> Response:
        me = await self.require_account(claims)
        other = await self.by_name(name)
        if other["id"] == me["id"]:
            raise HTTPError(409, "self_follow", "an account cannot follow itself", "name")
        await self.db.write(lambda c: AccountStore.set_follow(c, me["id"], other["id"], on, time.time()))
        return Response.json({"following": on})

    async def follow(self, request, claims, body, query, name: str) -> Response:
        return await self._follow(claims, name, True)

    async def unfollow(self, request, claims, body, query, name: str) -> Response:
        return await self._follow(claims, name, False)

    async def decide_verification(self, request, claims, body, query, name: str) -> Response:
        account = await self.by_name(name)
        if account["role"] not in ("host", "marketer"):
            raise HTTPError(409, "not_a_host", f"{name} is not a host or marketer", "name")

        def decide(c: sqlite3.Connection) -> None:
            AccountStore.update(c, account["id"], {"verification_state": body["state"],
                                                   "verification_note": body.get("note")})
            AccountStore.audit(c, claims.subject, f"identity_{body['state']}", account["id"],
                               body.get("note", ""))

        await self.db.write(decide)
        return Response.json(await self.public_view(await self.by_id(account["id"])))

    async def approve_digital_human(self, request, claims, body, query, name: str) -> Response:
        account = await self.by_name(name)
        if not account["digital_human"]:
            raise HTTPError(409, "not_digital_human", f"{name} is not a digital-human host", "name")

        def decide(c: sqlite3.Connection) -> None:
            AccountStore.update(c, account["id"], {"digital_human_approved": int(body["approved"])})
            AccountStore.audit(c, claims.subject, "digital_human_" +
                               ("approved" if body["approved"] else "withdrawn"), account["id"], "")

        await self.db.write(decide)
        return Response.json(await self.public_view(await self.by_id(account["id"])))

    async def exit(self, request, claims, body, query) -> Response:
        account = await self.require_account(claims)
        if not await trio.to_thread.run_sync(check_password, body["password"], account["password_hash"]):
            raise HTTPError(401, "bad_credentials", "wrong password", "password")
        reason = self.plugins.veto("shopcast_account_may_exit", account=self.private_view(account))
        if reason is not None:
            raise HTTPError(409, "not_settled", f"the account cannot be closed yet: {reason}")
        await self.delete_account(account, forced=False, reason="", actor=None)
        return Response.json({"deleted": True})

    async def forced_exit(self, request, claims, body, query, name: str) -> Response:
        account = await self.by_name(name)
        if account["role"] == "operator":
            raise HTTPError(409, "operator", "operators are removed from the command line", "name")
        await self.delete_account(account, forced=True, reason=body["reason"], actor=claims.subject)
        return Response.json({"deleted": True})

    async def delete_account(self, account: dict[str, Any], *, forced: bool, reason: str,
                             actor: str | None) -> None:
        """Every plugin forgets the account, then its row goes (cascading to
        sessions, days and follows); a forced exit is audited first."""
        account_id = account["id"]
        if forced:
            await self.db.write(lambda c: AccountStore.audit(c, actor, "forced_exit", account_id, reason))
        await self.plugins.collect("shopcast_account_forget", account_id=account_id)
        await self.db.write(lambda c: AccountStore.delete(c, account_id))
        await self.plugins.notify("shopcast_account_deleted", account_id=account_id, forced=forced,
                                  reason=reason)

    async def audit_log(self, request, claims, body, query) -> Response:
        page = query.get("page", 1)
        per_page = query.get("per_page", self.app.config.rooms.page_size_default)
        entries, total = await self.db.read(
            lambda c: AccountStore.audit_page(c, per_page, (page - 1) * per_page))
        return Response.json({
            "entries": [{"at": format_time(e["at"]), "actor": e["actor"], "action": e["action"],
                         "subject": e["subject"], "reason": e["reason"]} for e in entries],
            "page": page, "per_page": per_page, "total": total})


NAME_PATTERN = re.compile(r"[a-z0-9_]+\Z")


async def create_operator(config: Any, name: str, password: str) -> dict[str, Any]:
    """Create an operator account in ``config``'s database, outside a running
    server (the CLI). Migrations are applied first."""
    from shopcast.plugins._storage import Database

    cfg = config.accounts
    if not (cfg.name_min_chars <= len(name) <= cfg.name_max_chars and NAME_PATTERN.match(name)):
        raise ValueError(f"name must be {cfg.name_min_chars} to {cfg.name_max_chars} lowercase "
                         "letters, digits or '_'")
    if not cfg.password_min_chars <= len(password) <= cfg.password_max_chars:
        raise ValueError(f"password must have {cfg.password_min_chars} to "
                         f"{cfg.password_max_chars} characters")
    config.data_path.mkdir(parents=True, exist_ok=True)
    db = Database.in_data_dir(config.data_path, busy_timeout_s=config.storage.busy_timeout_s)
    await db.open(MIGRATIONS)
    try:
        plugin = AccountsPlugin()
        plugin.cfg, plugin.db = cfg, db
        return await plugin._create({"name": name, "password": password}, role="operator")
    finally:
        await db.close()

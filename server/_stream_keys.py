"""Stream keys: the per-room secret in a push URL (``rtmp://HOST:1935/live/KEY``).

The database keeps only a salt and the key's SHA-256 per room. The key is
HMAC-SHA256(server secret, room id + salt): random (a fresh 32-byte salt
per key), rotatable (a new salt), checked by hash in constant time, and
shown again on request (the server re-derives it) without the database
alone ever revealing it. The server secret is a file in the data directory
(or the one ``rtmp.stream_key_secret_file`` names), made on first use.

Storage: SQLite in WAL mode at ``<data_dir>/shopcast.db``, table
``stream_keys``, its schema version in ``schema_versions`` under the
component name "stream_keys", so the rooms plugin can take the table over
with a migration. The server and ``shopcast push-url`` share the file; the
server looks a key up at every publish and caches nothing. Methods block:
call them from ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DATABASE_FILE", "ROOM_ID_PATTERN", "StreamKey", "StreamKeyStore", "valid_room_id"]

DATABASE_FILE = "shopcast.db"
SECRET_FILE = "stream-key.secret"
SCHEMA_COMPONENT = "stream_keys"
SCHEMA_VERSION = 1
SECRET_BYTES = 32
SALT_BYTES = 32
ROOM_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
"""Room ids: 1 to 64 letters, digits, '_', '.', '-', starting with a letter or digit."""
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}\Z")
_BUSY_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_versions (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_keys (
    room_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    key_salt BLOB NOT NULL,
    key_sha256 BLOB NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    rotated_at REAL NOT NULL
);
"""


def valid_room_id(room_id: str) -> bool:
    return bool(ROOM_ID_PATTERN.match(room_id))


@dataclass(frozen=True)
class StreamKey:
    """A room's stream key, as shown to its host."""

    room_id: str
    owner: str
    key: str
    """The secret itself (43 URL-safe base64 characters)."""
    created_at: float
    """When the room's first key was made (Unix time, s)."""
    rotated_at: float
    """When the current key was made (Unix time, s)."""
    created: bool
    """True when this call made the key (the room had none)."""


@dataclass(frozen=True)
class KeyOwner:
    """Whose the key presented by a publisher is."""

    room_id: str
    owner: str


def _sha256(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class StreamKeyStore:
    """Stream keys in ``<data_dir>/shopcast.db``; blocking methods."""

    def __init__(self, data_dir: Path, *, secret_file: str | Path = "") -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DATABASE_FILE
        self.secret_path = Path(secret_file) if secret_file else self.data_dir / SECRET_FILE
        self._secret: bytes | None = None

    # --- plumbing ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def initialize(self) -> None:
        """Create the tables (idempotent) and the secret; call once at start-up."""
        db = self._connect()
        try:
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO schema_versions (component, version) VALUES (?, ?)",
                       (SCHEMA_COMPONENT, SCHEMA_VERSION))
        finally:
            db.close()
        self._load_secret()

    def _load_secret(self) -> bytes:
        if self._secret is not None:
            return self._secret
        path = self.secret_path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            # Written whole in one call; a concurrent reader that finds it
            # short retries below.
            with os.fdopen(fd, "wb") as f:
                f.write(base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)) + b"\n")
        for _ in range(50):
            raw = path.read_bytes().strip()
            if raw:
                break
            time.sleep(0.01)
        secret = base64.urlsafe_b64decode(raw)
        if len(secret) < 16:
            raise ValueError(f"{path} holds a secret of {len(secret)} bytes; at least 16 are needed")
        self._secret = secret
        return secret

    def _derive(self, room_id: str, salt: bytes) -> str:
        mac = hmac.new(self._load_secret(), b"shopcast stream key\0" + room_id.encode() + b"\0" + salt,
                       hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    # --- operations -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE: one writer at a time, across
        processes too), committed on success and rolled back on any error."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _insert(self, db: sqlite3.Connection, room_id: str, owner: str, salt: bytes,
                key: str, now: float) -> None:
        db.execute("INSERT INTO stream_keys (room_id, owner, key_salt, key_sha256, created_at, "
                   "rotated_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (room_id, owner, salt, _sha256(key), now, now))

    def get_or_create(self, room_id: str, *, owner: str = "operator") -> StreamKey:
        """The room's key, made (with the room's record, owned by ``owner``)
        when it has none."""
        if not valid_room_id(room_id):
            raise ValueError(f"invalid room id {room_id!r}")
        with self._transaction() as db:
            row = db.execute("SELECT owner, key_salt, created_at, rotated_at FROM stream_keys "
                             "WHERE room_id = ?", (room_id,)).fetchone()
            if row is not None:
                owner_, salt, created_at, rotated_at = row
                return StreamKey(room_id, owner_, self._derive(room_id, salt), created_at,
                                 rotated_at, created=False)
            salt = secrets.token_bytes(SALT_BYTES)
            key = self._derive(room_id, salt)
            now = time.time()
            self._insert(db, room_id, owner, salt, key, now)
            return StreamKey(room_id, owner, key, now, now, created=True)

    def rotate(self, room_id: str, *, owner: str = "operator") -> StreamKey:
        """Replace the room's key (making one if it has none); the old key
        stops working for new publishes at once."""
        if not valid_room_id(room_id):
            raise ValueError(f"invalid room id {room_id!r}")
        salt = secrets.token_bytes(SALT_BYTES)
        key = self._derive(room_id, salt)
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT owner, created_at FROM stream_keys WHERE room_id = ?",
                             (room_id,)).fetchone()
            if row is None:
                self._insert(db, room_id, owner, salt, key, now)
                return StreamKey(room_id, owner, key, now, now, created=True)
            db.execute("UPDATE stream_keys SET key_salt = ?, key_sha256 = ?, rotated_at = ? "
                       "WHERE room_id = ?", (salt, _sha256(key), now, room_id))
            owner_, created_at = row
            return StreamKey(room_id, owner_, key, created_at, now, created=False)

    def lookup_untrusted(self, key: str) -> KeyOwner | None:
        """The room whose current key is ``key`` (as a publisher presented
        it), or None."""
        if not _KEY_PATTERN.match(key):
            return None
        digest = _sha256(key)
        db = self._connect()
        try:
            row = db.execute("SELECT room_id, owner, key_sha256 FROM stream_keys "
                             "WHERE key_sha256 = ?", (digest,)).fetchone()
        finally:
            db.close()
        if row is None or not hmac.compare_digest(row[2], digest):
            return None
        return KeyOwner(row[0], row[1])

"""Storage: SQLite in WAL mode at ``<data_dir>/shopcast.db``, one writer
connection and one reader connection, every blocking call in a worker thread,
and schema migrations versioned per component.

Plugins reach the database only through their repository classes (for
example ``AccountStore`` in plugins/_accounts.py): plain methods that take a
``sqlite3.Connection`` and hold all of the plugin's SQL. ``Database.write``
and ``Database.read`` run such a method off the event loop. Moving to
PostgreSQL means another ``Database`` with the same two methods and
repositories written for its driver; the plugins' logic does not change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

__all__ = ["DATABASE_FILE", "Database", "Migration", "Repository", "StorageError"]

DATABASE_FILE = "shopcast.db"
T = TypeVar("T")

# The same table, with the same columns, that server/_stream_keys.py creates.
_SCHEMA_VERSIONS = """
CREATE TABLE IF NOT EXISTS schema_versions (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL
)
"""


class StorageError(Exception):
    """A migration cannot be applied (a gap in versions, a version from the future)."""


@dataclass(frozen=True)
class Migration:
    """One step of a component's schema: ``sql`` (one or more statements)
    takes it from ``version - 1`` to ``version``."""

    component: str
    version: int
    sql: str


class Repository(Protocol):
    """What a plugin's store needs from the database: run a function with a
    connection, in a write transaction or on a read snapshot."""

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


class Database:
    """The SQLite database: one writer and one reader connection, each used by
    one worker thread at a time (a trio.Lock each), so writes are serialised
    and reads never wait for them (WAL).

    Resource handling: ``open`` connects and migrates, ``close`` closes both
    connections; ``async with`` does both. Error handling: an exception in
    ``write`` rolls the transaction back and propagates.
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0, synchronous: str = "normal") -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._synchronous = synchronous.upper()
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_lock = trio.Lock()
        self._read_lock = trio.Lock()

    @classmethod
    def in_data_dir(cls, data_dir: Path, **kwargs: Any) -> "Database":
        return cls(Path(data_dir) / DATABASE_FILE, **kwargs)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                                     check_same_thread=False)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={self._synchronous}")
        connection.execute("PRAGMA foreign_keys=ON")
        return connection

    async def open(self, migrations: Iterable[Migration] = ()) -> None:
        """Connect, create ``schema_versions`` and apply pending migrations."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await trio.to_thread.run_sync(self._connect)
        self._reader = await trio.to_thread.run_sync(self._connect)
        await self.migrate(migrations)

    async def close(self) -> None:
        for connection in (self._writer, self._reader):
            if connection is not None:
                await trio.to_thread.run_sync(connection.close)
        self._writer = self._reader = None

    async def __aenter__(self) -> "Database":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def migrate(self, migrations: Iterable[Migration]) -> dict[str, int]:
        """Apply the migrations above each component's recorded version, in
        version order, each in its own transaction; returns the versions."""
        by_component: dict[str, list[Migration]] = {}
        for migration in migrations:
            by_component.setdefault(migration.component, []).append(migration)

        def apply(connection: sqlite3.Connection) -> dict[str, int]:
            connection.execute(_SCHEMA_VERSIONS)
            versions = {}
            for component, steps in sorted(by_component.items()):
                steps.sort(key=lambda m: m.version)
                numbers = [m.version for m in steps]
                if numbers != list(range(1, len(steps) + 1)):
                    raise StorageError(f"{component}: migrations must be numbered 1, 2, 3...; "
                                       f"got {numbers}")
                row = connection.execute("SELECT version FROM schema_versions WHERE component = ?",
                                         (component,)).fetchone()
                current = row[0] if row else 0
                if current > len(steps):
                    raise StorageError(f"{component}: the database is at version {current}, newer "
                                       f"than this server knows ({len(steps)})")
                for step in steps[current:]:
                    connection.execute("BEGIN IMMEDIATE")
                    try:
                        for statement in _statements(step.sql):
                            connection.execute(statement)
                        connection.execute(
                            "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                            "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                            (component, step.version))
                        connection.execute("COMMIT")
                    except BaseException:
                        connection.execute("ROLLBACK")
                        raise
                versions[component] = len(steps)
            return versions

        async with self._write_lock:
            return await trio.to_thread.run_sync(apply, self._require(self._writer))

    def _require(self, connection: sqlite3.Connection | None) -> sqlite3.Connection:
        if connection is None:
            raise StorageError("the database is not open")
        return connection

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in one write transaction (BEGIN IMMEDIATE),
        committed when it returns, rolled back when it raises."""
        connection = self._require(self._writer)

        def run() -> T:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = fn(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

        async with self._write_lock:
            return await trio.to_thread.run_sync(run)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on a consistent snapshot."""
        connection = self._require(self._reader)

        def run() -> T:
            connection.execute("BEGIN")
            try:
                return fn(connection)
            finally:
                connection.execute("COMMIT")

        async with self._read_lock:
            return await trio.to_thread.run_sync(run)

    async def table_names(self) -> list[str]:
        """Every table in the database (for audits and tests)."""
        return await self.read(lambda c: [r[0] for r in c.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")])


def _statements(sql: str) -> list[str]:
    """Split a migration into statements (complete ones, as sqlite3 judges)."""
    out, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            out.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        out.append(buffer.strip())
    return out

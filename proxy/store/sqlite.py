"""The embedded SQLite store (WAL mode): safe to share between processes on one host.

Every write runs in one ``BEGIN IMMEDIATE`` transaction and bumps the
generation, which running proxies poll to reload. A file that is not a valid
store is reported and left untouched, never replaced; an older store is
migrated in place, in one transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from proxy.errors import ConfigError
from proxy.stats import Clock
from proxy.store.base import StoredConnector
from proxy.store.schema import MIGRATIONS, VERSION
from proxy.store.sqlite_monitoring import SqliteMonitoring
from proxy.store.transaction import GRANT_SELECT, TOKEN_SELECT, SqlTransaction, grant_from_row, token_from_row


def _connect(path: Path) -> sqlite3.Connection:
    """Open in WAL mode, refusing a database that is not ours (DatabaseError for non-SQLite)."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables and "meta" not in tables:
        db.close()
        raise ConfigError(
            f"{path}: an SQLite database that is not an egress store; the file was left untouched"
        )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _version(db: sqlite3.Connection) -> int:
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone():
        return 0
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    return int(row[0]) if row else 0


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to VERSION; the write lock is taken only when there is work."""
    if _version(db) == VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        current = _version(db)
        if current > VERSION:
            raise ConfigError(f"{path}: store schema {current} is newer than this egress-proxy understands")
        for script in MIGRATIONS[current:]:
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
        if current < VERSION:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(VERSION),))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class SqliteStore:
    flush_interval = 1.0  # a local file: counters can be written every second
    pushes_changes = False  # wait_for_change only sleeps: callers may sleep without a thread

    def __init__(self, path: Path, *, create: bool = False, clock: Clock = time.time) -> None:
        self.path = path
        self.location = str(path)
        if not create and not path.exists():
            raise ConfigError(f"no store at {path}: run `egress init` first")
        try:
            self._db = _connect(path)
            _migrate(self._db, path)
        except sqlite3.DatabaseError as e:
            raise ConfigError(
                f"{path}: not a usable egress store ({e}); the file was left untouched"
            ) from None
        self._read = SqlTransaction(self._db, "?")
        self.monitoring = SqliteMonitoring(self._db, clock)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def write(self) -> Iterator[SqlTransaction]:
        """One transaction; bumps the generation so running proxies reload, unless it only added
        grants or admin tokens (nothing a running proxy holds: a pod minting its grant reloads no one)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._read.changed = False
                yield self._read
                if self._read.changed:
                    self._db.execute(
                        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'"
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{self.path}: store write failed ({e}); nothing was changed") from None

    def generation(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0])

    def wait_for_change(self, timeout: float) -> bool:
        """SQLite cannot push changes: sleep, then the caller polls the generation."""
        time.sleep(timeout)
        return False

    def connectors(self) -> list[StoredConnector]:
        try:
            return self._read.connectors()
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{self.path}: cannot read connectors ({e})") from None

    def get(self, name: str) -> StoredConnector | None:
        return self._read.get(name)

    def grants(self) -> list[dict[str, Any]]:
        rows = self._db.execute(GRANT_SELECT).fetchall()
        return [grant_from_row(r) for r in rows]

    def revoked_grants(self) -> frozenset[str]:
        rows = self._db.execute("SELECT id FROM grants WHERE revoked_at IS NOT NULL").fetchall()
        return frozenset(r[0] for r in rows)

    def admin_tokens(self) -> list[dict[str, Any]]:
        rows = self._db.execute(f"{TOKEN_SELECT} ORDER BY created_at, id").fetchall()
        return [token_from_row(r) for r in rows]

    def admin_token(self, tid: str) -> dict[str, Any] | None:
        row = self._db.execute(f"{TOKEN_SELECT} WHERE id = ?", (tid,)).fetchone()
        return token_from_row(row) if row else None

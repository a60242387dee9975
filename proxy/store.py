"""The SQLite store: connectors with sealed secrets, plus a change counter.

Every write runs in one ``BEGIN IMMEDIATE`` transaction and bumps
``generation``, which running proxies poll to reload. A file that is not a
valid store is reported and left untouched, never replaced.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.errors import ConfigError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS connectors (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    secret BLOB NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    connectors TEXT NOT NULL,
    expires_at REAL NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""


def connect(path: Path, timeout: float = 10) -> sqlite3.Connection:
    """Open the store in WAL mode, refusing a database that is not ours.

    Raises sqlite3.DatabaseError for a file that is not SQLite at all.
    """
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if tables and "meta" not in tables:
        db.close()
        raise ConfigError(
            f"{path}: an SQLite database that is not an egress store; the file was left untouched"
        )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


@dataclass(frozen=True, slots=True)
class StoredConnector:
    name: str
    spec: dict[str, Any]
    sealed: bytes
    created_at: float
    updated_at: float


class Store:
    """One SQLite database in WAL mode; safe to share between processes."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        if not create and not path.exists():
            raise ConfigError(f"no store at {path}: run `egress init` first")
        try:
            self._db = connect(path)
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('generation', '0')",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise ConfigError(
                    f"{path}: store schema {row[0]} is newer than this egress-proxy understands"
                )
        except sqlite3.DatabaseError as e:
            raise ConfigError(
                f"{path}: not a usable egress store ({e}); the file was left untouched"
            ) from None

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One transaction; bumps the generation so running proxies reload."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{self.path}: store write failed ({e}); nothing was changed") from None

    def generation(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0])

    def connectors(self) -> list[StoredConnector]:
        try:
            rows = self._db.execute(
                "SELECT name, spec, secret, created_at, updated_at FROM connectors ORDER BY name"
            ).fetchall()
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{self.path}: cannot read connectors ({e})") from None
        return [StoredConnector(r[0], json.loads(r[1]), bytes(r[2]), r[3], r[4]) for r in rows]

    def get(self, name: str) -> StoredConnector | None:
        row = self._db.execute(
            "SELECT name, spec, secret, created_at, updated_at FROM connectors WHERE name=?",
            (name,),
        ).fetchone()
        return StoredConnector(row[0], json.loads(row[1]), bytes(row[2]), row[3], row[4]) if row else None

    @staticmethod
    def put(db: sqlite3.Connection, name: str, spec: dict[str, Any], sealed: bytes) -> None:
        now = time.time()
        db.execute(
            "INSERT INTO connectors VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE "
            "SET spec=excluded.spec, secret=excluded.secret, updated_at=excluded.updated_at",
            (name, json.dumps(spec, sort_keys=True), sealed, now, now),
        )

    def grants(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, label, connectors, expires_at, created_at, revoked_at FROM grants ORDER BY created_at"
        ).fetchall()
        keys = ("id", "label", "connectors", "expires_at", "created_at", "revoked_at")
        return [dict(zip(keys, (*r[:2], json.loads(r[2]), *r[3:]), strict=True)) for r in rows]

    def revoked_grants(self) -> frozenset[str]:
        rows = self._db.execute("SELECT id FROM grants WHERE revoked_at IS NOT NULL").fetchall()
        return frozenset(r[0] for r in rows)

    @staticmethod
    def add_grant(
        db: sqlite3.Connection, gid: str, label: str, connectors: list[str], expires_at: float
    ) -> None:
        db.execute(
            "INSERT INTO grants VALUES (?, ?, ?, ?, ?, NULL)",
            (gid, label, json.dumps(sorted(connectors)), expires_at, time.time()),
        )

    @staticmethod
    def revoke_grant(db: sqlite3.Connection, gid: str) -> bool:
        return (
            db.execute(
                "UPDATE grants SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), gid)
            ).rowcount
            > 0
        )

    @staticmethod
    def delete(db: sqlite3.Connection, name: str) -> bool:
        return db.execute("DELETE FROM connectors WHERE name=?", (name,)).rowcount > 0

"""The store: one versioned schema, migrations in one transaction, foreign files left alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.store import open_store
from proxy.store.schema import VERSION
from proxy.store.sqlite import SqliteStore

V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '1'), ('generation', '7');
CREATE TABLE connectors (name TEXT PRIMARY KEY, spec TEXT NOT NULL, secret BLOB NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
INSERT INTO connectors VALUES ('old', '{"patterns": ["https://a.test/*"]}', X'00', 1.0, 2.0);
CREATE TABLE grants (id TEXT PRIMARY KEY, label TEXT NOT NULL, connectors TEXT NOT NULL,
    expires_at REAL NOT NULL, created_at REAL NOT NULL, revoked_at REAL);
INSERT INTO grants VALUES ('g1', 'l', '["old"]', 9.0, 1.0, 5.0);
"""


def schema_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0])


def test_a_version_1_store_migrates_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "egress.db"
    with sqlite3.connect(path) as db:
        db.executescript(V1)
    store = SqliteStore(path)
    try:
        assert schema_version(path) == VERSION
        assert [c.name for c in store.connectors()] == ["old"]
        assert store.revoked_grants() == frozenset({"g1"})
        assert store.generation() == 7
        assert store.monitoring.events() == []  # the monitoring tables exist now
    finally:
        store.close()


def test_a_fresh_store_has_every_table(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'new.db'}", create=True)
    try:
        assert store.generation() == 0
        with store.write() as tx:
            tx.put("c", {"patterns": []}, b"sealed")
        assert store.generation() == 1
        assert store.get("c") is not None
    finally:
        store.close()


def test_a_newer_store_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "egress.db"
    SqliteStore(path, create=True).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="newer"):
        SqliteStore(path)
    assert schema_version(path) == 99
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", [b"not a database at all", b""])
def test_a_foreign_or_corrupt_file_is_refused_and_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "egress.db"
    if content:
        path.write_bytes(content)
    else:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE someone_elses (x)")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="left untouched"):
        SqliteStore(path)
    assert path.read_bytes() == before


def test_a_failed_write_changes_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "egress.db", create=True)
    try:
        with pytest.raises(RuntimeError), store.write() as tx:
            tx.put("c", {}, b"x")
            raise RuntimeError("abort")
        assert store.connectors() == []
        assert store.generation() == 0
    finally:
        store.close()


def test_only_sqlite_urls_for_now(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="EGRESS_DATABASE_URL=mysql"):
        open_store("mysql://u:p@h/db")

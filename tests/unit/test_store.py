"""The store: one versioned schema, migrations in one transaction, foreign files left alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.health import Counts, State
from proxy.nearmiss import NearMiss
from proxy.stats import Batch, Event
from proxy.store import open_store
from proxy.store.schema import MIGRATIONS, VERSION
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


def at_version_2(path: Path, minute: int) -> None:
    """A store as the release before credential health wrote it, with traffic in it."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema', '2'), ('generation', '3')")
        for script in MIGRATIONS[:2]:
            db.executescript(script)
        db.executemany(
            "INSERT INTO stats_minute VALUES (?, ?, ?, ?)",
            [("old", minute - 120, 7, 2), ("old", minute - 1, 4, 4)],
        )
        db.execute(
            "INSERT INTO events (kind, ts, connector, status, method, host, path, request_id) "
            "VALUES ('error', ?, 'old', 401, 'GET', 'a.test', '/x', 'r1')",
            (minute * 60.0 - 30,),
        )


def test_a_version_2_store_keeps_its_counts_through_the_health_migration(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    path = tmp_path / "egress.db"
    at_version_2(path, int(now // 60))
    store = SqliteStore(path, clock=lambda: now)
    try:
        assert schema_version(path) == VERSION
        assert store.generation() == 3
        (row,) = store.monitoring.summary([])
        assert (row.connector, row.requests_24h, row.errors_24h, row.errors_1h) == ("old", 11, 6, 4)
        assert row.last_error is not None and row.last_error["status"] == 401
        # Rows from before the upgrade carry no class, so they cannot mark a connector either way.
        assert row.health.last_1h == Counts(4) and row.health.last_24h == Counts(11)
        assert row.health.state is State.OK
        with sqlite3.connect(path) as db:
            columns = {r[1] for r in db.execute("PRAGMA table_info(stats_minute)")}
        assert {"rejected", "client_errors", "server_errors", "transport_failures"} <= columns
        batch = Batch()  # new counts land on the old minute's row
        batch.requests[("old", int(now // 60) - 1)] = [2, 2, 1, 0, 0, 1]
        store.monitoring.flush(batch)
        (h,) = store.monitoring.health([]).values()
        assert h.last_1h == Counts(6, rejected=1, transport_failures=1)
        assert h.last_24h.requests == 13
    finally:
        store.close()


def test_a_failed_migration_leaves_the_old_store_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "egress.db"
    at_version_2(path, 1000)
    with sqlite3.connect(path) as db:  # a column the migration will try to add: it must fail
        db.execute("ALTER TABLE stats_minute ADD COLUMN server_errors INTEGER")
    with pytest.raises(ConfigError, match="left untouched"):
        SqliteStore(path)
    assert schema_version(path) == 2
    with sqlite3.connect(path) as db:
        columns = {r[1] for r in db.execute("PRAGMA table_info(stats_minute)")}
        assert db.execute("SELECT SUM(requests) FROM stats_minute").fetchone()[0] == 11
    assert "rejected" not in columns  # the statements before the failing one were rolled back


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


def test_unknown_schemes_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="EGRESS_DATABASE_URL=mysql"):
        open_store("mysql://u:p@h/db")


def test_blocked_rows_keep_their_near_miss_across_the_migration(tmp_path: Path) -> None:
    """A store from before near misses gains the column; old rows read as having none."""
    now = 1_800_000_000.0
    path = tmp_path / "egress.db"
    at_version_2(path, int(now // 60))
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[2])
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    store = SqliteStore(path, clock=lambda: now)
    try:
        assert schema_version(path) == VERSION
        near = NearMiss("stripe", "path", "pattern wants /v1/*, request has /v2/...", "https://a.test/v1/*")
        batch = Batch()
        batch.events.append(
            Event("blocked", now - 1, "GET", "a.test", "/v2", "r2", reason="no-connector", near_miss=near)
        )
        store.monitoring.flush(batch)
        old, new = sorted(store.monitoring.events(), key=lambda e: e.ts)
        assert old.near_miss is None
        assert new.near_miss == near
        assert new.to_dict()["near_miss"]["differs"] == "path"
        with sqlite3.connect(path) as db:  # a row a later release wrote with a word this one lacks
            db.execute('UPDATE events SET near_miss = \'{"connector": "x", "differs": "other"}\'')
            db.commit()
        assert {e.near_miss.differs for e in store.monitoring.events() if e.near_miss} == {"other"}
    finally:
        store.close()

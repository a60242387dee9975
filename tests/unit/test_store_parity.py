"""Every store backend keeps the same promises: these run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from proxy.errors import ConfigError, StoreUnavailable
from proxy.health import Counts, State
from proxy.nearmiss import NearMiss
from proxy.stats import WINDOW_MINUTES, Batch, Event, JournalMark
from proxy.store import Store, mask_url, open_store
from proxy.store.postgres_schema import PG_MIGRATIONS
from proxy.store.schema import MIGRATIONS
from tests.pg import free_port

NOW = 1_800_000_000.0
MINUTE = int(NOW // 60)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'egress.db'}"
    return str(request.getfixturevalue("pg_url"))


Opener = Callable[..., Store]


@pytest.fixture
def opened(store_url: str) -> Iterator[Opener]:
    """Open the same store as many times as a test wants (each one a process, in effect); all closed after."""
    stores: list[Store] = []

    def open_(clock: Callable[[], float] = lambda: NOW) -> Store:
        store = open_store(store_url, create=True, clock=clock)
        stores.append(store)
        return store

    yield open_
    for s in stores:
        s.close()


def error(ts: float, connector: str = "c", status: int = 500, rid: str = "r") -> Event:
    return Event("error", ts, "GET", "a.test", "/x", rid, connector=connector, status=status)


def blocked(
    ts: float, host: str = "evil.test", reason: str = "not-allowed", label: str | None = None
) -> Event:
    return Event("blocked", ts, "GET", host, "/", "b", reason=reason, grant_label=label)


def test_writes_bump_the_generation_and_a_failed_one_changes_nothing(opened: Opener) -> None:
    store = opened()
    assert store.generation() == 0 and store.connectors() == []
    with store.write() as tx:
        tx.put("b", {"patterns": ["https://b.test/*"]}, b"\x00sealed-b")
        tx.put("a", {"patterns": []}, b"sealed-a")
    assert store.generation() == 1
    assert [c.name for c in store.connectors()] == ["a", "b"]
    b = store.get("b")
    assert b is not None and b.sealed == b"\x00sealed-b" and b.spec == {"patterns": ["https://b.test/*"]}
    with pytest.raises(RuntimeError), store.write() as tx:
        tx.put("c", {}, b"x")
        tx.delete("a")
        raise RuntimeError("abort")
    assert [c.name for c in store.connectors()] == ["a", "b"]
    assert store.generation() == 1
    other = opened()  # another process sees the same
    assert other.generation() == 1 and other.get("c") is None


def test_put_updates_in_place_and_delete_says_whether_it_did(opened: Opener) -> None:
    store = opened()
    with store.write() as tx:
        tx.put("a", {"v": 1}, b"one")
    before = store.get("a")
    with store.write() as tx:
        tx.put("a", {"v": 2}, b"two")
        assert tx.get("a") is not None and tx.get("a").spec == {"v": 2}  # type: ignore[union-attr]
    after = store.get("a")
    assert before is not None and after is not None
    assert (after.spec, after.sealed, after.created_at) == ({"v": 2}, b"two", before.created_at)
    assert after.updated_at >= before.updated_at
    with store.write() as tx:
        assert tx.delete("a") is True
        assert tx.delete("a") is False
    assert store.get("a") is None and store.generation() == 3


def test_grants_and_revocations(opened: Opener) -> None:
    store = opened()
    with store.write() as tx:
        tx.add_grant("g1", "step-1", ["b", "a"], NOW + 60)
        tx.add_grant("g2", "step-2", ["a"], NOW + 60)
    with store.write() as tx:
        assert tx.revoke_grant("g1") is True
        assert tx.revoke_grant("g1") is False  # already revoked
        assert tx.revoke_grant("nope") is False
    grants = {g["id"]: g for g in opened().grants()}
    assert grants["g1"]["connectors"] == ["a", "b"] and grants["g1"]["revoked_at"] is not None
    assert grants["g2"]["revoked_at"] is None and grants["g2"]["label"] == "step-2"
    assert store.revoked_grants() == frozenset({"g1"})


def test_counts_from_several_processes_add_up(opened: Opener) -> None:
    one, two = opened(), opened()
    for store, n in ((one, 3), (two, 4)):
        batch = Batch()
        batch.requests[("c", MINUTE)] = [n, 1, 1, 0, 0, 0]
        batch.requests[("c", MINUTE - 120)] = [10, 0, 0, 0, 0, 0]  # outside the last hour
        batch.blocked[("evil.test", "not-allowed", MINUTE)] = n
        batch.events.append(error(NOW - 5, status=401, rid=f"r{n}"))
        store.monitoring.flush(batch)
    (row,) = one.monitoring.summary(["c", "idle"], "c")
    assert (row.requests_24h, row.errors_24h, row.errors_1h) == (27, 2, 2)
    assert row.last_error is not None and row.last_error["status"] == 401
    health = two.monitoring.health(["c", "idle"])
    assert health["c"].last_1h == Counts(7, rejected=2) and health["c"].last_24h.requests == 27
    assert health["idle"].state is State.UNUSED
    assert one.monitoring.blocked_summary() == [{"host": "evil.test", "reason": "not-allowed", "count": 7}]
    names = [s.connector for s in two.monitoring.summary(["idle"])]
    assert names == ["c", "idle"]  # a removed connector with traffic still shows


def test_a_journal_mark_writes_each_batch_once_across_processes(opened: Opener) -> None:
    """A batch with a journal mark goes in only if the owner's mark moves forward: the one a process
    wrote just before it was killed is skipped when its journal is replayed by another process."""
    live, replayer = opened(), opened()

    def batch(n: int) -> Batch:
        b = Batch()
        b.requests[("c", MINUTE)] = [n, 0, 0, 0, 0, 0]
        b.blocked[("evil.test", "not-allowed", MINUTE)] = n
        b.events.append(error(NOW - 1, rid=f"r{n}"))
        return b

    assert live.monitoring.flush(batch(1), JournalMark("111-aa", 1)) is True
    assert live.monitoring.flush(batch(2), JournalMark("111-aa", 2)) is True
    assert replayer.monitoring.flush(batch(2), JournalMark("111-aa", 2)) is False  # written already
    assert replayer.monitoring.flush(batch(1), JournalMark("111-aa", 1)) is False  # and older
    assert replayer.monitoring.flush(batch(4), JournalMark("111-aa", 3)) is True  # never written
    assert replayer.monitoring.flush(batch(8), JournalMark("222-bb", 1)) is True  # another owner
    assert live.monitoring.flush(batch(16)) is True  # no journal: always written
    (row,) = live.monitoring.summary([])
    assert row.requests_24h == 1 + 2 + 4 + 8 + 16
    assert live.monitoring.blocked_summary()[0]["count"] == 31
    assert sorted(e.request_id for e in live.monitoring.events()) == ["r1", "r16", "r2", "r4", "r8"]
    # the marks of owners silent for 24 hours go with the rows they counted
    yesterday = opened(clock=lambda: NOW - WINDOW_MINUTES * 60 - 60)
    assert yesterday.monitoring.flush(Batch(), JournalMark("333-cc", 9)) is True
    opened().monitoring.flush(Batch())  # a process's first flush prunes (PostgreSQL: once a minute)
    assert live.monitoring.flush(Batch(), JournalMark("333-cc", 1)) is True
    assert live.monitoring.flush(Batch(), JournalMark("111-aa", 3)) is False


def test_event_log_filters_orders_and_pages(opened: Opener) -> None:
    store = opened()
    batch = Batch()
    batch.events += [
        error(NOW - 30, "c", rid="e1"),
        blocked(NOW - 20, label="L"),
        error(NOW - 10, "d", rid="e2"),
    ]
    store.monitoring.flush(batch)
    newest = store.monitoring.events()
    assert [e.request_id for e in newest] == ["e2", "b", "e1"]
    assert [e.request_id for e in store.monitoring.events(kind="error", newest_first=False)] == ["e1", "e2"]
    assert [e.request_id for e in store.monitoring.events(connector="d")] == ["e2"]
    assert [e.kind for e in store.monitoring.events(grant_label="L")] == ["blocked"]
    assert [e.request_id for e in store.monitoring.events(since=NOW - 15)] == ["e2"]
    assert len(store.monitoring.events(limit=2)) == 2
    first = newest[-1].id
    assert first is not None
    assert [e.request_id for e in store.monitoring.events(after_id=first, newest_first=False)] == ["b", "e2"]
    assert store.monitoring.last_id() == newest[0].id
    assert newest[1].to_dict()["reason"] == "not-allowed"


def test_rows_older_than_the_window_roll_off_and_the_event_log_is_capped(opened: Opener) -> None:
    store = opened()
    store.monitoring.row_cap = 5  # type: ignore[attr-defined]
    batch = Batch()
    batch.requests[("c", MINUTE - WINDOW_MINUTES - 1)] = [9, 0, 0, 0, 0, 0]
    batch.requests[("c", MINUTE)] = [1, 0, 0, 0, 0, 0]
    batch.blocked[("old.test", "r", MINUTE - WINDOW_MINUTES - 1)] = 2
    batch.events += [error(NOW - WINDOW_MINUTES * 60 - 120, rid="ancient")]
    batch.events += [error(NOW - 60 + i, rid=f"r{i}") for i in range(8)]
    store.monitoring.flush(batch)
    (row,) = store.monitoring.summary([])
    assert row.requests_24h == 1
    assert store.monitoring.blocked_summary() == []
    ids = [e.request_id for e in store.monitoring.events(newest_first=False)]
    assert ids == ["r3", "r4", "r5", "r6", "r7"]


def test_follow_yields_new_rows_oldest_first(opened: Opener) -> None:
    store = opened()
    start = store.monitoring.last_id()
    follow = store.monitoring.follow(start, poll=0.01)
    batch = Batch()
    batch.events += [error(NOW - 2, rid="f1"), error(NOW - 1, rid="f2")]
    opened().monitoring.flush(batch)
    assert [next(follow).request_id, next(follow).request_id] == ["f1", "f2"]


def test_only_changes_proxies_hold_move_the_generation(opened: Opener) -> None:
    """A pod minting its grant at start must not make every proxy of a fleet reload."""
    store = opened()
    with store.write() as tx:
        tx.add_grant("g1", "pod-1", ["c"], NOW + 3600)
        tx.add_admin_token("t1", "hash-1", None, False, "ops")
    assert store.generation() == 0 and [g["id"] for g in store.grants()] == ["g1"]
    with store.write() as tx:
        assert tx.revoke_grant("nope") is False and tx.delete("nope") is False  # nothing changed
    assert store.generation() == 0
    with store.write() as tx:
        assert tx.revoke_grant("g1") is True
    assert store.generation() == 1 and store.revoked_grants() == frozenset({"g1"})
    with store.write() as tx:
        tx.put("c", {}, b"x")
    with store.write() as tx:
        assert tx.delete("c") is True
    assert store.generation() == 3


def test_wait_for_change_returns_within_its_timeout(opened: Opener) -> None:
    store = opened()
    started = time.monotonic()
    store.wait_for_change(0.2)
    assert 0.15 <= time.monotonic() - started < 2


@pytest.mark.postgres
def test_postgres_announces_writes_to_every_listener(pg_url: str) -> None:
    listeners = [open_store(pg_url, create=True) for _ in range(2)]
    writer = open_store(pg_url)
    try:
        for s in listeners:
            assert s.wait_for_change(0.05) is False  # subscribes; nothing written yet
        with writer.write() as tx:
            tx.put("a", {}, b"x")
        for s in listeners:
            started = time.monotonic()
            assert s.wait_for_change(5) is True
            assert time.monotonic() - started < 1
            assert s.generation() == 1
        with pytest.raises(RuntimeError), writer.write():
            raise RuntimeError("rolled back: no announcement")
        assert listeners[0].wait_for_change(0.3) is False
    finally:
        for s in [*listeners, writer]:
            s.close()


@pytest.mark.postgres
def test_postgres_concurrent_flushes_add_up_without_deadlocks(pg_url: str) -> None:
    """Many writers upserting the same minutes in different orders: exact totals, no deadlock."""
    stores = [open_store(pg_url, create=True, clock=lambda: NOW) for _ in range(6)]
    keys = [(f"c{i}", MINUTE - j) for i in range(5) for j in range(4)]
    errors: list[BaseException] = []

    def writer(store: Store, seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(25):
                batch = Batch()
                for key in rng.sample(keys, len(keys)):  # a different order each time
                    batch.requests[key] = [1, 0, 0, 0, 0, 0]
                store.monitoring.flush(batch)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(s, i)) for i, s in enumerate(stores)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        totals = {r.connector: r.requests_24h for r in stores[0].monitoring.summary([])}
        assert totals == {f"c{i}": 6 * 25 * 4 for i in range(5)}
    finally:
        for s in stores:
            s.close()


@pytest.mark.postgres
def test_postgres_processes_starting_together_migrate_once(pg_url: str) -> None:
    results: list[object] = []

    def start() -> None:
        try:
            store = open_store(pg_url, create=True)
            results.append(store.generation())
            store.close()
        except BaseException as e:
            results.append(e)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [0] * 8
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
            str(len(MIGRATIONS)),
        )


@pytest.mark.postgres
def test_postgres_newer_schema_is_refused_and_untouched(pg_url: str) -> None:
    open_store(pg_url, create=True).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(ConfigError, match="newer"):
        open_store(pg_url)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("99",)


@pytest.mark.postgres
def test_postgres_migrates_an_older_store_and_keeps_its_rows(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema', '2'), ('generation', '5')")
        for step in PG_MIGRATIONS[:2]:
            conn.execute(step)
        conn.execute("INSERT INTO stats_minute VALUES ('old', %s, 4, 4)", (MINUTE - 1,))
    store = open_store(pg_url, clock=lambda: NOW)
    try:
        assert store.generation() == 5
        (h,) = store.monitoring.health([]).values()
        assert h.last_1h == Counts(4)
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_foreign_database_and_uninitialised_store_are_refused(pg_url: str) -> None:
    with pytest.raises(ConfigError, match="egress init"):
        open_store(pg_url)  # not created: reading commands never create state
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE connectors (x int)")
    with pytest.raises(ConfigError, match="not an egress store"):
        open_store(pg_url, create=True)


@pytest.mark.postgres
def test_postgres_unreachable_is_store_unavailable_and_masks_the_password() -> None:
    url = f"postgresql://egress:hunter2@127.0.0.1:{free_port()}/egress"
    with pytest.raises(StoreUnavailable) as raised:
        open_store(url)
    assert "hunter2" not in str(raised.value) and "egress:***@127.0.0.1" in str(raised.value)
    lazy = open_store(url, lazy=True)  # a proxy opens it anyway and keeps trying
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            lazy.generation()
        assert time.monotonic() - started < 10
        batch = Batch()
        batch.requests[("c", MINUTE)] = [1, 0, 0, 0, 0, 0]
        with pytest.raises(StoreUnavailable):
            lazy.monitoring.flush(batch)
        assert lazy.wait_for_change(0.1) is False
    finally:
        lazy.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@db:5432/egress", "postgresql://u:***@db:5432/egress"),
        (
            "postgresql://u@db/egress?password=s3cret&sslmode=require",
            "postgresql://u@db/egress?password=***&sslmode=require",
        ),
        ("postgresql://db/egress", "postgresql://db/egress"),
        ("postgresql://u:p%40ss@db/egress", "postgresql://u:***@db/egress"),
    ],
)
def test_mask_url_hides_passwords(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_every_schema_version_has_a_postgres_step() -> None:
    """A migration added to one backend and not the other would make versions mean different tables."""
    assert len(PG_MIGRATIONS) == len(MIGRATIONS)


def test_without_psycopg_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    for name in [m for m in sys.modules if m.startswith(("psycopg", "proxy.store.postgres"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what an installation without it looks like
    with pytest.raises(ConfigError, match=r"pip install 'egress-proxy\[postgres\]'"):
        open_store("postgresql://u@127.0.0.1:1/egress")


def test_workspaces_near_misses_and_hourly_series_round_trip(opened: Opener) -> None:
    store = opened()
    near = NearMiss("stripe", "path", "segment 2: /v2 instead of /v1", "https://api.stripe.com/v1/*")
    batch = Batch()
    batch.events += [
        replace(blocked(NOW - 30), workspace="acme", near_miss=near),
        error(NOW - 20, "acme/c", rid="e-acme"),
        error(NOW - 10, "c", rid="e-default"),
    ]
    batch.requests[("c", MINUTE - 61)] = (3, 1, 0, 0, 1, 0)
    batch.requests[("c", MINUTE)] = (2, 0, 0, 0, 0, 0)
    store.monitoring.flush(batch)
    acme = store.monitoring.events(workspace="acme")
    assert [e.reason for e in acme] == ["not-allowed"]
    assert acme[0].near_miss == near
    # "acme/c" is a key in acme, but its row was written without a workspace: the column decides
    assert [e.request_id for e in store.monitoring.events(workspace="default")] == ["e-default", "e-acme"]
    hours = store.monitoring.hourly("c")
    assert [(r, e) for _, r, e in hours] == [(3, 1), (2, 0)]
    assert hours[-1][0] == int(NOW // 3600) * 3600


def test_secret_updated_at_moves_only_when_the_secret_changes(opened: Opener) -> None:
    store = opened()
    with store.write() as tx:
        tx.put("c", {"patterns": []}, b"sealed-1")
    first = store.get("c")
    assert first is not None and first.secret_updated_at == first.created_at
    time.sleep(0.01)
    with store.write() as tx:
        tx.put("c", {"patterns": ["x"]}, b"sealed-2", secret_changed=False)  # a re-seal, same secret
    resealed = store.get("c")
    assert resealed is not None and resealed.secret_updated_at == first.secret_updated_at
    assert resealed.updated_at > first.updated_at and resealed.sealed == b"sealed-2"
    with store.write() as tx:
        tx.put("c", {"patterns": ["x"]}, b"sealed-3")
    changed = store.get("c")
    assert changed is not None and changed.secret_updated_at == changed.updated_at > first.updated_at


def test_admin_tokens_store_hashes_and_revoke_once(opened: Opener) -> None:
    store = opened()
    with store.write() as tx:
        tx.add_admin_token("t1", "hash-1", None, False, "ops")
        tx.add_admin_token("t2", "hash-2", "acme", True, "")
    other = opened()  # another process sees them
    tokens = other.admin_tokens()
    assert [(t["id"], t["workspace"], t["read_only"], t["label"]) for t in tokens] == [
        ("t1", None, False, "ops"),
        ("t2", "acme", True, ""),
    ]
    assert all(t["revoked_at"] is None for t in tokens)
    with store.write() as tx:
        assert tx.revoke_admin_token("t2") is True
        assert tx.revoke_admin_token("t2") is False
        assert tx.revoke_admin_token("nope") is False
    t2 = other.admin_token("t2")
    assert t2 is not None and t2["revoked_at"] is not None and t2["token_hash"] == "hash-2"
    assert other.admin_token("nope") is None
    with pytest.raises(ConfigError), store.write() as tx:
        tx.add_admin_token("t3", "hash-1", None, False, "")  # a hash is unique
    assert [t["id"] for t in other.admin_tokens()] == ["t1", "t2"]


def test_each_process_counts_under_its_node_and_log_rows_name_it(opened: Opener) -> None:
    a, b = opened(), opened()
    for store, node, n in ((a, "pod-a", 3), (b, "pod-b", 5), (a, "pod-a", 1)):
        batch = Batch(node=node)
        batch.requests[("c", MINUTE)] = [n, 1, 0, 0, 1, 0]
        batch.requests[("acme/d", MINUTE - 5)] = [2, 0, 0, 0, 0, 0]
        batch.events.append(error(NOW - 1, "c", rid=node))
        store.monitoring.flush(batch)
    assert a.monitoring.nodes() == [
        ("pod-a", "acme/d", 4, 0, MINUTE - 5),
        ("pod-a", "c", 4, 2, MINUTE),
        ("pod-b", "acme/d", 2, 0, MINUTE - 5),
        ("pod-b", "c", 5, 1, MINUTE),
    ]
    (total,) = b.monitoring.summary(["c"], "c")
    assert total.requests_24h == 9  # the fleet's sum is unchanged
    assert [e.node for e in b.monitoring.events(kind="error")] == ["pod-a", "pod-b", "pod-a"]

"""Fleet scale on PostgreSQL: one connection per process, reconnection with jittered backoff, quiet watchers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from proxy.errors import StoreUnavailable
from proxy.stats import Batch
from proxy.store import Store, open_store
from proxy.store import postgres as pg
from tests.pg import Cluster

NOW = 1_800_000_000.0
MINUTE = int(NOW // 60)


def backends(cluster: Cluster, url: str) -> list[int]:
    """Server pids of the sessions connected to ``url``'s database, asked from another database."""
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s ORDER BY pid",
            (url.rsplit("/", 1)[1], pg.APPLICATION_NAME),
        ).fetchall()
    return [int(r[0]) for r in rows]


def until(predicate: Callable[[], bool], attempts: int = 400) -> None:
    """Poll a condition that settles on its own (a backend exiting, a jittered reconnect)."""
    for _ in range(attempts):
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("never happened")


@pytest.fixture
def shared(pg_url: str) -> Iterator[list[Store]]:
    """Stores opened the way a proxy worker opens them (lazy, shared); all closed after."""
    open_store(pg_url, create=True).close()
    stores: list[Store] = []
    yield stores
    for s in stores:
        s.close()


pytestmark = pytest.mark.postgres


def test_a_process_shares_one_connection_for_reads_writes_counts_and_listen(
    pg_url: str, pg_cluster: Cluster, shared: list[Store]
) -> None:
    watcher = open_store(pg_url, lazy=True, shared=True)
    writer = open_store(pg_url, lazy=True, shared=True, clock=lambda: NOW)
    shared += [watcher, writer]
    assert watcher.wait_for_change(0.05) is False  # subscribes
    with writer.write() as tx:
        tx.put("a", {}, b"x")
    batch = Batch()
    batch.requests[("a", MINUTE)] = [1, 0, 0, 0, 0, 0]
    writer.monitoring.flush(batch)
    assert watcher.wait_for_change(5) is True  # its own write, announced on the same connection
    assert watcher.generation() == 1 and [c.name for c in watcher.connectors()] == ["a"]
    assert len(backends(pg_cluster, pg_url)) == 1
    watcher.close()  # the other store keeps the connection
    shared.remove(watcher)
    assert writer.generation() == 1
    assert len(backends(pg_cluster, pg_url)) == 1
    writer.close()
    shared.remove(writer)
    until(lambda: backends(pg_cluster, pg_url) == [])


def test_a_notification_read_by_another_thread_still_reaches_the_watcher(
    pg_url: str, shared: list[Store]
) -> None:
    watcher = open_store(pg_url, lazy=True, shared=True)
    busy = open_store(pg_url, lazy=True, shared=True)  # the statistics writer, in effect
    other = open_store(pg_url)  # another process
    shared += [watcher, busy, other]
    assert watcher.wait_for_change(0.05) is False
    stop = threading.Event()

    def query() -> None:
        while not stop.is_set():
            busy.revoked_grants()

    thread = threading.Thread(target=query)
    thread.start()
    try:
        for n in range(1, 6):
            with other.write() as tx:
                tx.put(f"c{n}", {}, b"x")
            assert watcher.wait_for_change(10) is True
            until(lambda n=n: watcher.generation() == n)  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(10)


def test_while_listening_the_generation_costs_no_query_but_is_still_polled(
    pg_url: str, shared: list[Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(pg_url, lazy=True, shared=True)
    shared.append(store)
    store.wait_for_change(0.05)
    assert store.generation() == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a change that announces nothing
        conn.execute("UPDATE meta SET value = '7' WHERE key = 'generation'")
    assert store.generation() == 0  # answered from memory: a watcher between changes is free
    monkeypatch.setattr(pg, "SAFETY_POLL", 0.0)  # ...until the safety poll is due
    assert store.generation() == 7


def test_a_lost_connection_is_remade_and_listens_again(
    pg_url: str, pg_cluster: Cluster, shared: list[Store]
) -> None:
    store = open_store(pg_url, lazy=True, shared=True)
    shared.append(store)
    store.wait_for_change(0.05)
    (pid,) = backends(pg_cluster, pg_url)
    other = open_store(pg_url)
    shared.append(other)
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:  # what a restart does to it
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def answers() -> bool:
        try:
            store.generation()
            return True
        except StoreUnavailable:
            return False  # at once, while the jittered delay runs

    until(answers)
    assert pid not in backends(pg_cluster, pg_url)
    with other.write() as tx:
        tx.put("after", {}, b"x")
    assert store.wait_for_change(10) is True
    assert store.generation() == 1


def test_reconnection_delays_are_full_jitter_under_a_capped_exponential() -> None:
    for failures in (1, 2, 3, 5, 8, 30):
        bound = min(pg.RECONNECT_CAP, pg.RECONNECT_BASE * 2 ** (failures - 1))
        delays = [pg._backoff(failures) for _ in range(2000)]
        assert all(0 <= d <= bound for d in delays)
        assert min(delays) < bound * 0.1 and max(delays) > bound * 0.9  # spread over the whole range
    assert pg._backoff(30) <= pg.RECONNECT_CAP


def test_a_proxy_flushes_less_often_on_a_shared_database(pg_url: str) -> None:
    store = open_store(pg_url, create=True)
    try:
        assert store.flush_interval >= 3  # every few seconds, not every second
    finally:
        store.close()

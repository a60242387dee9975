"""The monitoring store with an injected clock: windows, roll-off, caps, concurrency."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from proxy.durations import parse_duration
from proxy.errors import ConfigError
from proxy.stats import EVENT_ROW_CAP, Event, Tally
from proxy.stats import Clock as ClockFn
from proxy.store.sqlite import SqliteStore
from proxy.store.sqlite_monitoring import SqliteMonitoring

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "egress.db"
    SqliteStore(path, create=True).close()
    return path


def StatsStore(path: Path, clock: ClockFn = time.time, row_cap: int = EVENT_ROW_CAP) -> SqliteMonitoring:
    """The monitoring side of a store at ``path``, on its own connection."""
    monitoring = SqliteStore(path, clock=clock).monitoring
    monitoring.row_cap = row_cap
    return monitoring


def error(clock: Clock, connector: str = "c", status: int = 500) -> Event:
    return Event("error", clock(), "GET", "h.test", "/p", "rid", connector=connector, status=status)


def test_window_rolls_off_after_24_hours(db: Path) -> None:
    clock = Clock()
    tally, store = Tally(clock), StatsStore(db, clock)
    for status in (200, 200, 500, 502, 503):
        tally.request("c", status)
    tally.error(error(clock))
    tally.blocked(Event("blocked", clock(), "CONNECT", "x.test:443", "", "r2", reason="no-connector"))
    store.flush(tally.drain())
    (row,) = store.summary(["c"])
    assert (row.requests_24h, row.errors_24h, row.alert) == (5, 3, True)
    assert len(store.events()) == 2

    clock.now = T0 + 2 * 3600  # errors are older than an hour: no alert, still counted
    (row,) = store.summary(["c"])
    assert (row.requests_24h, row.errors_24h, row.alert) == (5, 3, False)

    clock.now = T0 + 24 * 3600 + 60  # past the window: gone from queries...
    (row,) = store.summary(["c"])
    assert (row.requests_24h, row.errors_24h, row.last_error) == (0, 0, None)
    assert row.health.state == "unused"
    assert store.events() == []
    assert store.blocked_summary() == []
    store.flush(tally.drain())  # ...and deleted by the next flush
    raw = store._db.execute("SELECT COUNT(*) FROM stats_minute").fetchone()[0]
    assert raw == 0
    assert store._db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0


def test_minutes_sum_across_the_window(db: Path) -> None:
    clock = Clock()
    tally, store = Tally(clock), StatsStore(db, clock)
    for minute in range(0, 1440, 60):  # one request an hour for a day
        clock.now = T0 + minute * 60
        tally.request("c", 200)
        store.flush(tally.drain())
    (row,) = store.summary(["c"])
    assert row.requests_24h == 24
    clock.now += 60 * 61  # the oldest hour leaves the window
    (row,) = store.summary(["c"])
    assert row.requests_24h == 23


def test_event_rows_are_capped(db: Path) -> None:
    clock = Clock()
    tally, store = Tally(clock), StatsStore(db, clock, row_cap=10)
    for _ in range(25):
        tally.error(error(clock))
    store.flush(tally.drain())
    assert len(store.events(limit=100)) == 10


def test_failed_flush_is_merged_back(db: Path) -> None:
    clock = Clock()
    tally = Tally(clock)
    tally.request("c", 500)
    batch = tally.drain()
    tally.request("c", 200)
    tally.merge(batch)
    store = StatsStore(db, clock)
    store.flush(tally.drain())
    (row,) = store.summary(["c"])
    assert (row.requests_24h, row.errors_24h) == (2, 1)


def test_concurrent_writers_lose_nothing(db: Path) -> None:
    clock = Clock()

    def writer() -> None:
        own, tally = SqliteStore(db, clock=clock), Tally(clock)
        for _ in range(50):
            tally.request("c", 200)
            own.monitoring.flush(tally.drain())
        own.close()

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (row,) = StatsStore(db, clock).summary(["c"])
    assert row.requests_24h == 200


def test_follow_yields_only_new_rows(db: Path) -> None:
    clock = Clock()
    store, tally = StatsStore(db, clock), Tally(clock)
    tally.error(error(clock, status=500))
    store.flush(tally.drain())
    follow = store.follow(store.last_id(), poll=0.01)
    tally.error(error(clock, status=502))
    store.flush(tally.drain())
    assert next(follow).status == 502


def test_missing_store_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="egress init"):
        StatsStore(tmp_path / "nope.db")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("45", 45)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "h", "1h 2m", "-5m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text, "--since")


def test_undecodable_bytes_in_paths_never_jam_a_flush(db: Path) -> None:
    clock = Clock()
    tally, store = Tally(clock), StatsStore(db, clock)
    raw_path = b"/v1/\xff\xfe".decode("utf-8", "surrogateescape")
    tally.blocked(Event("blocked", clock(), "GET", "h.test:443", raw_path, "r", reason="bad-path"))
    tally.error(Event("error", clock(), "GET", "h\ud800.test", "/x" * 5000, "r2", connector="c", status=500))
    store.flush(tally.drain())
    paths = sorted(e.path for e in store.events())
    assert paths[0] == "/v1/\\xff\\xfe"
    assert len(paths[1]) == 2048


def test_printable_escapes_what_could_fool_an_operator() -> None:
    from proxy.stats import printable

    assert (
        printable("GET\x1b[2J /a\u202eb \udcff \u0430pple", 100) == "GET\\x1b[2J /a\\u202eb \\xff \\u0430pple"
    )
    assert printable("x" * 50, 10) == "x" * 10
    assert printable("/v1/ok?a=b", 100) == "/v1/ok?a=b"


def test_health_reads_the_last_hour_and_keeps_the_day(db: Path) -> None:
    from proxy.health import Counts, State

    clock = Clock()
    tally, store = Tally(clock), StatsStore(db, clock)
    for status in (401,) * 5 + (200,) * 3 + (404,) * 2:
        tally.request("rejected", status)
    for status in (200, 503, 503, None, None):
        tally.request("down", status)
    for _ in range(20):
        tally.request("missing", 404)
    store.flush(tally.drain())
    h = store.health(["rejected", "down", "missing", "idle"])
    assert list(h) == ["down", "idle", "missing", "rejected"]
    assert {name: str(x.state) for name, x in h.items()} == {
        "down": "failing",
        "idle": "unused",
        "missing": "ok",
        "rejected": "credential-rejected",
    }
    assert h["rejected"].last_1h == Counts(10, rejected=5, client_errors=2)
    assert h["down"].last_1h == Counts(5, server_errors=2, transport_failures=2)
    assert store.health(["rejected", "down"], only="down").keys() == {"down"}
    (row,) = store.summary(["rejected"], only="rejected")
    assert row.health == h["rejected"] and row.alert

    clock.now = T0 + 2 * 3600  # the hour has passed: nothing to judge by, the day remembers
    h = store.health(["rejected"])
    assert h["rejected"].state is State.OK
    assert h["rejected"].last_1h == Counts()
    assert (h["rejected"].last_24h.rejected, h["rejected"].rejected_share_24h) == (5, 0.5)

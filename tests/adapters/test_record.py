"""The recorder on real flows: counts, error and blocked rows, flushed to the store on done."""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import time

import pytest
from mitmproxy.test import taddons, tflow
from prometheus_client.parser import text_string_to_metric_families

from addons import record
from addons.inject import Inject
from addons.record import Recorder, failure_kind
from addons.source import PolicySource
from addons.state import Tunnels
from proxy import journal
from proxy.errors import StoreUnavailable
from proxy.health import Counts, State
from proxy.journal import HEADER, Journals
from proxy.service.home import Home
from proxy.service.monitoring import Monitoring
from proxy.stats import Batch, Event, JournalMark, Tally
from tests.adapters.helpers import tunnel_flow


def test_counts_errors_and_blocks_and_flushes_on_done(home: Home) -> None:
    source, recorder, tunnels = PolicySource(), Recorder(), Tunnels()
    inject = Inject(source, tunnels)
    with taddons.context(source, recorder) as tctx:
        tctx.configure(source, egress_home=str(home.root))
        for status in (200, 401, 404, 503):
            f = tunnel_flow(tunnels)
            f.request.path = "/v1/charges?secret=no"
            inject.requestheaders(f)
            f.response = tflow.tresp(status_code=status)
            recorder.responseheaders(f)
            recorder.response(f)
        failed = tunnel_flow(tunnels)
        inject.requestheaders(failed)
        failed.error = tflow.terr("Connection refused")
        recorder.error(failed)
        blocked = tflow.tflow()  # outside any tunnel
        inject.requestheaders(blocked)
        recorder.response(blocked)
        recorder.done()
    with Monitoring(home) as monitoring:
        (row,), by_host = monitoring.stats()
        events = monitoring.events()
    assert (row.connector, row.requests_24h, row.errors_24h) == ("stripe", 5, 4)
    # one in each class; 2 of 5 failing (503, refused) is under half: ok, no alert
    assert row.health.last_1h == Counts(5, rejected=1, client_errors=1, server_errors=1, transport_failures=1)
    assert row.health.last_24h == row.health.last_1h
    assert (row.health.state, row.alert) == (State.OK, False)
    classes = {
        s.labels["class"]: s.value
        for fam in text_string_to_metric_families(recorder.metrics.render().decode())
        for s in fam.samples
        if s.name == "egress_errors_by_class_total"
    }
    assert classes == {"rejected": 1, "client": 1, "server": 1, "transport": 1}
    assert by_host == [{"host": blocked.request.pretty_host, "reason": "plain-http", "count": 1}]
    kinds = sorted(str((e.kind, e.status, e.failure, e.reason)) for e in events)
    assert kinds == [
        str(("blocked", None, None, "plain-http")),
        str(("error", 401, None, None)),
        str(("error", 404, None, None)),
        str(("error", 503, None, None)),
        str(("error", None, "refused", None)),
    ]
    assert all("?" not in e.path for e in events)  # the query never reaches the log


def test_flushes_follow_the_stores_interval_unless_one_is_chosen_and_are_jittered(home: Home) -> None:
    source, recorder = PolicySource(), Recorder()
    with taddons.context(source, recorder) as tctx:
        tctx.configure(source, egress_home=str(home.root))
        assert recorder.interval == 1.0  # SQLite: a local file, every second
        tctx.configure(recorder, egress_flush_interval=4.0)
        assert recorder.interval == 4.0
        delays = list(itertools.islice(recorder.delays(), 2000))
        recorder.done()
    assert 0 <= delays[0] <= 4.0
    assert all(3.2 <= d <= 4.8 for d in delays[1:])
    assert min(delays[1:]) < 3.4 and max(delays[1:]) > 4.6  # spread: processes drift apart


def test_failure_kinds() -> None:
    assert failure_kind("Connect call failed ('1.2.3.4', 443)") == "refused"
    assert failure_kind("TLS handshake failed: certificate verify failed") == "tls"
    assert failure_kind("Connection reset by peer") == "reset"
    assert failure_kind("something else") == "other"


class FlakyMonitoring:
    """A store's monitoring that is unreachable for the first ``failures`` flushes."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[Batch] = []

    def flush(self, batch: Batch, mark: JournalMark | None = None) -> bool:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("store postgresql://u:***@db/egress unavailable: connection refused")
        self.written.append(copy.deepcopy(batch))
        return True


class FakeStore:
    def __init__(self, monitoring: FlakyMonitoring) -> None:
        self.monitoring = monitoring

    def close(self) -> None:
        pass


def dropped_metric(recorder: Recorder) -> dict[str, float]:
    return {
        s.labels["kind"]: s.value
        for fam in text_string_to_metric_families(recorder.metrics.render().decode())
        for s in fam.samples
        if s.name == "egress_store_dropped_total"
    }


def count(recorder: Recorder, n: int) -> None:
    for i in range(n):
        recorder.tally.request("c", 500)
        recorder.tally.error(
            Event("error", time.time(), "GET", "a.test", "/", f"r{i}", connector="c", status=500)
        )


def test_an_outage_keeps_counts_in_memory_bounded_and_writes_them_when_the_store_returns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(record, "BACKLOG_EVENTS", 3)
    recorder = Recorder()
    recorder.interval = 0.01
    monitoring = FlakyMonitoring(failures=10**9)  # down until the test brings it back
    recorder.store = FakeStore(monitoring)  # type: ignore[assignment]

    async def run() -> None:
        writer = asyncio.create_task(recorder._writer())
        for _ in range(4):  # traffic keeps coming while the store is down
            count(recorder, 5)
            await asyncio.sleep(0.03)
        assert monitoring.failures < 10**9 - record.MAX_FLUSH_FAILURES  # an outage is not a bad row
        monitoring.failures = 0  # the store is back: the waiting batch, then what came since
        for _ in range(500):
            if len(monitoring.written) == 2:
                break
            await asyncio.sleep(0.01)
        writer.cancel()

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    requests = sum(c[0] for b in monitoring.written for c in b.requests.values())
    errors = sum(c[1] for b in monitoring.written for c in b.requests.values())
    assert (requests, errors) == (20, 20)  # every count survived eight failed flushes
    events = [e for b in monitoring.written for e in b.events]
    assert [e.request_id for e in events] == ["r2", "r3", "r4"]  # the newest log rows, bounded
    assert dropped_metric(recorder) == {"event": 17.0}
    assert "counting in memory" in caplog.text and "statistics dropped" in caplog.text
    assert "store reachable again" in caplog.text


def test_stopping_during_an_outage_says_what_was_not_written(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    recorder.store = FakeStore(FlakyMonitoring(failures=1))  # type: ignore[assignment]
    count(recorder, 3)
    recorder.done()
    assert dropped_metric(recorder) == {"request": 3.0, "event": 3.0}
    assert "3 request(s), 0 blocked, 3 log row(s)" in caplog.text


def test_shed_drops_the_oldest_minutes_and_rows_first() -> None:
    tally = Tally(lambda: 0.0)
    batch = Batch()
    for minute in range(5):
        batch.requests[("c", minute)] = [minute + 1, 0, 0, 0, 0, 0]
        batch.blocked[("h", "r", minute)] = 1
    batch.events += [Event("blocked", 0.0, "GET", "h", "/", f"e{i}") for i in range(4)]
    tally.merge(batch)
    dropped = tally.shed(max_events=1, max_keys=3)
    assert (dropped.requests, dropped.blocked, dropped.events) == (1 + 2, 2, 3)
    left = tally.drain()
    assert sorted(m for _, m in left.requests) == [2, 3, 4] and [e.request_id for e in left.events] == ["e3"]


def journal_files(home: Home) -> list[str]:
    return sorted(p.name for p in home.journal_dir.glob("*.journal"))


def killed(recorder: Recorder) -> None:
    """What SIGKILL leaves of a recorder: its journal files, their lock released; memory gone."""
    assert recorder.journals is not None
    recorder.journals.close(remove=False)
    recorder.journals = recorder.tally.journal = None
    if recorder.store is not None:
        recorder.store.close()
        recorder.store = None


def requests_in_store(home: Home) -> int:
    with Monitoring(home) as monitoring:
        rows, _ = monitoring.stats()
    return sum(r.requests_24h for r in rows)


def test_what_a_killed_process_counted_is_written_by_the_next_one(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    dead, heir = Recorder(), Recorder()
    with taddons.context(PolicySource(), dead) as tctx, caplog.at_level(logging.WARNING):
        tctx.configure(dead, egress_home=str(home.root))
        for status in (200, 503, None):
            dead._count("stripe", status)
        dead.tally.blocked(Event("blocked", time.time(), "GET", "evil.test", "/", "b1", reason="not-allowed"))
        assert journal_files(home) != []
        killed(dead)
        assert requests_in_store(home) == 0
        heir.configure({"egress_home"})  # another process on the same home
        heir._replay_now()
        assert "left in its journal: 3 request(s), 1 blocked, 1 log row(s)" in caplog.text
        heir.done()
    assert requests_in_store(home) == 3
    with Monitoring(home) as monitoring:
        (row,), by_host = monitoring.stats()
    assert row.health.last_1h == Counts(3, server_errors=1, transport_failures=1)
    assert by_host == [{"host": "evil.test", "reason": "not-allowed", "count": 1}]
    assert list(home.journal_dir.iterdir()) == []


def test_a_batch_written_just_before_the_kill_counts_once(home: Home) -> None:
    dead, heir = Recorder(), Recorder()
    with taddons.context(PolicySource(), dead) as tctx:
        tctx.configure(dead, egress_home=str(home.root))
        for _ in range(3):
            dead._count("stripe", 200)
        drained = dead._pending = dead._drain()
        dead._flush(drained)  # in the store; killed before its journal file was removed
        dead._count("stripe", 200)
        assert len(journal_files(home)) == 2
        killed(dead)
        assert requests_in_store(home) == 3
        heir.configure({"egress_home"})  # another process on the same home
        heir.done()  # a stop replays too (a sibling killed just before)
    assert requests_in_store(home) == 4


def test_stopping_during_an_outage_leaves_the_counts_in_the_journal_for_the_next_start(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    recorder, heir = Recorder(), Recorder()
    with taddons.context(PolicySource(), recorder) as tctx:
        tctx.configure(recorder, egress_home=str(home.root))
        real = recorder.store
        assert real is not None
        real.close()
        recorder.store = FakeStore(FlakyMonitoring(failures=10**9))  # type: ignore[assignment]
        count(recorder, 3)
        recorder.done()
        assert dropped_metric(recorder) == {}  # nothing lost...
        assert "3 request(s), 0 blocked, 3 log row(s) kept in the statistics journal" in caplog.text
        assert journal_files(home) != []  # ...it waits here
        heir.configure({"egress_home"})  # another process on the same home
        heir.done()
    with Monitoring(home) as monitoring:
        rows, _ = monitoring.stats()
        assert [(r.connector, r.requests_24h, r.errors_24h) for r in rows] == [("c", 3, 3), ("stripe", 0, 0)]
        assert len(monitoring.events()) == 3


def test_the_writer_cuts_the_journal_and_empties_what_it_wrote(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(record, "FLUSH_INTERVAL", 0.01)
    recorder = Recorder()
    with taddons.context(PolicySource(), recorder) as tctx:
        tctx.configure(recorder, egress_home=str(home.root))
        assert journal_files(home) == [f"{recorder.journals.owner}.1.journal"]  # type: ignore[union-attr]

        async def run() -> None:
            writer = asyncio.create_task(recorder._writer())
            recorder._count("stripe", 200)
            for _ in range(500):
                if requests_in_store(home) == 1:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            writer.cancel()

        asyncio.run(run())
        assert requests_in_store(home) == 1
        owner = recorder.journals.owner  # type: ignore[union-attr]
        assert [p.name for p in recorder.journals.files] == [f"{owner}.2.journal"]  # type: ignore[union-attr]
        assert journal.read(home.journal_dir / f"{owner}.1.journal") == Batch()  # written: emptied, a spare
        recorder.done()
    assert list(home.journal_dir.iterdir()) == []


def test_a_home_without_room_for_a_journal_still_counts(home: Home, caplog: pytest.LogCaptureFixture) -> None:
    (home.root / "journal").write_text("not a directory")  # as unwritable as a read-only mount
    recorder = Recorder()
    with taddons.context(PolicySource(), recorder) as tctx, caplog.at_level(logging.WARNING):
        tctx.configure(recorder, egress_home=str(home.root))
        assert recorder.journals is None and "no statistics journal" in caplog.text
        recorder._count("stripe", 200)
        recorder.done()
    assert requests_in_store(home) == 1


def test_stopping_during_an_outage_with_a_full_journal_says_what_is_lost(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    recorder, heir = Recorder(), Recorder()
    with taddons.context(PolicySource(), recorder) as tctx:
        tctx.configure(recorder, egress_home=str(home.root))
        assert recorder.journals is not None and recorder.store is not None
        recorder.journals.close(remove=True)
        small = recorder.journals = Journals(home.journal_dir, size=HEADER + 120, max_files=1)
        recorder.tally.journal = small  # room for three connectors' counts
        recorder.store.close()
        recorder.store = FakeStore(FlakyMonitoring(failures=10**9))  # type: ignore[assignment]
        for i in range(10):
            recorder._count(f"c{i}", 200)
        kept = 10 - small.missed.requests
        assert kept == 3
        recorder.done()
        assert dropped_metric(recorder) == {"request": 10.0 - kept}
        assert f"{kept} request(s), 0 blocked, 0 log row(s) kept in the statistics journal" in caplog.text
        heir.configure({"egress_home"})
        heir.done()
    assert requests_in_store(home) == kept

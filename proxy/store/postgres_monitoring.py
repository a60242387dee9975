"""Monitoring in PostgreSQL: per-minute ``+=`` upserts from many processes, pruned by one at a time.

Rows of a batch are upserted in key order, so two processes flushing the
same minutes lock them in the same order and cannot deadlock. Pruning (the
24-hour roll-off and the event-row cap) is idempotent and runs at most once
a minute per process, by whichever process wins a try-lock: writers never
queue behind each other's DELETEs. The cap is therefore enforced once a
minute, not on every flush as in SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from proxy.health import Health
from proxy.stats import (
    ALERT_MINUTES,
    EVENT_ROW_CAP,
    WINDOW_MINUTES,
    Batch,
    Clock,
    ConnectorStats,
    Event,
    JournalMark,
    printable,
)
from proxy.store.rows import (
    COUNTERS,
    EVENT_INSERT_COLUMNS,
    NODE_TOTALS,
    EventLog,
    Sums,
    event_values,
    follow,
    health_by_name,
    node_counts,
    summaries,
    sums_by_connector,
)

PLACEHOLDER = "%s"
PRUNE_LOCK = 0x6567_7265_7373_0002
Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]

_INSERT_COUNTS = (
    f"INSERT INTO stats_minute (connector, minute, {', '.join(COUNTERS)}) "
    f"VALUES (%s, %s{', %s' * len(COUNTERS)}) ON CONFLICT (connector, minute) DO UPDATE SET "
    + ", ".join(f"{c} = stats_minute.{c} + EXCLUDED.{c}" for c in COUNTERS)
)
_INSERT_BLOCKED = (
    "INSERT INTO blocked_minute VALUES (%s, %s, %s, %s) ON CONFLICT (host, reason, minute) "
    "DO UPDATE SET count = blocked_minute.count + EXCLUDED.count"
)
_INSERT_EVENT = f"INSERT INTO events ({EVENT_INSERT_COLUMNS}) VALUES ({', '.join(['%s'] * 14)})"
_INSERT_NODE = (
    "INSERT INTO stats_node VALUES (%s, %s, %s, %s, %s) ON CONFLICT (node, connector, minute) "
    "DO UPDATE SET requests = stats_node.requests + EXCLUDED.requests, "
    "errors = stats_node.errors + EXCLUDED.errors"
)
# A mark moves only forward; the upsert waits on another transaction writing the same owner.
_MARK = (
    "INSERT INTO journal_marks (owner, seq, at) VALUES (%s, %s, %s) ON CONFLICT (owner) DO UPDATE "
    "SET seq = EXCLUDED.seq, at = EXCLUDED.at WHERE journal_marks.seq < EXCLUDED.seq"
)
_SUM_COUNTS = (
    "SELECT connector, "
    + ", ".join(f"SUM({c})" for c in COUNTERS)
    + ", "
    + ", ".join(f"SUM(CASE WHEN minute > %(recent)s THEN {c} ELSE 0 END)" for c in COUNTERS)
    + " FROM stats_minute WHERE minute > %(since)s GROUP BY connector"
)
_LAST_ERRORS = (
    "SELECT DISTINCT ON (connector) connector, ts, status, failure, method, host, path FROM events "
    "WHERE kind = 'error' AND connector IS NOT NULL AND ts > %s ORDER BY connector, id DESC"
)


class PostgresMonitoring(EventLog):
    """The monitoring tables, on the store's connection."""

    placeholder = PLACEHOLDER

    def __init__(self, connect: Connect, clock: Clock = time.time, row_cap: int = EVENT_ROW_CAP) -> None:
        self._connect = connect
        self.clock = clock
        self.row_cap = row_cap
        self._pruned_minute: int | None = None

    def flush(self, batch: Batch, mark: JournalMark | None = None) -> bool:
        """Add a batch in one transaction; then, once a minute, prune if no other process is.
        False if ``mark`` says the batch is already in (a replayed journal)."""
        now = self.clock()
        now_minute = int(now // 60)
        counts = sorted((c, m, *n) for (c, m), n in batch.requests.items())
        blocked = sorted((printable(h, 300), r, m, n) for (h, r, m), n in batch.blocked.items())
        events = [event_values(e, batch.node) for e in batch.events]
        nodes = node_counts(batch)
        written = True
        with self._connect() as conn:
            with conn.transaction(), conn.cursor() as cur:
                if mark is not None:
                    cur.execute(_MARK, (mark.owner, mark.seq, now))
                    written = cur.rowcount > 0
                if written and counts:
                    cur.executemany(_INSERT_COUNTS, counts)
                if written and blocked:
                    cur.executemany(_INSERT_BLOCKED, blocked)
                if written and events:
                    cur.executemany(_INSERT_EVENT, events)
                if written and nodes:
                    cur.executemany(_INSERT_NODE, nodes)
            if self._pruned_minute != now_minute:
                self._prune(conn, now_minute)
        return written

    def _prune(self, conn: psycopg.Connection[Any], now_minute: int) -> None:
        horizon = now_minute - WINDOW_MINUTES
        with conn.transaction():
            elected = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (PRUNE_LOCK,)).fetchone()
            if elected == (True,):
                conn.execute("DELETE FROM stats_minute WHERE minute <= %s", (horizon,))
                conn.execute("DELETE FROM blocked_minute WHERE minute <= %s", (horizon,))
                conn.execute("DELETE FROM stats_node WHERE minute <= %s", (horizon,))
                conn.execute("DELETE FROM events WHERE ts <= %s", (horizon * 60,))
                conn.execute(
                    "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - %s", (self.row_cap,)
                )
                conn.execute("DELETE FROM journal_marks WHERE at <= %s", (horizon * 60,))
        self._pruned_minute = now_minute  # someone else pruning counts too: it is idempotent

    def _sums(self) -> Sums:
        now_minute = int(self.clock() // 60)
        with self._connect() as conn:
            rows = conn.execute(
                _SUM_COUNTS, {"since": now_minute - WINDOW_MINUTES, "recent": now_minute - ALERT_MINUTES}
            ).fetchall()
        return sums_by_connector(rows)

    def health(self, connectors: list[str], only: str | None = None) -> dict[str, Health]:
        return health_by_name(self._sums(), connectors, only)

    def summary(self, connectors: list[str], only: str | None = None) -> list[ConnectorStats]:
        since = int(self.clock() // 60) - WINDOW_MINUTES
        sums = self._sums()
        with self._connect() as conn:
            last_errors = {r[0]: r[1:] for r in conn.execute(_LAST_ERRORS, (since * 60,)).fetchall()}
        return summaries(sums, connectors, only, last_errors.get)

    def blocked_summary(self) -> list[dict[str, Any]]:
        since = int(self.clock() // 60) - WINDOW_MINUTES
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT host, reason, SUM(count) FROM blocked_minute WHERE minute > %s "
                "GROUP BY host, reason ORDER BY SUM(count) DESC, host",
                (since,),
            ).fetchall()
        return [{"host": h, "reason": r, "count": int(n)} for h, r, n in rows]

    def hourly(self, connector: str, hours: int = 24) -> list[tuple[int, int, int]]:
        """Requests and errors per clock hour (``minute / 60``), for a chart; one grouped query."""
        current = int(self.clock() // 3600)
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT minute / 60 AS hour, SUM(requests), SUM(errors) FROM stats_minute "
                "WHERE connector = %s AND minute >= %s GROUP BY hour ORDER BY hour",
                (connector, (current - hours + 1) * 60),
            ).fetchall()
        return [(int(h) * 3600, int(r), int(e)) for h, r, e in rows]

    def nodes(self) -> list[tuple[str, str, int, int, int]]:
        """Per (node, connector) over 24 hours: requests, errors, the last minute counted."""
        since = int(self.clock() // 60) - WINDOW_MINUTES
        with self._connect() as conn:
            rows = conn.execute(NODE_TOTALS, (since,)).fetchall()
        return [(n, c, int(r), int(e), int(m)) for n, c, r, e, m in rows]

    def _fetch(self, sql: str, args: list[Any]) -> list[Any]:
        with self._connect() as conn:
            return list(conn.execute(sql, args).fetchall())

    def last_id(self) -> int:
        with self._connect() as conn:
            row = conn.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0) if row else 0

    def follow(self, after_id: int, poll: float = 0.5, **filters: Any) -> Iterator[Event]:
        """Rows newer than ``after_id`` as they arrive, oldest first, forever.

        Ids come from a sequence, so a row whose transaction commits after a
        later id's may be skipped by a follower that already moved past it.
        """
        return follow(self.events, after_id, poll, **filters)

"""Monitoring in SQLite: per-minute ``+=`` upserts that add up across processes.

Rows older than 24 hours are deleted on each flush; event rows are also
capped, so a hostile flood of blocked requests cannot grow the file forever.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

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

_INSERT_COUNTS = (
    f"INSERT INTO stats_minute (connector, minute, {', '.join(COUNTERS)}) "
    f"VALUES (?, ?{', ?' * len(COUNTERS)}) ON CONFLICT (connector, minute) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in COUNTERS)
)
_INSERT_NODE = (
    "INSERT INTO stats_node VALUES (?, ?, ?, ?, ?) ON CONFLICT (node, connector, minute) "
    "DO UPDATE SET requests = requests + excluded.requests, errors = errors + excluded.errors"
)
# A mark moves only forward: no row changed means this owner's batch up to ``seq`` is already in.
_MARK = (
    "INSERT INTO journal_marks (owner, seq, at) VALUES (?, ?, ?) ON CONFLICT (owner) DO UPDATE "
    "SET seq = excluded.seq, at = excluded.at WHERE journal_marks.seq < excluded.seq"
)
PLACEHOLDER = "?"
# Per connector: every counter summed over 24 hours, then over the last hour.
_SUM_COUNTS = (
    "SELECT connector, "
    + ", ".join(f"SUM({c})" for c in COUNTERS)
    + ", "
    + ", ".join(f"SUM(CASE WHEN minute > :recent THEN {c} ELSE 0 END)" for c in COUNTERS)
    + " FROM stats_minute WHERE minute > :since GROUP BY connector"
)


class SqliteMonitoring(EventLog):
    """The monitoring tables, on the store's own connection."""

    placeholder = PLACEHOLDER

    def __init__(
        self, db: sqlite3.Connection, clock: Clock = time.time, row_cap: int = EVENT_ROW_CAP
    ) -> None:
        self._db = db
        self.clock = clock
        self.row_cap = row_cap

    def flush(self, batch: Batch, mark: JournalMark | None = None) -> bool:
        """Add a batch and prune old rows, in one transaction; False if ``mark`` says the batch
        is already in (a journal replayed after its process died just after writing it)."""
        now = self.clock()
        horizon = int(now // 60) - WINDOW_MINUTES
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if mark is not None and not db.execute(_MARK, (mark.owner, mark.seq, now)).rowcount:
                db.execute("COMMIT")
                return False
            db.executemany(_INSERT_COUNTS, [(c, m, *counts) for (c, m), counts in batch.requests.items()])
            db.executemany(
                "INSERT INTO blocked_minute VALUES (?, ?, ?, ?) ON CONFLICT (host, reason, minute) "
                "DO UPDATE SET count = count + excluded.count",
                [(printable(h, 300), r, m, n) for (h, r, m), n in batch.blocked.items()],
            )
            db.executemany(
                f"INSERT INTO events ({EVENT_INSERT_COLUMNS}) VALUES ({', '.join('?' * 14)})",
                [event_values(e, batch.node) for e in batch.events],
            )
            db.executemany(_INSERT_NODE, node_counts(batch))
            db.execute("DELETE FROM stats_minute WHERE minute <= ?", (horizon,))
            db.execute("DELETE FROM blocked_minute WHERE minute <= ?", (horizon,))
            db.execute("DELETE FROM stats_node WHERE minute <= ?", (horizon,))
            db.execute("DELETE FROM events WHERE ts <= ?", (horizon * 60,))
            db.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (self.row_cap,))
            db.execute("DELETE FROM journal_marks WHERE at <= ?", (horizon * 60,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    def _sums(self) -> Sums:
        """Per connector with traffic: its counter sums over 24 hours and over the last hour."""
        now_minute = int(self.clock() // 60)
        return sums_by_connector(
            self._db.execute(
                _SUM_COUNTS, {"since": now_minute - WINDOW_MINUTES, "recent": now_minute - ALERT_MINUTES}
            ).fetchall()
        )

    def health(self, connectors: list[str], only: str | None = None) -> dict[str, Health]:
        """Every known connector's health, by name (one query: cheap enough for every scrape)."""
        return health_by_name(self._sums(), connectors, only)

    def summary(self, connectors: list[str], only: str | None = None) -> list[ConnectorStats]:
        """24-hour totals per connector (every known connector, traffic or not)."""
        since = (int(self.clock() // 60) - WINDOW_MINUTES) * 60

        def last_error(name: str) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = self._db.execute(
                "SELECT ts, status, failure, method, host, path FROM events "
                "WHERE kind = 'error' AND connector = ? AND ts > ? ORDER BY id DESC LIMIT 1",
                (name, since),
            ).fetchone()
            return row

        return summaries(self._sums(), connectors, only, last_error)

    def blocked_summary(self) -> list[dict[str, Any]]:
        since = int(self.clock() // 60) - WINDOW_MINUTES
        rows = self._db.execute(
            "SELECT host, reason, SUM(count) FROM blocked_minute WHERE minute > ? "
            "GROUP BY host, reason ORDER BY SUM(count) DESC, host",
            (since,),
        ).fetchall()
        return [{"host": h, "reason": r, "count": int(n)} for h, r, n in rows]

    def hourly(self, connector: str, hours: int = 24) -> list[tuple[int, int, int]]:
        """Requests and errors per clock hour (``minute / 60``), for a chart; one grouped query."""
        current = int(self.clock() // 3600)
        rows = self._db.execute(
            "SELECT minute / 60 AS hour, SUM(requests), SUM(errors) FROM stats_minute "
            "WHERE connector = ? AND minute >= ? GROUP BY hour ORDER BY hour",
            (connector, (current - hours + 1) * 60),
        ).fetchall()
        return [(int(h) * 3600, int(r), int(e)) for h, r, e in rows]

    def nodes(self) -> list[tuple[str, str, int, int, int]]:
        """Per (node, connector) over 24 hours: requests, errors, the last minute counted."""
        since = int(self.clock() // 60) - WINDOW_MINUTES
        return [tuple(r) for r in self._db.execute(NODE_TOTALS.replace("%s", "?"), (since,)).fetchall()]

    def _fetch(self, sql: str, args: list[Any]) -> list[Any]:
        with closing(self._db.execute(sql, args)) as cur:
            return cur.fetchall()

    def last_id(self) -> int:
        row = self._db.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)

    def follow(self, after_id: int, poll: float = 0.5, **filters: Any) -> Iterator[Event]:
        """Rows newer than ``after_id`` as they arrive, oldest first, forever."""
        return follow(self.events, after_id, poll, **filters)

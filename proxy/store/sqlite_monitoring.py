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

from proxy.stats import (
    ALERT_MINUTES,
    EVENT_ROW_CAP,
    WINDOW_MINUTES,
    Batch,
    Clock,
    ConnectorStats,
    Event,
    printable,
)


class SqliteMonitoring:
    """The monitoring tables, on the store's own connection."""

    def __init__(
        self, db: sqlite3.Connection, clock: Clock = time.time, row_cap: int = EVENT_ROW_CAP
    ) -> None:
        self._db = db
        self.clock = clock
        self.row_cap = row_cap

    def flush(self, batch: Batch) -> None:
        """Add a batch and prune old rows, in one transaction."""
        now_minute = int(self.clock() // 60)
        horizon = now_minute - WINDOW_MINUTES
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO stats_minute VALUES (?, ?, ?, ?) ON CONFLICT (connector, minute) DO UPDATE "
                "SET requests = requests + excluded.requests, errors = errors + excluded.errors",
                [(c, m, n, e) for (c, m), (n, e) in batch.requests.items()],
            )
            db.executemany(
                "INSERT INTO blocked_minute VALUES (?, ?, ?, ?) ON CONFLICT (host, reason, minute) "
                "DO UPDATE SET count = count + excluded.count",
                [(printable(h, 300), r, m, n) for (h, r, m), n in batch.blocked.items()],
            )
            db.executemany(
                "INSERT INTO events (kind, ts, connector, reason, status, failure, method, host, path, "
                "request_id, grant_label) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.kind, e.ts, e.connector, e.reason, e.status, e.failure, printable(e.method, 32),
                     printable(e.host, 300), printable(e.path, 2048), e.request_id, e.grant_label)
                    for e in batch.events
                ],
            )  # fmt: skip
            db.execute("DELETE FROM stats_minute WHERE minute <= ?", (horizon,))
            db.execute("DELETE FROM blocked_minute WHERE minute <= ?", (horizon,))
            db.execute("DELETE FROM events WHERE ts <= ?", (horizon * 60,))
            db.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (self.row_cap,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def summary(self, connectors: list[str], only: str | None = None) -> list[ConnectorStats]:
        """24-hour totals per connector (every known connector, traffic or not)."""
        now_minute = int(self.clock() // 60)
        since = now_minute - WINDOW_MINUTES
        alert_since = now_minute - ALERT_MINUTES
        rows = self._db.execute(
            "SELECT connector, SUM(requests), SUM(errors), "
            "SUM(CASE WHEN minute > ? THEN errors ELSE 0 END) "
            "FROM stats_minute WHERE minute > ? GROUP BY connector",
            (alert_since, since),
        ).fetchall()
        totals = {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}
        out = []
        for name in sorted(set(connectors) | set(totals)):
            if only is not None and name != only:
                continue
            requests, errors, recent = totals.get(name, (0, 0, 0))
            last = self._db.execute(
                "SELECT ts, status, failure, method, host, path FROM events "
                "WHERE kind = 'error' AND connector = ? AND ts > ? ORDER BY id DESC LIMIT 1",
                (name, since * 60),
            ).fetchone()
            fields = ("ts", "status", "failure", "method", "host", "path")
            last_error = {k: v for k, v in zip(fields, last, strict=True) if v is not None} if last else None
            out.append(
                ConnectorStats(
                    name,
                    requests,
                    errors,
                    round(errors / requests, 4) if requests else 0.0,
                    recent,
                    recent > 0,
                    last_error,
                )
            )
        return out

    def blocked_summary(self) -> list[dict[str, Any]]:
        since = int(self.clock() // 60) - WINDOW_MINUTES
        rows = self._db.execute(
            "SELECT host, reason, SUM(count) FROM blocked_minute WHERE minute > ? "
            "GROUP BY host, reason ORDER BY SUM(count) DESC, host",
            (since,),
        ).fetchall()
        return [{"host": h, "reason": r, "count": int(n)} for h, r, n in rows]

    def events(
        self,
        *,
        kind: str | None = None,
        since: float | None = None,
        connector: str | None = None,
        grant_label: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
        newest_first: bool = True,
    ) -> list[Event]:
        clauses = ["id > ?", "ts > ?"]
        args: list[Any] = [after_id, max(since or 0, self.clock() - WINDOW_MINUTES * 60)]
        for column, value in (("kind", kind), ("connector", connector), ("grant_label", grant_label)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        order = "DESC" if newest_first else "ASC"
        with closing(
            self._db.execute(
                "SELECT kind, ts, method, host, path, request_id, connector, reason, status, failure, "
                f"grant_label, id FROM events WHERE {' AND '.join(clauses)} ORDER BY id {order} LIMIT ?",
                (*args, limit),
            )
        ) as cur:
            return [Event(*row) for row in cur]

    def last_id(self) -> int:
        row = self._db.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)

    def follow(self, after_id: int, poll: float = 0.5, **filters: Any) -> Iterator[Event]:
        """Rows newer than ``after_id`` as they arrive, oldest first, forever."""
        last = after_id
        while True:
            rows = self.events(after_id=last, newest_first=False, **filters)
            yield from rows
            if rows:
                last = rows[-1].id or last
            else:
                time.sleep(poll)

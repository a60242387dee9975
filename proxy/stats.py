"""Monitoring: per-minute counters in memory, flushed to a rolling 24-hour store.

The request path only touches ``Tally`` (dict increments, no I/O). A writer
drains it about once a second and ``StatsStore.flush`` adds the batch in one
transaction with ``+=`` upserts, so several processes sharing a store add up.
Rows older than 24 hours are deleted on each flush; event rows are also capped.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from proxy.errors import ConfigError
from proxy.store import connect

WINDOW_MINUTES = 24 * 60
ALERT_MINUTES = 60
EVENT_ROW_CAP = 100_000
Clock = Callable[[], float]

SCHEMA = """
CREATE TABLE IF NOT EXISTS stats_minute (
    connector TEXT NOT NULL, minute INTEGER NOT NULL,
    requests INTEGER NOT NULL, errors INTEGER NOT NULL,
    PRIMARY KEY (connector, minute)
);
CREATE TABLE IF NOT EXISTS blocked_minute (
    host TEXT NOT NULL, reason TEXT NOT NULL, minute INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (host, reason, minute)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,              -- 'error' or 'blocked'
    ts REAL NOT NULL,
    connector TEXT, reason TEXT, status INTEGER, failure TEXT,
    method TEXT NOT NULL, host TEXT NOT NULL, path TEXT NOT NULL,
    request_id TEXT NOT NULL, grant_label TEXT
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (ts);
"""


@dataclass(frozen=True, slots=True)
class Event:
    """One error or blocked request. ``path`` never carries a query string."""

    kind: str
    ts: float
    method: str
    host: str
    path: str
    request_id: str
    connector: str | None = None
    reason: str | None = None
    status: int | None = None
    failure: str | None = None
    grant_label: str | None = None
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Batch:
    requests: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    blocked: dict[tuple[str, str, int], int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requests or self.blocked or self.events)


class Tally:
    """In-memory counters for the hot path; ``drain`` hands them to the writer."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._batch = Batch()

    def request(self, connector: str, error: bool) -> None:
        key = (connector, int(self.clock() // 60))
        counts = self._batch.requests.get(key)
        if counts is None:
            self._batch.requests[key] = [1, int(error)]
        else:
            counts[0] += 1
            counts[1] += error

    def error(self, event: Event) -> None:
        self._batch.events.append(event)

    def blocked(self, event: Event) -> None:
        key = (event.host, event.reason or "", int(event.ts // 60))
        self._batch.blocked[key] = self._batch.blocked.get(key, 0) + 1
        self._batch.events.append(event)

    def merge(self, batch: Batch) -> None:
        """Put back a batch whose flush failed, so its counts are not lost."""
        for key, (n, e) in batch.requests.items():
            counts = self._batch.requests.setdefault(key, [0, 0])
            counts[0] += n
            counts[1] += e
        for bkey, n in batch.blocked.items():
            self._batch.blocked[bkey] = self._batch.blocked.get(bkey, 0) + n
        self._batch.events[:0] = batch.events

    def drain(self) -> Batch:
        batch, self._batch = self._batch, Batch()
        return batch


def text(value: str, limit: int) -> str:
    """Storable text: undecodable bytes (surrogate escapes) as \\x.., at most ``limit`` chars.

    The sandbox chooses paths and hosts; a stray byte must never make a flush fail.
    """
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")[:limit]


def strip_query(path: str) -> str:
    return path.partition("?")[0].partition("#")[0]


@dataclass(frozen=True, slots=True)
class ConnectorStats:
    connector: str
    requests_24h: int
    errors_24h: int
    error_rate: float
    errors_1h: int
    alert: bool
    last_error: dict[str, Any] | None


class StatsStore:
    """The monitoring tables, in the same SQLite file as the connectors."""

    def __init__(self, path: Path, clock: Clock = time.time, row_cap: int = EVENT_ROW_CAP) -> None:
        self.path = path
        self.clock = clock
        self.row_cap = row_cap
        if not path.exists():
            raise ConfigError(f"no store at {path}: run `egress init` first")
        try:
            self._db = connect(path, timeout=30)
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ConfigError(
                f"{path}: not a usable egress store ({e}); the file was left untouched"
            ) from None

    def close(self) -> None:
        self._db.close()

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
                [(text(h, 300), r, m, n) for (h, r, m), n in batch.blocked.items()],
            )
            db.executemany(
                "INSERT INTO events (kind, ts, connector, reason, status, failure, method, host, path, "
                "request_id, grant_label) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.kind, e.ts, e.connector, e.reason, e.status, e.failure, text(e.method, 32),
                     text(e.host, 300), text(e.path, 2048), e.request_id, e.grant_label)
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

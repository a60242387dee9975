"""What both store backends share about monitoring rows: counter columns and event encoding.

Each backend keeps its own SQL (placeholders and upsert syntax differ); the
column order, the event row's shape and how a near miss is stored live here,
so the two cannot drift.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from proxy.health import Counts, Health, health
from proxy.nearmiss import NearMiss
from proxy.stats import WINDOW_MINUTES, Batch, ConnectorStats, Event, printable

# stats_minute's counters, in the order of a Batch count row (proxy.health slots)
COUNTERS = ("requests", "errors", "rejected", "client_errors", "server_errors", "transport_failures")
NO_TRAFFIC = ((0,) * len(COUNTERS), (0,) * len(COUNTERS))
EVENT_INSERT_COLUMNS = (
    "kind, ts, connector, reason, status, failure, method, host, path, request_id, grant_label, "
    "workspace, near_miss, node"
)
EVENT_SELECT_COLUMNS = (
    "kind, ts, method, host, path, request_id, connector, reason, status, failure, grant_label, "
    "workspace, id, near_miss, node"
)

NODE_TOTALS = (
    "SELECT node, connector, SUM(requests), SUM(errors), MAX(minute) FROM stats_node "
    "WHERE minute > %s GROUP BY node, connector ORDER BY node, connector"
)


def window(sums: tuple[int, ...]) -> Counts:
    """One window's counter sums (COUNTERS order) as health counts."""
    requests, _errors, rejected, client, server, transport = sums
    return Counts(requests, rejected, client, server, transport)


def event_values(e: Event, node: str) -> tuple[Any, ...]:
    """An event as an insert row (EVENT_INSERT_COLUMNS): sandbox-chosen text escaped and capped."""
    return (
        e.kind, e.ts, e.connector, e.reason, e.status, e.failure, printable(e.method, 32),
        printable(e.host, 300), printable(e.path, 2048), e.request_id, e.grant_label,
        e.workspace, None if e.near_miss is None else json.dumps(e.near_miss.to_dict()), node or None,
    )  # fmt: skip


def event_from_row(row: tuple[Any, ...]) -> Event:
    """A selected row (EVENT_SELECT_COLUMNS); the near miss is parsed only when set."""
    *fields, near, node = row
    event = Event(*fields)
    return replace(event, near_miss=_near_miss(near), node=node) if near or node else event


def node_counts(batch: Batch) -> list[tuple[str, str, int, int, int]]:
    """The batch's requests and errors per (node, connector, minute), in key order (no deadlocks)."""
    return sorted((batch.node, c, m, n[0], n[1]) for (c, m), n in batch.requests.items())


def _near_miss(text: str | None) -> NearMiss | None:
    """A stored near miss; a row this version cannot read is shown without one."""
    try:
        doc = json.loads(text or "")
        return NearMiss.from_dict(doc) if isinstance(doc, dict) else None
    except (ValueError, TypeError):
        return None


Sums = dict[str, tuple[tuple[int, ...], tuple[int, ...]]]
_LAST_ERROR_FIELDS = ("ts", "status", "failure", "method", "host", "path")


def sums_by_connector(rows: Iterable[Sequence[Any]]) -> Sums:
    """Rows of (connector, COUNTERS over 24 h..., COUNTERS over the last hour...) by connector."""
    n = len(COUNTERS)
    return {r[0]: (tuple(int(v) for v in r[1 : 1 + n]), tuple(int(v) for v in r[1 + n :])) for r in rows}


def _names(sums: Sums, connectors: list[str], only: str | None) -> list[str]:
    """Every known connector plus removed ones with traffic in the window, or just ``only``."""
    return [n for n in sorted(set(connectors) | set(sums)) if only is None or n == only]


def health_by_name(sums: Sums, connectors: list[str], only: str | None) -> dict[str, Health]:
    out = {}
    for name in _names(sums, connectors, only):
        day, hour = sums.get(name, NO_TRAFFIC)
        out[name] = health(window(hour), window(day))
    return out


def summaries(
    sums: Sums,
    connectors: list[str],
    only: str | None,
    last_error: Callable[[str], Sequence[Any] | None],
) -> list[ConnectorStats]:
    """24-hour totals per connector; ``last_error(name)`` is its newest error row
    (ts, status, failure, method, host, path) or None."""
    out = []
    for name in _names(sums, connectors, only):
        day, hour = sums.get(name, NO_TRAFFIC)
        requests, errors, recent = day[0], day[1], hour[1]
        last = last_error(name)
        shown = (
            {k: v for k, v in zip(_LAST_ERROR_FIELDS, last, strict=True) if v is not None} if last else None
        )
        state = health(window(hour), window(day))
        rate = round(errors / requests, 4) if requests else 0.0
        out.append(ConnectorStats(name, requests, errors, rate, recent, state.alert, shown, state))
    return out


def events_query(
    placeholder: str,
    floor: float,
    filters: Mapping[str, str | None],
    *,
    after_id: int,
    since: float | None,
    limit: int,
    newest_first: bool,
) -> tuple[str, list[Any]]:
    """The event-log SELECT and its arguments, in the backend's ``placeholder`` style;
    nothing older than ``floor`` (the 24-hour window) whatever ``since`` asks."""
    clauses = [f"id > {placeholder}", f"ts > {placeholder}"]
    args: list[Any] = [after_id, max(since or 0, floor)]
    for column, value in filters.items():
        if value is not None:
            clauses.append(f"{column} = {placeholder}")
            args.append(value)
    order = "DESC" if newest_first else "ASC"
    sql = (
        f"SELECT {EVENT_SELECT_COLUMNS} FROM events WHERE {' AND '.join(clauses)} "
        f"ORDER BY id {order} LIMIT {placeholder}"
    )
    return sql, [*args, limit]


def follow(events: Callable[..., list[Event]], after_id: int, poll: float, **filters: Any) -> Iterator[Event]:
    """Rows newer than ``after_id`` as ``events`` returns them, oldest first, forever."""
    last = after_id
    while True:
        rows = events(after_id=last, newest_first=False, **filters)
        yield from rows
        if rows:
            last = rows[-1].id or last
        else:
            time.sleep(poll)


class EventLog:
    """``events()``, the same on both backends: each supplies its ``placeholder``, its
    ``clock`` and ``_fetch`` (run a SELECT, return its rows)."""

    placeholder: str
    clock: Callable[[], float]

    def _fetch(self, sql: str, args: list[Any]) -> Iterable[tuple[Any, ...]]:
        raise NotImplementedError

    def events(
        self,
        *,
        kind: str | None = None,
        since: float | None = None,
        connector: str | None = None,
        grant_label: str | None = None,
        workspace: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
        newest_first: bool = True,
    ) -> list[Event]:
        sql, args = events_query(
            self.placeholder,
            self.clock() - WINDOW_MINUTES * 60,
            {"kind": kind, "connector": connector, "grant_label": grant_label, "workspace": workspace},
            after_id=after_id,
            since=since,
            limit=limit,
            newest_first=newest_first,
        )
        return [event_from_row(row) for row in self._fetch(sql, args)]

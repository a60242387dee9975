"""What both store backends share about monitoring rows: counter columns and event encoding.

Each backend keeps its own SQL (placeholders and upsert syntax differ); the
column order, the event row's shape and how a near miss is stored live here,
so the two cannot drift.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from proxy.health import Counts
from proxy.nearmiss import NearMiss
from proxy.stats import Batch, Event, printable

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

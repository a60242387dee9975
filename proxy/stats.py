"""Monitoring: per-minute counters in memory, for a rolling 24-hour store.

The request path only touches ``Tally`` (dict increments, no I/O). A writer
drains it about once a second and the store adds the batch in one
transaction with ``+=`` upserts, so several processes sharing a store add up.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from proxy.health import SLOTS, Health, outcome_slot
from proxy.secrets import DEFAULT_WORKSPACE

if TYPE_CHECKING:
    from proxy.nearmiss import NearMiss

WINDOW_MINUTES = 24 * 60
ALERT_MINUTES = 60
EVENT_ROW_CAP = 100_000
Clock = Callable[[], float]


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
    workspace: str = DEFAULT_WORKSPACE
    id: int | None = None
    near_miss: NearMiss | None = None  # blocked rows: the connector that came closest
    node: str | None = None  # the process that saw it (set by the store from its batch)

    def to_dict(self) -> dict[str, Any]:
        doc = {k: v for k, v in asdict(self).items() if v is not None}
        if self.near_miss is not None:
            doc["near_miss"] = self.near_miss.to_dict()
        return doc


class JournalMark(NamedTuple):
    """Which journal file a batch comes from (``proxy.journal``): the store writes a mark's batch
    only if it has not yet written one of the same owner with this ``seq`` or a higher one."""

    owner: str
    seq: int


class Mirror(Protocol):
    """Where a ``Tally`` copies each count as it happens (``proxy.journal.Journals``)."""

    def request(self, key: tuple[str, int], slot: int) -> None: ...
    def event(self, event: Event) -> None: ...


@dataclass
class Batch:
    # (connector, minute) -> [requests, errors, rejected, client, server, transport] (proxy.health slots)
    requests: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    blocked: dict[tuple[str, str, int], int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    node: str = ""  # the process that counted it (EGRESS_NODE, else the host name)

    def __bool__(self) -> bool:
        return bool(self.requests or self.blocked or self.events)


class Tally:
    """In-memory counters for the hot path; ``drain`` hands them to the writer.

    With a ``journal`` every count is also copied there as it is made, so a
    crash before the next flush loses none of them.
    """

    def __init__(self, clock: Clock = time.time, journal: Mirror | None = None, node: str = "") -> None:
        self.clock = clock
        self.journal = journal
        self.node = node
        self._batch = Batch(node=node)

    def __bool__(self) -> bool:
        return bool(self._batch)

    def request(self, connector: str, status: int | None) -> int | None:
        """Count one forwarded request by its upstream status (``None``: no response at all).

        Returns the failure class slot (``None`` when it did not fail), so the
        caller can label its metrics without classifying twice.
        """
        key = (connector, int(self.clock() // 60))
        counts = self._batch.requests.get(key)
        if counts is None:
            counts = self._batch.requests[key] = [0] * SLOTS
        counts[0] += 1
        slot = outcome_slot(status)
        if slot is not None:
            counts[1] += 1
            counts[slot] += 1
        if self.journal is not None:
            self.journal.request(key, slot or 0)
        return slot

    def error(self, event: Event) -> None:
        self._batch.events.append(event)
        if self.journal is not None:
            self.journal.event(event)

    def blocked(self, event: Event) -> None:
        key = (event.host, event.reason or "", int(event.ts // 60))
        self._batch.blocked[key] = self._batch.blocked.get(key, 0) + 1
        self._batch.events.append(event)
        if self.journal is not None:
            self.journal.event(event)

    def merge(self, batch: Batch) -> None:
        """Put back a batch whose flush failed, so its counts are not lost."""
        for key, more in batch.requests.items():
            counts = self._batch.requests.setdefault(key, [0] * SLOTS)
            for i, n in enumerate(more):
                counts[i] += n
        for bkey, n in batch.blocked.items():
            self._batch.blocked[bkey] = self._batch.blocked.get(bkey, 0) + n
        self._batch.events[:0] = batch.events

    def drain(self) -> Batch:
        batch, self._batch = self._batch, Batch(node=self.node)
        return batch

    def shed(self, max_events: int, max_keys: int, older: Batch | None = None) -> Counted:
        """Bound what waits for an unreachable store, dropping the oldest first; what was dropped.

        Counts are a dict per (connector, minute), so a long outage grows them
        by minutes, not by requests; the event log grows by requests, hence
        its own, tighter bound. ``older``, a batch drained earlier and still
        waiting to be written, shares the bounds and is shed first.
        """
        batches = [self._batch] if older is None else [older, self._batch]
        over = max(0, sum(len(b.events) for b in batches) - max_events)
        events = over
        for b in batches:
            n = min(over, len(b.events))
            del b.events[:n]  # merge() keeps the oldest first
            over -= n
        requests = blocked = 0
        counts = [(key[1], i, key) for i, b in enumerate(batches) for key in b.requests]
        for _, i, key in sorted(counts, key=lambda t: (t[0], t[1]))[: max(0, len(counts) - max_keys)]:
            requests += batches[i].requests.pop(key)[0]
        hosts = [(bkey[2], i, bkey) for i, b in enumerate(batches) for bkey in b.blocked]
        for _, i, bkey in sorted(hosts, key=lambda t: (t[0], t[1]))[: max(0, len(hosts) - max_keys)]:
            blocked += batches[i].blocked.pop(bkey)
        return Counted(events, requests, blocked)

    def pending(self) -> Counted:
        """What is waiting to be written (for a message about it)."""
        return Counted.of(self._batch)


@dataclass(frozen=True, slots=True)
class Counted:
    """Numbers of statistics: log rows, requests counted, blocked requests counted."""

    events: int = 0
    requests: int = 0
    blocked: int = 0

    @classmethod
    def of(cls, batch: Batch) -> Counted:
        return cls(len(batch.events), sum(c[0] for c in batch.requests.values()), sum(batch.blocked.values()))

    def __bool__(self) -> bool:
        return bool(self.events or self.requests or self.blocked)

    def __add__(self, other: Counted) -> Counted:
        return Counted(
            self.events + other.events, self.requests + other.requests, self.blocked + other.blocked
        )

    def __sub__(self, other: Counted) -> Counted:
        return Counted(
            self.events - other.events, self.requests - other.requests, self.blocked - other.blocked
        )

    def __str__(self) -> str:
        return f"{self.requests} request(s), {self.blocked} blocked, {self.events} log row(s)"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(value: str, limit: int) -> str:
    """What the sandbox chose (method, host, path), safe to store and to show an operator.

    Control characters (terminal escapes), undecodable bytes, bidi overrides
    and every other non-ASCII character (decoded punycode look-alikes) become
    visible ``\\x..``/``\\u..`` escapes; at most ``limit`` characters.
    """
    try:
        raw = value.encode("utf-8", "surrogateescape")  # bytes that were not UTF-8 come back as \\xNN
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    out = raw.decode("utf-8", "backslashreplace").encode("ascii", "backslashreplace").decode("ascii")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", out)[:limit]


def strip_query(path: str) -> str:
    return path.partition("?")[0].partition("#")[0]


@dataclass(frozen=True, slots=True)
class ConnectorStats:
    connector: str
    requests_24h: int
    errors_24h: int
    error_rate: float
    errors_1h: int
    alert: bool  # follows ``health.state``: 4xx other than 401/403 never raise it
    last_error: dict[str, Any] | None
    health: Health

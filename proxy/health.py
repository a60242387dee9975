"""Credential health: is a connector's secret being refused, or its upstream down?

A raw error count cannot tell an operator which: a 404 is the sandbox asking
for something that does not exist, a 401 is a revoked key, a 503 is the
provider's outage. So responses are counted in four classes and a connector's
state is read from the last hour's shares, with a minimum number of requests
so that one unlucky call never paints a connector broken.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

MIN_REQUESTS = 5  # in the last hour, before a share can mark a connector
THRESHOLD = 0.5  # share of the last hour's requests

# Slots in a per-minute count row: [requests, errors, rejected, client, server, transport].
# ``errors`` is the sum of the four classes (every status >= 400 and every transport failure).
REJECTED, CLIENT_ERROR, SERVER_ERROR, TRANSPORT = 2, 3, 4, 5
SLOTS = 6
CLASS_NAMES = {REJECTED: "rejected", CLIENT_ERROR: "client", SERVER_ERROR: "server", TRANSPORT: "transport"}


def outcome_slot(status: int | None) -> int | None:
    """The class a forwarded request falls in; ``None`` status is a transport failure, ``None`` slot is ok."""
    if status is None:
        return TRANSPORT
    if status < 400:
        return None
    if status in (401, 403):
        return REJECTED
    return CLIENT_ERROR if status < 500 else SERVER_ERROR


class State(StrEnum):
    OK = "ok"
    UNUSED = "unused"
    CREDENTIAL_REJECTED = "credential-rejected"
    FAILING = "failing"


@dataclass(frozen=True, slots=True)
class Counts:
    """One window's requests and how many fell in each failure class."""

    requests: int = 0
    rejected: int = 0  # 401 and 403 from the upstream
    client_errors: int = 0  # every other 4xx (404, 429, ...)
    server_errors: int = 0  # 5xx
    transport_failures: int = 0  # no status: refused, TLS, timeout, reset

    def share(self, n: int) -> float:
        return round(n / self.requests, 4) if self.requests else 0.0


def _dominates(n: int, window: Counts) -> bool:
    return window.requests >= MIN_REQUESTS and n >= THRESHOLD * window.requests


def assess(last_1h: Counts, last_24h: Counts) -> State:
    """The state rule, first match wins.

    ``unused``: no request in 24 h. ``credential-rejected``: at least half of
    at least 5 requests in the last hour got 401/403 (checked before
    ``failing``: a refused key is the thing the operator can fix). ``failing``:
    at least half of at least 5 requests in the last hour got a 5xx or no
    response at all. Otherwise ``ok``: other 4xx never count against a
    connector, whatever their share.
    """
    if last_24h.requests == 0 and last_1h.requests == 0:
        return State.UNUSED
    if _dominates(last_1h.rejected, last_1h):
        return State.CREDENTIAL_REJECTED
    if _dominates(last_1h.server_errors + last_1h.transport_failures, last_1h):
        return State.FAILING
    return State.OK


@dataclass(frozen=True, slots=True)
class Health:
    """A connector's state and the counts it was read from."""

    state: State
    last_1h: Counts
    last_24h: Counts
    rejected_share_1h: float
    rejected_share_24h: float

    @property
    def alert(self) -> bool:
        """The badge operators act on: a state that needs attention, never raw 4xx."""
        return self.state in (State.CREDENTIAL_REJECTED, State.FAILING)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["state"] = str(self.state)
        return doc


def health(last_1h: Counts, last_24h: Counts) -> Health:
    return Health(
        assess(last_1h, last_24h),
        last_1h,
        last_24h,
        last_1h.share(last_1h.rejected),
        last_24h.share(last_24h.rejected),
    )

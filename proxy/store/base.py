"""What every store backend provides: connectors, grants, monitoring, a change feed.

SQLite is the embedded default; a PostgreSQL backend implements the same
protocol for fleets. ``generation()`` is the change feed: every write bumps
it, and running proxies reload when it moves. ``wait_for_change(timeout)``
lets a watcher sleep until a write may have happened (a notification, or
just the timeout), so a database that can push changes need not be polled
fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.health import Health
from proxy.stats import Batch, ConnectorStats, Event


@dataclass(frozen=True, slots=True)
class StoredConnector:
    name: str
    spec: dict[str, Any]
    sealed: bytes
    created_at: float
    updated_at: float


class Transaction(Protocol):
    """Changes made inside ``Store.write()``: all of them commit, or none."""

    def get(self, name: str) -> StoredConnector | None: ...
    def connectors(self) -> list[StoredConnector]: ...
    def put(self, name: str, spec: dict[str, Any], sealed: bytes) -> None: ...
    def delete(self, name: str) -> bool: ...
    def add_grant(self, gid: str, label: str, connectors: list[str], expires_at: float) -> None: ...
    def revoke_grant(self, gid: str) -> bool: ...


class Monitoring(Protocol):
    """The rolling 24-hour counters and the error / blocked event log."""

    def flush(self, batch: Batch) -> None: ...
    def summary(self, connectors: list[str], only: str | None = None) -> list[ConnectorStats]: ...
    def health(self, connectors: list[str], only: str | None = None) -> dict[str, Health]: ...
    def blocked_summary(self) -> list[dict[str, Any]]: ...
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
    ) -> list[Event]: ...
    def last_id(self) -> int: ...
    def follow(self, after_id: int, poll: float = 0.5, **filters: Any) -> Iterator[Event]: ...


class Store(Protocol):
    @property
    def location(self) -> str:
        """For messages: a path, or a URL without credentials."""
        ...

    @property
    def monitoring(self) -> Monitoring: ...

    def close(self) -> None: ...
    def write(self) -> AbstractContextManager[Transaction]: ...
    def generation(self) -> int: ...
    def wait_for_change(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if a change was announced (poll ``generation`` anyway)."""
        ...

    def connectors(self) -> list[StoredConnector]: ...
    def get(self, name: str) -> StoredConnector | None: ...
    def grants(self) -> list[dict[str, Any]]: ...
    def revoked_grants(self) -> frozenset[str]: ...

"""What every store backend provides: connectors, grants, monitoring, a change feed.

SQLite is the embedded default; a PostgreSQL backend implements the same
protocol for fleets. ``generation()`` is the change feed: every write that
changes what running proxies hold (connectors, revocations) bumps it, and
they reload when it moves; adding a grant or an admin token does not. ``wait_for_change(timeout)``
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
from proxy.stats import Batch, ConnectorStats, Event, JournalMark


@dataclass(frozen=True, slots=True)
class StoredConnector:
    name: str
    spec: dict[str, Any]
    sealed: bytes
    created_at: float
    updated_at: float
    secret_updated_at: float | None = None  # when the credential last changed (None: unknown)


class Transaction(Protocol):
    """Changes made inside ``Store.write()``: all of them commit, or none."""

    def get(self, name: str) -> StoredConnector | None: ...
    def connectors(self) -> list[StoredConnector]: ...
    def put(self, name: str, spec: dict[str, Any], sealed: bytes, *, secret_changed: bool = True) -> None:
        """Insert or replace; ``secret_changed`` False keeps ``secret_updated_at`` (a re-seal of
        the same credential), a new row always sets it."""
        ...

    def delete(self, name: str) -> bool: ...
    def add_grant(self, gid: str, label: str, connectors: list[str], expires_at: float) -> None: ...
    def revoke_grant(self, gid: str) -> bool: ...
    def add_admin_token(
        self, tid: str, token_hash: str, workspace: str | None, read_only: bool, label: str
    ) -> None:
        """One row of ``admin_tokens`` (created_at now, revoked_at NULL); the hash, never the token."""
        ...

    def revoke_admin_token(self, tid: str) -> bool:
        """Set revoked_at now on an unrevoked token; False if there is none with this id."""
        ...

    def touch(self) -> None:
        """Bump the generation on commit though no row proxies hold changed (a new grant key on disk)."""
        ...


class Monitoring(Protocol):
    """The rolling 24-hour counters and the error / blocked event log."""

    def flush(self, batch: Batch, mark: JournalMark | None = None) -> bool:
        """Add a batch in one transaction. With a ``mark`` (the journal file it comes from), the
        same transaction moves the owner's mark forward, and a batch whose mark is not past the
        stored one is not written again: False."""
        ...

    def summary(self, connectors: list[str], only: str | None = None) -> list[ConnectorStats]: ...
    def health(self, connectors: list[str], only: str | None = None) -> dict[str, Health]: ...
    def blocked_summary(self) -> list[dict[str, Any]]: ...
    def nodes(self) -> list[tuple[str, str, int, int, int]]:
        """Per (node, connector) over 24 hours: requests, errors, the last minute counted."""
        ...

    def hourly(self, connector: str, hours: int = 24) -> list[tuple[int, int, int]]:
        """(hour start as epoch seconds, requests, errors) for one connector key, for each of the
        last ``hours`` clock hours (the current one included) that has traffic, oldest first."""
        ...

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

    @property
    def flush_interval(self) -> float:
        """Seconds between a proxy's counter flushes by default: about 1 for a local file, a few for a
        database every process of a fleet writes to (the recorder adds jitter)."""
        ...

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
    def admin_tokens(self) -> list[dict[str, Any]]:
        """Every admin token row, oldest first: id, token_hash, workspace, read_only (bool), label,
        created_at, revoked_at."""
        ...

    def admin_token(self, tid: str) -> dict[str, Any] | None:
        """One admin token row by id (as in ``admin_tokens``), revoked or not."""
        ...

"""Monitoring use cases: 24-hour stats per connector, the error and blocked logs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from proxy.errors import ConfigError
from proxy.service.home import Home
from proxy.stats import ConnectorStats, Event
from proxy.store import Store


class Monitoring:
    def __init__(self, home: Home, store: Store | None = None) -> None:
        self.store: Store = store or home.store()

    def __enter__(self) -> Monitoring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()

    def stats(self, connector: str | None = None) -> tuple[list[ConnectorStats], list[dict[str, Any]]]:
        """Per-connector 24-hour totals (every known connector) and blocked counts per host."""
        names = [s.name for s in self.store.connectors()]
        if connector and connector not in names:
            raise ConfigError(f"no connector named {connector!r}")
        rows = self.store.monitoring.summary(names, connector)
        blocked = [] if connector else self.store.monitoring.blocked_summary()
        return rows, blocked

    def events(self, **filters: Any) -> list[Event]:
        return self.store.monitoring.events(**filters)

    def last_id(self) -> int:
        return self.store.monitoring.last_id()

    def follow(self, after_id: int, **filters: Any) -> Iterator[Event]:
        return self.store.monitoring.follow(after_id, **filters)

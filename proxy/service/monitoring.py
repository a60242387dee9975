"""Monitoring use cases: 24-hour stats and credential health per connector, the error and blocked logs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from proxy.connectors import connector_from_spec
from proxy.errors import ConfigError
from proxy.health import Health
from proxy.policy import Policy
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

    def _names(self, connector: str | None) -> list[str]:
        names = [s.name for s in self.store.connectors()]
        if connector and connector not in names:
            raise ConfigError(f"no connector named {connector!r}")
        return names

    def stats(self, connector: str | None = None) -> tuple[list[ConnectorStats], list[dict[str, Any]]]:
        """Per-connector 24-hour totals (every known connector) and blocked counts per host."""
        rows = self.store.monitoring.summary(self._names(connector), connector)
        blocked = [] if connector else self.store.monitoring.blocked_summary()
        return rows, blocked

    def health(self, connector: str | None = None) -> dict[str, Health]:
        """State and 1 h / 24 h class counts per connector, by name.

        Every known connector (``unused`` when idle) plus removed ones with
        traffic still in the window. One query and no event-log reads, so
        scrapes and dashboards can call it often.
        """
        return self.store.monitoring.health(self._names(connector), connector)

    def matching_policy(self) -> Policy:
        """The current connectors compiled for matching only: no secret is opened."""
        return Policy((connector_from_spec(s.name, s.spec), None) for s in self.store.connectors())

    def events(self, **filters: Any) -> list[Event]:
        return self.store.monitoring.events(**filters)

    def last_id(self) -> int:
        return self.store.monitoring.last_id()

    def follow(self, after_id: int, **filters: Any) -> Iterator[Event]:
        return self.store.monitoring.follow(after_id, **filters)


def connector_health(home: Home) -> dict[str, Health]:
    """``Monitoring.health`` on a store opened and closed for this one call (a scrape, a page)."""
    with Monitoring(home) as monitoring:
        return monitoring.health()

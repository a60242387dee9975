"""Monitoring use cases: 24-hour stats and credential health per connector, the error and blocked logs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from proxy.connectors import connector_from_spec, connector_key, split_key
from proxy.errors import NotFound
from proxy.health import Health
from proxy.policy import Policy
from proxy.secrets import DEFAULT_WORKSPACE
from proxy.service.home import Home
from proxy.stats import ConnectorStats, Event
from proxy.store import Store


class Monitoring:
    """The 24-hour view of one workspace (the home's): its connectors' counts and its events."""

    def __init__(self, home: Home, store: Store | None = None) -> None:
        self.workspace = home.workspace
        self.store: Store = store or home.store()

    def __enter__(self) -> Monitoring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()

    def _mine(self, key: str) -> bool:
        return split_key(key)[0] == self.workspace

    def _names(self, connector: str | None) -> tuple[list[str], str | None]:
        """This workspace's connector keys, and the key of ``connector`` (checked)."""
        keys = [s.name for s in self.store.connectors() if self._mine(s.name)]
        key = None if connector is None else connector_key(self.workspace, connector)
        if key is not None and key not in keys:
            raise NotFound(f"no connector named {connector!r}")
        return keys, key

    def stats(self, connector: str | None = None) -> tuple[list[ConnectorStats], list[dict[str, Any]]]:
        """Per-connector 24-hour totals (every known connector) and blocked counts per host.

        Blocked counts per host are kept for the whole proxy (a blocked request
        often has no connector, hence no workspace): the default workspace shows them.
        """
        keys, key = self._names(connector)
        rows = [r for r in self.store.monitoring.summary(keys, key) if self._mine(r.connector)]
        shared = connector is None and self.workspace == DEFAULT_WORKSPACE
        blocked = self.store.monitoring.blocked_summary() if shared else []
        return rows, blocked

    def nodes(self, connector: str | None = None) -> list[dict[str, Any]]:
        """The 24-hour figures per process (EGRESS_NODE or host name) that counted this workspace's
        traffic, busiest first: a fleet's breakdown of what ``stats`` sums."""
        _, key = self._names(connector)
        out: dict[str, dict[str, Any]] = {}
        for node, conn_key, requests, errors, minute in self.store.monitoring.nodes():
            if not self._mine(conn_key) or key not in (None, conn_key):
                continue
            doc = out.setdefault(
                node, {"node": node, "requests_24h": 0, "errors_24h": 0, "last_seen": 0, "connectors": []}
            )
            doc["requests_24h"] += requests
            doc["errors_24h"] += errors
            doc["last_seen"] = max(doc["last_seen"], minute * 60)  # the start of its last minute counted
            doc["connectors"].append(
                {"connector": split_key(conn_key)[1], "requests_24h": requests, "errors_24h": errors}
            )
        return sorted(out.values(), key=lambda d: (-d["requests_24h"], d["node"]))

    def health(self, connector: str | None = None) -> dict[str, Health]:
        """State and 1 h / 24 h class counts per connector, by name.

        Every known connector (``unused`` when idle) plus removed ones with
        traffic still in the window. One query and no event-log reads, so
        scrapes and dashboards can call it often.
        """
        keys, key = self._names(connector)
        return {k: h for k, h in self.store.monitoring.health(keys, key).items() if self._mine(k)}

    def series(self, connector: str, hours: int = 24) -> list[dict[str, int]]:
        """Requests and errors per clock hour for one connector, oldest first, every hour present
        (zeros where idle) so a chart needs no gap logic."""
        _, key = self._names(connector)
        assert key is not None
        counts = {h: (r, e) for h, r, e in self.store.monitoring.hourly(key, hours)}
        current = int(time.time() // 3600)
        out = []
        for hour in range(current - hours + 1, current + 1):
            requests, errors = counts.get(hour * 3600, (0, 0))
            out.append({"hour": hour * 3600, "requests": requests, "errors": errors})
        return out

    def _filters(self, filters: dict[str, Any]) -> dict[str, Any]:
        if filters.get("connector") is not None:
            filters["connector"] = connector_key(self.workspace, filters["connector"])
        return {**filters, "workspace": self.workspace}

    def matching_policy(self) -> Policy:
        """The current connectors compiled for matching only: no secret is opened."""
        return Policy((connector_from_spec(s.name, s.spec), None) for s in self.store.connectors())

    def events(self, **filters: Any) -> list[Event]:
        return self.store.monitoring.events(**self._filters(filters))

    def last_id(self) -> int:
        return self.store.monitoring.last_id()

    def follow(self, after_id: int, **filters: Any) -> Iterator[Event]:
        return self.store.monitoring.follow(after_id, **self._filters(filters))


def connector_health(home: Home) -> dict[str, Health]:
    """``Monitoring.health`` on a store opened and closed for this one call (a scrape, a page)."""
    with Monitoring(home) as monitoring:
        return monitoring.health()

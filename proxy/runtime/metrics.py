"""Prometheus metrics for one proxy process (its own registry, no globals)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.health import Health, State

logger = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
HealthSource = Callable[[], Mapping[str, Health]]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "egress_requests", "Requests forwarded, per connector.", ["connector"], registry=self.registry
        )
        self.errors = Counter(
            "egress_errors",
            "Upstream status >= 400 or transport failures, per connector.",
            ["connector"],
            registry=self.registry,
        )
        self.error_classes = Counter(
            "egress_errors_by_class",
            "egress_errors split by class: rejected (401/403), client (other 4xx), server (5xx), transport.",
            ["connector", "class"],
            registry=self.registry,
        )
        self.blocked = Counter(
            "egress_blocked", "Requests blocked, per reason.", ["reason"], registry=self.registry
        )
        self.store_dropped = Counter(
            "egress_store_dropped",
            "Statistics never written because the store stayed unreachable (kind: request, blocked, event).",
            ["kind"],
            registry=self.registry,
        )
        self.audit_failures = Counter(
            "egress_audit_write_failures",
            "Audit lines that could not be written (a full disk...).",
            registry=self.registry,
        )
        self.latency = Histogram(
            "egress_upstream_latency_seconds",
            "Time from request start to upstream response headers, per connector.",
            ["connector"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch_health(self, source: HealthSource) -> None:
        """Also serve ``egress_connector_state`` (for a process that serves its own admin endpoint)."""
        self.registry.register(ConnectorStates(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ConnectorStates(Collector):
    """``egress_connector_state{connector, state}``: 1 for the current state, 0 for the others.

    Read from the store at scrape time rather than counted here: a worker sees
    only its share of the traffic, the store sees every worker and every proxy
    sharing it, so the metric agrees with ``egress stats``.
    """

    def __init__(self, source: HealthSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        try:
            by_name = self.source()
        except Exception as e:  # an unreadable store must not take the other metrics down
            logger.warning("connector state unavailable for /metrics: %s", e)
            return
        family = GaugeMetricFamily(
            "egress_connector_state",
            "Credential health per connector (ok, unused, credential-rejected, failing); 1 = current.",
            labels=["connector", "state"],
        )
        for name, health in by_name.items():
            for state in State:
                family.add_metric([name, str(state)], 1.0 if health.state is state else 0.0)
        yield family


def multiprocess_metrics(directory: Path, health: HealthSource | None = None) -> bytes:
    """Every worker's metrics summed (prometheus multiprocess mode), for the supervisor."""
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    if health is not None:
        registry.register(ConnectorStates(health))
    return bytes(generate_latest(registry))

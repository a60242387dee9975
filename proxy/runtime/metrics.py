"""Prometheus metrics for one proxy process (its own registry, no globals)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
        self.blocked = Counter(
            "egress_blocked", "Requests blocked, per reason.", ["reason"], registry=self.registry
        )
        self.latency = Histogram(
            "egress_upstream_latency_seconds",
            "Time from request start to upstream response headers, per connector.",
            ["connector"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def multiprocess_metrics(directory: Path) -> bytes:
    """Every worker's metrics summed (prometheus multiprocess mode), for the supervisor."""
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return bytes(generate_latest(registry))

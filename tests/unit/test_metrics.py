"""Metrics output: the connector state gauge (one series per state) and the error classes."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.errors import ConfigError
from proxy.health import Counts, Health, State, health
from proxy.runtime.metrics import Metrics, multiprocess_metrics


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
    }


def states(text: bytes) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (name, labels), value in samples(text).items():
        if name == "egress_connector_state":
            d = dict(labels)
            out.setdefault(d["connector"], {})[d["state"]] = value
    return out


FLEET: dict[str, Health] = {
    "stripe": health(Counts(6, rejected=6), Counts(6, rejected=6)),
    "github": health(Counts(5, transport_failures=5), Counts(9, transport_failures=5)),
    "docs": health(Counts(9, client_errors=9), Counts(9, client_errors=9)),
    "idle": health(Counts(), Counts()),
}


def test_state_gauge_has_one_series_per_state_and_exactly_one_set() -> None:
    metrics = Metrics()
    metrics.watch_health(lambda: FLEET)
    got = states(metrics.render())
    assert got == {name: {str(s): (1.0 if s is h.state else 0.0) for s in State} for name, h in FLEET.items()}
    assert got["stripe"]["credential-rejected"] == 1.0
    assert got["github"]["failing"] == 1.0
    assert got["docs"]["ok"] == 1.0
    assert got["idle"]["unused"] == 1.0


def test_state_is_read_at_every_scrape() -> None:
    current = {"stripe": FLEET["idle"]}
    metrics = Metrics()
    metrics.watch_health(lambda: current)
    assert states(metrics.render())["stripe"]["unused"] == 1.0
    current["stripe"] = FLEET["stripe"]
    assert states(metrics.render())["stripe"] == {
        "ok": 0.0,
        "unused": 0.0,
        "credential-rejected": 1.0,
        "failing": 0.0,
    }


def test_an_unreadable_store_leaves_the_other_metrics(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> dict[str, Health]:
        raise ConfigError("/x/egress.db: not a usable egress store")

    metrics = Metrics()
    metrics.requests.labels("stripe").inc()
    metrics.watch_health(broken)
    text = metrics.render()
    assert samples(text)[("egress_requests_total", (("connector", "stripe"),))] == 1
    assert states(text) == {}
    assert "connector state unavailable" in caplog.text


def test_error_classes_are_labelled_per_connector() -> None:
    metrics = Metrics()
    metrics.error_classes.labels("stripe", "rejected").inc(3)
    got = samples(metrics.render())
    assert got[("egress_errors_by_class_total", (("class", "rejected"), ("connector", "stripe")))] == 3


def test_supervisor_metrics_carry_the_state(tmp_path: Path) -> None:
    text = multiprocess_metrics(tmp_path, lambda: {"stripe": FLEET["stripe"]})
    assert states(text)["stripe"]["credential-rejected"] == 1.0
    assert states(multiprocess_metrics(tmp_path)) == {}

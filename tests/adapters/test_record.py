"""The recorder on real flows: counts, error and blocked rows, flushed to the store on done."""

from __future__ import annotations

from mitmproxy.test import taddons, tflow
from prometheus_client.parser import text_string_to_metric_families

from addons.inject import Inject
from addons.record import Recorder, failure_kind
from addons.source import PolicySource
from addons.state import Tunnels
from proxy.health import Counts, State
from proxy.service.home import Home
from proxy.service.monitoring import Monitoring
from tests.adapters.helpers import tunnel_flow


def test_counts_errors_and_blocks_and_flushes_on_done(home: Home) -> None:
    source, recorder, tunnels = PolicySource(), Recorder(), Tunnels()
    inject = Inject(source, tunnels)
    with taddons.context(source, recorder) as tctx:
        tctx.configure(source, egress_home=str(home.root))
        for status in (200, 401, 404, 503):
            f = tunnel_flow(tunnels)
            f.request.path = "/v1/charges?secret=no"
            inject.requestheaders(f)
            f.response = tflow.tresp(status_code=status)
            recorder.responseheaders(f)
            recorder.response(f)
        failed = tunnel_flow(tunnels)
        inject.requestheaders(failed)
        failed.error = tflow.terr("Connection refused")
        recorder.error(failed)
        blocked = tflow.tflow()  # outside any tunnel
        inject.requestheaders(blocked)
        recorder.response(blocked)
        recorder.done()
    with Monitoring(home) as monitoring:
        (row,), by_host = monitoring.stats()
        events = monitoring.events()
    assert (row.connector, row.requests_24h, row.errors_24h) == ("stripe", 5, 4)
    # one in each class; 2 of 5 failing (503, refused) is under half: ok, no alert
    assert row.health.last_1h == Counts(5, rejected=1, client_errors=1, server_errors=1, transport_failures=1)
    assert row.health.last_24h == row.health.last_1h
    assert (row.health.state, row.alert) == (State.OK, False)
    classes = {
        s.labels["class"]: s.value
        for fam in text_string_to_metric_families(recorder.metrics.render().decode())
        for s in fam.samples
        if s.name == "egress_errors_by_class_total"
    }
    assert classes == {"rejected": 1, "client": 1, "server": 1, "transport": 1}
    assert by_host == [{"host": blocked.request.pretty_host, "reason": "plain-http", "count": 1}]
    kinds = sorted(str((e.kind, e.status, e.failure, e.reason)) for e in events)
    assert kinds == [
        str(("blocked", None, None, "plain-http")),
        str(("error", 401, None, None)),
        str(("error", 404, None, None)),
        str(("error", 503, None, None)),
        str(("error", None, "refused", None)),
    ]
    assert all("?" not in e.path for e in events)  # the query never reaches the log


def test_failure_kinds() -> None:
    assert failure_kind("Connect call failed ('1.2.3.4', 443)") == "refused"
    assert failure_kind("TLS handshake failed: certificate verify failed") == "tls"
    assert failure_kind("Connection reset by peer") == "reset"
    assert failure_kind("something else") == "other"

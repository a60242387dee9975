"""The gate on real flows: CONNECT decisions, pinning, forced safe options."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path

import pytest
from mitmproxy.addons import proxyserver
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from addons.egress import make_addons
from addons.gate import Gate
from proxy.admission import Rules
from proxy.context import Tunnel
from proxy.grants import GrantKey
from proxy.policy import Target
from proxy.service.home import Home
from tests.adapters.helpers import STRIPE, stripe_policy, wired


def connect_flow(host: str, port: int = 443, token: str | None = None) -> tflow.HTTPFlow:
    f = tflow.tflow()
    f.request.method = "CONNECT"
    f.request.host, f.request.port = host, port
    f.client_conn.timestamp_tls_setup = None
    if token:
        f.request.headers["proxy-authorization"] = (
            "Basic " + base64.b64encode(f"grant:{token}".encode()).decode()
        )
    return f


def run_connect(gate: Gate, *flows: tflow.HTTPFlow) -> None:
    """CONNECT each flow in turn, with a documentation range opened to the SSRF guard."""
    with taddons.context(proxyserver.Proxyserver(), gate) as tctx:
        tctx.configure(
            gate, egress_allow_network=["203.0.113.0/24"], egress_resolve=["api.stripe.test=203.0.113.7"]
        )
        loop = asyncio.new_event_loop()
        try:
            for f in flows:
                loop.run_until_complete(gate.http_connect(f))
        finally:
            loop.close()


def test_connect_to_a_covered_host_opens_a_pinned_tunnel() -> None:
    source, tunnels, _ = wired(stripe_policy())
    gate = Gate(source, tunnels)
    f = connect_flow("api.stripe.test")
    run_connect(gate, f)
    assert f.response is None
    assert f.request.host == "203.0.113.7"  # pinned to the vetted address
    assert f.server_conn.sni == "api.stripe.test"
    tunnel = tunnels.get(f.client_conn)
    assert tunnel is not None and tunnel.address == "203.0.113.7"


def test_connect_to_an_uncovered_host_is_refused_there() -> None:
    source, tunnels, _ = wired(stripe_policy())
    gate = Gate(source, tunnels)
    f = connect_flow("evil.test")
    run_connect(gate, f)
    assert f.response is not None and f.response.status_code == 403
    assert f.response.headers["x-egress-blocked"] == "no-connector"
    assert f.client_conn not in tunnels


def test_revoked_grant_is_407_revoked_at_connect() -> None:
    key = GrantKey(b"k" * 32)
    token, grant = key.mint(["stripe"], 60, "step")
    source, tunnels, _ = wired(Rules(stripe_policy(), key, frozenset({grant.id})))
    gate = Gate(source, tunnels)
    f = connect_flow("api.stripe.test", token=token)
    run_connect(gate, f)
    assert f.response is not None and f.response.status_code == 407
    assert f.response.headers["x-egress-blocked"] == "revoked-grant"


def test_second_connect_on_one_connection_is_refused() -> None:
    source, tunnels, _ = wired(stripe_policy())
    gate = Gate(source, tunnels)
    first = connect_flow("api.stripe.test")
    second = connect_flow("api.stripe.test")
    second.client_conn = first.client_conn
    run_connect(gate, first, second)
    assert first.response is None
    assert second.response is not None
    assert second.response.headers["x-egress-blocked"] == "bad-request"


def test_server_connect_refuses_unpinned_address() -> None:
    source, tunnels, _ = wired(stripe_policy())
    gate = Gate(source, tunnels)
    f = tflow.tflow()
    tunnels.open(f.client_conn, Tunnel(STRIPE, "203.0.113.7"))
    f.server_conn.address = ("203.0.113.8", 443)
    f.server_conn.sni = "api.stripe.test"
    data = server_hooks.ServerConnectionHookData(f.server_conn, f.client_conn)
    gate.server_connect(data)
    assert f.server_conn.error
    f.server_conn.error = None
    f.server_conn.address = ("203.0.113.7", 443)
    f.server_conn.sni = "evil.test"
    gate.server_connect(data)
    assert f.server_conn.error
    f.server_conn.error = None
    f.server_conn.sni = "api.stripe.test"
    gate.server_connect(data)
    assert f.server_conn.error is None


def test_server_connect_without_a_tunnel_is_refused() -> None:
    source, tunnels, _ = wired(stripe_policy())
    f = tflow.tflow()
    f.server_conn.address = ("203.0.113.7", 443)
    Gate(source, tunnels).server_connect(server_hooks.ServerConnectionHookData(f.server_conn, f.client_conn))
    assert f.server_conn.error


def test_unsafe_mitmproxy_options_are_forced_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """mitmproxy's defaults (rawtcp, eager) are forced quietly; an unsafe value someone set, loudly."""
    monkeypatch.setenv("EGRESS_HOME", str(tmp_path))
    monkeypatch.delenv("EGRESS_MASTER_KEY", raising=False)
    Home.from_env().init()
    with caplog.at_level(logging.WARNING), taddons.context(proxyserver.Proxyserver(), *make_addons()) as tctx:
        assert tctx.options.rawtcp is False and tctx.options.connection_strategy == "lazy"
        assert "forces" not in caplog.text
        tctx.configure(tctx.master.addons.get("gate"), rawtcp=True, connection_strategy="eager")
        assert tctx.options.rawtcp is False
        assert tctx.options.connection_strategy == "lazy"
        tctx.configure(tctx.master.addons.get("gate"), ignore_hosts=["api.stripe.test"])
        assert tctx.options.ignore_hosts == []
        assert "egress-proxy forces ignore_hosts=[]" in caplog.text


def test_ip_literal_target_has_no_sni() -> None:
    from proxy.connectors import make_connector
    from proxy.policy import Policy

    c = make_connector("ip", patterns=["https://203.0.113.9/*"], inject={"header": "X-Key"})
    source, tunnels, _ = wired(Policy([(c, {"secret": "s"})]))
    gate = Gate(source, tunnels)
    f = connect_flow("203.0.113.9")
    run_connect(gate, f)
    assert f.response is None
    assert f.server_conn.sni is None
    assert tunnels.get(f.client_conn) == Tunnel(Target("203.0.113.9", 443), "203.0.113.9")

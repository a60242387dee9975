"""The mitmproxy adapters on real mitmproxy flow objects: fail closed, never open."""

from __future__ import annotations

from typing import Any

import pytest
from mitmproxy.addons import proxyserver
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from addons.egress import make_addons
from addons.gate import Gate, Tunnel
from addons.inject import Inject
from addons.source import PolicySource
from proxy.connectors import make_connector
from proxy.home import Home
from proxy.policy import Policy, Target


class Exploding(Policy):
    def route(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("boom: Bearer sk_live_must_not_be_logged")


def tunnel_flow(target: Target, address: str = "127.0.0.1") -> Any:
    f = tflow.tflow()
    f.request.scheme = "https"
    f.request.host = address
    f.request.port = target.port
    f.request.headers["host"] = target.authority
    f.client_conn.sni = target.host
    return f


def wired(policy: Policy) -> tuple[PolicySource, dict[str, Tunnel], Inject]:
    source = PolicySource()
    source.policy = policy
    tunnels: dict[str, Tunnel] = {}
    return source, tunnels, Inject(source, tunnels)


def stripe_policy() -> Policy:
    c = make_connector(
        "stripe", patterns=["https://api.stripe.test/v1/*"], inject={"header": "Authorization"}
    )
    return Policy([(c, "sk_test_addon")])


def test_allowed_request_gets_secret_and_loses_cookies() -> None:
    _, tunnels, inject = wired(stripe_policy())
    target = Target("api.stripe.test", 443)
    f = tunnel_flow(target)
    tunnels[f.client_conn.id] = Tunnel(target, "127.0.0.1")
    f.request.path = "/v1/charges"
    f.request.headers["cookie"] = "a=b"
    f.request.headers["proxy-authorization"] = "Basic eDp5"
    f.request.headers["authorization"] = "Bearer attacker"
    inject.requestheaders(f)
    assert f.response is None
    assert f.request.stream is True
    assert f.request.headers.get_all("authorization") == ["Bearer sk_test_addon"]
    assert "cookie" not in f.request.headers
    assert "proxy-authorization" not in f.request.headers


def test_hook_exception_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    _, tunnels, inject = wired(Exploding())
    target = Target("api.stripe.test", 443)
    f = tunnel_flow(target)
    tunnels[f.client_conn.id] = Tunnel(target, "127.0.0.1")
    f.request.path = "/v1/charges"
    inject.requestheaders(f)
    assert f.response is not None
    assert f.response.status_code == 502
    assert f.response.headers["x-egress-blocked"] == "internal-error"
    assert f.request.stream is False
    assert "ValueError" in caplog.text
    assert "sk_live_must_not_be_logged" not in caplog.text


def test_response_hook_exception_kills_flow() -> None:
    _, _, inject = wired(stripe_policy())
    f = tflow.tflow(resp=True)
    f.response = None  # responseheaders on a flow without a response raises
    inject.responseheaders(f)
    assert f.error is not None


def test_request_outside_any_tunnel_is_plain_http() -> None:
    _, _, inject = wired(stripe_policy())
    f = tflow.tflow()
    inject.requestheaders(f)
    assert f.response is not None
    assert f.response.headers["x-egress-blocked"] == "plain-http"


def test_set_cookie_stripped_and_response_streamed() -> None:
    _, _, inject = wired(stripe_policy())
    f = tflow.tflow(resp=True)
    assert f.response is not None
    f.response.headers.add("set-cookie", "a=1")
    f.response.headers.add("Set-Cookie", "b=2")
    inject.responseheaders(f)
    assert "set-cookie" not in f.response.headers
    assert f.response.stream is True


def test_server_connect_refuses_unpinned_address() -> None:
    source, tunnels, _ = wired(stripe_policy())
    gate = Gate(source, tunnels)
    f = tflow.tflow()
    target = Target("api.stripe.test", 443)
    tunnels[f.client_conn.id] = Tunnel(target, "203.0.113.7")
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


def test_unsafe_mitmproxy_options_are_forced_off(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESS_HOME", str(tmp_path))
    monkeypatch.delenv("EGRESS_MASTER_KEY", raising=False)
    Home.from_env().init()
    with taddons.context(proxyserver.Proxyserver(), *make_addons()) as tctx:
        tctx.configure(tctx.master.addons.get("gate"), rawtcp=True, connection_strategy="eager")
        assert tctx.options.rawtcp is False
        assert tctx.options.connection_strategy == "lazy"

"""The inject addon on real flows: admit, strip, inject; every refusal fails closed."""

from __future__ import annotations

import time
from typing import Any

import pytest
from mitmproxy.test import tflow

from proxy.admission import Rules
from proxy.grants import GrantKey
from proxy.policy import Policy
from tests.adapters.helpers import SECRET, stripe_policy, tunnel_flow, wired


class Exploding(Policy):
    def route(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("boom: Bearer sk_live_must_not_be_logged")


def test_allowed_request_gets_secret_and_loses_cookies() -> None:
    _, tunnels, inject = wired(stripe_policy())
    f = tunnel_flow(tunnels)
    f.request.headers["cookie"] = "a=b"
    f.request.headers["proxy-authorization"] = "Basic eDp5"
    f.request.headers["authorization"] = "Bearer attacker"
    inject.requestheaders(f)
    assert f.response is None
    assert f.request.stream is False  # a small body is read whole, scanned for secrets, then sent
    assert f.request.headers.get_all("authorization") == [f"Bearer {SECRET}"]
    assert "cookie" not in f.request.headers
    assert "proxy-authorization" not in f.request.headers
    state = f.metadata["egress"]
    assert state.connector == "stripe"
    assert ("admit", "stripe") in state.trace


def test_hook_exception_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    _, tunnels, inject = wired(Exploding())
    f = tunnel_flow(tunnels)
    inject.requestheaders(f)
    assert f.response is not None
    assert f.response.status_code == 502
    assert f.response.headers["x-egress-blocked"] == "internal-error"
    assert f.request.stream is False
    assert "ValueError" in caplog.text
    assert "sk_live_must_not_be_logged" not in caplog.text


def test_request_outside_any_tunnel_is_plain_http() -> None:
    _, _, inject = wired(stripe_policy())
    f = tflow.tflow()
    inject.requestheaders(f)
    assert f.response is not None
    assert f.response.headers["x-egress-blocked"] == "plain-http"
    assert "authorization" not in f.request.headers


def test_request_for_another_address_in_the_tunnel_is_refused() -> None:
    _, tunnels, inject = wired(stripe_policy())
    f = tunnel_flow(tunnels)
    f.request.host = "127.0.0.2"  # an HTTP/2 stream beside the tunnel's own
    inject.requestheaders(f)
    assert f.response is not None
    assert f.response.headers["x-egress-blocked"] == "host-mismatch"


@pytest.mark.parametrize(
    ("change", "reason"),
    [("revoke", "revoked-grant"), ("rotate", "bad-grant"), ("expire", "expired-grant")],
)
def test_grant_rechecked_on_every_request_of_an_open_tunnel(change: str, reason: str) -> None:
    key = GrantKey(b"k" * 32)
    _, grant = key.mint(["stripe"], 60, "step")
    source, tunnels, inject = wired(Rules(stripe_policy(), key))
    ok = tunnel_flow(tunnels, grant=grant)
    inject.requestheaders(ok)
    assert ok.response is None  # the same tunnel works before the change
    if change == "revoke":
        source.rules = Rules(stripe_policy(), key, frozenset({grant.id}))
    elif change == "rotate":
        source.rules = Rules(stripe_policy(), GrantKey(b"n" * 32))
    else:
        _, grant = key.mint(["stripe"], -1, "step")
        time.sleep(0)
    f = tunnel_flow(tunnels, grant=grant)
    inject.requestheaders(f)
    assert f.response is not None
    assert f.response.status_code == 407
    assert f.response.headers["x-egress-blocked"] == reason
    assert "authorization" not in f.request.headers


def test_query_placement_replaces_client_copies() -> None:
    from proxy.connectors import make_connector

    c = make_connector("w", patterns=["https://api.stripe.test/v1/*"], inject={"query": "appid"})
    _, tunnels, inject = wired(Policy([(c, {"secret": "s e/t"})]))
    f = tunnel_flow(tunnels)
    f.request.path = "/v1/x?appid=mine&%61ppid=again&q=1"
    inject.requestheaders(f)
    assert f.request.path == "/v1/x?q=1&appid=s%20e%2Ft"


def test_h2_body_without_content_length_is_buffered_and_framed() -> None:
    _, tunnels, inject = wired(stripe_policy())
    f = tunnel_flow(tunnels)
    f.request.http_version = "HTTP/2.0"
    f.request.headers.pop("content-length", None)
    inject.requestheaders(f)
    assert f.request.stream is False
    f.request.content = b"12345"
    f.request.headers.pop("content-length", None)
    inject.request(f)
    assert f.request.headers["content-length"] == "5"


def test_websocket_handshake_keeps_upgrade_but_not_compression() -> None:
    _, tunnels, inject = wired(stripe_policy())
    f = tunnel_flow(tunnels)
    f.request.headers["connection"] = "keep-alive, Upgrade"
    f.request.headers["upgrade"] = "websocket"
    f.request.headers["sec-websocket-extensions"] = "permessage-deflate; client_max_window_bits"
    inject.requestheaders(f)
    assert f.request.headers["connection"] == "Upgrade" and f.request.headers["upgrade"] == "websocket"
    assert "sec-websocket-extensions" not in f.request.headers

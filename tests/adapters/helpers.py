"""Real mitmproxy flow objects wired to real addons, for adapter tests."""

from __future__ import annotations

from typing import Any

from mitmproxy.test import tflow

from addons.inject import Inject
from addons.source import PolicySource
from addons.state import Tunnels
from proxy.admission import Rules
from proxy.connectors import make_connector
from proxy.context import Tunnel
from proxy.grants import Grant
from proxy.policy import Policy, Target

STRIPE = Target("api.stripe.test", 443)
SECRET = "sk_test_addon"


def stripe_policy(secret: str = SECRET) -> Policy:
    c = make_connector(
        "stripe", patterns=["https://api.stripe.test/v1/*"], inject={"header": "Authorization"}
    )
    return Policy([(c, {"secret": secret})])


def wired(rules: Rules | Policy) -> tuple[PolicySource, Tunnels, Inject]:
    source = PolicySource()
    source.rules = rules if isinstance(rules, Rules) else Rules(rules)
    tunnels = Tunnels()
    return source, tunnels, Inject(source, tunnels)


def tunnel_flow(
    tunnels: Tunnels,
    target: Target = STRIPE,
    address: str = "127.0.0.1",
    grant: Grant | None = None,
    path: str = "/v1/charges",
) -> Any:
    """A request flow inside an open tunnel to ``target``, pinned to ``address``."""
    f = tflow.tflow()
    f.request.scheme = "https"
    f.request.host = address
    f.request.port = target.port
    f.request.path = path
    f.request.headers["host"] = target.authority
    f.client_conn.sni = target.host
    f.client_conn.timestamp_tls_setup = 1.0
    tunnels.open(f.client_conn, Tunnel(target, address, grant))
    return f

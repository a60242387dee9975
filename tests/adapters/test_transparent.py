"""The transparent gate on a real ClientHello: a refused connection writes a blocked row with
its near miss, as a refused CONNECT does."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from typing import Any

import pytest
from mitmproxy import connection
from mitmproxy.addons import proxyserver
from mitmproxy.proxy import context
from mitmproxy.proxy.layers import modes
from mitmproxy.test import taddons

from addons.gate import Gate
from addons.record import Recorder
from addons.transparent import Refuse, TransparentGate
from tests.adapters.helpers import stripe_policy, wired


def client_hello(sni: str | None) -> bytes:
    """The first flight a real TLS client sends for ``sni``."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


@dataclass
class FakeNextLayer:
    """What the gate reads of mitmproxy's NextLayer: the context, the client's bytes, the layer."""

    context: context.Context
    data: bytes
    layer: Any = None

    def data_client(self) -> bytes:
        return self.data


def intercepted(data: bytes) -> FakeNextLayer:
    client = connection.Client(
        peername=("10.0.0.2", 40000), sockname=("203.0.113.5", 443), timestamp_start=0.0
    )
    ctx = context.Context(client, None)  # type: ignore[arg-type]
    ctx.layers = [modes.TransparentProxy(ctx)]
    return FakeNextLayer(ctx, data)


def decide(data: bytes, scope: list[str], secret: str = "sk_test_addon") -> tuple[FakeNextLayer, Recorder]:
    source, tunnels, _ = wired(stripe_policy(secret))
    recorder = Recorder(tunnels=tunnels)
    plain = Gate(source, tunnels)
    gate = TransparentGate(plain, recorder.connection_refused)
    with taddons.context(proxyserver.Proxyserver(), plain, gate) as tctx:
        tctx.configure(
            plain, egress_allow_network=["203.0.113.0/24"], egress_resolve=["api.stripe.test=203.0.113.7"]
        )
        tctx.configure(gate, egress_transparent_connectors=scope)
        nl = intercepted(data)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(gate.next_layer(nl))  # type: ignore[arg-type]
        finally:
            loop.close()
    return nl, recorder


def test_an_uncovered_sni_is_refused_with_a_blocked_row_and_its_near_miss() -> None:
    nl, recorder = decide(client_hello("v2.api.stripe.test"), ["stripe"])
    assert isinstance(nl.layer, Refuse)
    (row,) = recorder.tally.drain().events
    assert (row.kind, row.method, row.host, row.path) == ("blocked", "TLS", "v2.api.stripe.test", "")
    assert row.reason == "no-connector" and row.workspace == "default"
    assert row.near_miss is not None
    assert (row.near_miss.connector, row.near_miss.differs, row.near_miss.depth) == ("stripe", "host", -1)


def test_a_scope_without_the_connector_says_not_granted() -> None:
    source_scope = ["other"]
    nl, recorder = decide(client_hello("api.stripe.test"), source_scope)
    assert isinstance(nl.layer, Refuse)
    (row,) = recorder.tally.drain().events
    assert row.reason == "not-granted" and row.near_miss is not None
    assert (row.near_miss.connector, row.near_miss.differs) == ("stripe", "not-granted")


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "plain-http"), (client_hello(None), "bad-host")],
    ids=["plain-http", "no-sni"],
)
def test_refusals_without_a_name_are_logged_too(data: bytes, reason: str) -> None:
    nl, recorder = decide(data, ["stripe"])
    assert isinstance(nl.layer, Refuse)
    (row,) = recorder.tally.drain().events
    assert (row.reason, row.host, row.near_miss) == (reason, "203.0.113.5", None)


def test_a_covered_sni_writes_no_row() -> None:
    nl, recorder = decide(client_hello("api.stripe.test"), ["stripe"])
    assert not isinstance(nl.layer, Refuse)
    assert not recorder.tally.drain().events


def test_a_secret_in_the_sni_never_reaches_the_log() -> None:
    secret = "dnssafesecretvalue0123"
    nl, recorder = decide(client_hello(f"{secret}.evil.test"), ["stripe"], secret)
    assert isinstance(nl.layer, Refuse)
    (row,) = recorder.tally.drain().events
    assert secret not in row.host and row.host.endswith(".evil.test")

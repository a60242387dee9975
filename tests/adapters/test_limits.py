"""The limits addon: connections per client address, and the guard tunables it sets."""

from __future__ import annotations

import pytest
from mitmproxy.test import taddons, tflow

from addons import patches
from addons.limits import Limits


def test_connections_past_the_cap_are_refused_and_slots_come_back() -> None:
    limits = Limits()
    with taddons.context(limits) as tctx:
        tctx.configure(
            limits, egress_max_client_connections=2, egress_handshake_timeout=3.0, egress_h2_max_resets=7
        )
        assert (patches.LIMITS.handshake_timeout, patches.LIMITS.h2_resets) == (3.0, 7)
        clients = [tflow.tclient_conn() for _ in range(3)]
        for c in clients:
            c.peername = ("127.0.0.9", 40000)
            limits.client_connected(c)
        assert [c.error for c in clients[:2]] == [None, None]
        assert clients[2].error
        other = tflow.tclient_conn()
        other.peername = ("127.0.0.10", 40000)
        limits.client_connected(other)
        assert other.error is None  # the cap is per address
        limits.client_disconnected(clients[2])  # a refused one frees nothing
        limits.client_disconnected(clients[0])
        again = tflow.tclient_conn()
        again.peername = ("127.0.0.9", 40001)
        limits.client_connected(again)
        assert again.error is None
        tctx.configure(limits, egress_handshake_timeout=10.0, egress_h2_max_resets=100)


def test_requests_in_flight_per_connector_are_capped() -> None:
    from tests.adapters.helpers import stripe_policy, tunnel_flow, wired

    limits = Limits()
    _, tunnels, inject = wired(stripe_policy())
    with taddons.context(limits) as tctx:
        tctx.configure(limits, egress_max_connector_requests=2, egress_max_client_share=1.0)
        flows = [tunnel_flow(tunnels) for _ in range(3)]
        for f in flows:
            inject.requestheaders(f)
            limits.requestheaders(f)
        assert [f.response for f in flows[:2]] == [None, None]
        third = flows[2].response
        assert third is not None and third.status_code == 503
        assert third.headers["x-egress-blocked"] == "over-capacity"
        limits.response(flows[0])  # one finishes: a slot comes back
        again = tunnel_flow(tunnels)
        inject.requestheaders(again)
        limits.requestheaders(again)
        assert again.response is None
        assert limits.inflight == {"stripe": 2}
        tctx.configure(limits, egress_max_client_share=0.5)


def test_one_client_holds_at_most_its_share_of_a_connector() -> None:
    """With 4 in flight allowed and a share of 0.5, one address gets 2; another still gets
    in; a slot comes back when a request ends, or when its connection goes without one."""
    from mitmproxy import exceptions

    from tests.adapters.helpers import stripe_policy, tunnel_flow, wired

    limits = Limits()
    _, tunnels, inject = wired(stripe_policy())

    def admit(address: str) -> object:
        f = tunnel_flow(tunnels)
        f.client_conn.peername = (address, 40000)
        inject.requestheaders(f)
        limits.requestheaders(f)
        return f

    with taddons.context(limits) as tctx:
        tctx.configure(limits, egress_max_connector_requests=4, egress_max_client_share=0.5)
        a = [admit("10.0.0.1") for _ in range(3)]
        assert [f.response for f in a[:2]] == [None, None]  # type: ignore[attr-defined]
        refused = a[2].response  # type: ignore[attr-defined]
        assert refused is not None and refused.status_code == 503
        assert refused.headers["x-egress-blocked"] == "over-capacity"
        assert b"share (2)" in refused.content
        b = [admit("10.0.0.2") for _ in range(2)]
        assert [f.response for f in b] == [None, None]  # type: ignore[attr-defined]
        limits.response(a[0])
        assert admit("10.0.0.1").response is None  # type: ignore[attr-defined]
        limits.client_disconnected(b[0].client_conn)  # type: ignore[attr-defined]
        assert limits.by_client == {("stripe", "10.0.0.1"): 2, ("stripe", "10.0.0.2"): 1}
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(limits, egress_max_client_share=1.5)


def test_addons_run_in_the_order_a_request_walks() -> None:
    """Limits, scrub and record read the route inject sets, so they must come after it."""
    from addons.egress import make_addons

    names = [type(a).__name__ for a in make_addons()]
    assert names.index("Gate") < names.index("TransparentGate") < names.index("Inject")
    assert names.index("Inject") < names.index("OAuth")
    assert names.index("OAuth") < min(names.index(n) for n in ("Limits", "Scrub", "Recorder"))


def test_deadlines_are_set_and_a_late_body_is_a_refusal() -> None:
    """The body and upstream deadlines reach the guards; a flow the guard ended for a late
    body frees its slot and is recorded as refused (bad-request), not as the connector's error."""
    from mitmproxy import flow as mflow

    from addons.state import peek
    from tests.adapters.helpers import stripe_policy, tunnel_flow, wired

    limits = Limits()
    _, tunnels, inject = wired(stripe_policy())
    with taddons.context(limits) as tctx:
        tctx.configure(limits, egress_request_body_timeout=7.0, egress_upstream_timeout=9.0)
        assert (patches.LIMITS.request_body_timeout, patches.LIMITS.upstream_timeout) == (7.0, 9.0)
        late, silent = tunnel_flow(tunnels), tunnel_flow(tunnels)
        for f in (late, silent):
            inject.requestheaders(f)
            limits.requestheaders(f)
        late.error = mflow.Error(patches.BODY_TIMEOUT)
        silent.error = mflow.Error(patches.UPSTREAM_TIMEOUT)
        limits.error(late)
        limits.error(silent)
        assert limits.inflight == {}
        late_state, silent_state = peek(late), peek(silent)
        assert late_state is not None and late_state.blocked is not None
        assert str(late_state.blocked.reason) == "bad-request"
        assert silent_state is not None and silent_state.blocked is None  # the connector's error
        tctx.configure(limits, egress_request_body_timeout=60.0, egress_upstream_timeout=600.0)

"""Blocked answers are built from the reason table; hooks that raise refuse their flow."""

from __future__ import annotations

import asyncio
import json

from mitmproxy.test import taddons, tflow

from addons.gate import Gate
from addons.respond import block, fail_closed
from proxy.policy import Block
from proxy.reasons import REASONS, Reason
from tests.adapters.helpers import stripe_policy, tunnel_flow, wired


def test_block_answers_with_the_reason_table_status_and_json_body() -> None:
    for reason, info in REASONS.items():
        f = tflow.tflow()
        f.request.stream = True
        block(f, Block(reason, "why"))
        assert f.response is not None
        assert f.response.status_code == info.status
        assert f.response.headers["x-egress-blocked"] == str(reason)
        assert json.loads(f.response.content or b"") == {
            "error": "blocked", "reason": str(reason), "detail": "why", "request_id": f.id,
        }  # fmt: skip
        assert ("proxy-authenticate" in f.response.headers) == (info.status == 407)
        assert f.request.stream is False  # a response on a streaming request hangs the client
        assert f.metadata["egress"].blocked == Block(reason, "why")


def test_status_override() -> None:
    f = tflow.tflow()
    block(f, Block(Reason.BAD_REQUEST, "head too large", 431))
    assert f.response is not None and f.response.status_code == 431


class Hooks:
    @fail_closed
    def requestheaders(self, flow: tflow.HTTPFlow) -> None:
        raise KeyError("x")

    @fail_closed
    async def http_connect(self, flow: tflow.HTTPFlow) -> None:
        raise KeyError("x")

    @fail_closed
    def response(self, flow: tflow.HTTPFlow) -> None:
        raise KeyError("x")


def test_sync_and_async_hooks_fail_closed() -> None:
    hooks = Hooks()
    f = tflow.tflow()
    hooks.requestheaders(f)
    assert f.response is not None and f.response.headers["x-egress-blocked"] == "internal-error"
    g = tflow.tflow()
    asyncio.run(hooks.http_connect(g))
    assert g.response is not None and g.response.status_code == 502


def test_response_side_failure_kills_the_flow() -> None:
    f = tflow.tflow(resp=True)
    Hooks().response(f)
    assert f.error is not None


def test_near_miss_in_the_body_follows_explain_blocks() -> None:
    source, tunnels, inject = wired(stripe_policy())
    with taddons.context(inject, Gate(source, tunnels)) as tctx:
        tctx.options.egress_explain_blocks = True
        f = tunnel_flow(tunnels)
        f.request.path = "/v2/charges"
        inject.requestheaders(f)
        assert f.response is not None and f.response.status_code == 403
        doc = json.loads(f.response.content or b"")
        assert doc["near_miss"] == {
            "connector": "stripe", "differs": "path", "detail": "pattern wants /v1/*, request has /v2/...",
        }  # fmt: skip
        assert "sk_test" not in f.response.text
        tctx.options.egress_explain_blocks = False
        g = tunnel_flow(tunnels)
        g.request.path = "/v2/charges"
        inject.requestheaders(g)
        assert g.response is not None and "near_miss" not in json.loads(g.response.content or b"")
        assert g.metadata["egress"].blocked.near_miss is not None  # still logged


def test_an_unidentified_client_learns_no_near_miss_when_grants_are_required() -> None:
    source, tunnels, inject = wired(stripe_policy())
    with taddons.context(inject, Gate(source, tunnels)) as tctx:
        tctx.options.egress_explain_blocks = True
        for required, told in ((False, True), (True, False)):
            tctx.options.egress_require_grant = required
            f = tflow.tflow()  # a plain http:// request: no tunnel, no grant checked
            f.request.host, f.request.port, f.request.path = "api.stripe.test", 80, "/v1/charges"
            inject.requestheaders(f)
            assert f.response is not None
            doc = json.loads(f.response.content or b"")
            assert doc["reason"] == "plain-http"
            assert ("near_miss" in doc) == told
            if told:
                assert doc["near_miss"]["differs"] == "scheme"

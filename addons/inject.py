"""Check each request against its tunnel, inject the secret, strip cookies.

Everything happens in ``requestheaders`` so a streamed body still carries the
secret and a blocked request never sends a byte upstream.
"""

from __future__ import annotations

import time

from mitmproxy import http

from addons.gate import Tunnel
from addons.respond import block, fail_closed
from addons.source import PolicySource
from proxy.policy import Block, Reason, check_tunnel_request, with_query_item

# Never forwarded: the sandbox's cookies and its proxy credentials.
STRIP_REQUEST = ("cookie", "proxy-authorization", "proxy-connection")
EXPIRED = Block(Reason.EXPIRED_GRANT, "the grant of this tunnel expired or was revoked")
NOT_TUNNELLED = Block(
    Reason.PLAIN_HTTP, "only https:// through CONNECT is proxied (set HTTPS_PROXY, use https)"
)


class Inject:
    def __init__(self, source: PolicySource, tunnels: dict[str, Tunnel]) -> None:
        self.source = source
        self.tunnels = tunnels

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        tunnel = self.tunnels.get(flow.client_conn.id)
        if tunnel is None:
            block(flow, NOT_TUNNELLED)
            return
        target = tunnel.target
        flow.metadata["egress.host"] = target.authority
        problem = check_tunnel_request(
            target,
            tls=flow.client_conn.tls_established and req.scheme == "https",
            sni=flow.client_conn.sni,
            authority=req.authority,
            host_headers=req.headers.get_all("host"),
            port=req.port,
        )
        if problem:
            block(flow, problem)
            return
        grant = tunnel.grant
        if grant is not None:
            flow.metadata["egress.grant"] = grant.label
            if grant.expires_at <= time.time() or grant.id in self.source.revoked:
                block(flow, EXPIRED)
                return
        decision = self.source.policy.route(target, req.path.partition("?")[0], tunnel.allowed)
        if isinstance(decision, Block):
            block(flow, decision)
            return
        headers = req.headers
        for name in STRIP_REQUEST:
            if name in headers:
                del headers[name]
        if req.is_http2 or req.is_http3:
            req.authority = target.authority
            headers.pop("host", None)
        else:
            req.authority = ""
            headers["host"] = target.authority
        if decision.header:
            assert decision.header_value is not None
            headers[decision.header] = decision.header_value
        else:
            assert decision.query and decision.query_item
            req.path = with_query_item(req.path, decision.query, decision.query_item)
        flow.metadata["egress.connector"] = decision.connector
        req.stream = True

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        assert resp is not None
        if "egress.blocked" in flow.metadata:
            return  # our own answer: nothing to strip or stream
        if "set-cookie" in resp.headers:
            del resp.headers["set-cookie"]
        if resp.status_code != 101:
            resp.stream = True

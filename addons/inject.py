"""Check each request against its tunnel, inject the secret, strip cookies.

Everything happens in ``requestheaders`` so a streamed body still carries the
secret and a blocked request never sends a byte upstream.
"""

from __future__ import annotations

import time

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from addons.gate import Tunnel
from addons.respond import block, fail_closed
from addons.source import PolicySource
from proxy.policy import Block, Reason, check_tunnel_request, with_query_item
from proxy.scrub import StreamScrubber, scrub_text

# Never forwarded: the sandbox's cookies, its proxy credentials, hop-by-hop headers.
ALWAYS_STRIP = frozenset({"cookie", "proxy-authorization", "proxy-connection", "keep-alive", "te", "trailer"})
OUTSIDE_TUNNEL = Block(Reason.HOST_MISMATCH, "request is not inside the CONNECT tunnel")
EXPIRED = Block(Reason.EXPIRED_GRANT, "the grant of this tunnel expired or was revoked")
NOT_TUNNELLED = Block(
    Reason.PLAIN_HTTP, "only https:// through CONNECT is proxied (set HTTPS_PROXY, use https)"
)


class Inject:
    def __init__(self, source: PolicySource, tunnels: dict[str, Tunnel]) -> None:
        self.source = source
        self.tunnels = tunnels
        self.scrub = True

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "egress_scrub_responses", bool, True, "Mask an injected secret echoed back in responses."
        )

    def configure(self, updated: set[str]) -> None:
        if "egress_scrub_responses" in updated:
            self.scrub = ctx.options.egress_scrub_responses

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        tunnel = self.tunnels.get(flow.client_conn.id)
        if tunnel is None:
            block(flow, NOT_TUNNELLED)
            return
        target = tunnel.target
        flow.metadata["egress.host"] = target.authority
        if req.host != tunnel.address or req.port != target.port:
            block(flow, OUTSIDE_TUNNEL)  # e.g. an HTTP/2 stream beside a CONNECT stream
            return
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
        strip_hop_by_hop(headers)
        if self.scrub and decision.scrub:
            headers["accept-encoding"] = "identity"  # so an echoed secret is visible to scrub
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
        flow.metadata["egress.route"] = decision
        # An HTTP/2 body with no content-length would reach an HTTP/1.1 upstream
        # unframed (a smuggled second request): buffer it and frame it in request().
        req.stream = not ((req.is_http2 or req.is_http3) and "content-length" not in headers)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        if req.stream or flow.response or "egress.connector" not in flow.metadata:
            return
        if req.raw_content:
            req.headers["content-length"] = str(len(req.raw_content))
        if req.trailers:
            block(flow, Block(Reason.BAD_REQUEST, "request trailers are not forwarded", 400))

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        assert resp is not None
        if "egress.blocked" in flow.metadata:
            return  # our own answer: nothing to strip or stream
        if "set-cookie" in resp.headers:
            del resp.headers["set-cookie"]
        route = flow.metadata.get("egress.route")
        pairs = route.scrub if self.scrub and route is not None else ()
        if pairs:
            echoed = {
                name for name, value in resp.headers.items(multi=True) if scrub_text(value, pairs) != value
            }
            for name in echoed:
                resp.headers.set_all(name, [scrub_text(v, pairs) for v in resp.headers.get_all(name)])
        if resp.status_code != 101:
            resp.stream = StreamScrubber(pairs) if pairs else True


def strip_hop_by_hop(headers: http.Headers) -> None:
    """Drop what must not cross the proxy: cookies, proxy credentials, hop-by-hop.

    Headers the client *names* in ``Connection`` are not deleted: mitmproxy has
    already framed the body by Content-Length/Transfer-Encoding, and deleting
    either (``Connection: content-length``) would forward an unframed body, a
    smuggled request. The Connection header itself goes, so the upstream drops
    nothing either. A WebSocket handshake keeps exactly ``Connection: Upgrade``.
    """
    for name in ALWAYS_STRIP:
        if name in headers:
            del headers[name]
    if "connection" in headers or "upgrade" in headers:
        tokens = {t.strip().lower() for v in headers.get_all("connection") for t in v.split(",")}
        if "upgrade" in tokens and headers.get("upgrade", "").lower() == "websocket":
            headers["connection"] = "Upgrade"
            headers["upgrade"] = "websocket"
        else:
            headers.pop("connection", None)
            headers.pop("upgrade", None)

"""Admit each request in its tunnel, strip what must not cross, inject the credential.

Everything happens in ``requestheaders`` so a streamed body still carries the
credential and a blocked request never sends a byte upstream. The decision
itself is the core's (``proxy.admission.admit``); this adapter reads the
request's facts off the flow and applies the result.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from addons import patches
from addons.decoding import Unscrubbable, decode_whole
from addons.respond import block, fail_closed, where_failed
from addons.source import PolicySource
from addons.state import Tunnels, peek, state
from proxy.admission import RequestFacts, admit
from proxy.credentials.query import with_query_item
from proxy.credentials.signing import Unsignable
from proxy.policy import Block, header_key
from proxy.reasons import Reason, help_of
from proxy.scrub import Guard, SecretFound, StreamGuard

# Never forwarded: the sandbox's cookies, its proxy credentials, hop-by-hop headers
# (compared as ``header_key`` folds them: lowercase, "_" as "-").
ALWAYS_STRIP = frozenset(
    {"cookie", "cookie2", "proxy-authorization", "proxy-connection", "keep-alive", "te", "trailer"}
)
TRAILERS = Block(Reason.BAD_REQUEST, "request trailers are not forwarded")
EXFILTRATION = Block(Reason.SECRET_EXFILTRATION, help_of(Reason.SECRET_EXFILTRATION))
STREAM_EXFILTRATION = Block(
    Reason.SECRET_EXFILTRATION,
    "the streamed request body carries a credential value this proxy holds; cut off",
)
WEBSOCKET_EXFILTRATION = Block(
    Reason.SECRET_EXFILTRATION,
    "a WebSocket message from the client carries a credential value this proxy holds; closed",
)
BODY_WINDOW = 64 * 1024  # bodies announced up to this size are read whole and scanned before sending
DECODED_LIMIT = 1 << 20  # a compressed body in the window is decoded for the scan up to this size
UNCHECKABLE = Block(
    Reason.BAD_REQUEST,
    f"a compressed request body is forwarded only with a Content-Length of at most {BODY_WINDOW // 1024} KiB "
    f"(it is checked for secrets decoded, up to {DECODED_LIMIT // 1024} KiB); send it uncompressed",
    override=415,
)
logger = logging.getLogger(__name__)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class Inject:
    def __init__(self, source: PolicySource, tunnels: Tunnels) -> None:
        self.source = source
        self.tunnels = tunnels
        self.scan_bodies = True

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "egress_scan_bodies", bool, True,
            "Scan request bodies and client WebSocket messages for secrets the proxy holds "
            "(request lines, headers and CONNECT hosts are always scanned: the logs keep them).",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        if "egress_scan_bodies" in updated:
            self.scan_bodies = ctx.options.egress_scan_bodies

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        s = state(flow)
        tunnel = s.tunnel = self.tunnels.get(flow.client_conn)
        if tunnel is not None:
            s.host = tunnel.target.authority
            s.grant_label = tunnel.grant.label if tunnel.grant else None
        facts = RequestFacts(
            tls=flow.client_conn.tls_established and req.scheme == "https",
            sni=flow.client_conn.sni,
            host=req.host,
            port=req.port,
            authority=req.authority,
            host_headers=req.headers.get_all("host"),
            path=req.path.partition("?")[0],
            method=req.data.method,
            target=req.data.path,
            fields=req.headers.fields,
        )
        guard = self.source.guard
        if guard:
            found = head_secret(guard, req)
            if found is not None:
                refuse_exfiltration(flow, guard, *found)
                return
        decision = admit(tunnel, facts, self.source.rules, time.time())
        if isinstance(decision, Block):
            block(flow, decision)
            return
        assert tunnel is not None
        headers = req.headers
        strip_hop_by_hop(headers, ALWAYS_STRIP | decision.strip)
        if req.is_http2 or req.is_http3:
            req.authority = tunnel.target.authority
            headers.pop("host", None)
        else:
            req.authority = ""
            headers["host"] = tunnel.target.authority
        rendered = decision.rendered
        for name, value in rendered.headers:
            headers[name] = value
        for name, item in rendered.query:
            req.path = with_query_item(req.path, name, item)
        if rendered.signer is not None:
            # Signed last: the signature covers the final Host, path and headers.
            signed = rendered.signer.sign(
                req.method,
                tunnel.target.authority,
                req.path,
                list(headers.items(multi=True)),
                time.time(),
                payload_sha256=EMPTY_SHA256 if _no_body(req) else None,
            )
            if isinstance(signed, Unsignable):
                block(flow, Block(Reason.BAD_REQUEST, signed.detail))
                return
            for name in [n for n in headers if header_key(n) in signed.remove]:
                if name in headers:
                    del headers[name]
            for name, value in signed.add:
                headers.add(name, value)
        s.route = decision
        s.note("admit", decision.connector)
        # An HTTP/2 body with no content-length would reach an HTTP/1.1 upstream
        # unframed (a smuggled second request): buffer it and frame it in request().
        req.stream = not ((req.is_http2 or req.is_http3) and "content-length" not in headers)
        if guard and self.scan_bodies and not _no_body(req):
            if _announced(headers) <= BODY_WINDOW:
                req.stream = False  # read whole and scanned in request(): a match sends nothing
            elif content_codings(headers):
                block(flow, UNCHECKABLE)  # could not be decoded whole before it leaves
            elif req.stream:
                req.stream = guarded_stream(flow, guard)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        s = peek(flow)
        if req.stream or flow.response or s is None or s.route is None:
            return
        guard = self.source.guard
        if guard and self.scan_bodies and req.raw_content:
            owner = guard.find(req.raw_content)
            codings = content_codings(req.headers)
            if owner is None and codings:
                try:
                    owner = guard.find(decode_whole(req.raw_content, codings, DECODED_LIMIT))
                except Unscrubbable as e:
                    block(flow, replace(UNCHECKABLE, detail=f"{e}; {UNCHECKABLE.detail}"))
                    return
            if owner is not None:
                refuse_exfiltration(flow, guard, owner, "body")
                return
        if req.raw_content:
            req.headers["content-length"] = str(len(req.raw_content))
        if req.trailers:
            block(flow, TRAILERS)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """A client's WebSocket message carrying a secret is dropped and the connection closed.

        Each message is scanned with the tail of the previous one, so a secret split across
        two messages never arrives whole: the second one is not relayed.
        """
        try:
            assert flow.websocket is not None
            message = flow.websocket.messages[-1]
            guard = self.source.guard
            if not message.from_client or not guard or not self.scan_bodies:
                return
            s = state(flow)
            if s.blocked is not None:  # closing already: nothing more goes upstream
                message.drop()
                return
            data = s.ws_carry + message.content
            owner = guard.find(data)
            if owner is None:
                s.ws_carry = data[-guard.keep :] if guard.keep else b""
                return
            message.drop()
            message.content = b""
            s.ws_carry = b""
            conceal(flow, guard)
            s.blocked = WEBSOCKET_EXFILTRATION
            s.note("blocked", str(Reason.SECRET_EXFILTRATION))
            logger.warning(
                "secret-exfiltration: a secret of connector %s in a WebSocket message from the "
                "client; closed %s",
                owner,
                flow.id,
            )
            patches.close_client(flow.client_conn)
        except Exception as e:
            logger.error("websocket check failed (%s); message dropped", where_failed(e))
            if flow.websocket is not None and flow.websocket.messages:
                flow.websocket.messages[-1].drop()
            patches.close_client(flow.client_conn)


def head_secret(guard: Guard, req: http.Request) -> tuple[str, str] | None:
    """(connector, where) if the client's request line or headers carry a secret.

    Read before anything is injected, so the proxy's own credential never counts.
    """
    data = req.data
    fields = data.headers.fields
    blob = b"\n".join((data.method + b" " + data.path, data.authority, *(b"%s: %s" % f for f in fields)))
    owner = guard.find(blob)
    if owner is None:
        return None
    line = guard.find(data.method + b" " + data.path + b"\n" + data.authority) is not None
    return owner, "request line" if line else "a header"


def refuse_exfiltration(flow: http.HTTPFlow, guard: Guard, owner: str, where: str) -> None:
    """403 ``secret-exfiltration``; the flow is starred out first, so no log shows the value."""
    conceal(flow, guard)
    logger.warning(
        "secret-exfiltration: a secret of connector %s in the %s; refused %s", owner, where, flow.id
    )
    block(flow, EXFILTRATION)


def conceal(flow: http.HTTPFlow, guard: Guard) -> None:
    """Star out every guarded spelling in what the logs read off this flow."""
    req = flow.request
    req.path = guard.text(req.path)
    req.headers.fields = tuple((guard.mask(n), guard.mask(v)) for n, v in req.headers.fields)
    if req.data.authority:
        req.data.authority = guard.mask(req.data.authority)
    s = state(flow)
    if s.host:
        s.host = guard.text(s.host)


def guarded_stream(flow: http.HTTPFlow, guard: Guard) -> Callable[[bytes], bytes | list[bytes]]:
    """A streamed body, scanned before each chunk leaves (with a held-back overlap).

    On a match the flow is killed (``addons.patches``): the head and the chunks
    before it have already gone upstream, the chunk with the secret has not, and
    the upstream sees its connection close mid-body.
    """
    scan = StreamGuard(guard)

    def stream(chunk: bytes) -> bytes | list[bytes]:
        try:
            out = scan(chunk)
        except SecretFound as e:
            conceal(flow, guard)
            s = state(flow)
            s.blocked = STREAM_EXFILTRATION
            s.note("blocked", str(Reason.SECRET_EXFILTRATION))
            logger.warning(
                "secret-exfiltration: a secret of connector %s in the streamed body; killed %s",
                e.owner,
                flow.id,
            )
            raise
        return out if out else []  # never b"": an empty chunk ends a chunked body

    return stream


# Codings that hide nothing from a scan of the bytes as sent: none, and AWS's chunk framing
# (signed S3 uploads: the data itself stays as it is, between chunk headers).
NOT_COMPRESSED = frozenset({"identity", "aws-chunked"})


def content_codings(headers: http.Headers) -> list[str]:
    """The body's content codings in the order applied, those in ``NOT_COMPRESSED`` left out."""
    codings = (c.strip().lower() for v in headers.get_all("content-encoding") for c in v.split(","))
    return [c for c in codings if c and c not in NOT_COMPRESSED]


def _announced(headers: http.Headers) -> int:
    """The body length the head announces; unbounded when it does not say (chunked, HTTP/2)."""
    try:
        return int(headers.get("content-length", ""))
    except ValueError:
        return BODY_WINDOW + 1


def _no_body(req: http.Request) -> bool:
    """An HTTP/1 request head that announces no body (its hash is known before it streams)."""
    if req.is_http2 or req.is_http3:
        return False
    return "transfer-encoding" not in req.headers and req.headers.get("content-length", "0") == "0"


def strip_hop_by_hop(headers: http.Headers, strip: frozenset[str] = ALWAYS_STRIP) -> None:
    """Drop what must not cross the proxy: cookies, proxy credentials, hop-by-hop.

    Headers the client *names* in ``Connection`` are not deleted: mitmproxy has
    already framed the body by Content-Length/Transfer-Encoding, and deleting
    either (``Connection: content-length``) would forward an unframed body, a
    smuggled request. The Connection header itself goes, so the upstream drops
    nothing either. A WebSocket handshake keeps exactly ``Connection: Upgrade``.
    """
    for name in [n for n in headers if header_key(n) in strip]:
        if name in headers:
            del headers[name]
    if "connection" in headers or "upgrade" in headers:
        tokens = {t.strip().lower() for v in headers.get_all("connection") for t in v.split(",")}
        if "upgrade" in tokens and headers.get("upgrade", "").lower() == "websocket":
            headers["connection"] = "Upgrade"
            headers["upgrade"] = "websocket"
            # No permessage-deflate: a compressed message could neither be scrubbed
            # cheaply nor bounded (one 1 MiB message inflated to gigabytes).
            headers.pop("sec-websocket-extensions", None)
        else:
            headers.pop("connection", None)
            headers.pop("upgrade", None)

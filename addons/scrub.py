"""The return path: everything an upstream sends is cleaned before the sandbox sees it.

One place covers every channel: the status line (the reason phrase is
replaced by the standard one), header names and values, trailers (scrubbed for
HTTP/2 clients, dropped for HTTP/1 ones), the body (decompressed when the
upstream compressed it anyway, since a compressed echo cannot be masked) and
WebSocket messages. ``Set-Cookie`` and ``Set-Cookie2`` go. What cannot be
scrubbed (an unknown content or transfer coding) is refused: the flow is
killed. The response stream is composed here, once, with the byte count the
access log reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader
from mitmproxy.net.http import status_codes

from addons import patches
from addons.decoding import Unscrubbable, step_for
from addons.respond import fail_closed, where_failed
from addons.state import peek
from proxy.context import FlowState
from proxy.scrub import Needles, StreamScrubber

logger = logging.getLogger(__name__)
COOKIES = ("set-cookie", "set-cookie2")
Transform = Callable[[bytes], bytes]


class Scrub:
    def __init__(self) -> None:
        self.enabled = True

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "egress_scrub_responses", bool, True, "Mask an injected secret echoed back in responses."
        )

    def configure(self, updated: set[str]) -> None:
        if "egress_scrub_responses" in updated:
            self.enabled = ctx.options.egress_scrub_responses

    def _needles(self, s: FlowState | None) -> Needles | None:
        if not self.enabled or s is None or s.route is None or not s.route.scrub:
            return None
        return s.route.scrub

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self._needles(peek(flow)) is not None:
            flow.request.headers["accept-encoding"] = "identity"  # so an echoed secret is visible

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        s = peek(flow)
        if resp is None or (s is not None and s.blocked is not None):
            return  # our own answer: nothing to strip or stream
        for name in COOKIES:
            resp.headers.pop(name, None)
        resp.reason = status_codes.RESPONSES.get(resp.status_code, "")
        if s is None:
            return
        needles = self._needles(s)
        if needles is not None:
            resp.headers.fields = mask_fields(resp.headers.fields, needles)
        if resp.status_code == 101:
            return
        transform: Transform | None = None
        if needles is not None:
            try:
                decode = decoder(resp.headers)
            except Unscrubbable as e:
                logger.warning("killed %s: %s", flow.id, e)
                flow.kill()
                return
            transform = scrubbing(StreamScrubber(needles), decode)
        resp.stream = counted(s, transform)

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None or resp.trailers is None:
            return
        s = peek(flow)
        if s is not None and s.blocked is not None:
            return
        if not flow.request.is_http2:
            resp.trailers = None  # an HTTP/1 client did not ask for them (TE: trailers is stripped)
            return
        for name in COOKIES:
            resp.trailers.pop(name, None)
        needles = self._needles(s)
        if needles is not None:
            resp.trailers.fields = mask_fields(resp.trailers.fields, needles)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        try:
            assert flow.websocket is not None
            message = flow.websocket.messages[-1]
            needles = self._needles(peek(flow))
            if needles is not None and not message.from_client:
                message.content = needles.mask(message.content)
            del flow.websocket.messages[:-1]  # relayed already: keeping them grows without bound
        except Exception as e:
            # flow.kill() does nothing to a WebSocket in progress: drop the message, close.
            logger.error("websocket scrub failed (%s); message dropped, connection closed", where_failed(e))
            if flow.websocket is not None and flow.websocket.messages:
                flow.websocket.messages[-1].drop()
            patches.close_client(flow.client_conn)


def mask_fields(fields: tuple[tuple[bytes, bytes], ...], needles: Needles) -> tuple[tuple[bytes, bytes], ...]:
    """Header (or trailer) names and values with every form of a secret masked.

    One pass over all of them first: almost always nothing matches, and then
    nothing is rebuilt.
    """
    blob = b"\n".join(b"%s: %s" % field for field in fields)
    lowered = blob.lower()
    if needles.mask(blob) == blob and not any(n in lowered for n in needles.lowered):
        return fields
    return tuple((needles.mask_name(name), needles.mask(value)) for name, value in fields)


def decoder(headers: http.Headers) -> Transform | None:
    """A streaming decoder for the body's codings; None if identity; Unscrubbable if unknown.

    The decoded body goes to the client as identity: the coding headers and the
    now wrong Content-Length are removed.
    """
    te = [t.strip().lower() for t in headers.get("transfer-encoding", "").split(",") if t.strip()]
    if any(t != "chunked" for t in te):
        raise Unscrubbable(f"transfer coding {', '.join(te)} cannot be scrubbed")
    codings = [c.strip().lower() for c in headers.get("content-encoding", "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    steps: list[Transform] = []
    for coding in reversed(codings):
        step = step_for(coding)
        if step is None:
            raise Unscrubbable(f"content coding {coding} cannot be scrubbed")
        steps.append(step)
    headers.pop("content-encoding", None)
    headers.pop("content-length", None)

    def decode(chunk: bytes) -> bytes:
        """Decoded bytes of ``chunk``; b"" flushes every step in turn."""
        if chunk:
            for step in steps:
                chunk = step(chunk)
            return chunk
        data = b""
        for step in steps:
            data = (step(data) if data else b"") + step(b"")
        return data

    return decode


def scrubbing(scrubber: StreamScrubber, decode: Transform | None) -> Transform:
    """Decode (if needed), then mask; b"" flushes both."""
    if decode is None:
        return scrubber

    def transform(chunk: bytes) -> bytes:
        if chunk:
            return scrubber(decode(chunk))
        tail = decode(b"")
        return (scrubber(tail) if tail else b"") + scrubber(b"")

    return transform


def counted(s: FlowState, transform: Transform | None) -> Callable[[bytes], bytes | list[bytes]]:
    """The response stream: ``transform`` (if any), counting bytes sent to the client.

    Nothing to send is an empty list, never ``b""``: mitmproxy frames an empty
    chunk as the end of a chunked body, which would cut the response short.
    """

    def stream(chunk: bytes) -> bytes | list[bytes]:
        out = transform(chunk) if transform else chunk
        s.bytes_out += len(out)
        return out if out else []

    return stream

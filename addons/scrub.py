"""The return path: what comes back from an upstream is cleaned before the sandbox sees it.

``Set-Cookie`` goes; an injected secret echoed in headers or the body is
masked (length-preserving, across chunk boundaries). The response stream is
composed here, once, with the byte count the access log reads.
"""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from addons.respond import fail_closed
from addons.state import peek
from proxy.context import FlowState
from proxy.scrub import StreamScrubber, scrub_text


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

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        s = peek(flow)
        if self.enabled and s is not None and s.route is not None and s.route.scrub:
            flow.request.headers["accept-encoding"] = "identity"  # so an echoed secret is visible

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        s = peek(flow)
        if resp is None or (s is not None and s.blocked is not None):
            return  # our own answer: nothing to strip or stream
        if "set-cookie" in resp.headers:
            del resp.headers["set-cookie"]
        if s is None:
            return
        pairs = s.route.scrub if self.enabled and s.route is not None else ()
        if pairs:
            echoed = {
                name for name, value in resp.headers.items(multi=True) if scrub_text(value, pairs) != value
            }
            for name in echoed:
                resp.headers.set_all(name, [scrub_text(v, pairs) for v in resp.headers.get_all(name)])
        if resp.status_code != 101:
            resp.stream = counted(s, StreamScrubber(pairs) if pairs else None)


def counted(
    s: FlowState, transform: Callable[[bytes], bytes] | None
) -> Callable[[bytes], bytes | list[bytes]]:
    """The response stream: ``transform`` (if any), counting bytes sent to the client.

    Nothing to send is an empty list, never ``b""``: mitmproxy frames an empty
    chunk as the end of a chunked body, which would cut the response short.
    """

    def stream(chunk: bytes) -> bytes | list[bytes]:
        out = transform(chunk) if transform else chunk
        s.bytes_out += len(out)
        return out if out else []

    return stream

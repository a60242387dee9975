"""Bound what mitmproxy buffers before any hook can see it.

mitmproxy buffers an HTTP/1 request head without limit ("FIXME: protect
against header size DoS" in ``_http1.py``): a client could grow the proxy's
memory by sending an endless head. Heads past MAX_HEAD get 431 and a close.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1

MAX_HEAD = 64 * 1024
_BODY = b'{"error": "blocked", "reason": "bad-request", "detail": "request head over 64 KiB"}\n'
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"x-egress-blocked: bad-request\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)
_original = _http1.Http1Server.read_headers


def _bounded_read_headers(
    self: _http1.Http1Server, event: events.ConnectionEvent
) -> Generator[Any, Any, None]:
    if (
        isinstance(event, events.DataReceived)
        and len(self.buf) > MAX_HEAD
        and bytes(self.buf).find(b"\r\n\r\n", 0, MAX_HEAD + 4) < 0
    ):
        yield commands.SendData(self.conn, _TOO_LARGE)
        yield commands.CloseConnection(self.conn)
        self.buf.maybe_extract_at_most(len(self.buf))
        self.state = self.done
        return
    yield from _original(self, event)


def install() -> None:
    """Replace Http1Server.read_headers with the bounded version (idempotent)."""
    _http1.Http1Server.read_headers = _bounded_read_headers  # type: ignore[method-assign]

"""Close two gaps in mitmproxy's HTTP/1 server side, before any hook runs.

- Request heads are buffered without limit ("FIXME: protect against header
  size DoS" in ``_http1.py``): heads past MAX_HEAD get 431 and a close.
- Chunked request trailers raise NotImplementedError, which crashes the
  connection without an answer: they get 400 and a close.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1

MAX_HEAD = 64 * 1024
_original = _http1.Http1Server.read_headers
_original_body = _http1.Http1Connection.read_body


def _answer(status: bytes, detail: bytes) -> bytes:
    body = b'{"error": "blocked", "reason": "bad-request", "detail": "%s"}\n' % detail
    return (
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nx-egress-blocked: bad-request\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)
    )


_TRAILERS = _answer(b"400 Bad Request", b"request trailers are not supported")
_TOO_LARGE = _answer(b"431 Request Header Fields Too Large", b"request head over 64 KiB")


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


def _guarded_read_body(self: _http1.Http1Connection, event: events.Event) -> Generator[Any, Any, None]:
    try:
        yield from _original_body(self, event)
    except NotImplementedError:
        if not isinstance(self, _http1.Http1Server):
            raise
        yield commands.SendData(self.conn, _TRAILERS)
        yield commands.CloseConnection(self.conn)
        self.state = self.done


def install() -> None:
    """Patch mitmproxy's HTTP/1 server with the guards above (idempotent)."""
    _http1.Http1Server.read_headers = _bounded_read_headers  # type: ignore[method-assign]
    _http1.Http1Connection.read_body = _guarded_read_body  # type: ignore[method-assign]

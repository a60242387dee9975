"""Every change egress-proxy makes to mitmproxy internals, applied once, version-checked.

Guards (always, also under ``mitmdump -s``), closing gaps in mitmproxy's
HTTP/1 server side before any hook runs:

- request heads are buffered without limit ("FIXME: protect against header
  size DoS" in ``_http1.py``): heads past MAX_HEAD get 431 and a close;
- chunked request trailers raise NotImplementedError, which crashes the
  connection without an answer: they get 400 and a close.

Speedups (only in the product's own workers):

- listeners bind with SO_REUSEPORT so workers share one port;
- mitmproxy type-checks every message's fields when run without -O; the
  values come from its own parser, and the check cost 6.7 % of a worker's CPU
  in the keep-alive benchmark.

These reach into private code, so they refuse to load on a mitmproxy this
module was not verified against.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Generator
from typing import Any

from mitmproxy import http
from mitmproxy import version as mitmproxy_version
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import commands, events, mode_servers
from mitmproxy.proxy.layers.http import _http1

from proxy.reasons import Reason, blocked_answer

VERIFIED = ("12.1.", "12.2.", "12.3.")  # keep in step with pyproject.toml's mitmproxy range
MAX_HEAD = 64 * 1024
_original_read_headers = _http1.Http1Server.read_headers
_original_read_body = _http1.Http1Connection.read_body
_installed: set[str] = set()


class UnsupportedMitmproxy(RuntimeError):
    pass


def check_version(version: str = mitmproxy_version.VERSION) -> None:
    """Fail loudly on a mitmproxy whose internals these patches were not verified on."""
    if not version.startswith(VERIFIED):
        raise UnsupportedMitmproxy(
            f"egress-proxy patches mitmproxy internals verified on {', '.join(v + 'x' for v in VERIFIED)}; "
            f"mitmproxy {version} is not one of them (install a supported version)"
        )
    missing = [
        name
        for owner, name in (
            (_http1.Http1Server, "read_headers"),
            (_http1.Http1Connection, "read_body"),
            (mode_servers.AsyncioServerInstance, "listen"),
            (http.MessageData, "__post_init__"),
        )
        if not hasattr(owner, name)
    ]
    if missing:
        raise UnsupportedMitmproxy(f"mitmproxy {version} lacks {', '.join(missing)}: cannot apply guards")


def raw_answer(reason: Reason, detail: str, status: int | None = None) -> bytes:
    """A blocked answer as HTTP/1.1 bytes, for the guards that run before any flow exists."""
    code, headers, body = blocked_answer(reason, detail, uuid.uuid4().hex, status)
    lines = [f"HTTP/1.1 {code} {status_codes.RESPONSES.get(code, '')}".rstrip()]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += ["connection: close", f"content-length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def _bounded_read_headers(
    self: _http1.Http1Server, event: events.ConnectionEvent
) -> Generator[Any, Any, None]:
    if (
        isinstance(event, events.DataReceived)
        and len(self.buf) > MAX_HEAD
        and bytes(self.buf).find(b"\r\n\r\n", 0, MAX_HEAD + 4) < 0
    ):
        yield commands.SendData(self.conn, raw_answer(Reason.BAD_REQUEST, "request head over 64 KiB", 431))
        yield commands.CloseConnection(self.conn)
        self.buf.maybe_extract_at_most(len(self.buf))
        self.state = self.done
        return
    yield from _original_read_headers(self, event)


def _guarded_read_body(self: _http1.Http1Connection, event: events.Event) -> Generator[Any, Any, None]:
    try:
        yield from _original_read_body(self, event)
    except NotImplementedError:
        if not isinstance(self, _http1.Http1Server):
            raise
        yield commands.SendData(
            self.conn, raw_answer(Reason.BAD_REQUEST, "request trailers are not supported")
        )
        yield commands.CloseConnection(self.conn)
        self.state = self.done


async def _listen_reuse_port(
    self: mode_servers.RegularInstance, host: str, port: int
) -> list[asyncio.Server]:
    return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]


def _no_field_typecheck(self: http.MessageData) -> None:
    pass


def install_guards() -> None:
    """The safety guards; idempotent."""
    if "guards" in _installed:
        return
    check_version()
    _http1.Http1Server.read_headers = _bounded_read_headers  # type: ignore[method-assign]
    _http1.Http1Connection.read_body = _guarded_read_body  # type: ignore[method-assign]
    _installed.add("guards")


def install_speedups() -> None:
    """What only the product's workers run with; idempotent."""
    if "speedups" in _installed:
        return
    check_version()
    mode_servers.RegularInstance.listen = _listen_reuse_port  # type: ignore[method-assign,assignment]
    http.MessageData.__post_init__ = _no_field_typecheck  # type: ignore[method-assign]
    _installed.add("speedups")

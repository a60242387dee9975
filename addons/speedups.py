"""Changes to mitmproxy internals that the product's own runner makes.

Only `egress run` workers install these; `mitmdump -s addons/egress.py` runs
mitmproxy unchanged (apart from the safety guards in ``limits``).
"""

from __future__ import annotations

import asyncio

from mitmproxy import http
from mitmproxy.proxy import mode_servers


async def _listen_reuse_port(
    self: mode_servers.RegularInstance, host: str, port: int
) -> list[asyncio.Server]:
    """Workers share one port; mitmproxy's own listen() has no reuse_port."""
    return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]


def _no_field_typecheck(self: http.MessageData) -> None:
    """mitmproxy type-checks every message's fields when run without -O.

    The values come from mitmproxy's own parser, and the check cost 6.7 % of a
    worker's CPU in the keep-alive benchmark (bench/out/PROFILE.md).
    """


def install() -> None:
    mode_servers.RegularInstance.listen = _listen_reuse_port  # type: ignore[method-assign,assignment]
    http.MessageData.__post_init__ = _no_field_typecheck  # type: ignore[method-assign]

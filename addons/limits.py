"""Per-client and per-connection limits: what one sandbox may hold open at once.

Connections past ``egress_max_client_connections`` from one address are
closed before any protocol runs. The handshake deadline and the HTTP/2 reset
limit are enforced by guards in ``patches``; this addon sets their values.
"""

from __future__ import annotations

import logging

from mitmproxy import connection, ctx
from mitmproxy.addonmanager import Loader

from addons import patches

logger = logging.getLogger(__name__)


class Limits:
    def __init__(self) -> None:
        self.open: dict[str, int] = {}
        self._counted: set[str] = set()

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "egress_max_client_connections", int, 256, "Open connections per client address (per worker)."
        )
        loader.add_option(
            "egress_handshake_timeout",
            float,
            10.0,
            "Seconds a connection has to reach TLS inside its tunnel.",
        )
        loader.add_option(
            "egress_h2_max_resets", int, 100, "HTTP/2 stream resets a client may send in 10 s before GOAWAY."
        )

    def configure(self, updated: set[str]) -> None:
        patches.LIMITS.handshake_timeout = ctx.options.egress_handshake_timeout
        patches.LIMITS.h2_resets = ctx.options.egress_h2_max_resets

    def client_connected(self, client: connection.Client) -> None:
        address = str(client.peername[0]) if client.peername else ""
        if self.open.get(address, 0) >= ctx.options.egress_max_client_connections:
            client.error = "too many connections from this address"
            logger.warning("refused a connection from %s: over %d open", address, self.open[address])
            return
        self.open[address] = self.open.get(address, 0) + 1
        self._counted.add(client.id)

    def client_disconnected(self, client: connection.Client) -> None:
        if client.id not in self._counted:
            return
        self._counted.discard(client.id)
        address = str(client.peername[0]) if client.peername else ""
        if self.open.get(address, 0) > 1:
            self.open[address] -= 1
        else:
            self.open.pop(address, None)

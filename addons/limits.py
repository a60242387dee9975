"""Limits: what one sandbox may hold open at once, and what one connector may carry.

Connections past ``egress_max_client_connections`` from one address are
closed before any protocol runs; requests past ``egress_max_connector_requests``
in flight on one connector get 503 ``over-capacity`` (each in-flight request
holds at most one upstream connection, so this bounds those too), and so do a
client address's requests past its share (``egress_max_client_share``) of
that allowance, so one sandbox cannot hold a connector all by itself. Every
count is per worker. The
handshake deadline, the request-body and upstream-response deadlines and the
HTTP/2 reset limit are enforced by guards in ``patches``; this addon sets
their values, and records a request whose body came too late as refused.
"""

from __future__ import annotations

import logging
import math
import weakref

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from addons import patches
from addons.respond import block, fail_closed, where_failed
from addons.state import peek, state
from proxy.policy import Block
from proxy.reasons import Reason

logger = logging.getLogger(__name__)


class Limits:
    def __init__(self) -> None:
        self.open: dict[str, int] = {}
        self._counted: set[str] = set()
        self.inflight: dict[str, int] = {}
        self.by_client: dict[tuple[str, str], int] = {}  # (connector, client address) -> in flight
        self._flows: weakref.WeakKeyDictionary[http.HTTPFlow, tuple[str, str]] = weakref.WeakKeyDictionary()

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
            "egress_max_connector_requests",
            int,
            256,
            "Requests in flight per connector (per worker), then 503.",
        )
        loader.add_option(
            "egress_max_client_share",
            float,
            0.5,
            "The share of a connector's requests in flight one client address may hold (per worker).",
        )
        loader.add_option(
            "egress_request_body_timeout",
            float,
            60.0,
            "Seconds a request body may take from its head (one more per 64 KiB received), then 408.",
        )
        loader.add_option(
            "egress_upstream_timeout",
            float,
            600.0,
            "Seconds an upstream may take to start its response once the request is complete, then 504.",
        )
        loader.add_option(
            "egress_max_websocket_message",
            int,
            16 * 1024 * 1024,
            "Bytes of one WebSocket message (it is held until its last fragment), then close 1009.",
        )
        loader.add_option(
            "egress_h2_max_resets",
            int,
            100,
            "HTTP/2 stream resets per connection in 10 s, sent by the client or provoked by its frames, "
            "before GOAWAY.",
        )

    def configure(self, updated: set[str]) -> None:
        if not 0 < ctx.options.egress_max_client_share <= 1:
            raise exceptions.OptionsError("egress_max_client_share must be above 0 and at most 1")
        patches.LIMITS.handshake_timeout = ctx.options.egress_handshake_timeout
        patches.LIMITS.h2_resets = ctx.options.egress_h2_max_resets
        patches.LIMITS.request_body_timeout = ctx.options.egress_request_body_timeout
        patches.LIMITS.upstream_timeout = ctx.options.egress_upstream_timeout
        patches.LIMITS.websocket_message = ctx.options.egress_max_websocket_message

    def client_connected(self, client: connection.Client) -> None:
        address = str(client.peername[0]) if client.peername else ""
        if self.open.get(address, 0) >= ctx.options.egress_max_client_connections:
            client.error = "too many connections from this address"
            logger.warning("refused a connection from %s: over %d open", address, self.open[address])
            return
        self.open[address] = self.open.get(address, 0) + 1
        self._counted.add(client.id)

    def client_disconnected(self, client: connection.Client) -> None:
        for flow in [f for f in self._flows if f.client_conn.id == client.id]:
            self._finished(flow)  # never ended (a crashed connection): its slots come back
        if client.id not in self._counted:
            return
        self._counted.discard(client.id)
        _give(self.open, str(client.peername[0]) if client.peername else "")

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """After inject: an admitted request counts against its connector, or is refused."""
        s = peek(flow)
        if s is None or s.route is None or flow.response is not None:
            return
        name = s.route.connector
        cap = ctx.options.egress_max_connector_requests
        if self.inflight.get(name, 0) >= cap:
            block(
                flow, Block(Reason.OVER_CAPACITY, f"connector {name} is at its limit of requests in flight")
            )
            return
        key = (name, str(flow.client_conn.peername[0]) if flow.client_conn.peername else "")
        share = max(1, math.floor(cap * ctx.options.egress_max_client_share))
        if self.by_client.get(key, 0) >= share:
            detail = f"this client holds its share ({share}) of connector {name}'s requests in flight"
            block(flow, Block(Reason.OVER_CAPACITY, detail))
            return
        _take(self.inflight, name)
        _take(self.by_client, key)
        self._flows[flow] = key

    def _finished(self, flow: http.HTTPFlow) -> None:
        key = self._flows.pop(flow, None)
        if key is not None:
            _give(self.inflight, key[0])
            _give(self.by_client, key)

    response = _finished

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)
        try:
            if flow.error is None or flow.error.msg != patches.BODY_TIMEOUT or flow.response is not None:
                return
            s = state(flow)  # the client's fault, answered 408: a refusal, not the connector's error
            s.blocked = Block(Reason.BAD_REQUEST, "the request body did not arrive in time")
            s.note("blocked", str(Reason.BAD_REQUEST))
            logger.info("blocked %s: request body timed out id=%s", Reason.BAD_REQUEST, flow.id)
        except Exception as e:
            logger.error("error hook failed (%s)", where_failed(e))


def _take[K](counts: dict[K, int], key: K) -> None:
    counts[key] = counts.get(key, 0) + 1


def _give[K](counts: dict[K, int], key: K) -> None:
    if counts.get(key, 0) > 1:
        counts[key] -= 1
    else:
        counts.pop(key, None)

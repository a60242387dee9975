"""The one place addons keep per-flow and per-connection state.

Each flow carries a typed ``FlowState`` under one metadata key; tunnels are
kept per client connection in a weak table (as mitmproxy's own ``proxyauth``
does), so a closed connection's tunnel goes with it.
"""

from __future__ import annotations

import weakref

from mitmproxy import connection, http

from proxy.context import FlowState, Tunnel

KEY = "egress"


def state(flow: http.HTTPFlow) -> FlowState:
    """This flow's state, created on first use."""
    s = flow.metadata.get(KEY)
    if s is None:
        s = flow.metadata[KEY] = FlowState()
    return s


def peek(flow: http.HTTPFlow) -> FlowState | None:
    """This flow's state if a stage has made one (flows we never touched have none)."""
    return flow.metadata.get(KEY)


class Tunnels:
    """Open tunnels by client connection: written at CONNECT, read by every request in it."""

    def __init__(self) -> None:
        self._by_client: weakref.WeakKeyDictionary[connection.Client, Tunnel] = weakref.WeakKeyDictionary()

    def open(self, client: connection.Client, tunnel: Tunnel) -> None:
        self._by_client[client] = tunnel

    def get(self, client: connection.Client) -> Tunnel | None:
        return self._by_client.get(client)

    def __contains__(self, client: connection.Client) -> bool:
        return client in self._by_client

    def close(self, client: connection.Client) -> None:
        self._by_client.pop(client, None)

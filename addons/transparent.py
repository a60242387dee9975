"""The gate for intercepted connections: decide on the TLS server name, at ClientHello.

Traffic redirected to a transparent listener carries no CONNECT: the only
name is the ClientHello's SNI, and the destination address is whatever the
sandbox chose, so it is ignored. A connection that is not TLS, has no SNI, or
names a host none of the listener's connectors cover is closed before any
byte goes anywhere (or, with ``--explain-blocks``, answered inside TLS with
the 403 JSON, still dialling nothing); otherwise the name is resolved and vetted like a CONNECT
target and the tunnel pinned to that address (the gate's ``server_connect``
swaps it in). Who is asking comes from the listener (``--grant`` or
``--connector``), never from the traffic.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from mitmproxy import connection, ctx, exceptions
from mitmproxy.addonmanager import Loader
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers.tls import parse_client_hello

from addons.gate import EXPLAINED, NOWHERE, Gate
from addons.respond import where_failed
from proxy.admission import identify
from proxy.context import Tunnel
from proxy.grants import GRANT_USER, Grant
from proxy.hosts import format_authority
from proxy.policy import Block, parse_target
from proxy.reasons import Reason

logger = logging.getLogger(__name__)
NEEDS_MORE = object()


class Refuse(layer.Layer):
    """Close the client connection, sending nothing."""

    def _handle_event(self, event: events.Event) -> Generator[Any, Any, None]:
        if isinstance(event, events.Start | events.DataReceived):
            yield commands.CloseConnection(self.context.client)


Refused = Callable[[connection.Client, str, Block, Grant | None, frozenset[str] | None], None]


class TransparentGate:
    def __init__(self, gate: Gate, on_refused: Refused | None = None) -> None:
        self.gate = gate
        self.on_refused = on_refused  # writes the blocked-log row (``Recorder.connection_refused``)

    def load(self, loader: Loader) -> None:
        loader.add_option("egress_transparent_grant", str, "", "Grant token that scopes intercepted traffic.")
        loader.add_option(
            "egress_transparent_connectors", Sequence[str], [], "Connectors intercepted traffic may use."
        )

    def configure(self, updated: set[str]) -> None:
        if ctx.options.egress_transparent_grant and ctx.options.egress_transparent_connectors:
            raise exceptions.OptionsError("give a transparent listener a grant or connectors, not both")

    def _identity(self) -> tuple[Grant | None, frozenset[str] | None] | Block:
        token = ctx.options.egress_transparent_grant
        if not token:
            names = ctx.options.egress_transparent_connectors
            return None, (frozenset(names) if names else None)
        header = "Basic " + base64.b64encode(f"{GRANT_USER}:{token}".encode()).decode()
        grant = identify(header, self.gate.source.rules, required=True, now=time.time())
        return grant if isinstance(grant, Block) else (grant, None)

    async def next_layer(self, nextlayer: layer.NextLayer) -> None:
        context = nextlayer.context
        if (
            not isinstance(context.layers[0], modes.TransparentProxy)
            or context.client.tls_established
            or context.client in self.gate.tunnels
        ):
            return  # not an intercepted connection, or already decided
        port = context.client.sockname[1]
        host = format_authority(str(context.client.sockname[0]), port)  # until an SNI names one
        try:
            decision, host = await self._decide(nextlayer, host)
        except Exception as e:
            logger.error("transparent gate failed (%s); connection closed", where_failed(e))
            decision = Block(Reason.INTERNAL, "transparent gate failed")
        if decision is NEEDS_MORE:
            nextlayer.layer = None  # wait for the rest of the ClientHello
        elif isinstance(decision, Block):
            logger.info(
                "refused intercepted connection from %s: %s (%s)",
                context.client.peername,
                decision.reason,
                decision.detail,
            )
            nextlayer.layer = Refuse(context)
            self._refused(context.client, host, decision)

    def _refused(self, client: connection.Client, host: str, decision: Block) -> None:
        """The blocked-log row, with the near miss the policy found (blocked path only)."""
        if self.on_refused is None:
            return
        try:
            identity = self._identity()
            grant, scope = (None, None) if isinstance(identity, Block) else identity
            host = self.gate.source.guard.text(host)  # a secret in the SNI is never stored
            self.on_refused(client, host, decision, grant, scope)
        except Exception as e:  # the connection is refused whatever the log does
            logger.error("logging a refused intercepted connection failed (%s)", where_failed(e))

    async def _decide(self, nextlayer: layer.NextLayer, host: str) -> tuple[object, str]:
        """The decision, and the host the connection is known by (the SNI once read)."""
        data = nextlayer.data_client()
        if len(data) < 5:
            return NEEDS_MORE, host
        if not starts_like_tls_record(data):
            return Block(Reason.PLAIN_HTTP, "not TLS (plain HTTP or other bytes)"), host
        try:
            hello = parse_client_hello(data)
        except ValueError:
            return Block(Reason.BAD_REQUEST, "malformed ClientHello"), host
        if hello is None:
            return NEEDS_MORE, host
        if not hello.sni:
            return Block(Reason.BAD_HOST, "no TLS server name (SNI)"), host
        context = nextlayer.context
        port = context.client.sockname[1]
        target = parse_target(hello.sni, port)
        if isinstance(target, Block):
            return target, format_authority(hello.sni, port)
        host = target.authority
        identity = self._identity()
        if isinstance(identity, Block):
            return identity, host
        grant, scope = identity
        allowed = grant.connectors if grant else scope
        refused = self.gate.source.rules.policy.connect(target, allowed)  # with its near miss
        address = await self.gate.resolve(target) if refused is None else refused
        if isinstance(address, Block):
            if ctx.options.egress_explain_blocks and address.reason in EXPLAINED:
                # Finish TLS (a minted certificate) so the client reads our 403 JSON instead of
                # a reset; every request inside gets this block (and its blocked-log row) and
                # nothing is ever dialled.
                explained = Tunnel(target, NOWHERE, grant, scope, transparent=True, refused=address)
                self.gate.tunnels.open(context.client, explained)
                logger.info("intercepted %s refused (%s); explained inside", target.authority, address.reason)
                return None, host
            return address, host
        self.gate.tunnels.open(context.client, Tunnel(target, address, grant, scope, transparent=True))
        # Every request's destination is copied from here: pinned now, each request asks for the
        # same upstream, so one connection is reused (swapped only at server_connect, each request
        # opened another and a client connection stalled after five).
        context.server.address = (address, target.port)
        return None, host

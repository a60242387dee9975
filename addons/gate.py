"""The tunnel gate: decide at CONNECT, resolve once, pin address and SNI.

A CONNECT to a host:port no connector covers is answered 403 right there, so
nothing is intercepted and no upstream socket opens. An allowed target is
resolved once; every address must pass the SSRF guard, and the tunnel is
pinned to the checked address (no second lookup) with the upstream TLS server
name pinned to the CONNECT host (no domain fronting).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import mode_specs, server_hooks

from addons.respond import block, fail_closed, where_failed
from addons.source import PolicySource
from addons.state import Tunnels, state
from proxy.admission import identify
from proxy.context import Tunnel
from proxy.errors import ConfigError
from proxy.netguard import NetGuard
from proxy.policy import Block, Target, parse_target
from proxy.reasons import Reason, help_of

logger = logging.getLogger(__name__)

# Options that would open unfiltered tunnels or connect before we decide.
SAFE_OPTIONS = {
    "rawtcp": False,
    "connection_strategy": "lazy",
    "ignore_hosts": [],
    "allow_hosts": [],
    "tcp_hosts": [],
    "udp_hosts": [],
    "ssl_insecure": False,
    "validate_inbound_headers": True,  # refuses CL+TE, duplicate CL/TE, bad names
}
RESOLVE_TIMEOUT = 10.0
# Refusals a client is better told inside the tunnel (a 403 its SDK shows) than at CONNECT.
EXPLAINED = frozenset({Reason.NO_CONNECTOR, Reason.NOT_GRANTED, Reason.PRIVATE_ADDRESS, Reason.UNRESOLVABLE})
NOWHERE = "0.0.0.0"  # an explained tunnel's upstream: never dialled (server_connect refuses it)
ONE_TUNNEL = Block(Reason.BAD_REQUEST, "CONNECT must be the first and only request on a plain connection")


class Gate:
    def __init__(self, source: PolicySource, tunnels: Tunnels) -> None:
        self.source = source
        self.tunnels = tunnels
        self.guard = NetGuard()

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "egress_allow_network", Sequence[str], [], "Private CIDR ranges upstreams may be in."
        )
        loader.add_option("egress_resolve", Sequence[str], [], "HOST=IP pins, like curl --resolve.")
        loader.add_option("egress_require_grant", bool, False, "Refuse clients that present no grant (407).")
        loader.add_option(
            "egress_explain_blocks",
            bool,
            False,
            "Accept the CONNECT of a refused host and answer every request inside with the 403 JSON "
            "(no upstream is contacted), instead of refusing the CONNECT.",
        )

    def configure(self, updated: set[str]) -> None:
        if {"egress_allow_network", "egress_resolve"} & updated:
            try:
                self.guard = NetGuard(ctx.options.egress_allow_network, ctx.options.egress_resolve)
            except ConfigError as e:
                raise exceptions.OptionsError(str(e)) from None
        forced = {k: v for k, v in SAFE_OPTIONS.items() if getattr(ctx.options, k) != v}
        if forced:
            # mitmproxy's own defaults (rawtcp, eager connections) are forced quietly; a value
            # someone set is worth a warning.
            if chosen := [k for k in forced if ctx.options.has_changed(k)]:
                logger.warning("egress-proxy forces %s", ", ".join(f"{k}={forced[k]!r}" for k in chosen))
            ctx.options.update(**forced)
        if "mode" in updated:
            for spec in ctx.options.mode:
                if not isinstance(
                    mode_specs.ProxyMode.parse(spec), mode_specs.RegularMode | mode_specs.TransparentMode
                ):
                    raise exceptions.OptionsError(
                        f"egress-proxy runs in regular or transparent mode, not {spec!r}"
                    )

    @fail_closed
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.client_conn.tls_established or flow.client_conn in self.tunnels:
            # TLS to the proxy itself, or a second CONNECT on one (HTTP/2) connection:
            # one connection carries exactly one tunnel.
            block(flow, ONE_TUNNEL)
            return
        rules = self.source.rules
        grant = identify(
            flow.request.headers.get("proxy-authorization"),
            rules,
            required=ctx.options.egress_require_grant,
            now=time.time(),
        )
        if isinstance(grant, Block):
            block(flow, grant)
            return
        s = state(flow)
        s.grant_label = grant.label if grant else None
        target = parse_target(flow.request.host, flow.request.port)
        if isinstance(target, Block):
            block(flow, target)
            return
        guard = self.source.guard
        if guard and guard.find(target.host.encode()) is not None:
            flow.request.host = guard.text(flow.request.host)  # what the logs show
            logger.warning("secret-exfiltration: a secret in the CONNECT host; refused %s", flow.id)
            block(flow, Block(Reason.SECRET_EXFILTRATION, help_of(Reason.SECRET_EXFILTRATION)))
            return
        decision = rules.policy.connect(target, grant.connectors if grant else None)
        address = await self.resolve(target) if decision is None else decision
        if isinstance(address, Block):
            if ctx.options.egress_explain_blocks and address.reason in EXPLAINED:
                # Accept the tunnel so an SDK shows our 403 JSON instead of "Connection error".
                flow.request.data.host = NOWHERE
                self.tunnels.open(flow.client_conn, Tunnel(target, NOWHERE, grant, refused=address))
                s.note("connect", f"{target.authority} refused ({address.reason}); explained inside")
                return
            block(flow, address)
            return
        flow.server_conn.sni = None if target.is_ip else target.host
        flow.request.data.host = address  # the tunnel's upstream is the checked address
        self.tunnels.open(flow.client_conn, Tunnel(target, address, grant))
        s.note("connect", f"{target.authority} via {address}")

    async def resolve(self, target: Target) -> str | Block:
        """The one vetted address a tunnel to ``target`` connects to."""
        if target.is_ip:
            addresses = [target.host]
        elif pinned := self.guard.pins.get(target.host):
            addresses = [pinned]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM),
                    RESOLVE_TIMEOUT,
                )
            except (OSError, TimeoutError):
                return Block(Reason.UNRESOLVABLE, f"cannot resolve {target.host}")
            addresses = [str(info[4][0]) for info in infos]
        refused = [a for a in addresses if not self.guard.permits(a)]
        if refused or not addresses:
            logger.info("%s resolves to non-public %s", target.host, ", ".join(refused))
            return Block(Reason.PRIVATE_ADDRESS, f"{target.host} resolves to a non-public address")
        return addresses[0]

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Last line of defence: only the pinned address and SNI of a tunnel."""
        try:
            tunnel = self.tunnels.get(data.client)
            server = data.server
            if tunnel is not None and tunnel.refused is not None:
                server.error = "egress-proxy: upstream connection refused by policy"
                logger.error(
                    "refused upstream connection for an explained block (%s)", tunnel.target.authority
                )
                return
            if tunnel is not None and tunnel.transparent:
                # The sandbox chose the destination address; the proxy uses its own.
                server.address = (tunnel.address, tunnel.target.port)
                server.sni = None if tunnel.target.is_ip else tunnel.target.host
            expected_sni = None if tunnel is None or tunnel.target.is_ip else tunnel.target.host
            if (
                tunnel is None
                or server.address is None
                or server.address[0] != tunnel.address
                or server.address[1] != tunnel.target.port
                or server.sni != expected_sni
                or server.via is not None
            ):
                server.error = "egress-proxy: upstream connection refused by policy"
                logger.error("refused upstream connection to %s", server.address)
        except Exception as e:
            data.server.error = "egress-proxy: upstream check failed"
            logger.error("server_connect hook failed (%s)", where_failed(e))

    def client_disconnected(self, client: connection.Client) -> None:
        self.tunnels.close(client)

"""Run the proxy in a trimmed mitmproxy Master: only the addons the product needs.

mitmdump loads some 35 addons and every event visits each; this Master loads
the five the proxy core requires plus ours.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import certifi
from mitmproxy import connection, http, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from addons import speedups
from addons.egress import make_addons
from proxy import ca, logconfig
from proxy.home import Home
from proxy.netguard import NetGuard
from proxy.registry import Registry

logger = logging.getLogger("egress")
DRAIN_SECONDS = 30.0


@dataclass(frozen=True)
class RunSettings:
    home: Home
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    upstream_ca: str | None = None
    allow_network: tuple[str, ...] = ()
    resolve: tuple[str, ...] = ()
    require_grant: bool = False
    log_format: str = "text"
    scrub_responses: bool = True
    record: bool = True


class Ready:
    """Tell the supervisor this worker listens (it waits for every worker's file)."""

    async def running(self) -> None:
        if path := os.environ.get("EGRESS_WORKER_READY_FILE"):
            Path(path).write_text(str(os.getpid()))


def upstream_bundle(home: Home, extra: str | None) -> str | None:
    """mitmproxy's trusted-CA option replaces certifi, so pass certifi + extra."""
    if not extra:
        return None
    path = home.run_dir / f"upstream-ca-{os.getpid()}.pem"  # one per worker, no races
    ca.write_bundle(path, Path(extra), base=Path(certifi.where()).read_bytes())
    return str(path)


def run(settings: RunSettings) -> int:
    """Serve until SIGTERM/SIGINT; configuration errors surface before listening."""
    logconfig.configure(settings.log_format)
    speedups.install()
    NetGuard(settings.allow_network, settings.resolve)  # raises ConfigError early
    registry = Registry(settings.home)
    registry.policy()  # wrong key or tampered store: fail now, clearly
    registry.close()
    bundle = upstream_bundle(settings.home, settings.upstream_ca)
    return asyncio.run(_serve(settings, bundle))


async def _serve(settings: RunSettings, bundle: str | None) -> int:
    opts = options.Options()
    master = Master(opts)
    master.addons.add(
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
        *make_addons(),
        Ready(),
        inflight := InFlight(),
    )
    opts.update(
        mode=["regular"],
        listen_host=settings.listen_host,
        listen_port=settings.listen_port,
        confdir=str(settings.home.ca_dir),
        connection_strategy="lazy",
        rawtcp=False,
        ssl_verify_upstream_trusted_ca=bundle,
        egress_home=str(settings.home.root),
        egress_allow_network=list(settings.allow_network),
        egress_resolve=list(settings.resolve),
        egress_admin="",  # the supervisor serves the admin endpoint for all workers
        egress_record=settings.record,
        egress_require_grant=settings.require_grant,
        egress_access_log=settings.log_format == "json",
        egress_scrub_responses=settings.scrub_responses,
    )
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        if stopping:  # a second signal: stop now
            master.shutdown()
        else:
            stopping.append(asyncio.create_task(_drain(master, inflight)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await master.run()
    return 0


class InFlight:
    """Counts requests between their headers and their end, for a graceful stop."""

    def __init__(self) -> None:
        self.by_client: dict[str, int] = {}

    @property
    def count(self) -> int:
        return sum(self.by_client.values())

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        cid = flow.client_conn.id
        self.by_client[cid] = self.by_client.get(cid, 0) + 1
        flow.metadata["egress.inflight"] = True

    def _finished(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.pop("egress.inflight", False):
            cid = flow.client_conn.id
            if self.by_client.get(cid, 0) > 1:
                self.by_client[cid] -= 1
            else:
                self.by_client.pop(cid, None)

    response = error = _finished

    def client_disconnected(self, client: connection.Client) -> None:
        self.by_client.pop(client.id, None)  # flows a crashed connection never finished


async def _drain(master: Master, inflight: InFlight) -> None:
    """Stop accepting, let in-flight requests finish (bounded), then shut down."""
    try:
        await master.addons.get("proxyserver").servers.update([])
        deadline = asyncio.get_running_loop().time() + DRAIN_SECONDS
        while inflight.count > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if inflight.count:
            logger.warning("stopping with %d request(s) still in flight", inflight.count)
    finally:
        master.shutdown()

"""A proxy worker: ``python -m addons.runner``, started by the supervisor (settings in the environment).

It runs a trimmed mitmproxy Master: mitmdump loads some 35 addons and every
event visits each; this one loads the five the proxy core requires plus ours.
The settings were validated by ``egress run``; the addons load the policy
once, and any error there stops the worker before it listens.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import weakref
from pathlib import Path
from typing import Any

import addons.lean  # noqa: F401 (first: before anything imports mitmproxy.addons)

# isort: split
import certifi
from mitmproxy import connection, exceptions, http, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from addons import patches
from addons.egress import make_addons
from proxy.runtime import logsetup
from proxy.runtime.settings import LISTEN_FD_ENV, SETTINGS_ENV, RunSettings
from proxy.service import ca

logger = logging.getLogger(__name__)
DRAIN_SECONDS = 30.0


def option_values(settings: RunSettings, upstream_bundle: str | None) -> dict[str, Any]:
    """The mitmproxy options a worker runs with: the one mapping from settings to options."""
    host, port = settings.listen_address
    mode = "regular" if settings.mode == "regular" else f"transparent@{host}:{port}"
    return {
        "mode": [mode],
        "listen_host": host,
        "listen_port": port,
        "confdir": str(Path(settings.home) / "ca"),
        "connection_strategy": "lazy",
        "rawtcp": False,
        "ssl_verify_upstream_trusted_ca": upstream_bundle,
        "egress_home": settings.home,
        "egress_allow_network": list(settings.allow_network),
        "egress_resolve": list(settings.resolve),
        "egress_admin": "",  # the supervisor serves the admin endpoint for all workers
        "egress_record": settings.record,
        "egress_flush_interval": settings.flush_interval,
        "egress_require_grant": settings.require_grant,
        "egress_explain_blocks": settings.explain_blocks,
        "egress_access_log": settings.log_format == "json",
        "egress_audit_log": settings.audit_log,
        "egress_audit_max_bytes": settings.audit_max_mb * 1024 * 1024,
        "egress_scrub_responses": settings.scrub_responses,
        "egress_scan_bodies": settings.scan_bodies,
        "tcp_timeout": int(settings.idle_timeout),
        "egress_handshake_timeout": settings.handshake_timeout,
        "egress_max_client_connections": settings.max_client_connections,
        "egress_max_connector_requests": settings.max_connector_requests,
        "egress_max_client_share": settings.max_client_share,
        "egress_h2_max_resets": settings.h2_max_resets,
        "egress_request_body_timeout": settings.request_body_timeout,
        "egress_upstream_timeout": settings.upstream_timeout,
        "egress_max_websocket_message": settings.max_websocket_message,
        "egress_transparent_grant": settings.transparent_grant,
        "egress_transparent_connectors": list(settings.transparent_connectors),
    }


class Ready:
    """Tell the supervisor this worker listens (it waits for every worker's file).

    First the start-up heap (mitmproxy, the addons, the loaded policy) leaves the
    cycle collector's view: a full collection walked all of it, a 40 ms pause with
    the demo policy (more with thousands of connectors), which was the p99 of
    requests at 200 req/s. What is frozen is never freed by the collector, only by
    reference counting: start-up objects live as long as the worker anyway.
    """

    async def running(self) -> None:
        gc.collect()
        gc.freeze()
        if path := os.environ.get("EGRESS_WORKER_READY_FILE"):
            Path(path).write_text(str(os.getpid()))


class InFlight:
    """Counts requests between their headers and their end, for a graceful stop."""

    def __init__(self) -> None:
        self.by_client: dict[str, int] = {}
        self._flows: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()

    @property
    def count(self) -> int:
        return sum(self.by_client.values())

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        cid = flow.client_conn.id
        self.by_client[cid] = self.by_client.get(cid, 0) + 1
        self._flows.add(flow)

    def _finished(self, flow: http.HTTPFlow) -> None:
        if flow in self._flows:
            self._flows.discard(flow)
            cid = flow.client_conn.id
            if self.by_client.get(cid, 0) > 1:
                self.by_client[cid] -= 1
            else:
                self.by_client.pop(cid, None)

    response = error = _finished

    def client_disconnected(self, client: connection.Client) -> None:
        self.by_client.pop(client.id, None)  # flows a crashed connection never finished


def upstream_bundle_path(run_dir: str, pid: int) -> Path:
    """Where worker ``pid`` keeps its upstream CA bundle (removed when it stops)."""
    return Path(run_dir) / f"upstream-ca-{pid}.pem"  # one per worker, no races


def upstream_bundle(settings: RunSettings) -> str | None:
    """mitmproxy's trusted-CA option replaces certifi, so pass certifi + the extra CAs."""
    if not settings.upstream_ca:
        return None
    path = upstream_bundle_path(settings.run_dir, os.getpid())
    ca.write_bundle(path, Path(settings.upstream_ca), base=Path(certifi.where()).read_bytes())
    return str(path)


async def serve(settings: RunSettings) -> int:
    opts = options.Options()
    master = Master(opts)
    inflight = InFlight()
    master.addons.add(
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
        *make_addons(),
        Ready(),
        inflight,
    )
    try:
        opts.update(**option_values(settings, upstream_bundle(settings)))
    except exceptions.OptionsError as e:
        print(f"egress: error: {e}", file=sys.stderr)
        return 2
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


def main(argv: list[str]) -> int:
    settings = RunSettings.from_json(os.environ.pop(SETTINGS_ENV))
    logsetup.configure(settings.log_format)
    patches.install_speedups()
    if fd := os.environ.pop(LISTEN_FD_ENV, ""):
        patches.LISTENER.append(socket.socket(fileno=int(fd)))
    try:
        return asyncio.run(serve(settings))
    finally:
        upstream_bundle_path(settings.run_dir, os.getpid()).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

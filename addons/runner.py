"""Run the proxy in a trimmed mitmproxy Master: only the addons the product needs.

mitmdump loads some 35 addons and every event visits each; this Master loads
the five the proxy core requires plus ours.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import certifi
from mitmproxy import ctx, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from addons.egress import make_addons
from proxy import ca
from proxy.home import Home
from proxy.netguard import NetGuard
from proxy.registry import Registry

logger = logging.getLogger("egress")


@dataclass(frozen=True)
class RunSettings:
    home: Home
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    upstream_ca: str | None = None
    allow_network: tuple[str, ...] = ()
    resolve: tuple[str, ...] = ()
    admin: str | None = None
    require_grant: bool = False
    record: bool = True


class Announce:
    """Record the listening address (for ``egress env``) and say how to use it."""

    def __init__(self, settings: RunSettings, connectors: int) -> None:
        self.settings = settings
        self.connectors = connectors

    async def running(self) -> None:
        ps = ctx.master.addons.get("proxyserver")
        addrs = ps.listen_addrs() if ps else []
        if not addrs:
            return
        host, port = addrs[0][:2]
        shown = f"[{host}]" if ":" in host else host
        home = self.settings.home
        write_atomic(home.addr_file, f"{shown}:{port}\n")
        admin = ctx.master.addons.get("admin")
        if admin and (admin_addr := admin.admin_address()):
            write_atomic(home.run_dir / "admin.addr", f"{admin_addr[0]}:{admin_addr[1]}\n")
        print(
            f"egress-proxy listening on http://{shown}:{port} with {self.connectors} connector(s)\n"
            f'  point a sandboxed step at it:  eval "$(egress env)"\n'
            f"  or: curl -x http://{shown}:{port} --cacert {home.ca_cert} https://...",
            file=sys.stderr,
            flush=True,
        )

    def done(self) -> None:
        self.settings.home.addr_file.unlink(missing_ok=True)
        (self.settings.home.run_dir / "admin.addr").unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # mitmproxy logs every client connect at INFO; keep its warnings and errors.
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)


def upstream_bundle(home: Home, extra: str | None) -> str | None:
    """mitmproxy's trusted-CA option replaces certifi, so pass certifi + extra."""
    if not extra:
        return None
    path = home.run_dir / "upstream-ca.pem"
    ca.write_bundle(path, Path(extra), base=Path(certifi.where()).read_bytes())
    return str(path)


def run(settings: RunSettings) -> int:
    """Serve until SIGTERM/SIGINT; configuration errors surface before listening."""
    configure_logging()
    NetGuard(settings.allow_network, settings.resolve)  # raises ConfigError early
    registry = Registry(settings.home)
    connectors = len(registry.policy())  # wrong key or tampered store: fail now
    registry.close()
    bundle = upstream_bundle(settings.home, settings.upstream_ca)
    return asyncio.run(_serve(settings, connectors, bundle))


async def _serve(settings: RunSettings, connectors: int, bundle: str | None) -> int:
    opts = options.Options()
    master = Master(opts)
    master.addons.add(
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
        *make_addons(),
        Announce(settings, connectors),
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
        egress_admin=settings.admin or "",
        egress_record=settings.record,
        egress_require_grant=settings.require_grant,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()
    return 0

"""``egress init``, ``egress ca``, ``egress env`` and ``egress keys rotate``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from proxy.cli import shells
from proxy.errors import ConfigError
from proxy.grants import proxy_url
from proxy.service import ca, clientenv
from proxy.service.connectors import Connectors
from proxy.service.home import Home

DEFAULT_PROXY = "127.0.0.1:8080"


def recorded_proxy(home: Home) -> str:
    """The running proxy's address as it recorded it in EGRESS_HOME, else the default."""
    try:
        return "http://" + home.addr_file.read_text().strip()
    except OSError:
        return "http://" + DEFAULT_PROXY


def cmd_init(args: argparse.Namespace, home: Home) -> int:
    created = home.init()
    for what in created:
        print(f"created {what}")
    print(f"EGRESS_HOME {home.root} is ready" + ("" if created else " (nothing to do)"))
    return 0


def cmd_ca(args: argparse.Namespace, home: Home) -> int:
    home.init()
    if args.import_:
        try:
            pem = Path(args.import_).read_bytes()
        except OSError as e:
            raise ConfigError(f"--import {args.import_}: {e.strerror}") from None
        backup = ca.import_ca(home.ca_dir, pem, f"--import {args.import_}")
        print(f"imported CA into {home.ca_dir}" + (f" (previous CA kept as {backup})" if backup else ""))
        print("restart the proxy so it signs with the new CA; clients must trust it")
    elif args.bundle:
        ca.write_bundle(Path(args.bundle), home.ca_cert)
        print(f"wrote {args.bundle} (system CAs + egress-proxy CA)")
    elif args.java_truststore:
        count = clientenv.write_truststore(Path(args.java_truststore), home.ca_cert)
        print(
            f"wrote {args.java_truststore} (PKCS12, {count} trusted certificates, system CAs + "
            f"egress-proxy CA; password {clientenv.TRUSTSTORE_PASSWORD!r})"
        )
    elif args.pem:
        sys.stdout.write(home.ca_cert.read_text())
    else:
        print(home.ca_cert)
    return 0


def cmd_env(args: argparse.Namespace, home: Home) -> int:
    home.require_initialised(need_ca=True)
    if args.proxy:
        proxy = args.proxy if "://" in args.proxy else "http://" + args.proxy
    else:
        proxy = recorded_proxy(home)
        if not home.addr_file.exists():
            print(
                f"warning: no running proxy is recorded in {home.addr_file}; assuming {proxy} "
                "(start `egress run` or pass --proxy)",
                file=sys.stderr,
            )
    if args.grant:
        proxy = proxy_url(args.grant, proxy.removeprefix("http://").split("@")[-1].rstrip("/"))
    if args.setup_node and clientenv.setup_node(home):
        print(f"installed the Node preload into {clientenv.Layout(home.root).node_dir}", file=sys.stderr)
    result = clientenv.build(home, proxy.rstrip("/"))
    if args.grant or args.placeholders:
        # SDKs refuse to start without a key: give them one that is worthless outside the proxy.
        result.variables.update(clientenv.placeholders(home, args.grant))
    for note in result.notes:
        print(f"hint: {note}", file=sys.stderr)
    sys.stdout.write(shells.render(result.variables, args.shell))
    return 0


def cmd_keys_rotate(args: argparse.Namespace, home: Home) -> int:
    with Connectors(home) as connectors:
        old, new = connectors.rotate_master_key()
    print(f"master key rotated: {old} -> {new}; every secret re-sealed (old key kept as *.old)")
    print("running proxies pick the new key up at their next reload")
    return 0


def register(sub: Any, command: Any) -> None:
    command("init", cmd_init, "create EGRESS_HOME, master key, store and CA (idempotent)")

    sp = command("ca", cmd_ca, "the CA clients must trust")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--path", action="store_true", help="print the CA certificate's path (default)")
    g.add_argument("--pem", action="store_true", help="print the CA certificate")
    g.add_argument("--bundle", metavar="PATH", help="write system CAs plus ours to PATH")
    g.add_argument(
        "--java-truststore", metavar="PATH", help="write system CAs plus ours to PATH as a PKCS12 truststore"
    )
    g.add_argument("--import", dest="import_", metavar="PEM", help="use your own CA (key and certificate)")

    sp = command("env", cmd_env, "shell exports that route a step through the proxy")
    sp.add_argument("--proxy", metavar="URL", help="proxy URL (default: the running proxy's address)")
    sp.add_argument("--grant", metavar="TOKEN", help="use this grant as the proxy credential")
    sp.add_argument("--shell", choices=shells.SHELLS, default="sh", help="output form (default sh)")
    sp.add_argument(
        "--placeholders",
        action="store_true",
        help="also export the placeholder keys SDKs need (implied by --grant: its connectors' presets)",
    )
    sp.add_argument(
        "--setup-node",
        action="store_true",
        help="install the Node < 24 proxy preload (npm install, once) and export NODE_OPTIONS",
    )

    keys = sub.add_parser("keys", help="master key management")
    ksub = keys.add_subparsers(metavar="ACTION")
    command("rotate", cmd_keys_rotate, "new master key; re-seal every secret", ksub)

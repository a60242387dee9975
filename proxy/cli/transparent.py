"""``egress transparent rules``: what to install so a sandbox can only leave through the proxy."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.errors import ConfigError
from proxy.service.home import Home
from proxy.service.transparent import iptables_rules


def cmd_rules(args: argparse.Namespace, home: Home) -> int:
    if args.uid == 0:
        raise ConfigError("--uid 0: the sandbox must not run as root (it could change the rules)")
    print(
        f"# egress-proxy: sandbox uid {args.uid} may leave only through the transparent listener :{args.port}"
    )
    print("# run as root in the sandbox's network namespace (a pod's init container, a compose service);")
    print(
        f"# start the proxy as another uid: egress run --mode transparent --listen 127.0.0.1:{args.port} ..."
    )
    for rule in iptables_rules(args.uid, args.port, args.admin_port):
        print(rule)
    return 0


def register(sub: Any, command: Any) -> None:
    group = sub.add_parser("transparent", help="rules for transparent interception")
    gsub = group.add_subparsers(metavar="ACTION")
    sp = command("rules", cmd_rules, "print the iptables rules for a sandbox uid", gsub)
    sp.add_argument("--uid", type=int, required=True, help="the sandbox's uid (never the proxy's, never 0)")
    sp.add_argument("--port", type=int, default=8081, help="the transparent listener's port (default 8081)")
    sp.add_argument("--admin-port", type=int, help="the admin port, unreachable from the sandbox")

"""``egress grant`` (mint, list, revoke, rotate-key)."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from proxy.cli.render import print_table
from proxy.cli.setup import recorded_proxy
from proxy.durations import parse_duration
from proxy.errors import ConfigError
from proxy.grants import proxy_url
from proxy.service.grants import Grants
from proxy.service.home import Home


def cmd_grant(args: argparse.Namespace, home: Home) -> int:
    home.require_initialised(need_grant_key=args.action is None)
    with Grants(home) as grants:
        if args.action == "list":
            return _list(grants, args.json)
        if args.action == "revoke":
            if not args.target:
                raise ConfigError("usage: egress grant revoke TOKEN_OR_ID")
            print(f"revoked grant {grants.revoke(args.target)}")
            return 0
        if args.action == "rotate-key":
            grants.rotate_key()
            print("grant key rotated: every earlier grant token is now refused, open tunnels included")
            return 0
        if not args.connector:
            raise ConfigError("egress grant needs at least one --connector NAME")
        token, grant = grants.mint(args.connector, parse_duration(args.ttl, "--ttl"), args.label or "")
    address = (args.proxy or recorded_proxy(home)).removeprefix("http://").rstrip("/")
    url = proxy_url(token, address)
    if args.json:
        print(json.dumps({
            "id": grant.id, "token": token, "proxy_url": url, "label": grant.label,
            "connectors": sorted(grant.connectors), "expires_at": grant.expires_at,
        }, indent=2))  # fmt: skip
    else:
        print(url)
    return 0


def _list(grants: Grants, as_json: bool) -> int:
    rows = grants.list()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    now = time.time()
    table = []
    for g in rows:
        state = "revoked" if g["revoked_at"] else "expired" if g["expires_at"] <= now else "active"
        expires = datetime.fromtimestamp(g["expires_at"]).strftime("%Y-%m-%d %H:%M:%S")
        table.append((g["id"], state, expires, ",".join(g["connectors"]), g["label"] or "-"))
    if table:
        print_table(("ID", "STATE", "EXPIRES", "CONNECTORS", "LABEL"), table)
    else:
        print("no grants (mint one with `egress grant --connector NAME`)")
    return 0


def register(sub: Any, command: Any) -> None:
    sp = command("grant", cmd_grant, "mint, list or revoke scoped proxy credentials")
    sp.add_argument("action", nargs="?", choices=["list", "revoke", "rotate-key"], help="default: mint")
    sp.add_argument("target", nargs="?", metavar="TOKEN_OR_ID", help="for revoke")
    sp.add_argument(
        "--connector", action="append", metavar="NAME", help="connector the step may use (repeat)"
    )
    sp.add_argument("--ttl", default="15m", metavar="DURATION", help="lifetime (default 15m)")
    sp.add_argument("--label", metavar="TEXT", help="shown in logs, e.g. the step's name")
    sp.add_argument(
        "--proxy", metavar="HOST:PORT", help="proxy address for the URL (default: the running one)"
    )
    sp.add_argument("--json", action="store_true")

"""``egress admin token create|list|revoke``: tokens for the admin API."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from proxy.cli.render import print_table
from proxy.service.admin_tokens import AdminTokens
from proxy.service.home import Home


def cmd_create(args: argparse.Namespace, home: Home) -> int:
    home.init()
    # --workspace (or EGRESS_WORKSPACE) scopes the token; without either it reaches every workspace.
    workspace = home.workspace if home.env.get("EGRESS_WORKSPACE") else None
    with AdminTokens(home) as tokens:
        token, row = tokens.create(workspace, args.read_only, args.label or "")
    if args.json:
        print(json.dumps({**row, "token": token}, indent=2))
        return 0
    print(token)
    scope = f"workspace {workspace}" if workspace else "every workspace"
    access = "read-only" if args.read_only else "read-write"
    print(f"admin token {row['id']} ({scope}, {access}): shown only now, store it safely", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace, home: Home) -> int:
    home.require_initialised()
    with AdminTokens(home) as tokens:
        rows = tokens.list()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no admin tokens (create one with `egress admin token create`)")
        return 0
    table = []
    for r in rows:
        created = datetime.fromtimestamp(r["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
        state = "revoked" if r["revoked_at"] else "active"
        access = "read-only" if r["read_only"] else "read-write"
        table.append((r["id"], state, r["workspace"] or "*", access, created, r["label"] or "-"))
    print_table(("ID", "STATE", "WORKSPACE", "ACCESS", "CREATED", "LABEL"), table)
    return 0


def cmd_revoke(args: argparse.Namespace, home: Home) -> int:
    home.require_initialised()
    with AdminTokens(home) as tokens:
        tokens.revoke(args.id)
    print(f"revoked admin token {args.id}")
    return 0


def register(sub: Any, command: Any) -> None:
    admin = sub.add_parser("admin", help="admin API tokens")
    asub = admin.add_subparsers(metavar="WHAT")
    token = asub.add_parser("token", help="create, list or revoke admin API tokens")
    tsub = token.add_subparsers(metavar="ACTION")

    def usage(parser: argparse.ArgumentParser) -> Any:
        def show(args: argparse.Namespace, home: Home) -> int:
            parser.print_help(sys.stderr)
            return 2

        return show

    admin.set_defaults(func=usage(admin))
    token.set_defaults(func=usage(token))
    sp = command("create", cmd_create, "create a token (printed once); --workspace W limits it to W", tsub)
    sp.add_argument("--read-only", action="store_true", help="may read, never change")
    sp.add_argument("--label", metavar="TEXT", help="who or what the token is for")
    sp.add_argument("--json", action="store_true")
    command("list", cmd_list, "list tokens (never their values)", tsub).add_argument(
        "--json", action="store_true"
    )
    command("revoke", cmd_revoke, "revoke a token by id", tsub).add_argument("id", metavar="ID")

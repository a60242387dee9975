"""``egress connector ...``, ``egress apply`` and ``egress check``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from proxy.cli.render import describe, print_table, print_warnings
from proxy.connectors import Connector, make_connector
from proxy.credentials.sources import SecretSource
from proxy.errors import ConfigError
from proxy.policy import Allow
from proxy.service.apply import apply_file
from proxy.service.connectors import Connectors
from proxy.service.home import Home


def cmd_add(args: argparse.Namespace, home: Home) -> int:
    home.init()
    connector = _connector_from_args(args, None)
    secret = _read_secret(args, required=True)
    assert secret is not None
    with Connectors(home) as connectors:
        connectors.add(connector, secret)
        print(f"added connector {connector.name}: {', '.join(p.text for p in connector.patterns)}")
        print_warnings(connectors.warnings())
    return 0


def cmd_update(args: argparse.Namespace, home: Home) -> int:
    with Connectors(home) as connectors:
        current, _ = connectors.get(args.name)
        connector = _connector_from_args(args, current)
        connectors.update(connector, _read_secret(args, required=False))
        print(f"updated connector {connector.name}")
        print_warnings(connectors.warnings())
    return 0


def cmd_remove(args: argparse.Namespace, home: Home) -> int:
    with Connectors(home) as connectors:
        connectors.remove(args.name)
    print(f"removed connector {args.name}")
    return 0


def cmd_list(args: argparse.Namespace, home: Home) -> int:
    with Connectors(home) as connectors:
        rows = [describe(c, s.created_at, s.updated_at) for c, s in connectors.all()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no connectors (add one with `egress connector add`)")
        return 0
    print_table(
        ("NAME", "INJECT", "PATTERNS"),
        [(r["name"], r["inject_summary"], " ".join(r["patterns"])) for r in rows],
    )
    return 0


def cmd_show(args: argparse.Namespace, home: Home) -> int:
    with Connectors(home) as connectors:
        connector, stored = connectors.get(args.name)
    row = describe(connector, stored.created_at, stored.updated_at)
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    print(f"name:     {row['name']}")
    if row["preset"]:
        print(f"preset:   {row['preset']}")
    print(f"inject:   {row['inject_summary']}")
    print("secret:   (sealed, never shown)")
    print("patterns:")
    for p in row["patterns"]:
        print(f"  - {p}")
    return 0


def cmd_apply(args: argparse.Namespace, home: Home) -> int:
    home.init()
    report = apply_file(home, Path(args.file), prune=args.prune)
    for verb in ("created", "updated", "unchanged", "removed"):
        names = getattr(report, verb)
        if names:
            print(f"{verb}: {', '.join(names)}")
    if not (report.created or report.updated or report.removed):
        print(f"{args.file}: store already up to date")
    print_warnings(report.warnings)
    return 0


def cmd_check(args: argparse.Namespace, home: Home) -> int:
    """Why would this URL be allowed or blocked? Exit 0 if allowed, 1 if not."""
    with Connectors(home) as connectors:
        policy = connectors.policy()  # opens every secret, as the proxy would
    decision = policy.explain(args.url)
    if isinstance(decision, Allow):
        print(f"allowed: connector {decision.connector} (secret injected into {decision.where})")
        return 0
    print(f"blocked: {decision.reason} ({decision.detail})")
    return 1


def _connector_from_args(args: argparse.Namespace, current: Connector | None) -> Connector:
    inject: dict[str, str] | None = None
    if args.header:
        inject = {"header": args.header}
        if args.template is not None:
            inject["template"] = args.template
    elif args.query:
        inject = {"query": args.query}
    elif args.template is not None:
        spec = current.inject.to_spec() if current else {}
        if "header" not in spec:
            raise ConfigError("--template needs --header")
        inject = {"header": spec["header"], "template": args.template}
    if current is not None:
        return make_connector(
            current.name,
            patterns=args.pattern or [p.text for p in current.patterns],
            inject=inject or current.inject.to_spec(),
            preset=args.preset or current.preset,
        )
    return make_connector(args.name, patterns=args.pattern, inject=inject, preset=args.preset)


def _read_secret(args: argparse.Namespace, *, required: bool) -> str | None:
    if args.secret_stdin:
        source, where = SecretSource("stdin"), "secret from stdin"
    elif args.secret_env:
        source, where = SecretSource("env", args.secret_env), "--secret-env"
    elif args.secret_file:
        source, where = SecretSource("file", args.secret_file), "--secret-file"
    elif required:
        raise ConfigError("a secret is required: --secret-stdin, --secret-env VAR or --secret-file PATH")
    else:
        return None
    return source.read(where)


def register(sub: Any, command: Any) -> None:
    conn = sub.add_parser("connector", help="add, update, remove, list, show connectors")
    csub = conn.add_subparsers(metavar="ACTION")

    def usage(args: argparse.Namespace, home: Home) -> int:
        conn.print_help(sys.stderr)
        return 2

    conn.set_defaults(func=usage)
    for action, func in (("add", cmd_add), ("update", cmd_update)):
        sp = command(action, func, f"{action} a connector", csub)
        sp.add_argument("name", metavar="NAME")
        sp.add_argument(
            "--pattern", action="append", metavar="URL", help="allowed https URL pattern (repeat)"
        )
        inj = sp.add_mutually_exclusive_group()
        inj.add_argument("--header", metavar="NAME", help="inject the secret into this header")
        inj.add_argument("--query", metavar="PARAM", help="inject the secret as this query parameter")
        sp.add_argument(
            "--template", metavar="TEXT", help="header value template (default 'Bearer {{secret}}')"
        )
        sp.add_argument("--preset", metavar="NAME", help="fill patterns and injection (stripe, github, ...)")
        src = sp.add_mutually_exclusive_group()
        src.add_argument("--secret-stdin", action="store_true", help="read the secret from stdin")
        src.add_argument("--secret-env", metavar="VAR", help="read the secret from an environment variable")
        src.add_argument("--secret-file", metavar="PATH", help="read the secret from a file")
    command("remove", cmd_remove, "remove a connector", csub).add_argument("name", metavar="NAME")
    command("list", cmd_list, "list connectors", csub).add_argument("--json", action="store_true")
    sp = command("show", cmd_show, "show one connector (never its secret)", csub)
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--json", action="store_true")

    sp = command("apply", cmd_apply, "sync connectors from a YAML file")
    sp.add_argument("-f", "--file", required=True, metavar="FILE")
    sp.add_argument("--prune", action="store_true", help="remove connectors the file does not list")

    sp = command("check", cmd_check, "would the proxy allow this URL, and through which connector?")
    sp.add_argument("url", metavar="URL")

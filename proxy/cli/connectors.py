"""``egress connector ...``, ``egress apply`` and ``egress check``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from proxy.cli.render import print_table, print_warnings
from proxy.connectors import Connector, make_connector
from proxy.credentials.sources import CredentialSource, SecretSource, check_field_name, parse_source
from proxy.credentials.templates import SECRET_FIELD
from proxy.errors import ConfigError
from proxy.policy import Allow
from proxy.reasons import Reason, help_of
from proxy.service.apply import apply_file
from proxy.service.connectors import Connectors, describe
from proxy.service.grants import Grants
from proxy.service.home import Home


def cmd_add(args: argparse.Namespace, home: Home) -> int:
    home.init()
    connector = _connector_from_args(args, None)
    fields = _read_credential(args, required=True)
    assert fields is not None
    with Connectors(home) as connectors:
        connectors.add(connector, fields)
        print(f"added connector {connector.name}: {', '.join(p.text for p in connector.patterns)}")
        print_warnings(connectors.warnings())
    return 0


def cmd_update(args: argparse.Namespace, home: Home) -> int:
    with Connectors(home) as connectors:
        current, _ = connectors.get(args.name)
        connector = _connector_from_args(args, current)
        connectors.update(connector, _read_credential(args, required=False), merge=True)
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
        rows = [describe(c, s) for c, s in connectors.all()]
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
    row = describe(connector, stored)
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    print(f"name:     {row['name']}")
    if row["preset"]:
        print(f"preset:   {row['preset']}")
    if row["workspace"] != "default":
        print(f"workspace: {row['workspace']}")
    print(f"inject:   {row['inject_summary']}")
    if row["methods"]:
        print(f"methods:  {' '.join(row['methods'])}")
    if row["strip_headers"]:
        print(f"removes:  {' '.join(row['strip_headers'])}")
    print(f"secret:   fields {', '.join(row['fields']) or 'secret'} (sealed, never shown)")
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
    allowed: frozenset[str] | None = None
    with Connectors(home) as connectors:
        policy = connectors.policy()  # opens every secret, as the proxy would
        if args.grant:
            grant = Grants(home, connectors.store).check(args.grant, time.time())
            if isinstance(grant, Reason):
                print(f"blocked: {grant} ({help_of(grant)})")
                return 1
            allowed = grant.connectors
    method = args.method.upper() if args.method else None
    decision = policy.explain(args.url, allowed, method)
    if isinstance(decision, Allow):
        print(f"allowed: connector {decision.connector} (credential injected into {decision.where})")
        return 0
    print(f"blocked: {decision.reason} ({decision.detail})")
    near = decision.near_miss
    if near is not None:
        print(f"near miss: connector {near.connector}, {near.differs}: {near.detail}")
        if near.also:
            print(f"  also differs: {', '.join(near.also)}")
    return 1


def _inject_from_args(args: argparse.Namespace, current: Connector | None) -> dict[str, Any] | None:
    """The ``inject:`` mapping the flags describe, or None to keep the current one."""
    headers = args.header or []
    if len(headers) > 1 or any("=" in h for h in headers):
        if args.template is not None:
            raise ConfigError(
                "--template applies to one --header NAME; write --header 'NAME=TEMPLATE' for several"
            )
        pairs = [h.partition("=") for h in headers]
        if any(not sep for _, sep, _ in pairs):
            raise ConfigError("with several --header flags, write each as --header 'NAME=TEMPLATE'")
        return {"headers": {name: template for name, _, template in pairs}}
    if headers:
        inject: dict[str, Any] = {"header": headers[0]}
        if args.template is not None:
            inject["template"] = args.template
        return inject
    if args.query:
        inject = {"query": args.query}
        if args.template is not None:
            inject["template"] = args.template
        return inject
    if args.basic:
        return {"basic": {"username": "{{username}}", "password": "{{password}}"}}
    if args.template is not None:
        spec = current.inject.to_spec() if current else {}
        kind = "header" if "header" in spec else "query" if "query" in spec else None
        if kind is None:
            raise ConfigError("--template needs --header or --query")
        return {kind: spec[kind], "template": args.template}
    return None


def _connector_from_args(args: argparse.Namespace, current: Connector | None) -> Connector:
    inject = _inject_from_args(args, current)
    methods = None if args.any_method else args.method
    if current is not None:
        return make_connector(
            current.name,
            patterns=args.pattern or [p.text for p in current.patterns],
            inject=inject or current.inject.to_spec(),
            preset=args.preset or current.preset,
            methods=methods
            or (None if args.any_method or current.methods is None else sorted(current.methods)),
            strip_headers=args.strip_header if args.strip_header is not None else current.strip_headers,
        )
    return make_connector(
        args.name,
        patterns=args.pattern,
        inject=inject,
        preset=args.preset,
        methods=methods,
        strip_headers=args.strip_header,
    )


def _credential_source(args: argparse.Namespace) -> CredentialSource | None:
    """What the flags say the credential's fields are read from (None: no new value)."""
    fields: dict[str, SecretSource] = {}
    if args.secret_stdin:
        fields[SECRET_FIELD] = SecretSource("stdin")
    elif args.secret_env:
        fields[SECRET_FIELD] = SecretSource("env", args.secret_env)
    elif args.secret_file:
        fields[SECRET_FIELD] = SecretSource("file", args.secret_file)
    for item in args.field or []:
        name, sep, source = item.partition("=")
        if not sep:
            raise ConfigError(f"--field {item!r}: expected NAME=env:VAR, NAME=file:PATH or NAME=stdin")
        check_field_name(name, "--field")
        if name in fields:
            raise ConfigError(f"--field {name}: the field is given twice")
        fields[name] = parse_source(source, f"--field {name}")
    props = parse_source(args.properties_json, "--properties-json") if args.properties_json else None
    if not fields and props is None:
        return None
    return CredentialSource(fields, props)


def _read_credential(args: argparse.Namespace, *, required: bool) -> dict[str, str] | None:
    source = _credential_source(args)
    if source is None:
        if required:
            raise ConfigError(
                "a secret is required: --secret-stdin, --secret-env VAR, --secret-file PATH "
                "or --field NAME=SOURCE"
            )
        return None
    return source.read("credential")


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
        inj.add_argument(
            "--header",
            action="append",
            metavar="NAME[=TEMPLATE]",
            help="inject into this header (repeat as NAME=TEMPLATE for several headers)",
        )
        inj.add_argument("--query", metavar="PARAM", help="inject as this query parameter")
        inj.add_argument(
            "--basic", action="store_true", help="HTTP Basic from the fields username and password"
        )
        sp.add_argument(
            "--template", metavar="TEXT", help="value template over fields (default 'Bearer {{secret}}')"
        )
        sp.add_argument("--preset", metavar="NAME", help="fill patterns and injection (stripe, github, ...)")
        src = sp.add_mutually_exclusive_group()
        src.add_argument("--secret-stdin", action="store_true", help="read the secret from stdin")
        src.add_argument("--secret-env", metavar="VAR", help="read the secret from an environment variable")
        src.add_argument("--secret-file", metavar="PATH", help="read the secret from a file")
        sp.add_argument(
            "--field",
            action="append",
            metavar="NAME=SOURCE",
            help="a credential field from env:VAR, file:PATH or stdin (repeat)",
        )
        sp.add_argument(
            "--properties-json",
            metavar="SOURCE",
            help="a JSON object of fields (env:VAR, file:PATH or stdin); overrides same-named fields",
        )
        sp.add_argument("--method", action="append", metavar="M", help="allow only these methods (repeat)")
        sp.add_argument("--any-method", action="store_true", help="allow every method (the default)")
        sp.add_argument(
            "--strip-header",
            action="append",
            metavar="NAME",
            help="a credential header the client's SDK sends, removed before injecting (repeat)",
        )
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
    sp.add_argument("--method", metavar="M", help="the request method (default: any)")
    sp.add_argument("--grant", metavar="TOKEN", help="decide as for a client presenting this grant")

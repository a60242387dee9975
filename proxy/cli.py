"""The ``egress`` command line. Errors are one line on stderr; exit 2 for bad input."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy import __version__, ca, logconfig
from proxy.connectors import (
    Connector,
    check_secret,
    load_yaml,
    make_connector,
)
from proxy.durations import format_age, parse_duration
from proxy.errors import ConfigError, EgressError
from proxy.grants import proxy_url
from proxy.home import Home
from proxy.netguard import NetGuard
from proxy.policy import Allow
from proxy.registry import Registry
from proxy.stats import Event, StatsStore
from proxy.supervisor import SupervisorSpec

logger = logging.getLogger("egress")

DEFAULT_LISTEN = "127.0.0.1:8080"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args, Home.from_env()) or 0)
    except EgressError as e:
        print(f"egress: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


# -- commands ---------------------------------------------------------------


def cmd_init(args: argparse.Namespace, home: Home) -> int:
    created = home.init()
    for what in created:
        print(f"created {what}")
    print(f"EGRESS_HOME {home.root} is ready" + ("" if created else " (nothing to do)"))
    return 0


def cmd_connector_add(args: argparse.Namespace, home: Home) -> int:
    home.init()
    connector = _connector_from_args(args, None)
    secret = _read_secret(args, required=True)
    assert secret is not None
    reg = Registry(home)
    reg.add(connector, secret)
    print(f"added connector {connector.name}: {', '.join(p.text for p in connector.patterns)}")
    _print_warnings(reg)
    return 0


def cmd_connector_update(args: argparse.Namespace, home: Home) -> int:
    reg = Registry(home)
    current, _ = reg.get(args.name)
    connector = _connector_from_args(args, current)
    reg.update(connector, _read_secret(args, required=False))
    print(f"updated connector {connector.name}")
    _print_warnings(reg)
    return 0


def cmd_connector_remove(args: argparse.Namespace, home: Home) -> int:
    Registry(home).remove(args.name)
    print(f"removed connector {args.name}")
    return 0


def cmd_connector_list(args: argparse.Namespace, home: Home) -> int:
    rows = [_describe(c, s.created_at, s.updated_at) for c, s in Registry(home).connectors()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no connectors (add one with `egress connector add`)")
        return 0
    table = [(r["name"], r["inject_summary"], " ".join(r["patterns"])) for r in rows]
    _print_table(("NAME", "INJECT", "PATTERNS"), table)
    return 0


def cmd_connector_show(args: argparse.Namespace, home: Home) -> int:
    connector, stored = Registry(home).get(args.name)
    row = _describe(connector, stored.created_at, stored.updated_at)
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
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def apply_file(home: Home, path: Path, *, prune: bool) -> Any:
    """Validate the whole file and read every secret before touching the store."""
    declared = load_yaml(path)
    with_secrets = [(d, d.secret.read(f"{path}: connector {d.connector.name!r}: secret")) for d in declared]
    reg = Registry(home)
    try:
        return reg.apply(with_secrets, prune)
    finally:
        reg.close()


def cmd_check(args: argparse.Namespace, home: Home) -> int:
    """Why would this URL be allowed or blocked? Exit 0 if allowed, 1 if not."""
    policy = Registry(home).policy()  # opens every secret, as the proxy would
    decision = policy.explain(args.url)
    if isinstance(decision, Allow):
        where = f"header {decision.header}" if decision.header else f"query parameter {decision.query}"
        print(f"allowed: connector {decision.connector} (secret injected into {where})")
        return 0
    print(f"blocked: {decision.reason} ({decision.detail})")
    return 1


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
    elif args.pem:
        sys.stdout.write(home.ca_cert.read_text())
    else:
        print(home.ca_cert)
    return 0


def cmd_env(args: argparse.Namespace, home: Home) -> int:
    home.init()
    proxy = args.proxy or _recorded_proxy(home)
    if args.grant:
        proxy = proxy_url(args.grant, proxy.removeprefix("http://").split("@")[-1].rstrip("/"))
    bundle = home.ca_dir / "bundle.pem"
    ca.write_bundle(bundle, home.ca_cert)
    exports = {
        "HTTPS_PROXY": proxy,
        "https_proxy": proxy,
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "no_proxy": "localhost,127.0.0.1,::1",
        "SSL_CERT_FILE": str(bundle),
        "REQUESTS_CA_BUNDLE": str(bundle),
        "CURL_CA_BUNDLE": str(bundle),
        "GIT_SSL_CAINFO": str(bundle),
        "PIP_CERT": str(bundle),
        "NODE_EXTRA_CA_CERTS": str(home.ca_cert),
        "NODE_USE_ENV_PROXY": "1",
    }
    for key, value in exports.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_grant(args: argparse.Namespace, home: Home) -> int:
    reg = Registry(home)
    if args.action == "list":
        return _grant_list(reg, args.json)
    if args.action == "revoke":
        if not args.target:
            raise ConfigError("usage: egress grant revoke TOKEN_OR_ID")
        print(f"revoked grant {reg.revoke_grant(args.target)}")
        return 0
    if args.action == "rotate-key":
        reg.rotate_grant_key()
        print("grant key rotated: every earlier grant token is now refused")
        return 0
    if not args.connector:
        raise ConfigError("egress grant needs at least one --connector NAME")
    ttl = parse_duration(args.ttl, "--ttl")
    token, grant = reg.mint_grant(args.connector, ttl, args.label or "")
    address = (args.proxy or _recorded_proxy(home)).removeprefix("http://").rstrip("/")
    url = proxy_url(token, address)
    if args.json:
        print(json.dumps({
            "id": grant.id, "token": token, "proxy_url": url, "label": grant.label,
            "connectors": sorted(grant.connectors), "expires_at": grant.expires_at,
        }, indent=2))  # fmt: skip
    else:
        print(url)
    return 0


def _grant_list(reg: Registry, as_json: bool) -> int:
    rows = reg.store.grants()
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
        _print_table(("ID", "STATE", "EXPIRES", "CONNECTORS", "LABEL"), table)
    else:
        print("no grants (mint one with `egress grant --connector NAME`)")
    return 0


def cmd_keys_rotate(args: argparse.Namespace, home: Home) -> int:
    old, new = Registry(home).rotate_master_key()
    print(f"master key rotated: {old} -> {new}; every secret re-sealed (old key kept as *.old)")
    print("running proxies pick the new key up at their next reload")
    return 0


def _recorded_proxy(home: Home) -> str:
    try:
        return "http://" + home.addr_file.read_text().strip()
    except OSError:
        return "http://" + DEFAULT_LISTEN


def _stats_store(home: Home) -> StatsStore:
    home.store().close()  # a clear error if the store is missing or corrupt
    return StatsStore(home.db_path)


def cmd_stats(args: argparse.Namespace, home: Home) -> int:
    names = [c.name for c, _ in Registry(home).connectors()]
    if args.connector and args.connector not in names:
        raise ConfigError(f"no connector named {args.connector!r}")
    stats = _stats_store(home)
    rows = stats.summary(names, args.connector)
    blocked = [] if args.connector else stats.blocked_summary()
    if args.json:
        print(
            json.dumps(
                {"window_hours": 24, "connectors": [asdict(r) for r in rows], "blocked": blocked}, indent=2
            )
        )
        return 0
    now = time.time()
    table = []
    for r in rows:
        last = ""
        if r.last_error:
            e = r.last_error
            what = str(e.get("status") or e.get("failure"))
            last = f"{what} {e['method']} {e['path']} {format_age(now - e['ts'])}"
        table.append(
            (r.connector, str(r.requests_24h), str(r.errors_24h), f"{r.error_rate:.1%}", last,
             f"! {r.errors_1h} error(s) in the last hour" if r.alert else "")
        )  # fmt: skip
    if table:
        _print_table(("CONNECTOR", "REQUESTS 24H", "ERRORS 24H", "ERROR RATE", "LAST ERROR", "ALERT"), table)
    else:
        print("no connectors")
    if blocked:
        print()
        _print_table(
            ("BLOCKED HOST", "REASON", "COUNT 24H"),
            [(b["host"], b["reason"], str(b["count"])) for b in blocked],
        )
    return 0


def cmd_logs(args: argparse.Namespace, home: Home) -> int:
    kind = "blocked" if args.blocked else "error" if args.errors else None
    since = time.time() - parse_duration(args.since, "--since") if args.since else None
    filters: dict[str, Any] = {
        "kind": kind,
        "since": since,
        "connector": args.connector,
        "grant_label": args.grant,
    }
    stats = _stats_store(home)
    header = ("TIME", "KIND", "WHAT", "METHOD", "HOST", "PATH", "GRANT", "REQUEST ID")

    def row(e: Event) -> tuple[str, ...]:
        what = f"{e.connector} {e.status or e.failure}" if e.kind == "error" else str(e.reason)
        stamp = datetime.fromtimestamp(e.ts).strftime("%Y-%m-%d %H:%M:%S")
        return (stamp, e.kind, what, e.method, e.host, e.path or "-", e.grant_label or "-", e.request_id)

    def emit(events: Sequence[Event], with_header: bool) -> None:
        if args.json:
            for e in events:
                print(json.dumps(e.to_dict()), flush=True)
        elif events:
            _print_table(header if with_header else (), [row(e) for e in events])
            sys.stdout.flush()

    start = stats.last_id()
    events = stats.events(**filters, limit=args.limit)
    if not events and not args.json and not args.follow:
        print("no matching log rows in the last 24 hours")
    emit(events, True)
    if args.follow:
        for e in stats.follow(start, **filters):
            emit([e], False)
    return 0


def cmd_run(args: argparse.Namespace, home: Home) -> int:
    host, port = _listen(args.listen)
    if args.worker:
        from addons.runner import RunSettings, run  # mitmproxy is imported only here

        return run(
            RunSettings(
                home=home,
                listen_host=host,
                listen_port=port,
                upstream_ca=args.upstream_ca,
                allow_network=tuple(args.allow_network),
                resolve=tuple(args.resolve),
                require_grant=args.require_grant,
                record=not args.no_record,
                log_format=args.log_format,
                scrub_responses=args.scrub_responses,
            )
        )
    loopback = host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
    if not loopback and not (args.require_grant or args.insecure_no_auth):
        raise ConfigError(
            f"--listen {args.listen}: anyone who can reach this address could use every "
            "connector; add --require-grant (clients present `egress grant` tokens), or pass "
            "--insecure-no-auth to accept that"
        )
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    logconfig.configure(args.log_format)
    home.init()
    config = Path(args.config) if args.config else None
    if config:
        _apply_config(home, config)
    if args.upstream_ca and not Path(args.upstream_ca).is_file():
        raise ConfigError(f"--upstream-ca {args.upstream_ca}: no such file")
    NetGuard(args.allow_network, args.resolve)  # bad CIDR or pin: exit 2 now
    reg = Registry(home)
    reg.policy()  # wrong master key or tampered store: exit 2 now, not in every worker
    reg.close()

    worker_args = ["--log-format", args.log_format]
    if args.upstream_ca:
        worker_args += ["--upstream-ca", str(Path(args.upstream_ca).absolute())]
    for cidr in args.allow_network:
        worker_args += ["--allow-network", cidr]
    for pin in args.resolve:
        worker_args += ["--resolve", pin]
    if args.require_grant:
        worker_args.append("--require-grant")
    if args.no_record:
        worker_args.append("--no-record")
    if not args.scrub_responses:
        worker_args.append("--no-scrub-responses")
    spec = SupervisorSpec(
        worker_args=worker_args,
        count=args.workers,
        run_dir=str(home.run_dir),
        host=host,
        port=port,
        admin=args.admin,
        config=str(config.absolute()) if config else None,
        log_format=args.log_format,
    )
    # Replace this process (same pid, so signals still reach it) with a lean
    # supervisor: it need not hold the CLI's imports while the workers run.
    os.environ["EGRESS_HOME"] = str(home.root)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "proxy.supervisor", spec.to_json()])
    return 1  # not reached


def reload_config(config: str) -> None:
    """SIGHUP in the supervisor: re-apply the connectors file (workers reload it)."""
    _apply_config(Home.from_env(), Path(config))


def _apply_config(home: Home, path: Path) -> None:
    report = apply_file(home, path, prune=True)
    changed = report.created + report.updated + report.removed
    logger.info("%s: %s", path, f"{len(changed)} connector(s) changed" if changed else "no changes")
    for w in report.warnings:
        logger.warning("%s", w)


# -- helpers ----------------------------------------------------------------


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT (port 0 picks a free one)")
    return host.strip("[]") or "127.0.0.1", int(port)


def _connector_from_args(args: argparse.Namespace, current: Connector | None) -> Connector:
    inject: dict[str, str] | None = None
    if args.header:
        inject = {"header": args.header}
        if args.template is not None:
            inject["template"] = args.template
    elif args.query:
        inject = {"query": args.query}
    elif args.template is not None:
        if current is None or not current.inject.header:
            raise ConfigError("--template needs --header")
        inject = {"header": current.inject.header, "template": args.template}
    if current is not None:
        return make_connector(
            current.name,
            patterns=args.pattern or [p.text for p in current.patterns],
            inject=inject or current.inject.to_dict(),
            preset=args.preset or current.preset,
        )
    return make_connector(args.name, patterns=args.pattern, inject=inject, preset=args.preset)


def _read_secret(args: argparse.Namespace, *, required: bool) -> str | None:
    where = "secret"
    if args.secret_stdin:
        if sys.stdin.isatty():
            print("secret (input hidden, end with Enter): ", end="", file=sys.stderr, flush=True)
            import getpass

            value = getpass.getpass(prompt="")
        else:
            value = sys.stdin.read()
        where = "secret from stdin"
    elif args.secret_env:
        value = os.environ.get(args.secret_env, None)  # type: ignore[assignment]
        if value is None:
            raise ConfigError(f"--secret-env {args.secret_env}: variable is not set")
        where = f"--secret-env {args.secret_env}"
    elif args.secret_file:
        try:
            value = Path(args.secret_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"--secret-file {args.secret_file}: {getattr(e, 'strerror', None) or 'not UTF-8 text'}"
            ) from None
        where = f"--secret-file {args.secret_file}"
    elif required:
        raise ConfigError("a secret is required: --secret-stdin, --secret-env VAR or --secret-file PATH")
    else:
        return None
    return check_secret(value.rstrip("\r\n"), where)


def _describe(c: Connector, created: float, updated: float) -> dict[str, Any]:
    return {
        "name": c.name,
        "preset": c.preset,
        "patterns": [p.text for p in c.patterns],
        "inject": c.inject.to_dict(),
        "inject_summary": c.inject.describe(),
        "created_at": created,
        "updated_at": updated,
    }


def _print_warnings(reg: Registry) -> None:
    from proxy.registry import ambiguities

    for w in ambiguities(c for c, _ in reg.connectors()):
        print(f"warning: {w}", file=sys.stderr)


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    lines = [header, *rows] if header else list(rows)
    widths = [max(len(str(r[i])) for r in lines) for i in range(len(lines[0]))] if lines else []
    for r in lines:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


# -- parser -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="egress",
        description="HTTPS egress proxy that injects API secrets sandboxed code never sees.",
    )
    p.add_argument("--version", action="version", version=f"egress-proxy {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    def command(name: str, func: Callable[..., int], help: str, parent: Any = sub) -> Any:
        sp = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    command("init", cmd_init, "create EGRESS_HOME, master key, store and CA (idempotent)")

    conn = sub.add_parser("connector", help="add, update, remove, list, show connectors")
    csub = conn.add_subparsers(metavar="ACTION")

    def connector_usage(args: argparse.Namespace, home: Home) -> int:
        conn.print_help(sys.stderr)
        return 2

    conn.set_defaults(func=connector_usage)
    for action, func in (("add", cmd_connector_add), ("update", cmd_connector_update)):
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
    command("remove", cmd_connector_remove, "remove a connector", csub).add_argument("name", metavar="NAME")
    command("list", cmd_connector_list, "list connectors", csub).add_argument("--json", action="store_true")
    sp = command("show", cmd_connector_show, "show one connector (never its secret)", csub)
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--json", action="store_true")

    sp = command("apply", cmd_apply, "sync connectors from a YAML file")
    sp.add_argument("-f", "--file", required=True, metavar="FILE")
    sp.add_argument("--prune", action="store_true", help="remove connectors the file does not list")

    sp = command("check", cmd_check, "would the proxy allow this URL, and through which connector?")
    sp.add_argument("url", metavar="URL")

    sp = command("run", cmd_run, "run the proxy")
    sp.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT")
    sp.add_argument("--config", metavar="FILE", help="apply this connectors file (with --prune) at start")
    sp.add_argument("--upstream-ca", metavar="PEM", help="also trust these CAs for upstream servers")
    sp.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="let upstream connections reach this private range (repeat)",
    )
    sp.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="HOST=IP",
        help="pin a host name to an address, like curl --resolve (repeat)",
    )
    sp.add_argument("--admin", metavar="HOST:PORT", help="serve /healthz and /metrics here")
    sp.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, metavar="N",
        help="proxy processes sharing the port (default: number of cores)",
    )  # fmt: skip
    sp.add_argument("--log-format", choices=["text", "json"], default="text")
    sp.add_argument(
        "--scrub-responses", action=argparse.BooleanOptionalAction, default=True,
        help="mask an injected secret that an upstream echoes back (default: on)",
    )  # fmt: skip
    sp.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    sp.add_argument("--require-grant", action="store_true", help="every client must present a grant")
    sp.add_argument("--no-record", action="store_true", help=argparse.SUPPRESS)  # benchmarks only
    sp.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow listening on a non-loopback address without client authentication",
    )

    sp = command("stats", cmd_stats, "requests, errors and alerts per connector over 24 hours")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--connector", metavar="NAME")

    sp = command("logs", cmd_logs, "error and blocked-request log, newest first")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--blocked", action="store_true", help="blocked requests only")
    g.add_argument("--errors", action="store_true", help="errors only")
    sp.add_argument("--connector", metavar="NAME")
    sp.add_argument("--grant", metavar="LABEL", help="only rows of this grant label")
    sp.add_argument("--since", metavar="DURATION", help="e.g. 15m, 1h (default: 24h)")
    sp.add_argument("--limit", type=int, default=200, help="at most this many rows (default 200)")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.add_argument("--follow", "-f", action="store_true", help="keep printing new rows until interrupted")

    sp = command("ca", cmd_ca, "the CA clients must trust")
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--path", action="store_true", help="print the CA certificate's path (default)")
    g.add_argument("--pem", action="store_true", help="print the CA certificate")
    g.add_argument("--bundle", metavar="PATH", help="write system CAs plus ours to PATH")
    g.add_argument("--import", dest="import_", metavar="PEM", help="use your own CA (key and certificate)")

    sp = command("env", cmd_env, "shell exports that route a step through the proxy")
    sp.add_argument("--proxy", metavar="URL", help="proxy URL (default: the running proxy's address)")
    sp.add_argument("--grant", metavar="TOKEN", help="use this grant as the proxy credential")

    keys = sub.add_parser("keys", help="master key management")
    ksub = keys.add_subparsers(metavar="ACTION")
    command("rotate", cmd_keys_rotate, "new master key; re-seal every secret", ksub)

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
    return p


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``egress run``: validate everything once, then become the supervisor."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from proxy.connectors import connector_key
from proxy.errors import ConfigError, StoreUnavailable
from proxy.hosts import is_loopback, parse_listen
from proxy.netguard import NetGuard
from proxy.reasons import Reason, help_of
from proxy.runtime import logsetup
from proxy.runtime.adminserver import check_available, login_limit
from proxy.runtime.settings import SETTINGS_ENV, RunSettings, python_module
from proxy.service import policycache
from proxy.service.admin_tokens import check_bootstrap
from proxy.service.apply import apply_config
from proxy.service.connectors import Connectors
from proxy.service.home import Home

logger = logging.getLogger(__name__)
DEFAULT_LISTEN = "127.0.0.1:8080"
GRANT_ENV = "EGRESS_GRANT"  # a transparent listener's grant, kept off command lines


def settings_from_args(args: argparse.Namespace, home: Home) -> RunSettings:
    """The run spec, with every flag checked: bad input exits 2 here, never in a worker."""
    host, _ = parse_listen(args.listen, "--listen")
    if not is_loopback(host) and not (args.require_grant or args.insecure_no_auth):
        raise ConfigError(
            f"--listen {args.listen}: anyone who can reach this address could use every "
            "connector; add --require-grant (clients present `egress grant` tokens), or pass "
            "--insecure-no-auth to accept that"
        )
    if args.mode == "transparent" and not args.grant and not args.connector:
        # The grant may come from the environment: a command line is readable by every local user.
        args.grant = os.environ.get(GRANT_ENV) or None
    if args.mode == "transparent" and bool(args.grant) == bool(args.connector):
        raise ConfigError(
            "--mode transparent needs --grant TOKEN or --connector NAME (intercepted traffic carries "
            "no credential of its own, so the listener says who it is)"
        )
    if args.mode == "regular" and (args.grant or args.connector):
        raise ConfigError("--grant and --connector scope a transparent listener: add --mode transparent")
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.audit_log_max_mb < 1:
        raise ConfigError("--audit-log-max-mb must be at least 1")
    if args.admin:
        parse_listen(args.admin, "--admin")
        check_available()
        check_bootstrap(home.env)
        login_limit(home.env)
    elif args.admin_metrics_token:
        raise ConfigError("--admin-metrics-token needs --admin HOST:PORT")
    if args.upstream_ca and not Path(args.upstream_ca).is_file():
        raise ConfigError(f"--upstream-ca {args.upstream_ca}: no such file")
    NetGuard(args.allow_network, args.resolve)  # bad CIDR or pin
    for flag, value in (("--idle-timeout", args.idle_timeout), ("--handshake-timeout", args.handshake_timeout),
                        ("--max-client-connections", args.max_client_connections),
                        ("--max-connector-requests", args.max_connector_requests),
                        ("--h2-max-resets", args.h2_max_resets),
                        ("--max-client-share", args.max_client_share),
                        ("--request-body-timeout", args.request_body_timeout),
                        ("--upstream-timeout", args.upstream_timeout),
                        ("--max-websocket-message", args.max_websocket_message)):  # fmt: skip
        if value <= 0:
            raise ConfigError(f"{flag} must be positive, not {value}")
    if args.flush_interval is not None and not 0 < args.flush_interval <= 3600:
        raise ConfigError(f"--flush-interval must be between 0 and 3600 seconds, not {args.flush_interval}")
    if args.max_client_share > 1:
        raise ConfigError(
            f"--max-client-share is a fraction of --max-connector-requests, at most 1, not {args.max_client_share}"
        )
    return RunSettings(
        home=str(home.root),
        run_dir=str(home.run_dir),
        listen=args.listen,
        mode=args.mode,
        transparent_grant=args.grant or "",
        transparent_connectors=tuple(connector_key(home.workspace, n) for n in args.connector or ()),
        workers=args.workers,
        admin=args.admin,
        admin_metrics_token=args.admin_metrics_token,
        config=str(Path(args.config).absolute()) if args.config else None,
        upstream_ca=str(Path(args.upstream_ca).absolute()) if args.upstream_ca else None,
        allow_network=tuple(args.allow_network),
        resolve=tuple(args.resolve),
        require_grant=args.require_grant,
        # A transparent listener explains only when asked (`egress exec` asks: its listener is the step's).
        explain_blocks=(is_loopback(host) and args.mode == "regular")
        if args.explain_blocks is None
        else args.explain_blocks,
        log_format=args.log_format,
        scrub_responses=args.scrub_responses,
        scan_bodies=args.scan_bodies,
        record=not args.no_record,
        flush_interval=args.flush_interval or 0.0,
        idle_timeout=args.idle_timeout,
        handshake_timeout=args.handshake_timeout,
        max_client_connections=args.max_client_connections,
        max_connector_requests=args.max_connector_requests,
        h2_max_resets=args.h2_max_resets,
        audit_log=audit_target(args.audit_log),
        audit_max_mb=args.audit_log_max_mb,
        max_client_share=args.max_client_share,
        request_body_timeout=args.request_body_timeout,
        upstream_timeout=args.upstream_timeout,
        max_websocket_message=args.max_websocket_message,
    )


def audit_target(value: str | None) -> str:
    """``--audit-log``: ``-`` (stdout) or a file in a directory that exists (absolute: workers cd)."""
    if not value or value == "-":
        return value or ""
    path = Path(value).absolute()
    if path.is_dir() or not path.parent.is_dir():
        raise ConfigError(f"--audit-log {value}: want a file in an existing directory")
    return str(path)


def check_grant(home: Home, token: str, revoked: frozenset[str] | None = None) -> None:
    """A listener's grant must verify now; revocation and expiry are re-checked per connection."""
    from proxy.grants import grant_problem

    key = home.grant_key()
    grant = key.verify(token)
    if isinstance(grant, Reason):
        raise ConfigError(f"--grant: {help_of(grant)}")
    if revoked is None:
        store = home.store()
        try:
            revoked = store.revoked_grants()
        finally:
            store.close()
    problem = grant_problem(grant, key, revoked, time.time())
    if problem:
        raise ConfigError(f"--grant: {help_of(problem)}")


def check_connectors(settings: RunSettings, keys: set[str]) -> None:
    unknown = sorted(set(settings.transparent_connectors) - keys)
    if unknown:
        raise ConfigError(f"--connector: no connector named {', '.join(map(repr, unknown))}")


def prepare(home: Home, settings: RunSettings) -> None:
    """Everything the workers will need, checked once: exit 2 now, not in every worker."""
    home.init()
    if settings.config:
        apply_config(home, Path(settings.config))
    with Connectors(home) as connectors:
        connectors.policy()  # wrong master key or tampered store
        check_connectors(settings, {connector_key(home.workspace, n) for n in connectors.names()})
    if settings.transparent_grant:
        check_grant(home, settings.transparent_grant)


def prepare_offline(home: Home, settings: RunSettings, down: StoreUnavailable) -> None:
    """The store is unreachable: start from the policy cache an earlier run left, or not at all."""
    cached = policycache.load(home) if policycache.wanted(home) else None
    if cached is None:
        raise StoreUnavailable(
            f"{down}; a proxy starts without its store only from the policy cache an earlier run "
            f"left at {policycache.path(home)}, and there is none"
        )
    with Connectors(home, home.store(lazy=True)) as connectors:
        connectors.policy_of(cached.connectors)  # the master key must still open them
    check_connectors(settings, {c.name for c in cached.connectors})  # stored names are keys
    if settings.transparent_grant:
        check_grant(home, settings.transparent_grant, cached.revoked)
    logger.warning(
        "%s: starting from the cached policy in %s (%s)%s; the proxy reloads from the store when it answers",
        down,
        policycache.path(home),
        policycache.describe(cached),
        f"; --config {settings.config} not applied" if settings.config else "",
    )


def cmd_run(args: argparse.Namespace, home: Home) -> int:
    settings = settings_from_args(args, home)
    logsetup.configure(settings.log_format)
    try:
        prepare(home, settings)
    except StoreUnavailable as down:
        prepare_offline(home, settings, down)
    # Replace this process (same pid, so signals still reach it) with a lean
    # supervisor: it need not hold the CLI's imports while the workers run.
    os.environ["EGRESS_HOME"] = str(home.root)
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[SETTINGS_ENV] = settings.to_json()
    os.execv(sys.executable, python_module("proxy.runtime.supervisor"))
    return 1  # not reached


def add_upstream_flags(sp: Any) -> None:
    """How the proxy reaches upstreams: shared by `egress run` and `egress exec` (which passes them on)."""
    sp.add_argument("--upstream-ca", metavar="PEM", help="also trust these CAs for upstream servers")
    sp.add_argument(
        "--allow-network", action="append", default=[], metavar="CIDR",
        help="let upstream connections reach this private range (repeat)",
    )  # fmt: skip
    sp.add_argument(
        "--resolve", action="append", default=[], metavar="HOST=IP",
        help="pin a host name to an address, like curl --resolve (repeat)",
    )  # fmt: skip


def upstream_flags(args: argparse.Namespace) -> list[str]:
    """The flags ``add_upstream_flags`` parsed, as arguments again."""
    argv = ["--upstream-ca", args.upstream_ca] if args.upstream_ca else []
    for flag, values in (("--allow-network", args.allow_network), ("--resolve", args.resolve)):
        argv += [a for v in values for a in (flag, v)]
    return argv


def register(sub: Any, command: Any) -> None:
    sp = command("run", cmd_run, "run the proxy")
    sp.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT")
    sp.add_argument(
        "--mode", choices=["regular", "transparent"], default="regular",
        help="regular: clients set HTTPS_PROXY; transparent: traffic redirected by iptables (see "
        "`egress transparent rules`)",
    )  # fmt: skip
    sp.add_argument(
        "--grant",
        metavar="TOKEN",
        help=f"transparent mode: intercepted traffic uses this grant (or set {GRANT_ENV})",
    )
    sp.add_argument(
        "--connector",
        action="append",
        metavar="NAME",
        help="transparent mode: connectors it may use (repeat)",
    )
    sp.add_argument("--config", metavar="FILE", help="apply this connectors file (with --prune) at start")
    add_upstream_flags(sp)
    sp.add_argument(
        "--admin", metavar="HOST:PORT", help="serve /healthz, /metrics, the admin API and dashboard here"
    )
    sp.add_argument(
        "--admin-metrics-token",
        action="store_true",
        help="/metrics needs an all-workspace admin token too (default: open, for scrapers)",
    )
    sp.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, metavar="N",
        help="proxy processes sharing the port (default: number of cores)",
    )  # fmt: skip
    sp.add_argument("--log-format", choices=["text", "json"], default="text")
    sp.add_argument(
        "--audit-log", metavar="FILE",
        help="one JSON line per decision (schema: proxy/audit.schema.json) to FILE, or - for stdout",
    )  # fmt: skip
    sp.add_argument(
        "--audit-log-max-mb", type=int, default=100, metavar="MB",
        help="rotate the audit file past this size, keeping 5 (default: 100)",
    )  # fmt: skip
    sp.add_argument(
        "--scrub-responses", action=argparse.BooleanOptionalAction, default=True,
        help="mask an injected secret that an upstream echoes back (default: on)",
    )  # fmt: skip
    sp.add_argument(
        "--scan-bodies", action=argparse.BooleanOptionalAction, default=True,
        help="refuse request bodies and client WebSocket messages that carry a secret the proxy holds "
        "(default: on; request lines, headers and CONNECT hosts are always checked)",
    )  # fmt: skip
    sp.add_argument("--require-grant", action="store_true", help="every client must present a grant")
    sp.add_argument(
        "--explain-blocks", action=argparse.BooleanOptionalAction, default=None,
        help="accept the CONNECT (transparent: the TLS) of a refused host and answer its requests with "
        "the 403 JSON, so SDKs show why (default: on for loopback listeners in regular mode)",
    )  # fmt: skip
    limits = sp.add_argument_group("limits")
    limits.add_argument("--idle-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="close a connection idle this long (default 600; waiting for an upstream is not idle)")  # fmt: skip
    limits.add_argument("--request-body-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="time for a request body from its head, plus 1 s per 64 KiB received, then 408 "
                        "(default 60)")  # fmt: skip
    limits.add_argument("--upstream-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="time for an upstream to start its response once the request is sent, then 504 "
                        "(default 600)")  # fmt: skip
    limits.add_argument("--handshake-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="time from connect until TLS inside the tunnel (default 10)")  # fmt: skip
    limits.add_argument("--max-client-connections", type=int, default=256, metavar="N",
                        help="open connections per client address and worker (default 256)")  # fmt: skip
    limits.add_argument("--max-connector-requests", type=int, default=256, metavar="N",
                        help="requests in flight per connector and worker, then 503 (default 256)")  # fmt: skip
    limits.add_argument("--max-client-share", type=float, default=0.5, metavar="FRACTION",
                        help="of a connector's requests in flight, the share one client address may hold "
                        "(default 0.5)")  # fmt: skip
    limits.add_argument("--max-websocket-message", type=int, default=16 * 1024 * 1024, metavar="BYTES",
                        help="size of one WebSocket message, then close 1009 (default 16 MiB)")  # fmt: skip
    limits.add_argument("--h2-max-resets", type=int, default=100, metavar="N",
                        help="HTTP/2 stream resets per connection in 10 s before GOAWAY (default 100)")  # fmt: skip
    sp.add_argument(
        "--flush-interval", type=float, default=None, metavar="SECONDS",
        help="write counters to the store this often, jittered by 20%% (default: 1 for SQLite, "
        "5 for PostgreSQL, which every proxy of a fleet writes to)",
    )  # fmt: skip
    sp.add_argument("--no-record", action="store_true", help=argparse.SUPPRESS)  # benchmarks only
    sp.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow listening on a non-loopback address without client authentication",
    )

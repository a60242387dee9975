"""``egress stats`` and ``egress logs``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from proxy.cli.render import format_age, print_table
from proxy.durations import parse_duration
from proxy.health import Health, State
from proxy.nearmiss import NearMiss, suggestion
from proxy.policy import Block, Policy
from proxy.service.home import Home
from proxy.service.monitoring import Monitoring
from proxy.stats import Event


def alert_text(h: Health) -> str:
    """Why a connector is flagged, in the terms of the rule that flagged it."""
    hour = h.last_1h
    if h.state is State.CREDENTIAL_REJECTED:
        return f"! {hour.rejected}/{hour.requests} got 401/403 in the last hour: check the secret"
    if h.state is State.FAILING:
        failed = hour.server_errors + hour.transport_failures
        return f"! {failed}/{hour.requests} got 5xx or no response in the last hour"
    return ""


def cmd_stats(args: argparse.Namespace, home: Home) -> int:
    if args.by_node:
        return stats_by_node(args, home)
    with Monitoring(home) as monitoring:
        rows, blocked = monitoring.stats(args.connector)
    if args.json:
        doc = {"window_hours": 24, "connectors": [asdict(r) for r in rows], "blocked": blocked}
        print(json.dumps(doc, indent=2))
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
            (r.connector, str(r.health.state), str(r.requests_24h), str(r.errors_24h), f"{r.error_rate:.1%}",
             last, alert_text(r.health))
        )  # fmt: skip
    if table:
        print_table(
            ("CONNECTOR", "HEALTH", "REQUESTS 24H", "ERRORS 24H", "ERROR RATE", "LAST ERROR", "ALERT"), table
        )
    else:
        print("no connectors")
    if blocked:
        print()
        print_table(
            ("BLOCKED HOST", "REASON", "COUNT 24H"),
            [(b["host"], b["reason"], str(b["count"])) for b in blocked],
        )
    return 0


def stats_by_node(args: argparse.Namespace, home: Home) -> int:
    with Monitoring(home) as monitoring:
        nodes = monitoring.nodes(args.connector)
    if args.json:
        print(json.dumps({"window_hours": 24, "nodes": nodes}, indent=2))
        return 0
    if not nodes:
        print("no traffic counted in the last 24 hours")
        return 0
    now = time.time()
    print_table(
        ("NODE", "REQUESTS 24H", "ERRORS 24H", "LAST COUNTED", "BUSIEST CONNECTOR"),
        [
            (n["node"], str(n["requests_24h"]), str(n["errors_24h"]), format_age(now - n["last_seen"]),
             max(n["connectors"], key=lambda c: c["requests_24h"])["connector"])
            for n in nodes
        ],
    )  # fmt: skip
    return 0


def cmd_logs(args: argparse.Namespace, home: Home) -> int:
    if args.suggest:
        return cmd_suggest(args, home)
    kind = "blocked" if args.blocked else "error" if args.errors else None
    since = time.time() - parse_duration(args.since, "--since") if args.since else None
    filters: dict[str, Any] = {
        "kind": kind,
        "since": since,
        "connector": args.connector,
        "grant_label": args.grant,
    }
    header = ("TIME", "KIND", "WHAT", "METHOD", "HOST", "PATH", "GRANT", "REQUEST ID", "NEAR MISS")

    def row(e: Event) -> tuple[str, ...]:
        what = f"{e.connector} {e.status or e.failure}" if e.kind == "error" else str(e.reason)
        stamp = datetime.fromtimestamp(e.ts).strftime("%Y-%m-%d %H:%M:%S")
        near = f"{e.near_miss.connector} {e.near_miss.differs}: {e.near_miss.detail}" if e.near_miss else "-"
        return (
            stamp,
            e.kind,
            what,
            e.method,
            e.host,
            e.path or "-",
            e.grant_label or "-",
            e.request_id,
            near,
        )

    def emit(events: Sequence[Event], with_header: bool) -> None:
        if args.json:
            for e in events:
                print(json.dumps(e.to_dict()), flush=True)
        elif events:
            print_table(header if with_header else (), [row(e) for e in events])
            sys.stdout.flush()

    with Monitoring(home) as monitoring:
        start = monitoring.last_id()
        events = monitoring.events(**filters, limit=args.limit)
        if not events and not args.json and not args.follow:
            print("no matching log rows in the last 24 hours")
        emit(events, True)
        if args.follow:
            for e in monitoring.follow(start, **filters):
                emit([e], False)
    return 0


def cmd_suggest(args: argparse.Namespace, home: Home) -> int:
    """One proposal per distinct blocked request: the smallest change that would allow it.

    Proposals are printed, never applied. Each comes from the near miss the
    proxy logged (what it saw then); a row logged without one is matched
    against the current connectors (no secret is opened for that).
    """
    since = time.time() - parse_duration(args.since, "--since") if args.since else None
    with Monitoring(home) as monitoring:
        events = monitoring.events(
            kind="blocked", since=since, connector=args.connector, grant_label=args.grant, limit=args.limit
        )
        policy = monitoring.matching_policy()
    distinct: dict[tuple[str, str, str, str], tuple[Event, int]] = {}
    for e in events:  # newest first: the first row of a request is its latest near miss
        key = (e.method, e.host, e.path, e.reason or "")
        first, count = distinct.get(key, (e, 0))
        distinct[key] = (first, count + 1)
    rows = []
    for (method, host, path, reason), (e, count) in distinct.items():
        if not path:  # a refused CONNECT or TLS handshake: no URL to propose a pattern for
            continue
        near = e.near_miss or near_miss_now(policy, host, path, method)
        rows.append(
            {
                "method": method,
                "url": f"https://{host}{path}",
                "reason": reason,
                "count": count,
                "suggestion": suggestion(near, method, host, path),
            }
        )
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    if not rows:
        print("no blocked requests to suggest a change for in the last 24 hours")
        return 0
    for r in rows:
        print(f"{r['count']}x {r['method']} {r['url']} ({r['reason']})")
        print(f"  suggest: {r['suggestion']}")
    return 0


def near_miss_now(policy: Policy, authority: str, path: str, method: str) -> NearMiss | None:
    """A near miss for a logged request, against today's connectors (no grant)."""
    decision = policy.explain(f"https://{authority}{path}", None, method)
    return decision.near_miss if isinstance(decision, Block) else None


def register(sub: Any, command: Any) -> None:
    sp = command("stats", cmd_stats, "requests, errors and credential health per connector over 24 hours")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--connector", metavar="NAME")
    sp.add_argument(
        "--by-node", action="store_true",
        help="per process (EGRESS_NODE, else host name): what each counted, for a fleet on one store",
    )  # fmt: skip

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
    sp.add_argument(
        "--suggest",
        action="store_true",
        help="per distinct blocked request, the smallest pattern change that would allow it (never applied)",
    )

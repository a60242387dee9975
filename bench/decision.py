"""Microbenchmark: the per-request decision with 10 and 10,000 connectors.

One decision is what the request path computes for every request inside a
tunnel: ``check_tunnel_request`` (SNI/Host/:authority against the CONNECT
target), ``Policy.route`` (which connector, secret pre-rendered) and
``Tally.request`` (the monitoring counter, with its journal as in a worker). ``Policy.connect`` runs once per
tunnel and is shown separately, and so is a blocked request (``blocked_us``:
a host no pattern allows, with its near miss computed).

Run alone: ``.venv/bin/python bench/decision.py``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

from proxy.admission import RequestFacts, Rules, admit, check_tunnel_request
from proxy.connectors import make_connector
from proxy.context import Tunnel
from proxy.journal import Journals
from proxy.policy import Allow, Block, Policy, Target
from proxy.stats import Tally

HOST = "api.bench.test"
PATH = "/v1/items/42"
INJECT = {"header": "Authorization", "template": "Bearer {{secret}}"}


def build_policy(n: int) -> Policy:
    """The real connector plus ``n - 1`` fillers, each on a distinct host."""
    connectors = [
        (make_connector("bench", patterns=[f"https://{HOST}/*"], inject=INJECT), {"secret": "bench-secret"})
    ]
    connectors += [
        (
            make_connector(f"filler-{i:05d}", patterns=[f"https://api-{i:05d}.filler.test/*"], inject=INJECT),
            {"secret": f"filler-secret-{i}"},
        )
        for i in range(n - 1)
    ]
    return Policy(connectors)


def _per_call_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Median over ``repeat`` timings of ``number`` calls, in microseconds per call."""
    timings = timeit.repeat(fn, number=number, repeat=repeat)
    return statistics.median(timings) / number * 1e6


def measure(n: int, number: int = 50_000, repeat: int = 7) -> dict[str, float]:
    policy = build_policy(n)
    assert len(policy) == n
    target = Target(HOST, 443)
    journal_dir = tempfile.TemporaryDirectory()
    journals = Journals(Path(journal_dir.name))
    tally = Tally(journal=journals)  # as a worker counts: in memory and in its journal
    rules = Rules(policy)
    tunnel = Tunnel(target, "198.51.100.1")

    def facts() -> RequestFacts:  # built per request, as the adapter does
        return RequestFacts(True, HOST, "198.51.100.1", 443, "", [HOST], PATH)

    def check() -> object:
        return check_tunnel_request(target, facts())

    def route() -> object:
        return policy.route(target, PATH)

    def count() -> None:
        tally.request("bench", 200)

    def decide() -> None:
        decision = admit(tunnel, facts(), rules, 0.0)
        assert isinstance(decision, Allow)
        tally.request(decision.connector, 200)

    def blocked(on: Target) -> Callable[[], None]:
        def run() -> None:
            decision = policy.route(on, PATH)
            assert isinstance(decision, Block) and decision.near_miss is not None

        return run

    decision = policy.route(target, PATH)
    assert isinstance(decision, Allow) and decision.connector == "bench", decision
    assert decision.rendered.headers == (("Authorization", "Bearer bench-secret"),)
    assert policy.connect(target) is None
    row = {
        "connectors": n,
        "decision_us": _per_call_us(decide, number, repeat),
        "check_us": _per_call_us(check, number, repeat),
        "route_us": _per_call_us(route, number, repeat),
        "tally_us": _per_call_us(count, number, repeat),
        "connect_us": _per_call_us(lambda: policy.connect(target), number, repeat),
        # a sibling of the bench host; then a host among all the fillers' siblings (the worst case)
        "blocked_us": _per_call_us(blocked(Target("www.bench.test", 443)), number // 10, repeat),
        "blocked_crowded_us": _per_call_us(blocked(Target("x.filler.test", 443)), number // 10, repeat),
    }
    journals.close(remove=True)
    journal_dir.cleanup()
    return row


def main() -> int:
    rows = [measure(n) for n in (10, 10_000)]
    for row in rows:
        print(json.dumps({k: round(v, 3) for k, v in row.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

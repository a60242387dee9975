#!/usr/bin/env python3
"""Before/after of one product change: two egress proxies, interleaved, CPU per request.

    .venv/bin/python bench/ab.py BEFORE_REV [--scenario newconn_c8] [--reps 6]

BEFORE_REV's ``proxy/`` and ``addons/`` are checked out into a temporary git
worktree and put first on that proxy's PYTHONPATH (same virtualenv, same
mitmproxy); the other proxy runs this checkout. Each repetition measures both,
alternating which goes first, so load from other tenants hits both alike,
and the medians of CPU microseconds per request are compared. Each proxy has
its own EGRESS_HOME, initialised by its own code (so a CA change shows).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import run

SCENARIOS = {
    "newconn_c8": lambda t, d: run.hey(t, c=8, duration=d, keepalive=False),
    "keepalive_c32": lambda t, d: run.hey(t, c=32, duration=d),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", help="git revision of the 'before' code")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="newconn_c8")
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--duration", type=float, default=8)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="egress-ab-"))
    old = work / "before"
    subprocess.run(
        ["git", "-C", str(run.ROOT), "worktree", "add", "--detach", str(old), a.before], check=True
    )
    args = argparse.Namespace(size_mib=1, connectors=10)
    procs = run.Procs()
    bench = run.Bench(args, work, procs)
    results: dict[str, list[float]] = {"before": [], "after": []}
    try:
        bench.pki()
        bench.start_nginx()
        for name, pythonpath in (("before", str(old)), ("after", None)):
            env_extra = {"PYTHONPATH": pythonpath} if pythonpath else {}
            original = run.clean_env
            run.clean_env = lambda _o=original, _e=env_extra, **kw: _o(**_e, **kw)  # type: ignore[misc]
            try:
                bench.start_egress(name, name, 10, 1, True)
            finally:
                run.clean_env = original
        bench.sanity()
        for t in bench.targets.values():
            if t.port:
                run.hey(t, c=8, duration=1)
        for rep in range(a.reps):
            order = ["before", "after"] if rep % 2 == 0 else ["after", "before"]
            for name in order:
                r = SCENARIOS[a.scenario](bench.targets[name], a.duration)
                run.log(f"{name:<7} {r.get('cpu_us_per_req', 0):8.0f} us/req {r.get('rps', 0):7.1f} req/s")
                if "cpu_us_per_req" in r and not r.get("errors") and not r.get("non_2xx"):
                    results[name].append(r["cpu_us_per_req"])
    finally:
        procs.stop_all()
        subprocess.run(["git", "-C", str(run.ROOT), "worktree", "remove", "--force", str(old)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    b, c = statistics.median(results["before"]), statistics.median(results["after"])
    print(
        f"{a.scenario}: CPU per request, median of {a.reps}: before ({a.before}) {b:,.0f} us, after {c:,.0f} us"
    )
    print(f"  after / before = {c / b:.3f}; before {[round(x) for x in results['before']]}")
    print(f"  after {[round(x) for x in results['after']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

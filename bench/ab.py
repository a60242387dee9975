#!/usr/bin/env python3
"""Before/after of one product change: two egress proxies, interleaved, CPU per request.

    .venv/bin/python bench/ab.py BEFORE_REV [--scenario newconn_c8] [--reps 6]
    .venv/bin/python bench/ab.py BEFORE_REV --scenario paced_keepalive  # 200 req/s, latency too
    .venv/bin/python bench/ab.py BEFORE_REV --scenario download [--size-mib 200]
    .venv/bin/python bench/ab.py BEFORE_REV --scenario keepalive_c32 --audit  # both with --audit-log

BEFORE_REV's ``proxy/`` and ``addons/`` are checked out into a temporary git
worktree and put first on that proxy's PYTHONPATH (same virtualenv, same
mitmproxy); the other proxy runs this checkout. Each repetition measures both,
alternating which goes first, so load from other tenants hits both alike,
and the medians of CPU microseconds per request (transfers: milliseconds per
MiB) are compared. Each proxy has
its own EGRESS_HOME, initialised by its own code (so a CA change shows).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import run

SCENARIOS: dict[str, Callable[[run.Bench, run.Target, float], dict[str, Any]]] = {
    "newconn_c8": lambda b, t, d: run.hey(t, c=8, duration=d, keepalive=False),
    "keepalive_c32": lambda b, t, d: run.hey(t, c=32, duration=d),
    "paced_keepalive": lambda b, t, d: run.paced_latency(t, rate=200, duration=d, keepalive=True),
    "download": lambda b, t, d: run.transfer(t, "download", b.big, b.put_dir),
    "upload": lambda b, t, d: run.transfer(t, "upload", b.big, b.put_dir),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", help="git revision of the 'before' code")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="newconn_c8")
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--size-mib", type=int, default=200, help="transfer size (download, upload)")
    p.add_argument(
        "--audit", action="store_true", help="run both proxies with --audit-log (each its own file)"
    )
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="egress-ab-"))
    old = work / "before"
    subprocess.run(
        ["git", "-C", str(run.ROOT), "worktree", "add", "--detach", str(old), a.before], check=True
    )
    args = argparse.Namespace(size_mib=a.size_mib, connectors=10)
    procs = run.Procs()
    bench = run.Bench(args, work, procs)
    results: dict[str, list[float]] = {"before": [], "after": []}
    key, unit = (
        ("cpu_ms_per_mib", "ms/MiB") if a.scenario in ("download", "upload") else ("cpu_us_per_req", "us/req")
    )
    try:
        bench.pki()
        bench.start_nginx()
        for name, pythonpath in (("before", str(old)), ("after", None)):
            env_extra = {"PYTHONPATH": pythonpath} if pythonpath else {}
            original = run.clean_env
            run.clean_env = lambda _o=original, _e=env_extra, **kw: _o(**_e, **kw)  # type: ignore[misc]
            try:
                extra = ("--audit-log", str(work / f"{name}-audit.jsonl")) if a.audit else ()
                bench.start_egress(name, name, 10, 1, True, extra=extra)
            finally:
                run.clean_env = original
        bench.sanity()
        for t in bench.targets.values():
            if t.port:
                run.hey(t, c=8, duration=1)
        for rep in range(a.reps):
            order = ["before", "after"] if rep % 2 == 0 else ["after", "before"]
            for name in order:
                r = SCENARIOS[a.scenario](bench, bench.targets[name], a.duration)
                speed = f"{r.get('mib_s', 0):7.1f} MiB/s" if "mib_s" in r else f"{r.get('rps', 0):7.1f} req/s"
                if "p99_us" in r:  # paced: the added latency's tail is what the change is for
                    speed += f" p50 {r['p50_us'] / 1000:.2f} ms p99 {r['p99_us'] / 1000:.2f} ms"
                run.log(f"{name:<7} {r.get(key, 0):8.2f} {unit} {speed} {r.get('error', '')}")
                if key in r and "error" not in r and not r.get("errors") and not r.get("non_2xx"):
                    results[name].append(r[key])
    finally:
        procs.stop_all()
        subprocess.run(["git", "-C", str(run.ROOT), "worktree", "remove", "--force", str(old)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    b, c = statistics.median(results["before"]), statistics.median(results["after"])
    print(f"{a.scenario}: CPU {unit}, median of {a.reps}: before ({a.before}) {b:,.2f}, after {c:,.2f}")
    print(f"  after / before = {c / b:.3f}; before {[round(x, 2) for x in results['before']]}")
    print(f"  after {[round(x, 2) for x in results['after']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

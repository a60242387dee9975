#!/usr/bin/env python3
"""Transparent mode against regular mode: CPU per request and throughput, keep-alive and new connections.

    sudo .venv/bin/python bench/transparent.py [--reps 3] [--duration 8] [--results]

Both proxies are one worker with recording, in front of bench/run.py's TLS
nginx (127.0.0.1:443) with the same connector. Regular: hey with ``-x``
(CONNECT). Transparent: the proxy `egress exec` starts for a step (a long
``sleep``), and hey runs in that step's namespace as ``nobody`` with no proxy
settings, its connections redirected by the namespace's rules. The figure is
the worker's CPU per 2xx response (as in bench/run.py: the machine is shared,
so throughput says as much about the neighbours). The goal: transparent
within 10 % of regular. Repetitions alternate the order. ``--results`` writes
the "transparent mode" section of bench/RESULTS.md (kept by bench/run.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import run
from sections import write_section

SECTION = "transparent-mode"
SCENARIOS = {"keep-alive, c=32": {"c": 32, "keepalive": True}, "new connection per request, c=8": {"c": 8, "keepalive": False}}  # fmt: skip


def worker_of(pid: int) -> int:
    """The `python -m addons.runner` process under ``pid``."""
    for _ in range(600):
        for child in run.tree(pid):
            try:
                if b"addons.runner" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
            except OSError:
                continue
        time.sleep(0.1)
    raise RuntimeError(f"no worker under pid {pid}")


def start_transparent(bench: run.Bench, readable: Path) -> run.Target:
    home = bench.egress_home("transparent", 10)
    log = bench.work / "transparent.log"
    argv = [
        run.EGRESS, "exec", "--connector", "bench", "--upstream-ca", str(bench.ca_path),
        "--allow-network", "127.0.0.0/8", "--resolve", f"{run.HOST}={run.ADDRESS}", "--", "sleep", "100000",
    ]  # fmt: skip
    proc = bench.procs.start("transparent", argv, log, run.clean_env(EGRESS_HOME=str(home)))
    ca = readable / "egress-ca.pem"
    shutil.copy(home / "ca" / "mitmproxy-ca-cert.pem", ca)
    ca.chmod(0o644)
    inside = ["ip", "netns", "exec", f"egx{proc.pid}", "setpriv", "--reuid=65534", "--regid=65534",
              "--clear-groups", "env", f"SSL_CERT_FILE={ca}", f"CURL_CA_BUNDLE={ca}"]  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"egress exec exited {proc.returncode}:\n{run.tail(log)}")
        probe = subprocess.run(
            [*inside, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"https://{run.HOST}/"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if probe.stdout == "200":
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no 200 through the transparent proxy ({probe.stdout} {probe.stderr}):\n{run.tail(log)}"
            )
        time.sleep(0.2)
    target = run.Target("transparent", "transparent (egress exec)", str(ca), proc, None, log)
    target.runner = inside
    target.cpu_pid = worker_of(proc.pid)
    return target


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--results", action="store_true")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (a network namespace; nginx on port 443)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="egress-bench-transparent-"))
    readable = Path(tempfile.mkdtemp(prefix="egress-bench-ca-"))
    readable.chmod(0o755)
    procs = run.Procs()
    bench = run.Bench(argparse.Namespace(size_mib=1, connectors=10), work, procs)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {"regular": [], "transparent": []} for s in SCENARIOS
    }
    try:
        bench.pki()
        bench.start_nginx()
        bench.start_egress("regular", "regular (egress run, 1 worker)", 10, 1, True)
        regular = bench.targets["regular"]
        regular.cpu_pid = worker_of(regular.proc.pid)
        targets = {"regular": regular, "transparent": start_transparent(bench, readable)}
        for rep in range(args.reps):
            order = ["regular", "transparent"] if rep % 2 == 0 else ["transparent", "regular"]
            for scenario, kw in SCENARIOS.items():
                for name in order:
                    out = run.hey(targets[name], duration=args.duration, **kw)
                    results[scenario][name].append(out)
                    run.log(f"{scenario} {name}: {out.get('cpu_us_per_req', 0):.0f} us/req, "
                            f"{out.get('rps', 0):.0f} req/s {out.get('error', '')}")  # fmt: skip
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(readable, ignore_errors=True)
    table = report(results)
    print(table)
    if args.results:
        lead = (
            f"`sudo python bench/transparent.py --results`: {args.reps} repetitions of {args.duration:.0f} s, "
            f"medians, {time.strftime('%Y-%m-%d')}; one worker each, the worker's CPU per 2xx response."
        )
        write_section(
            Path(run.BENCH) / "RESULTS.md", SECTION, "Transparent mode vs regular mode", lead, table
        )
    return 0


def med(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if key in r and not r.get("error")]
    return statistics.median(values) if values else None


def report(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    lines = [
        "| scenario | regular us/req | transparent us/req | ratio | goal <= 1.10 | regular req/s | transparent req/s | errors |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for scenario, per in results.items():
        r, t = med(per["regular"], "cpu_us_per_req"), med(per["transparent"], "cpu_us_per_req")
        ratio = t / r if r and t else None
        errors = sum(
            x.get("errors", 0) + x.get("non_2xx", 0) + bool(x.get("error")) for v in per.values() for x in v
        )
        verdict = "-" if ratio is None else "PASS" if ratio <= 1.10 else "FAIL"
        lines.append(
            f"| {scenario} | {run.fmt(r)} | {run.fmt(t)} | {run.fmt(ratio, 2)} | {verdict} | "
            f"{run.fmt(med(per['regular'], 'rps'))} | {run.fmt(med(per['transparent'], 'rps'))} | {errors} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

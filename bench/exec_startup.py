#!/usr/bin/env python3
"""`egress exec` start-up: `egress exec -- true` against a bare `true`, and where the time goes.

Needs root (it creates network namespaces, as `egress exec` does). A throwaway
EGRESS_HOME gets one connector; each run is timed from outside (wall clock,
median and p90 over ``--runs``), and its ``--timing`` marks (milliseconds since
the command began, printed by `egress exec`) give the breakdown. "first
answer" is a step whose first request is to a host no connector covers: the
proxy itself answers it (403, or a closed connection without
--explain-blocks), so it shows when the step's proxy is really serving.

    sudo .venv/bin/python bench/exec_startup.py [--runs 10] [--results]

``--results`` writes the figures into bench/RESULTS.md's "egress exec
start-up" section (kept when bench/run.py rewrites the rest).
``--tree DIR`` runs the `egress` of another checkout (e.g. an older commit,
``git archive REV | tar -x -C DIR``) with this interpreter, for before/after.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sections import write_section

BENCH = Path(__file__).resolve().parent
SECTION = "exec-startup"


def q(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str, int]:
    t = time.perf_counter()
    # Not from the checkout: `python -m` puts the working directory first on sys.path (--tree).
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd="/")
    return (time.perf_counter() - t) * 1000, done.stderr, done.returncode


def marks(stderr: str) -> dict[str, float]:
    line = next((x for x in stderr.splitlines() if x.startswith("egress exec: ")), "")
    return {m[1]: float(m[2]) for m in re.finditer(r"(?:^egress exec: |, )([a-z ]+?) (\d+) ms", line)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--tree", help="run the egress of this source tree instead")
    p.add_argument("--results", action="store_true", help="write the section of bench/RESULTS.md")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root: egress exec creates a network namespace", file=sys.stderr)
        return 2
    egress = [sys.executable, "-m", "proxy.cli"]
    home = Path(tempfile.mkdtemp(prefix="egress-bench-exec-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGRESS_")}
    env["EGRESS_HOME"] = str(home)
    if args.tree:
        # An editable install's import finder wins over PYTHONPATH: drop it, in every child too.
        (home / "site").mkdir()
        (home / "site" / "sitecustomize.py").write_text(
            "import sys\nsys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]\n"
            "sys.path_importer_cache.clear()\n"
        )
        env["PYTHONPATH"] = f"{Path(args.tree).resolve()}{os.pathsep}{home / 'site'}"
    try:
        for argv in (["init"], ["connector", "add", "c", "--pattern", "https://api.bench.test/*",
                                "--header", "Authorization", "--secret-env", "S"]):  # fmt: skip
            subprocess.run([*egress, *argv], check=True, capture_output=True, env={**env, "S": "x"}, cwd="/")
        step = [*egress, "exec", "--connector", "c", "--timing", "--"]
        first = [*step, "curl", "-s", "-o", "/dev/null", "--max-time", "30", "https://elsewhere.bench.test/"]
        timed([*step, "true"], env)  # warm caches (the truststore, page cache)
        bare, runs, answer, stages = [], [], [], []
        for _ in range(args.runs):
            bare.append(timed(["true"], env)[0])
            ms, err, code = timed([*step, "true"], env)
            assert code == 0, err
            runs.append(ms)
            stages.append(marks(err))
            answer.append(timed(first, env)[0])
        python = [timed([sys.executable, "-c", "pass"], env)[0] for _ in range(args.runs)]
        cli = [timed([*egress, "--version"], env)[0] for _ in range(args.runs)]
    finally:
        shutil.rmtree(home, ignore_errors=True)

    rows = [
        ("`true`", bare),
        ("`egress exec -- true`", runs),
        ("`egress exec -- curl` (first answer from the proxy)", answer),
        ("for scale: `python -c pass`", python),
        ("for scale: `egress --version` (interpreter + CLI imports)", cli),
    ]
    lines = ["| what | median ms | p90 ms |", "|---|---:|---:|"]
    lines += [f"| {name} | {statistics.median(v):.0f} | {q(v, 0.9):.0f} |" for name, v in rows]
    names = list(dict.fromkeys(n for s in stages for n in s))
    lines += [
        "",
        "| stage (inside `egress exec -- true`) | median ms since the command began |",
        "|---|---:|",
    ]
    for name in sorted(names, key=lambda n: statistics.median([s[n] for s in stages if n in s])):
        seen = [s[name] for s in stages if name in s]
        lines.append(f"| {name} ({len(seen)}/{len(stages)} runs) | {statistics.median(seen):.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.results:
        lead = (
            f"`sudo python bench/exec_startup.py --results`, {args.runs} runs, {time.strftime('%Y-%m-%d')}, "
            f"{os.cpu_count()} shared cores (other jobs run beside it: medians move by tens of ms)."
        )
        write_section(BENCH / "RESULTS.md", SECTION, "egress exec start-up", lead, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

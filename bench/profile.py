#!/usr/bin/env python3
"""Where does the proxy spend its time? py-spy on the egress worker and on mitmdump.

Starts the same nginx / mitmdump / egress (1 worker, recording on) as
bench/run.py, drives each with hey (keep-alive c=32, then a new CONNECT + TLS
per request at c=8) or with 200 MiB downloads or uploads (``--scenarios download,upload``)
while ``py-spy record`` samples the proxy process (it pauses the process per
sample: stacks are whole, throughput drops a little), and prints the
functions and files with the most samples. Raw collapsed stacks (for
flamegraph.pl or speedscope) go to bench/out/.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py [--duration 15] [--scenarios keepalive_c32,newconn_c8,download]
    .venv/bin/python bench/profile.py --scenarios paced_keepalive  # 200 req/s open loop (latency)
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import run
import sections

OUT = run.BENCH / "out"
IDLE_WAIT = "_worker (concurrent/futures/thread.py"  # an executor thread waiting for work
SCENARIOS = {
    "keepalive_c32": {"c": 32, "keepalive": True},
    "newconn_c8": {"c": 8, "keepalive": False},
    "download": {},  # the bench's file, fetched again and again for the duration
    "upload": {},  # the same file, PUT again and again
    "paced_keepalive": {"rate": 200.0},  # open loop, as the bench's latency targets are measured
}
# Own time grouped by who runs it, first match wins: where a request's CPU goes at a glance.
PARTS = (
    ("egress-proxy (proxy/, addons/)", ("proxy/", "addons/")),
    ("TLS (OpenSSL, cryptography)", ("OpenSSL/", "cryptography/", "ssl.py")),
    ("mitmproxy", ("mitmproxy/",)),
    ("HTTP parsers (h11, h2, hpack, wsproto)", ("h11/", "h2/", "hpack/", "wsproto/")),
    ("asyncio and the selector", ("asyncio/", "selectors.py")),
)
OTHER = "other (the interpreter, stdlib, prometheus_client, sqlite3, ...)"


def load(bench: run.Bench, t: run.Target, scenario: str, duration: float) -> str:
    """Drive ``t`` for ``duration`` seconds; what it achieved, for the heading."""
    if scenario == "paced_keepalive":
        r = run.paced_latency(t, duration=duration, keepalive=True, **SCENARIOS[scenario])
        return (
            f"{r.get('rps', 0):,.0f} req/s offered open loop, p50 {r.get('p50_us', 0) / 1000:.2f} ms, "
            f"p99 {r.get('p99_us', 0) / 1000:.2f} ms, {r.get('cpu_us_per_req', 0):,.0f} us CPU per request "
            "under py-spy"
        )
    if scenario not in ("download", "upload"):
        result = run.hey(t, duration=duration, **SCENARIOS[scenario])
        return f"{result.get('rps', 0):,.0f} req/s (2xx) under py-spy"
    done, mib, end = 0, 0.0, time.monotonic() + duration
    while time.monotonic() < end:
        r = run.transfer(t, scenario, bench.big, bench.put_dir)
        done, mib = done + 1, mib + r.get("mib_s", 0.0)
    return (
        f"{done} {scenario}s of {bench.args.size_mib} MiB, {mib / max(done, 1):,.0f} MiB/s each under py-spy"
    )


def _stacks(raw: Path) -> Iterator[tuple[list[str], int]]:
    """Each sampled stack and its count, without the executor threads' idle waits: py-spy
    counts a thread blocked in ``queue.get`` under ``_worker`` as busy, though /proc shows it
    using no CPU (one tick in 10 s under load)."""
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if stack and count.isdigit() and not frames[-1].startswith(IDLE_WAIT):
            yield frames, int(count)


def summarize(raw: Path, top: int, parts: collections.Counter[str]) -> str:
    """Top functions by own samples and by inclusive samples, and own samples by file."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, n in _stacks(raw):
        total += n
        own[frames[-1]] += n
        by_file[_file(frames[-1])] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "(no samples)\n"

    def rows(counter: collections.Counter[str]) -> list[list[str]]:
        return [[f"{n / total:.1%}", f"`{name[:150]}`"] for name, n in counter.most_common(top)]

    # Inclusive: leave out the start-up and event-loop frames nearly every sample has.
    below_loop = collections.Counter({k: n for k, n in inclusive.items() if n < 0.85 * total})
    egress_only = collections.Counter({k: n for k, n in inclusive.items() if _ours(k)})

    ours = ours_own = 0
    for frames, n in _stacks(raw):
        ours += n if any(_ours(f) for f in frames) else 0
        ours_own += n if _ours(frames[-1]) else 0
    return "\n".join(
        [
            f"{total} samples. egress-proxy's own code (proxy/, addons/, start-up frames aside) is on "
            f"the stack in {ours / total:.1%} of them and on top in {ours_own / total:.1%}.\n",
            "Own time by part:\n",
            run.table(["share", "part"], [[f"{n / total:.1%}", name] for name, n in parts.most_common()]),
            "\nOwn time (the function was on top of the stack):\n",
            run.table(["share", "function (file:first line)"], rows(own)),
            "\nOwn time by file:\n",
            run.table(["share", "file"], rows(by_file)),
            "\nInclusive time (anywhere on the stack; frames in >= 85 % of samples left out):\n",
            run.table(["share", "function (file:first line)"], rows(below_loop)),
            "\negress-proxy's own functions, inclusive:\n",
            run.table(["share", "function (file:first line)"], rows(egress_only)),
            "",
        ]
    )


def _file(frame: str) -> str:
    inside = frame.rpartition("(")[2].rstrip(")")
    return inside.rpartition(":")[0] or frame


def parts_of(raw: Path) -> collections.Counter[str]:
    """Own-time samples per part (``PARTS``)."""
    parts: collections.Counter[str] = collections.Counter()
    for frames, n in _stacks(raw):
        parts[_part(_file(frames[-1]))] += n
    return parts


def results_section(profiled: list[tuple[str, str, collections.Counter[str]]], rate: int) -> None:
    """bench/RESULTS.md's profile section: each profile's own time by part, side by side."""
    names = [name for name, _ in PARTS] + [OTHER]
    rows = []
    for part in names:
        rows.append([part, *(f"{c[part] / max(1, sum(c.values())):.1%}" for _, _, c in profiled)])
    lead = (
        f"`bench/profile.py --results` ({time.strftime('%Y-%m-%d')}, py-spy at {rate} Hz on the egress worker "
        "and on mitmdump): the share of samples whose innermost frame lies in each part. Loads: "
        + "; ".join(f"{heading}: {load}" for heading, load, _ in profiled)
        + "."
    )
    header = ["own time in", *(heading for heading, _, _ in profiled)]
    sections.write_section(run.BENCH / "RESULTS.md", "profile", "Where the CPU goes (py-spy)", lead,
                           run.table(header, rows))  # fmt: skip


def _part(path: str) -> str:
    for name, prefixes in PARTS:
        if path.startswith(prefixes):
            return name
    return OTHER


def _ours(frame: str) -> bool:
    """A frame in egress-proxy's request-path code (not the start-up frames every stack has)."""
    path = _file(frame)
    return path.startswith(("proxy/", "addons/")) and path not in ("proxy/cli.py", "addons/runner.py")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=15, help="seconds of load per profile")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--targets", default="egress,mitmdump")
    p.add_argument("--scenarios", default="keepalive_c32,newconn_c8", help=f"of {', '.join(SCENARIOS)}")
    p.add_argument("--size-mib", type=int, default=200, help="the download's size")
    p.add_argument("--results", action="store_true", help="write the profile section of bench/RESULTS.md")
    args = p.parse_args()
    pyspy = run.BIN / "py-spy"
    if not pyspy.exists():
        print("bench/profile.py: run `.venv/bin/pip install py-spy` first", file=sys.stderr)
        return 2
    signal.signal(signal.SIGALRM, run._on_alarm)
    signal.alarm(900)
    scenarios = args.scenarios.split(",")
    size = args.size_mib if {"download", "upload"} & set(scenarios) else 1
    bench_args = argparse.Namespace(size_mib=size, connectors=10, duration=args.duration)
    work = Path(tempfile.mkdtemp(prefix="egress-profile-"))
    procs = run.Procs()
    bench = run.Bench(bench_args, work, procs)
    OUT.mkdir(parents=True, exist_ok=True)
    report = [f"# Profiles ({time.strftime('%Y-%m-%d %H:%M')}, py-spy {args.rate} Hz)\n"]
    profiled: list[tuple[str, str, collections.Counter[str]]] = []
    try:
        bench.setup(variants=False)
        for name in args.targets.split(","):
            t = bench.targets[name]
            pids = t.pids()
            pid = pids[1] if len(pids) > 1 else pids[0]  # egress: the worker, not the supervisor
            for scenario in scenarios:
                raw = OUT / f"profile-{name}-{scenario}.txt"
                spy = subprocess.Popen(
                    [str(pyspy), "record", "--pid", str(pid), "--duration", str(int(args.duration)),
                     "--rate", str(args.rate), "--function", "--format", "raw",
                     "-o", str(raw)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                )  # fmt: skip
                time.sleep(0.5)
                rps = load(bench, t, scenario, args.duration)
                try:
                    _, err = spy.communicate(timeout=args.duration + 60)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    _, err = spy.communicate()
                run.log(f"profiled {name} {scenario}: {rps}")
                if raw.exists():
                    parts = parts_of(raw)
                    body = summarize(raw, args.top, parts)
                    profiled.append((f"{name} {scenario}", rps, parts))
                else:
                    body = f"py-spy failed: {err.decode()[-500:]}\n"
                report.append(f"## {t.label} (pid {pid}), {scenario}: {rps}\n\nRaw stacks: {raw}\n\n{body}")
    finally:
        procs.stop_all()
        signal.alarm(0)
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(report)
    (OUT / "PROFILE.md").write_text(text)
    if args.results and profiled:
        results_section(profiled, args.rate)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

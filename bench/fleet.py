#!/usr/bin/env python3
"""A fleet on one PostgreSQL: what 200 sidecars cost the database, and how fast a change reaches them.

    .venv/bin/python bench/fleet.py                      # the simulation: 200 store clients
    .venv/bin/python bench/fleet.py --clients 50 --steady 20
    .venv/bin/python bench/fleet.py --propagation        # 3 real proxies, 100 policy changes
    .venv/bin/python bench/fleet.py --connect-cost       # a query on a kept connection vs a new one
    .venv/bin/python bench/fleet.py --all                # all three; writes bench/fleet.json and
                                                         # the Fleet section of bench/RESULTS.md

The simulation starts a throwaway cluster (initdb + pg_ctl as an unprivileged
user, 127.0.0.1 only, as the tests do) and ``--clients`` store clients in a
few processes. Each client is what a proxy worker does to the store, with the
real store code: it opens the store as a proxy does (one connection), waits
for changes with ``wait_for_change`` and reads ``generation()`` after every
wait, reloads connectors and revocations when it moves, and flushes a batch
(a few per-minute counter rows, now and then a blocked row and a log row)
every ``flush_interval`` seconds, jittered as the recorder does. Three
phases: at rest (connected, no traffic), flushing, and flushing while the
driver makes ``--changes`` writes. For each: database CPU (user + system
time of the postmaster and every backend, /proc, over the phase's wall
time), transactions per second (``pg_stat_database.xact_commit``), and
connections (``pg_stat_activity``). Propagation is the time from a write's
commit (the writer's clock just before it sends COMMIT) until each client
read the new generation, over every client and change.

``--propagation`` runs real ``egress run`` proxies on one database and flips
a connector in and out 100 times through the service layer; a probe per
proxy sends CONNECTs until the proxy answers as the new policy says.

Raw numbers go to bench/out/fleet*.json. Every process started here is
stopped, the cluster included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(1, str(ROOT))  # tests.pg: the throwaway cluster

import psycopg  # noqa: E402

from proxy.errors import EgressError, StoreUnavailable  # noqa: E402
from proxy.stats import Batch, Event  # noqa: E402
from proxy.store import Store, open_store  # noqa: E402
from tests.pg import Cluster, pg_bin  # noqa: E402

BIN = Path(sys.executable).parent
EGRESS = str(BIN / "egress")
OUT = BENCH / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FLUSH_JITTER = 0.2  # as addons/record.py (not imported: it pulls in mitmproxy)
CONNECTORS = 20  # names the simulated traffic spreads over


def log(msg: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- measuring ---------------------------------------------------------------


def tree(pid: int) -> list[int]:
    out, i = [pid], 0
    while i < len(out):
        p = out[i]
        i += 1
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    out.extend(int(x) for x in f.read().split())
    return out


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime + cutime + cstime (backends that exit are reaped into the postmaster's)."""
    out: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[pid] = sum(int(x) for x in fields[11:15])
    return out


def pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total / 1024


class Window:
    """CPU of some process trees and transactions of one database between start() and stop()."""

    def __init__(
        self, monitor: psycopg.Connection[Any], database: str, roots: dict[str, list[int]], others: int
    ) -> None:
        self.monitor = monitor
        self.database = database
        self.roots = roots
        self.others = others  # connections to the database that are not the clients' (the driver's)

    def _ticks(self) -> dict[str, dict[int, int]]:
        return {name: cpu_ticks([p for r in roots for p in tree(r)]) for name, roots in self.roots.items()}

    def _xacts(self) -> tuple[int, int]:
        row = self.monitor.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s", (self.database,)
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def connections(self) -> int:
        row = self.monitor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.database,)
        ).fetchone()
        return int(row[0]) if row else 0

    @contextlib.contextmanager
    def measure(self, out: dict[str, Any]) -> Iterator[None]:
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                samples.append(self.connections())

        thread = threading.Thread(target=sample, daemon=True)
        ticks, xacts, t0 = self._ticks(), self._xacts(), time.monotonic()
        thread.start()
        yield
        stop.set()
        thread.join()
        wall = time.monotonic() - t0
        time.sleep(1.2)  # backends report their transaction counts at most once a second
        after, xacts2 = self._ticks(), self._xacts()
        out["wall_s"] = wall
        for name in self.roots:
            seconds = sum(t - ticks[name].get(pid, 0) for pid, t in after[name].items()) / CLK_TCK
            out[f"{name}_cpu_s"] = seconds
            out[f"{name}_cores"] = seconds / wall
        out["commits"] = xacts2[0] - xacts[0]
        out["rollbacks"] = xacts2[1] - xacts[1]
        out["tps"] = out["commits"] / wall
        out["connections_max"] = max(samples, default=self.connections()) - self.others
        out["connections_min"] = min(samples, default=out["connections_max"] + self.others) - self.others


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def summary(latencies: list[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    return {
        "samples": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms, default=None),
        "mean_ms": statistics.fmean(ms) if ms else None,
    }


def cluster_up(max_connections: int) -> Cluster:
    bindir = pg_bin()
    if bindir is None:
        raise SystemExit("fleet: no PostgreSQL server binaries (apt-get install postgresql)")
    cluster = Cluster(bindir)
    try:
        cluster.start(max_connections=max_connections)
    except BaseException:
        cluster.destroy()
        raise
    return cluster


# -- the simulated sidecars --------------------------------------------------


def batch_of(rng: random.Random, now: float) -> Batch:
    """What a sidecar serving a few requests a second has counted in one interval."""
    minute = int(now // 60)
    batch = Batch()
    for c in rng.sample(range(CONNECTORS), 3):
        n = rng.randint(5, 60)
        errors = rng.randint(0, 2)
        batch.requests[(f"c{c:02d}", minute)] = [n, errors, 0, errors, 0, 0]
        for i in range(errors):
            batch.events.append(
                Event(
                    "error",
                    now,
                    "GET",
                    f"api{c}.fleet.test",
                    "/v1/x",
                    f"r{rng.random():.9f}{i}",
                    connector=f"c{c:02d}",
                    status=502,
                )
            )
    if rng.random() < 0.3:
        batch.blocked[("evil.fleet.test", "not-allowed", minute)] = 1
        batch.events.append(Event("blocked", now, "GET", "evil.fleet.test", "/", "b", reason="not-allowed"))
    return batch


class Sidecar:
    """One simulated proxy worker: a reload watcher and a statistics writer on one store."""

    def __init__(self, url: str, seed: int, flushing: Any, stop: Any) -> None:
        self.store: Store = open_store(url, lazy=True)
        self.rng = random.Random(seed)
        self.flushing, self.stop = flushing, stop
        self.seen: list[tuple[int, float]] = []  # (generation, wall time first read)
        self.flushes = self.flush_errors = self.reload_errors = 0
        self.threads = [threading.Thread(target=self.watch), threading.Thread(target=self.flush)]
        self.subscribed = threading.Event()

    def watch(self) -> None:
        generation = self.store.generation()
        while not self.stop.is_set():
            self.store.wait_for_change(1.0)
            self.subscribed.set()
            try:
                now_gen = self.store.generation()
                if now_gen != generation:
                    self.seen.append((now_gen, time.time()))
                    self.store.connectors()  # what a proxy reads to rebuild its rules
                    self.store.revoked_grants()
                    generation = now_gen
            except EgressError:
                self.reload_errors += 1

    def flush(self) -> None:
        self.flushing.wait()
        interval = self.store.flush_interval
        delay = self.rng.uniform(0, interval)
        while not self.stop.wait(delay):
            delay = interval * self.rng.uniform(1 - FLUSH_JITTER, 1 + FLUSH_JITTER)
            try:
                self.store.monitoring.flush(batch_of(self.rng, time.time()))
                self.flushes += 1
            except (StoreUnavailable, EgressError):
                self.flush_errors += 1


def sidecar_group(url: str, first: int, count: int, ready: Any, flushing: Any, stop: Any, out: Any) -> None:
    """A process of ``count`` sidecars (threads, so 200 of them fit on two cores)."""
    cars = [Sidecar(url, first + i, flushing, stop) for i in range(count)]
    for car in cars:
        for t in car.threads:
            t.start()
    for car in cars:
        car.subscribed.wait(30)
    ready.put(count)
    stop.wait()
    for car in cars:
        for t in car.threads:
            t.join(30)
        car.store.close()
    out.put({
        "seen": [(first + i, g, t) for i, car in enumerate(cars) for g, t in car.seen],
        "flushes": sum(c.flushes for c in cars),
        "flush_errors": sum(c.flush_errors for c in cars),
        "reload_errors": sum(c.reload_errors for c in cars),
    })  # fmt: skip


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    cluster = cluster_up(max_connections=args.clients + 50)
    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    stop = ctx.Event()
    try:
        url = cluster.new_database()
        database = url.rsplit("/", 1)[1]
        open_store(url, create=True).close()
        writer = open_store(url)
        monitor = psycopg.connect(cluster.url(), autocommit=True)  # another database: not counted
        ready, results = ctx.Queue(), ctx.Queue()
        flushing = ctx.Event()
        groups = max(1, min(args.processes, args.clients))
        per = [args.clients // groups + (1 if i < args.clients % groups else 0) for i in range(groups)]
        first = 0
        for n in per:
            p = ctx.Process(target=sidecar_group, args=(url, first, n, ready, flushing, stop, results))
            p.start()
            procs.append(p)
            first += n
        started = 0
        while started < args.clients:
            started += ready.get(timeout=120)
        postmaster = cluster.postmaster()
        assert postmaster is not None
        window = Window(monitor, database, {"db": [postmaster], "clients": [p.pid for p in procs]}, others=1)
        phases: dict[str, dict[str, Any]] = {}
        log(f"{args.clients} clients connected and listening; at rest for {args.rest:g} s")
        phases["rest"] = {}
        with window.measure(phases["rest"]):
            time.sleep(args.rest)
        phases["rest"]["db_pss_mib"] = pss_mib(tree(postmaster))
        log(f"flushing every {writer.flush_interval:g} s +- {FLUSH_JITTER:.0%} for {args.steady:g} s")
        flushing.set()
        time.sleep(writer.flush_interval * (1 + FLUSH_JITTER))  # every client past its first flush
        phases["flushing"] = {}
        with window.measure(phases["flushing"]):
            time.sleep(args.steady)
        log(f"flushing and {args.changes} changes, one every {args.change_every:g} s")
        commits: dict[int, float] = {}
        base = writer.generation()  # only the driver writes: change i makes generation base + i + 1
        phases["changes"] = {}
        with window.measure(phases["changes"]):
            for i in range(args.changes):
                time.sleep(args.change_every)
                with writer.write() as tx:
                    tx.put(f"fleet-{i % 10}", {"patterns": [f"https://api{i}.fleet.test/*"]}, os.urandom(64))
                    # Just before COMMIT: once it returns, 200 woken clients may hold both cores
                    # before this process reads the clock (that read came out 20 ms late).
                    commits[base + i + 1] = time.time()
        time.sleep(3)  # the last change reaches everyone
        phases["changes"]["db_pss_mib"] = pss_mib(tree(postmaster))
        stop.set()
        collected = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
        writer.close()
        monitor.close()
    finally:
        stop.set()
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
        cluster.destroy()
    first_seen: dict[tuple[int, int], float] = {}
    for group in collected:
        for client, g, t in group["seen"]:
            for gen in commits:  # a client that read g saw every change up to g
                if gen <= g and (client, gen) not in first_seen:
                    first_seen[(client, gen)] = t
    latencies = [
        first_seen[(c, g)] - commits[g] for c in range(args.clients) for g in commits if (c, g) in first_seen
    ]
    missed = args.clients * len(commits) - len(latencies)
    slowest = [max(first_seen[(c, g)] for c in range(args.clients) if (c, g) in first_seen) - commits[g]
               for g in commits]  # fmt: skip
    return {
        "clients": args.clients,
        "processes": len(procs),
        "flush_interval_s": writer.flush_interval,
        "flush_jitter": FLUSH_JITTER,
        "phases": phases,
        "propagation": {**summary(latencies), "missed": missed, "changes": len(commits)},
        "propagation_last_client": summary(slowest),
        "flushes": sum(g["flushes"] for g in collected),
        "flush_errors": sum(g["flush_errors"] for g in collected),
        "reload_errors": sum(g["reload_errors"] for g in collected),
    }


# -- a connection per operation, for comparison -------------------------------


def connect_cost(n: int = 300) -> dict[str, Any]:
    """Server CPU and client wall time of one query on a kept connection vs a new connection each."""
    cluster = cluster_up(max_connections=50)
    try:
        url = cluster.new_database()
        open_store(url, create=True).close()
        postmaster = cluster.postmaster()
        assert postmaster is not None
        out: dict[str, Any] = {"operations": n}

        def run(name: str, op: Any) -> None:
            before, t0 = cpu_ticks(tree(postmaster)), time.perf_counter()
            op()
            wall = time.perf_counter() - t0
            time.sleep(0.3)  # the last backends exit and are reaped into the postmaster's times
            after = cpu_ticks(tree(postmaster))
            server = sum(t - before.get(p, 0) for p, t in after.items()) / CLK_TCK
            out[name] = {"server_cpu_us": server / n * 1e6, "wall_us": wall / n * 1e6}

        kept = psycopg.connect(url, autocommit=True)

        def on_kept() -> None:
            for _ in range(n):
                kept.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()

        def new_each() -> None:
            for _ in range(n):
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()

        run("kept", on_kept)
        run("new_each", new_each)
        kept.close()
        return out
    finally:
        cluster.destroy()


# -- propagation through real proxies -----------------------------------------

FLIP = "flip.bench.test"


def probe(port: int) -> int:
    """The status of one CONNECT to the flipping host through the proxy on ``port``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"CONNECT {FLIP}:443 HTTP/1.1\r\nHost: {FLIP}:443\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(512)
            if not chunk:
                return 0
            head += chunk
    return int(head.split(b" ", 2)[1])


def propagation_against(ports: list[int], home: Path, env: dict[str, str], changes: int) -> dict[str, Any]:
    """Flip a connector covering FLIP in and out ``changes`` times; time until each proxy agrees."""
    from proxy.service.connectors import Connectors, connector_from_doc
    from proxy.service.home import Home

    doc = {"name": "flip", "patterns": [f"https://{FLIP}/*"], "inject": {"header": "X-Flip"},
           "secret": {"value": "flip-secret"}}  # fmt: skip
    latencies: list[float] = []
    slowest: list[float] = []
    with Connectors(Home(home, env)) as connectors:
        with contextlib.suppress(EgressError):
            connectors.remove("flip")
        for i in range(changes):
            time.sleep(0.2 + random.random() * 0.2)  # not in step with any poll
            present = i % 2 == 0
            committed = time.time()  # before the write: conservative by the write's own duration
            if present:
                connector, fields = connector_from_doc(doc, connectors.workspace)
                assert fields is not None
                connectors.add(connector, fields)
            else:
                connectors.remove("flip")
            want = 200 if present else 403

            def until_agrees(port: int, want: int = want, committed: float = committed, i: int = i) -> float:
                while True:
                    if probe(port) == want:
                        return time.time() - committed
                    if time.time() - committed > 30:
                        raise RuntimeError(f"proxy on {port} did not follow change {i} within 30 s")
                    time.sleep(0.002)

            with ThreadPoolExecutor(len(ports)) as pool:  # every proxy probed at once
                seen = list(pool.map(until_agrees, ports))
            latencies += seen
            slowest.append(max(seen))
    return {"changes": changes, "proxies": len(ports), **summary(latencies),
            "last_proxy": summary(slowest)}  # fmt: skip


def start_proxy(home: Path, env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    argv = [EGRESS, "run", "--workers", "1", "--listen", "127.0.0.1:0", "--no-explain-blocks",
            "--allow-network", "127.0.0.0/8", "--resolve", f"{FLIP}=127.0.0.1"]  # fmt: skip
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    addr = home / "run" / "proxy.addr"
    deadline = time.monotonic() + 60
    while not (addr.exists() and addr.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"proxy did not start:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, int(addr.read_text().strip().rsplit(":", 1)[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def fleet_env(home: Path, url: str, key: str) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
    return {**{k: v for k, v in os.environ.items() if k in keep}, "EGRESS_HOME": str(home),
            "EGRESS_DATABASE_URL": url, "EGRESS_MASTER_KEY": key}  # fmt: skip


def propagation(proxies: int, changes: int) -> dict[str, Any]:
    from proxy.secrets import MasterKey

    cluster = cluster_up(max_connections=50)
    work = Path(tempfile.mkdtemp(prefix="egress-fleet-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        url = cluster.new_database()
        _, key = MasterKey.generate()
        ports = []
        for i in range(proxies):
            home = work / f"p{i}"
            env = fleet_env(home, url, key)
            done = subprocess.run([EGRESS, "init"], capture_output=True, text=True, env=env, timeout=120)
            if done.returncode:
                raise RuntimeError(f"egress init: {done.stderr}")
            proc, port = start_proxy(home, env, work / f"p{i}.log")
            procs.append(proc)
            ports.append(port)
        log(f"{proxies} proxies on one database; {changes} changes")
        return propagation_against(ports, work / "p0", fleet_env(work / "p0", url, key), changes)
    finally:
        for proc in procs:
            stop(proc)
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


# -- report --------------------------------------------------------------------


def fmt(v: float | None, digits: int = 0, unit: str = "") -> str:
    return "-" if v is None else f"{v:,.{digits}f}{unit}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def simulation_table(sim: dict[str, Any]) -> str:
    rows = []
    names = {
        "rest": "at rest (connected, listening)",
        "flushing": f"flushing every {sim['flush_interval_s']:g} s +- {sim['flush_jitter']:.0%}",
        "changes": "flushing + one change every 0.5 s",
    }
    for key, label in names.items():
        ph = sim["phases"][key]
        rows.append([
            label, fmt(ph["wall_s"]), fmt(ph["db_cores"] * 100, 1, " %"), fmt(ph["db_cpu_s"], 2),
            fmt(ph["tps"], 1), fmt(ph["tps"] / sim["clients"], 3), f"{ph['connections_min']}-{ph['connections_max']}",
            fmt(ph["clients_cores"] * 100, 1, " %"),
        ])  # fmt: skip
    return table(
        ["phase", "wall s", "database CPU (of one core)", "database CPU s", "transactions/s",
         "per client", "connections", "clients' CPU (of one core)"],
        rows,
    )  # fmt: skip


def extrapolation(sim: dict[str, Any], cost: dict[str, Any] | None) -> str:
    n = sim["clients"]
    flushing, changes = sim["phases"]["flushing"], sim["phases"]["changes"]
    tps_each = flushing["tps"] / n
    cpu_each = flushing["db_cores"] / n
    change_rate = 1 / 0.5
    # what one change costs the database per listening client, above the flushing baseline
    per_change = max(0.0, changes["db_cores"] - flushing["db_cores"]) / change_rate / n
    mem_each = (sim["phases"]["rest"].get("db_pss_mib") or 0) / n
    rows = []
    for fleet in (n, 1_000, 10_000):
        rows.append([
            f"{fleet:,}", f"{fleet:,}", fmt(tps_each * fleet, 0), fmt(cpu_each * fleet, 2),
            fmt(per_change * fleet * 1000, 0, " ms"), fmt(mem_each * fleet / 1024, 1, " GiB"),
        ])  # fmt: skip
    text = table(
        ["sidecars", "connections", "flush transactions/s", "database cores (flushing)",
         "database CPU per change", "server memory (PSS)"],
        rows,
    )  # fmt: skip
    if cost:
        text += (
            f"\n\nA connection per operation instead of a kept one: {fmt(cost['new_each']['server_cpu_us'])} us "
            f"of server CPU and {fmt(cost['new_each']['wall_us'])} us of client wall time per operation, "
            f"against {fmt(cost['kept']['server_cpu_us'])} us and {fmt(cost['kept']['wall_us'])} us on a kept "
            f"connection ({cost['operations']} operations each, bench/fleet.py --connect-cost)."
        )
    return text


def render(data: dict[str, Any]) -> str:
    """The Fleet section of bench/RESULTS.md."""
    out = ["## Fleet: one PostgreSQL for many sidecars\n"]
    out.append(
        f"bench/fleet.py on {data.get('date', '?')}, same machine (2 shared cores: CPU figures are "
        "fractions of one core, beside the rates). "
    )
    sim = data.get("simulation")
    if sim:
        prop, last = sim["propagation"], sim["propagation_last_client"]
        out[-1] += (
            f"{sim['clients']} store clients in {sim['processes']} processes against one throwaway "
            "cluster, each doing what a proxy worker does to the store with the real store code: one "
            "connection, LISTEN, a reload (connectors and revocations) on every change, counters flushed "
            f"every {sim['flush_interval_s']:g} s +- {sim['flush_jitter']:.0%}.\n"
        )
        out.append(simulation_table(sim) + "\n")
        out.append(
            "Change propagation, from the writer's COMMIT to each client reading the new generation, "
            f"{prop['changes']} "
            f"changes x {sim['clients']} clients ({prop['samples']:,} samples, {prop['missed']} missed): "
            f"p50 {fmt(prop['p50_ms'], 1)} ms, p99 {fmt(prop['p99_ms'], 1)} ms, max {fmt(prop['max_ms'], 1)} ms; "
            f"until the last client: p50 {fmt(last['p50_ms'], 1)} ms, p99 {fmt(last['p99_ms'], 1)} ms. "
            f"{sim['flushes']:,} flushes, {sim['flush_errors']} failed. The clients are "
            f"{sim['clients']} threads in {sim['processes']} Python processes sharing the two cores with "
            "the database: a notification wakes all of them at once, and most of this latency is their "
            "turn on a core (real sidecars have a process each; the real-proxy figure below).\n"
        )
        out.append("Extrapolated linearly from the flushing phase (per client) and the changes phase:\n")
        out.append(extrapolation(sim, data.get("connect_cost")) + "\n")
    prop = data.get("propagation")
    if prop:
        out.append(
            f"Policy propagation through real proxies (`bench/fleet.py --propagation`: {prop['proxies']} "
            f"`egress run` on one database, a connector added and removed {prop['changes']} times through "
            "the service layer, a CONNECT probe per proxy until it answers as the new policy says): "
            f"p50 {fmt(prop['p50_ms'], 1)} ms, p99 {fmt(prop['p99_ms'], 1)} ms, max {fmt(prop['max_ms'], 1)} ms "
            f"(goal p99 <= 1,000 ms: {'PASS' if (prop['p99_ms'] or 1e9) <= 1000 else 'FAIL'}).\n"
        )
    if data.get("make_bench"):
        out.append(make_bench_part(data["make_bench"]))
    out.append(notes(sim))
    return "\n".join(out)


def notes(sim: dict[str, Any] | None) -> str:
    """What the figures say, with the measured per-sidecar rates where there are some."""
    per_tx = per_cpu = per_change = None
    if sim:
        n, flushing, changes = sim["clients"], sim["phases"]["flushing"], sim["phases"]["changes"]
        per_tx, per_cpu = flushing["tps"] / n, flushing["db_cores"] / n
        per_change = max(0.0, changes["db_cores"] - flushing["db_cores"]) / (1 / 0.5) / n

    def at(fleet: int, value: float | None, digits: int = 0, unit: str = "") -> str:
        return "?" if value is None else fmt(value * fleet, digits, unit)

    return f"""What the figures say, and where they stop:

- **Transactions.** A sidecar's budget is one flush per {sim["flush_interval_s"] if sim else 5:g} s
  (one transaction), a read of the generation every 30 s (the safety poll;
  notifications answer it otherwise) and a cleanup attempt once a minute:
  about 0.25 transactions/s, measured {fmt(per_tx, 3)}. At 1,000 sidecars that is
  {at(1_000, per_tx)}/s, at 10,000 {at(10_000, per_tx)}/s of small upserts and single-row reads,
  {at(1_000, per_cpu, 2)} and {at(10_000, per_cpu, 2)} cores of this machine's database CPU: within
  what one server takes. Raise `--flush-interval` for a larger fleet; the
  counters are per minute anyway.
- **Changes** cost every sidecar a reload: two reads (connectors,
  revocations), {fmt(per_change * 1e6 if per_change is not None else None)} us of database CPU each here,
  so one change costs {at(1_000, per_change, 2, " s")} of database CPU at 1,000 sidecars and
  {at(10_000, per_change, 1, " s")} at 10,000, all arriving together. Fine for operator-paced
  changes; a fleet that changes policy many times a second would want a
  delta read or a spread-out (jittered) reload.
- **Connections.** One per proxy worker at rest (`--workers 1` in a
  sidecar), so N sidecars are N server backends, each a process (here about
  {fmt(sim["phases"]["rest"].get("db_pss_mib", 0) / sim["clients"] if sim else None, 1)} MiB PSS at rest). Up to about a thousand that is an ordinary
  `max_connections`; at 10,000 it is not (memory, and every snapshot scans
  the backend array): put a connection pooler such as PgBouncer in front.
  A new connection per operation instead would cost more than the
  operation: see the connection figure above.
- **LISTEN does not survive a transaction-mode pooler.** PgBouncer in
  transaction mode hands the server connection to another client after each
  transaction, so a LISTEN is registered on a backend the sidecar no longer
  holds and its notifications go to whoever has it next, or nowhere
  (PgBouncer lists LISTEN as unsupported in that mode); session mode keeps
  it working but pools nothing. Past what one server's connections allow,
  the propagation path has to change: writes and flushes go through the
  transaction pooler, and changes reach the sidecars another way, either
  from a few relays (or the admin processes) that LISTEN on direct
  connections and fan out over HTTP (long poll or server-sent events), or
  by sidecars polling the generation through the pooler (one cheap read per
  sidecar per poll: 10,000 sidecars polling every 2 s are 5,000 reads/s for
  a propagation of about a second, which is why LISTEN is the default).
- **A database restart** drops every connection at once; each process waits
  a delay drawn uniformly below an exponential backoff (0.5 s doubling to
  10 s) before reconnecting, so the herd spreads over seconds instead of
  landing together, and counts wait in memory meanwhile.
- The extrapolation is linear and ignores contention: the flush upserts of
  many sidecars land on the same per-minute rows and serialise on their row
  locks; 200 clients show none of it, 10,000 might.
"""


def update_results(section: str) -> None:
    """Replace (or append) the Fleet section of bench/RESULTS.md."""
    path = BENCH / "RESULTS.md"
    text = path.read_text() if path.exists() else ""
    start = text.find("## Fleet")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section.rstrip("\n") + "\n" + (text[end:] if end >= 0 else "")
    path.write_text(text)


def print_summary(data: dict[str, Any]) -> None:
    sim = data.get("simulation")
    if sim:
        print(simulation_table(sim))
        prop = sim["propagation"]
        print(f"\npropagation over {prop['samples']:,} samples: p50 {fmt(prop['p50_ms'], 1)} ms, "
              f"p99 {fmt(prop['p99_ms'], 1)} ms, max {fmt(prop['max_ms'], 1)} ms, missed {prop['missed']}")  # fmt: skip
        print()
        print(extrapolation(sim, data.get("connect_cost")))
    if "propagation" in data:
        p = data["propagation"]
        print(
            f"\nreal proxies: p50 {fmt(p['p50_ms'], 1)} ms, p99 {fmt(p['p99_ms'], 1)} ms, max {fmt(p['max_ms'], 1)} ms"
        )
    if "connect_cost" in data and not sim:
        print(json.dumps(data["connect_cost"], indent=1))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--processes", type=int, default=4, help="client processes (clients are threads)")
    ap.add_argument("--rest", type=float, default=40.0, help="seconds at rest (> 30: one safety poll each)")
    ap.add_argument("--steady", type=float, default=60.0, help="seconds of flushing")
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--change-every", type=float, default=0.5)
    ap.add_argument("--propagation", action="store_true", help="real proxies instead of the simulation")
    ap.add_argument("--proxies", type=int, default=3)
    ap.add_argument("--connect-cost", action="store_true", help="a kept connection vs one per operation")
    ap.add_argument("--all", action="store_true", help="everything; update bench/fleet.json and RESULTS.md")
    ap.add_argument(
        "--merge-run",
        metavar="JSON",
        help="only add the PostgreSQL figures of a bench/run.py results JSON (keepalive_pg, propagation) "
        "to bench/fleet.json and re-render the Fleet section of RESULTS.md",
    )
    return ap.parse_args()


def from_run(path: Path) -> dict[str, Any]:
    """The PostgreSQL store's figures from a bench/run.py run: keep-alive beside SQLite, propagation."""
    raw = json.loads(path.read_text())
    runs = raw["runs"]

    def values(scenario: str, target: str, key: str) -> list[float]:
        return [
            float(r[key]) for r in runs.get(scenario, {}).get(target, []) if key in r and "error" not in r
        ]

    out: dict[str, Any] = {"date": raw["machine"].get("date"), "busy_before": raw["info"].get("busy_before")}
    for target in ("egress", "egress-pg"):
        out[target] = {
            "rps": values("keepalive_pg", target, "rps"),
            "cpu_us_per_req": values("keepalive_pg", target, "cpu_us_per_req"),
        }
    prop = runs.get("propagation", {}).get("egress-pg", [])
    if prop:
        out["propagation"] = {k: prop[0].get(k) for k in ("changes", "p50_ms", "p99_ms", "max_ms")}
    return out


def make_bench_part(part: dict[str, Any]) -> str:
    sqlite, pg = part["egress"], part["egress-pg"]
    cpu = [statistics.median(x["cpu_us_per_req"]) if x["cpu_us_per_req"] else None for x in (sqlite, pg)]
    rps = [statistics.median(x["rps"]) if x["rps"] else None for x in (sqlite, pg)]
    rows = [
        ["SQLite store (file)", *(fmt(v) for v in (cpu[0], rps[0])),
         ", ".join(fmt(v) for v in sqlite["cpu_us_per_req"]), ", ".join(fmt(v) for v in sqlite["rps"])],
        ["PostgreSQL store (local cluster)", *(fmt(v) for v in (cpu[1], rps[1])),
         ", ".join(fmt(v) for v in pg["cpu_us_per_req"]), ", ".join(fmt(v) for v in pg["rps"])],
    ]  # fmt: skip
    ratio = cpu[1] / cpu[0] if cpu[0] and cpu[1] else None
    speed = rps[1] / rps[0] if rps[0] and rps[1] else None
    text = (
        f"In `make bench` (`bench/run.py --only keepalive_pg,propagation`, {part.get('date')}; "
        f"{fmt(part.get('busy_before'), 2)} cores were busy with other work before it started): the "
        "reference proxy (1 worker, recording) on each store, hey c=32 keep-alive, interleaved "
        "repetitions, CPU per request of the proxy's process tree beside throughput:\n\n"
    )
    text += table(
        ["store", "CPU us/req (median)", "req/s (median)", "CPU us/req per rep", "req/s per rep"], rows
    )
    verdict = (
        "PASS" if ratio is not None and speed is not None and ratio <= 1.03 and speed >= 0.97 else "FAIL"
    )
    text += (
        f"\n\nPostgreSQL / SQLite: CPU per request {fmt(ratio, 3)}x, throughput {fmt(speed, 2)}x "
        f"(goal within 3 %: {verdict}; the repetitions differ by more than that on this shared machine). "
    )
    prop = part.get("propagation")
    if prop:
        text += (
            f"Policy propagation to that proxy over {prop['changes']} changes, from just before the "
            f"write to the first CONNECT answered as the new policy says: p50 {fmt(prop['p50_ms'], 1)} ms, "
            f"p99 {fmt(prop['p99_ms'], 1)} ms (goal p99 <= 1,000 ms: "
            f"{'PASS' if (prop['p99_ms'] or 1e9) <= 1000 else 'FAIL'})."
        )
    return text + "\n"


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the cluster and proxies on the way out
    if args.merge_run:
        data = json.loads((BENCH / "fleet.json").read_text())
        data["make_bench"] = from_run(Path(args.merge_run))
        (BENCH / "fleet.json").write_text(json.dumps(data, indent=1))
        update_results(render(data))
        log("added the run's PostgreSQL figures to bench/fleet.json and RESULTS.md")
        return 0
    if pg_bin() is None:
        log("skipped: no PostgreSQL server binaries (apt-get install postgresql)")
        return 0
    data: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "args": vars(args)}
    only = args.propagation or args.connect_cost
    if args.connect_cost or args.all:
        log("connect cost")
        data["connect_cost"] = connect_cost()
    if not only or args.all:
        data["simulation"] = simulate(args)
    if args.propagation or args.all:
        data["propagation"] = propagation(args.proxies, args.changes)
    OUT.mkdir(exist_ok=True)
    name = (
        "fleet.json"
        if args.all
        else f"fleet-{'-'.join(k for k in ('propagation', 'connect_cost') if getattr(args, k)) or 'simulation'}.json"
    )
    (OUT / name).write_text(json.dumps(data, indent=1))
    print_summary(data)
    if args.all:
        shutil.copyfile(OUT / name, BENCH / "fleet.json")  # the raw numbers behind RESULTS.md
        update_results(render(data))
        log("wrote bench/fleet.json and the Fleet section of bench/RESULTS.md")
    log(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A fleet on PostgreSQL: three real proxies, one database, changes and counts shared, outages survived."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import requests

from proxy.secrets import MasterKey
from tests.clients import session
from tests.conftest import proxy_args
from tests.e2e.test_e2e_grants import connect_status
from tests.harness import Proxy, Upstream, egress, start_proxy
from tests.pg import Cluster, free_port, pg_bin

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
SECRET = "sk_fleet_e2e_5150"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A cluster of this module's own: one test stops and restarts it."""
    bindir = pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries not found (.ci/run installs the postgresql package)")
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    c = Cluster(bindir)
    c.start()
    yield c
    c.destroy()


@dataclass
class Fleet:
    env: dict[str, str]
    homes: list[Path]
    port: int  # the upstream's
    ca_args: list[str]
    proxies: list[Proxy] = field(default_factory=list)

    def cli(self, i: int, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        res = egress(self.homes[i], *args, stdin=stdin, **self.env)
        assert res.returncode == 0, res.stderr
        return res

    def start(self, i: int) -> Proxy:
        # Counters every second (PostgreSQL's default is 5 s), so the tests below need not wait long.
        env = {**self.env, "EGRESS_NODE": f"node-{i}"}
        proxy = start_proxy(self.homes[i], *self.ca_args, "--flush-interval", "1", env=env)
        self.proxies.append(proxy)
        return proxy

    def add(self, i: int, name: str, host: str) -> None:
        self.cli(
            i, "connector", "add", name, "--pattern", f"https://{host}:{self.port}/*",
            "--header", "X-Key", "--template", "{{secret}}", "--secret-stdin", stdin=SECRET,
        )  # fmt: skip

    def requests_counted(self) -> int:
        stats = json.loads(self.cli(0, "stats", "--json").stdout)
        return sum(c["requests_24h"] for c in stats["connectors"])


def new_fleet(cluster: Cluster, root: Path, pki: tuple[Path, object], upstream: Upstream) -> Fleet:
    """Three homes on one new database, with one connector; no proxy running yet."""
    if not cluster.running():  # a failed outage test must not take the next tests down
        cluster.start()
    _, key = MasterKey.generate()  # every process of a fleet shares the master key...
    env = {"EGRESS_DATABASE_URL": cluster.new_database(), "EGRESS_MASTER_KEY": key}
    homes = [root / "a", root / "b", root / "c"]
    fleet = Fleet(env, homes, upstream.port, proxy_args(pki[0]))
    fleet.cli(0, "init")
    for i in (1, 2):
        homes[i].mkdir(mode=0o700)
        shutil.copy(homes[0] / "grant.key", homes[i] / "grant.key")  # ...and the grant key
        fleet.cli(i, "init")
    fleet.add(0, "stripe", "api.stripe.test")
    return fleet


@pytest.fixture(scope="module")
def running(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, object], upstream: Upstream
) -> Iterator[Fleet]:
    """Three proxies running on one database, shared by the tests below (starting proxies is slow)."""
    fleet = new_fleet(cluster, tmp_path_factory.mktemp("fleet"), pki, upstream)
    for i in range(3):
        fleet.start(i)
    yield fleet
    for p in fleet.proxies:
        p.stop()


@pytest.fixture
def fleet(cluster: Cluster, tmp_path: Path, pki: tuple[Path, object], upstream: Upstream) -> Iterator[Fleet]:
    """A fleet of this test's own (it starts and stops proxies itself)."""
    fleet = new_fleet(cluster, tmp_path, pki, upstream)
    yield fleet
    for p in fleet.proxies:
        p.stop()


def settled(fleet: Fleet) -> int:
    """The request count once earlier tests' counts are flushed (about once a second)."""
    time.sleep(1.5)
    return fleet.requests_counted()


def get(proxy: Proxy, url: str) -> int:
    """The status a client sees, a refused CONNECT included (requests raises for those)."""
    s = session(proxy.url, proxy.ca)
    try:
        return s.get(url, timeout=10).status_code
    except requests.exceptions.ProxyError as e:
        return 403 if "403 Forbidden" in str(e) else 0
    finally:
        s.close()


def seconds_until(predicate: Callable[[], bool], limit: float) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < limit, f"not within {limit} s"
        time.sleep(0.02)
    return time.monotonic() - started


def connections(cluster: Cluster, url: str) -> list[tuple[str, int]]:
    """(application_name, connections) to ``url``'s database, asked from another database."""
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s "
            "GROUP BY application_name ORDER BY application_name",
            (url.rsplit("/", 1)[1],),
        ).fetchall()
    return [(str(name), int(n)) for name, n in rows]


def test_a_proxy_holds_one_connection_for_changes_and_counts(fleet: Fleet, cluster: Cluster) -> None:
    proxy = fleet.start(0)
    url = f"https://api.stripe.test:{fleet.port}/v1/one"
    assert [get(proxy, url) for _ in range(3)] == [200] * 3
    seconds_until(lambda: fleet.requests_counted() == 3, 10.0)  # written through it...
    fleet.add(1, "late", "api.late.test")
    seconds_until(lambda: get(proxy, f"https://api.late.test:{fleet.port}/x") == 200, 2.0)  # ...heard on it
    database = fleet.env["EGRESS_DATABASE_URL"]
    # The CLI's connections close as its commands exit; the supervisor holds none.
    seconds_until(lambda: connections(cluster, database) == [("egress-proxy", 1)], 5.0)


def test_a_connector_added_through_one_cli_reaches_every_proxy_within_two_seconds(
    running: Fleet, upstream: Upstream
) -> None:
    fleet, proxies = running, running.proxies
    late = f"https://api.late.test:{fleet.port}/fleet"
    assert [get(p, late) for p in proxies] == [403] * 3  # no connector covers it yet
    fleet.add(1, "late", "api.late.test")
    latencies = [seconds_until(lambda p=p: get(p, late) == 200, 2.0) for p in proxies]  # type: ignore[misc]
    print(f"connector reached the proxies after {', '.join(f'{s * 1000:.0f} ms' for s in latencies)}")
    assert upstream.find("/fleet")[-1].header("x-key") == [SECRET]
    fleet.cli(0, "connector", "remove", "late")
    for p in proxies:
        seconds_until(lambda p=p: get(p, late) == 403, 2.0)  # type: ignore[misc]


def test_a_grant_revoked_through_one_cli_is_refused_by_every_proxy(running: Fleet) -> None:
    fleet, proxies = running, running.proxies
    token = json.loads(fleet.cli(0, "grant", "--json", "--connector", "stripe").stdout)["token"]
    target = f"api.stripe.test:{fleet.port}"
    assert [connect_status(p, target, token)[0] for p in proxies] == [200] * 3
    fleet.cli(1, "grant", "revoke", token)
    for p in proxies:
        seconds_until(lambda p=p: connect_status(p, target, token)[0] == 407, 2.0)  # type: ignore[misc]
        assert connect_status(p, target, token)[1]["x-egress-blocked"] == "revoked-grant"


def by_node(fleet: Fleet) -> dict[str, int]:
    doc = json.loads(fleet.cli(2, "stats", "--by-node", "--json").stdout)
    return {n["node"]: n["requests_24h"] for n in doc["nodes"]}


def test_counts_from_every_proxy_add_up_and_each_process_shows_its_share(running: Fleet) -> None:
    fleet, proxies = running, running.proxies
    before, nodes_before = settled(fleet), by_node(fleet)
    url = f"https://api.stripe.test:{fleet.port}/v1/count"
    sent = {"node-0": 7, "node-1": 5, "node-2": 11}
    statuses = [get(p, url) for p, n in zip(proxies, sent.values(), strict=True) for _ in range(n)]
    assert statuses == [200] * 23
    seconds_until(lambda: fleet.requests_counted() == before + 23, 10.0)
    time.sleep(1.5)  # and no more than that: nothing is counted twice
    assert fleet.requests_counted() == before + 23
    nodes = by_node(fleet)
    assert {n: nodes[n] - nodes_before.get(n, 0) for n in sent} == sent
    table = fleet.cli(0, "stats", "--by-node").stdout
    assert all(node in table for node in sent), table


class Traffic(threading.Thread):
    """Requests through every proxy in turn until stopped; what each got back."""

    def __init__(self, proxies: list[Proxy], url: str) -> None:
        super().__init__(daemon=True)
        self.sessions = [session(p.url, p.ca) for p in proxies]
        self.url = url
        self.statuses: list[int | str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set() and len(self.statuses) < 5000:
            try:
                self.statuses.append(
                    self.sessions[i % len(self.sessions)].get(self.url, timeout=10).status_code
                )
            except requests.RequestException as e:
                self.statuses.append(type(e).__name__)
            i += 1
            time.sleep(0.01)

    def finish(self) -> list[int | str]:
        self.stop.set()
        self.join(30)
        for s in self.sessions:
            s.close()
        return self.statuses


def test_a_database_outage_loses_no_count_and_changes_flow_again_after_it(
    running: Fleet, cluster: Cluster
) -> None:
    fleet, proxies = running, running.proxies
    before = settled(fleet)
    traffic = Traffic(proxies, f"https://api.stripe.test:{fleet.port}/v1/outage")
    traffic.start()
    time.sleep(1.5)
    cluster.stop("fast")
    down_at = len(traffic.statuses)
    time.sleep(10)  # minutes in production; the bounds are what matter, tested in the unit tests
    during = traffic.statuses[down_at:]
    cluster.start()
    time.sleep(1.5)
    statuses = traffic.finish()
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert len(during) > 20  # it kept serving while the database was down
    back = seconds_until(lambda: fleet.requests_counted() == before + len(statuses), 20.0)
    print(
        f"{len(statuses)} requests, {len(during)} of them while PostgreSQL was down; "
        f"all counted {back:.1f} s after traffic stopped"
    )
    for p in proxies:
        log = p.log_text()
        assert "counting in memory" in log and "statistics written" in log, log
        assert "statistics dropped" not in log
    time.sleep(1.5)
    assert fleet.requests_counted() == before + len(statuses)  # a retried batch is not counted twice
    fleet.add(1, "again", "api.late.test")  # notifications and polling work again
    for p in proxies:
        seconds_until(lambda p=p: get(p, f"https://api.late.test:{fleet.port}/x") == 200, 5.0)  # type: ignore[misc]


def test_starting_while_the_database_is_down(fleet: Fleet, cluster: Cluster, tmp_path: Path) -> None:
    # Never ran: no cache, so it refuses, naming the store (password masked) and the missing cache.
    nowhere = {
        **fleet.env,
        "EGRESS_DATABASE_URL": f"postgresql://egress:s3cret@127.0.0.1:{free_port()}/egress",
    }
    res = egress(tmp_path / "fresh", "run", "--listen", "127.0.0.1:0", "--workers", "1", **nowhere)
    assert res.returncode == 1, res.stderr
    assert "cannot reach the store postgresql://egress:***@127.0.0.1" in res.stderr
    assert "policy cache" in res.stderr and "s3cret" not in res.stderr
    # Ran before: it left a cache (secrets sealed) and starts from it, with a warning.
    first = fleet.start(0)
    url = f"https://api.stripe.test:{fleet.port}/v1/cached"
    assert get(first, url) == 200
    first.stop()
    cache = (fleet.homes[0] / "policy-cache.json").read_text()
    assert SECRET not in cache and '"stripe"' in cache
    cluster.stop("fast")
    proxy = fleet.start(0)
    assert [get(proxy, url) for _ in range(3)] == [200] * 3
    assert "starting from the cached policy" in proxy.log_text()
    cluster.start()
    seconds_until(lambda: "store reachable again" in proxy.log_text(), 20.0)
    seconds_until(lambda: fleet.requests_counted() == 4, 20.0)  # the offline requests too

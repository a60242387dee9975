"""Counts survive SIGKILL: a killed worker's, and a whole proxy's, are written by whoever comes next."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.clients import session
from tests.conftest import proxy_args
from tests.e2e.test_e2e_workers import children, wait_until
from tests.harness import Proxy, Upstream, egress, start_proxy

pytestmark = pytest.mark.e2e


def add_connector(home: Path, upstream: Upstream) -> None:
    res = egress(
        home, "connector", "add", "stripe", "--pattern", f"https://api.stripe.test:{upstream.port}/v1/*",
        "--header", "X-Key", "--secret-stdin", stdin="crash-secret",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


def counted(home: Path) -> int:
    res = egress(home, "stats", "--json", "--connector", "stripe")
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)["connectors"]
    return int(row["requests_24h"])


class Load:
    """``threads`` clients sending ``total`` requests, each on a new connection (so the kernel
    spreads them over both workers all along), counting what came back and what failed."""

    def __init__(self, proxy: Proxy, base: str, total: int, threads: int = 8) -> None:
        self.proxy, self.base, self.total = proxy, base, total
        self.lock = threading.Lock()
        self.issued = 0
        self.answers: Counter[int] = Counter()
        self.failures = 0
        self.threads = [threading.Thread(target=self._client) for _ in range(threads)]

    @property
    def answered(self) -> int:
        with self.lock:
            return sum(self.answers.values())

    def _client(self) -> None:
        while True:
            with self.lock:
                if self.issued >= self.total:
                    return
                self.issued += 1
                i = self.issued
            s = session(self.proxy.url, self.proxy.ca)
            try:
                status = s.get(f"{self.base}/{i}", timeout=30).status_code
                with self.lock:
                    self.answers[status] += 1
            except requests.RequestException:
                with self.lock:
                    self.failures += 1
            finally:
                s.close()

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        for t in self.threads:
            t.join(120)


def test_sigkill_of_a_worker_under_load_loses_no_count(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    """``kill -9`` of one of two workers mid-load: ``egress stats`` still has every answer.

    What is exact: a client gets its answer only after the worker has counted
    the request (the count is taken at the response headers, before they are
    forwarded), and a worker counts only what the upstream answered. So
    ``answers <= counted <= reached upstream``. The gap between the two ends
    is the requests in flight on the victim at the instant of the kill: they
    reached the upstream, their client got a reset instead of an answer, and
    the victim may or may not have counted them, so neither equality can be
    asserted; both bounds can, and the gap is at most the requests whose
    client failed. Without the journal the victim's last second of counts is
    lost and ``counted < answers``.
    """
    home = tmp_path / "home"
    add_connector(home, upstream)
    # Flushes far apart: whatever the victim counted is still in its journal when it dies, for
    # its successor to replay at start (a flush just before the kill left nothing to replay).
    proxy = start_proxy(home, *proxy_args(pki[0]), "--workers", "2", "--flush-interval", "600")
    prefix = f"/v1/crash-{uuid.uuid4().hex[:8]}"
    load = Load(proxy, f"https://api.stripe.test:{upstream.port}{prefix}", total=900)
    try:
        workers = children(proxy.proc.pid)
        assert len(workers) == 2
        load.start()
        assert wait_until(lambda: load.answered >= 250, 60), "no load"
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: len(children(proxy.proc.pid) - {victim}) == 2, 30), "worker not restarted"
        answered_at_restart = load.answered
        load.join()
        assert load.answered > answered_at_restart, "no request after the restart"
    finally:
        assert proxy.stop() == 0
    assert set(load.answers) == {200}, load.answers
    assert load.answered + load.failures == 900
    reached = len(upstream.find(prefix))
    total = counted(home)
    assert load.answered <= total <= reached, (load.answered, total, reached, load.failures)
    assert reached - load.answered <= load.failures
    assert "left in its journal" in proxy.log_text()
    assert list((home / "journal").rglob("*.journal")) == []  # every file written and removed


def test_a_proxy_killed_whole_is_counted_by_the_next_one(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    """Supervisor and worker both SIGKILLed after answering 25 requests (none in flight): the next
    ``egress run`` on the same home writes them, exactly."""
    home = tmp_path / "home"
    add_connector(home, upstream)
    proxy = start_proxy(home, *proxy_args(pki[0]))
    (worker,) = children(proxy.proc.pid)
    s = session(proxy.url, proxy.ca)
    for i in range(25):
        assert s.get(f"https://api.stripe.test:{upstream.port}/v1/whole/{i}").status_code == 200
    s.close()
    os.kill(worker, signal.SIGKILL)
    proxy.proc.send_signal(signal.SIGKILL)
    proxy.proc.wait(10)
    assert wait_until(lambda: not Path(f"/proc/{worker}").exists(), 10)
    second = start_proxy(home, *proxy_args(pki[0]))
    assert second.stop() == 0
    assert counted(home) == 25

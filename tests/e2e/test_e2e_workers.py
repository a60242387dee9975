"""Several workers on one port, restarts, SIGHUP config reload."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import session
from tests.conftest import proxy_args
from tests.harness import Proxy, Upstream, egress, start_proxy

pytestmark = pytest.mark.e2e


def children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def write_config(path: Path, port: int, names: list[str], extra: str = "") -> None:
    lines = ["connectors:"]
    for name in names:
        host = "api.stripe.test" if name == "stripe" else "api.late.test"
        lines += [
            f"  - name: {name}",
            f'    patterns: ["https://{host}:{port}/*"]',
            "    secret: {env: CFG_SECRET}",
            "    inject: {header: X-Cfg}",
        ]
    path.write_text("\n".join(lines) + "\n" + extra)


def wait_until(predicate: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_two_workers_share_port_restart_and_count(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    home = tmp_path / "home"
    res = egress(
        home, "connector", "add", "stripe", "--pattern", f"https://api.stripe.test:{upstream.port}/v1/*",
        "--header", "X-Key", "--secret-stdin", stdin="workers-secret",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    proxy = start_proxy(home, *proxy_args(pki[0]), "--workers", "2", "--admin", "127.0.0.1:0")
    try:
        workers = children(proxy.proc.pid)
        assert len(workers) == 2
        for i in range(20):  # a new connection each time, spread by the kernel
            s = session(proxy.url, proxy.ca)
            assert s.get(f"https://api.stripe.test:{upstream.port}/v1/w?i={i}").status_code == 200
            s.close()
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: len(children(proxy.proc.pid) - {victim}) == 2, 15), "worker not restarted"
        for i in range(10):
            s = session(proxy.url, proxy.ca)
            assert s.get(f"https://api.stripe.test:{upstream.port}/v1/w2?i={i}").status_code == 200
            s.close()
        admin = (home / "run" / "admin.addr").read_text().strip()
        assert urllib.request.urlopen(f"http://{admin}/healthz", timeout=5).status == 200
        text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
        total = sum(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == "egress_requests_total"
        )
        # The killed worker's counts survive in its metrics file, up to its death.
        assert 10 < total <= 30
    finally:
        assert proxy.stop() == 0
    assert not children_alive(workers)
    stats = egress(home, "stats", "--json").stdout
    assert '"requests_24h": ' in stats


def children_alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists()}


def test_sighup_reapplies_config_and_keeps_old_on_error(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    home = tmp_path / "home"
    config = tmp_path / "connectors.yaml"
    write_config(config, upstream.port, ["stripe"])
    os.environ["CFG_SECRET"] = "cfg-secret-1"  # inherited by the proxy through clean_env
    try:
        proxy = start_proxy(home, *proxy_args(pki[0]), "--config", str(config))
    finally:
        del os.environ["CFG_SECRET"]
    late = f"https://api.late.test:{upstream.port}/x"
    s = session(proxy.url, proxy.ca)
    failures: list[str] = []
    done = threading.Event()

    def load() -> None:  # requests keep flowing through every reload
        client = session(proxy.url, proxy.ca)
        while not done.is_set():
            try:
                r = client.get(f"https://api.stripe.test:{upstream.port}/load")
                if r.status_code != 200:
                    failures.append(str(r.status_code))
            except requests.RequestException as e:
                failures.append(repr(e))

    loader = threading.Thread(target=load)
    loader.start()
    try:
        assert s.get(f"https://api.stripe.test:{upstream.port}/a").status_code == 200
        with pytest.raises(requests.exceptions.ProxyError):
            s.get(late)
        write_config(config, upstream.port, ["stripe", "late"])
        proxy.proc.send_signal(signal.SIGHUP)

        def late_works() -> bool:
            try:
                return session(proxy.url, proxy.ca).get(late).status_code == 200
            except requests.exceptions.ProxyError:
                return False

        assert wait_until(late_works, 2), proxy.log_text()  # active within 2 s
        config.write_text("connectors: [oops\n")
        proxy.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "new configuration refused" in proxy.log_text(), 3)
        assert late_works()
        assert (
            session(proxy.url, proxy.ca).get(f"https://api.stripe.test:{upstream.port}/a").status_code == 200
        )
    finally:
        done.set()
        loader.join(30)
        assert proxy.stop() == 0
    assert failures == []
    assert "cfg-secret-1" not in proxy.log_text()


def test_second_proxy_on_a_taken_port_refuses_to_start(proxy: Proxy, tmp_path: Path) -> None:
    res = egress(tmp_path / "other", "run", "--workers", "1", "--listen", proxy.addr)
    assert res.returncode == 1
    assert f"--listen {proxy.addr}: cannot bind" in res.stderr


def test_the_supervisor_without_an_admin_api_never_loads_cryptography(proxy: Proxy) -> None:
    """It only starts, watches and reloads workers: the key and store code (14 MiB of its
    32 MiB) stays in the workers."""
    supervisor = proxy.proc.pid  # `egress run` execs into the supervisor
    assert "proxy.runtime.supervisor" in Path(f"/proc/{supervisor}/cmdline").read_bytes().decode()
    maps = Path(f"/proc/{supervisor}/maps").read_text()
    assert "/cryptography/" not in maps
    (worker,) = children(supervisor)
    assert "/cryptography/" in Path(f"/proc/{worker}/maps").read_text()  # the check can see it

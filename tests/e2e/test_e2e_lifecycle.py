"""Graceful shutdown and structured logs."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.clients import session
from tests.conftest import proxy_args
from tests.harness import Upstream, egress, pattern_bytes, start_proxy

pytestmark = pytest.mark.e2e
SECRET = "lifecycle-secret-3c3c"


def make_home(home: Path, upstream: Upstream) -> None:
    res = egress(
        home, "connector", "add", "dl", "--pattern", f"https://api.stripe.test:{upstream.port}/v1/*",
        "--query", "key", "--secret-stdin", stdin=SECRET,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_sigterm_during_download_completes_it_and_flushes(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    home = tmp_path / "home"
    make_home(home, upstream)
    proxy = start_proxy(home, *proxy_args(pki[0]))
    size = 64 * 1024 * 1024
    s = session(proxy.url, proxy.ca)
    digest, got = hashlib.sha256(), 0
    stopped: list[int] = []
    with s.get(f"https://api.stripe.test:{upstream.port}/v1/download?size={size}", stream=True) as r:
        assert r.status_code == 200
        for i, chunk in enumerate(r.iter_content(1 << 20)):
            digest.update(chunk)
            got += len(chunk)
            if i == 1:  # mid-transfer: ask the proxy to stop
                threading.Thread(target=lambda: stopped.append(proxy.stop(signal.SIGTERM))).start()
                time.sleep(0.5)
    expected = hashlib.sha256()
    block = pattern_bytes(1 << 20)
    for _ in range(size // len(block)):
        expected.update(block)
    assert (got, digest.hexdigest()) == (size, expected.hexdigest())
    deadline = time.monotonic() + 30
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stopped == [0]
    stats = json.loads(egress(home, "stats", "--json").stdout)
    assert stats["connectors"][0]["requests_24h"] == 1


def test_json_log_format_one_line_per_request(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    home = tmp_path / "home"
    make_home(home, upstream)
    proxy = start_proxy(home, *proxy_args(pki[0]), "--log-format", "json")
    s = session(proxy.url, proxy.ca)
    try:
        assert (
            s.get(f"https://api.stripe.test:{upstream.port}/v1/download?size=1000&key=x").status_code == 200
        )
        assert s.get(f"https://api.stripe.test:{upstream.port}/v1/status?code=404").status_code == 404
        assert s.get(f"https://api.stripe.test:{upstream.port}/v2/no").status_code == 403
        time.sleep(0.5)
    finally:
        assert proxy.stop() == 0
    lines = [json.loads(x) for x in proxy.log_text().splitlines() if x.startswith("{")]
    access = [x for x in lines if x["logger"] == "egress.access"]
    assert [(a["outcome"], a["status"]) for a in access] == [("ok", 200), ("error", 404), ("blocked", 403)]
    ok = access[0]
    assert ok["connector"] == "dl" and ok["method"] == "GET" and ok["path"] == "/v1/download"
    assert ok["bytes"] == 1000 and ok["duration_ms"] >= 0 and ok["request_id"]
    assert SECRET not in proxy.log_text()


def test_packages_named_like_ours_in_the_working_directory_are_never_imported(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    """`python -m` puts the working directory first on sys.path: a project folder named
    ``addons`` (mitmproxy users have one) or ``proxy`` would run in place of the proxy's code."""
    work, marker = tmp_path / "project", tmp_path / "imported"
    for package in ("addons", "proxy"):
        (work / package).mkdir(parents=True)
        (work / package / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write({package!r})\n")
    home = tmp_path / "home"
    make_home(home, upstream)
    proxy = start_proxy(home, *proxy_args(pki[0]), cwd=work)
    try:
        r = session(proxy.url, proxy.ca).get(f"https://api.stripe.test:{upstream.port}/v1/cwd", timeout=20)
        assert r.status_code == 200
        assert upstream.find("/v1/cwd")[0].path.endswith(f"key={SECRET}")
    finally:
        assert proxy.stop() == 0
    assert not marker.exists(), marker.read_text()

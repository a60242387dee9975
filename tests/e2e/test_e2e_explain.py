"""Explained blocks (the loopback default): a refused host's CONNECT is accepted,
TLS finishes with a minted certificate, and every request inside is answered
with the 403 JSON an SDK can show; no upstream is ever contacted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.clients import curl, session
from tests.conftest import network_args
from tests.harness import Proxy, Upstream, egress, start_proxy

pytestmark = pytest.mark.e2e
SECRET = "sk_explain_e2e_8a9b"


@pytest.fixture(scope="module")
def eproxy(
    tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, object], upstream: Upstream
) -> Iterator[Proxy]:
    home = tmp_path_factory.mktemp("explain-home")
    assert egress(home, "init").returncode == 0
    for name, pattern in (
        ("stripe", f"https://api.stripe.test:{upstream.port}/v1/*"),
        ("wild", f"https://*.wild.test:{upstream.port}/*"),
    ):
        res = egress(home, "connector", "add", name, "--pattern", pattern, "--header", "X-Key", "--template",
                     "{{secret}}", "--secret-env", "S", S=SECRET)  # fmt: skip
        assert res.returncode == 0, res.stderr
    proxy = start_proxy(home, *network_args(pki[0]))  # no flag: loopback, so explained
    yield proxy
    proxy.stop()


def test_uncovered_host_gets_a_readable_403(eproxy: Proxy, upstream: Upstream) -> None:
    before = upstream.connections
    r = session(eproxy.url, eproxy.ca).get(f"https://evil.test:{upstream.port}/steal?x=1")
    assert r.status_code == 403
    body = r.json()
    assert body["reason"] == "no-connector"
    assert r.headers["x-egress-blocked"] == "no-connector"
    assert upstream.connections == before  # nothing was dialled
    res = curl(eproxy.home, eproxy.url, eproxy.ca, "-sS", "-o", "/dev/null", "-w", "%{http_code}",
               f"https://evil.test:{upstream.port}/")  # fmt: skip
    assert res.stdout == "403", res.stderr


def test_not_granted_and_private_address_are_explained(eproxy: Proxy, upstream: Upstream) -> None:
    minted = egress(eproxy.home, "grant", "--json", "--connector", "stripe", "--proxy", eproxy.addr)
    url = json.loads(minted.stdout)["proxy_url"]
    r = session(url, eproxy.ca).get(f"https://a.wild.test:{upstream.port}/x")
    assert r.status_code == 403 and r.json()["reason"] == "not-granted"
    # The tunnel stays refused for every request on it, whatever Host or path follows.
    s = session(url, eproxy.ca)
    for path in ("/v1/ok", "/"):
        assert s.get(f"https://a.wild.test:{upstream.port}{path}").json()["reason"] == "not-granted"


def test_explained_blocks_are_logged_per_request(eproxy: Proxy, upstream: Upstream) -> None:
    tag = f"e{time.monotonic_ns()}"
    assert session(eproxy.url, eproxy.ca).get(f"https://evil.test:{upstream.port}/{tag}").status_code == 403
    deadline = time.monotonic() + 10
    rows: list[str] = []
    while time.monotonic() < deadline and not rows:
        out = egress(eproxy.home, "logs", "--blocked", "--json").stdout
        rows = [line for line in out.splitlines() if tag in line]
        time.sleep(0.3)
    assert rows and json.loads(rows[0])["reason"] == "no-connector"


def test_off_means_refused_at_connect(
    pki: tuple[Path, object], upstream: Upstream, eproxy: Proxy, tmp_path: Path
) -> None:
    proxy = start_proxy(eproxy.home, *network_args(pki[0]), "--no-explain-blocks", log=tmp_path / "p.log")
    try:
        with pytest.raises(requests.exceptions.ProxyError):
            session(proxy.url, proxy.ca).get(f"https://evil.test:{upstream.port}/")
    finally:
        proxy.stop()

"""Workspaces end to end: same connector names in two workspaces, grants that
reach only their own workspace, and stats and logs that stay apart."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import session
from tests.conftest import proxy_args
from tests.harness import Proxy, Upstream, egress, start_proxy

pytestmark = pytest.mark.e2e

SECRETS = {"default": "sk_ws_default_1a2b", "acme": "sk_ws_acme_3c4d"}


@pytest.fixture(scope="module")
def wproxy(
    tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, object], upstream: Upstream
) -> Iterator[Proxy]:
    home = tmp_path_factory.mktemp("ws-home")
    assert egress(home, "init").returncode == 0
    for ws in ("default", "acme"):
        res = egress(
            home, "connector", "add", "stripe", "--workspace", ws,
            "--pattern", f"https://api.stripe.test:{upstream.port}/v1/*",
            "--header", "X-Key", "--template", "{{secret}}", "--secret-env", "S", S=SECRETS[ws],
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
    proxy = start_proxy(home, *proxy_args(pki[0]), "--require-grant")
    yield proxy
    proxy.stop()


def grant(proxy: Proxy, workspace: str, *args: str) -> str:
    res = egress(proxy.home, "grant", "--json", "--proxy", proxy.addr, "--workspace", workspace, *args)
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout)["proxy_url"])


def test_same_name_in_two_workspaces_each_grant_gets_its_own(wproxy: Proxy, upstream: Upstream) -> None:
    for ws in ("default", "acme"):
        url = grant(wproxy, ws, "--connector", "stripe", "--label", f"step-{ws}")
        tag = f"w{ws}{time.monotonic_ns()}"
        assert (
            session(url, wproxy.ca).get(f"https://api.stripe.test:{upstream.port}/v1/x?t={tag}").status_code
            == 200
        )
        (rec,) = upstream.find(tag)
        assert rec.header("x-key") == [SECRETS[ws]]


def test_listing_and_grants_stay_in_their_workspace(wproxy: Proxy) -> None:
    acme = json.loads(egress(wproxy.home, "connector", "list", "--json", "--workspace", "acme").stdout)
    assert [c["name"] for c in acme] == ["stripe"]
    assert egress(wproxy.home, "connector", "show", "stripe", "--workspace", "other").returncode == 2
    res = egress(wproxy.home, "grant", "list", "--json", "--workspace", "acme")
    assert {g["label"] for g in json.loads(res.stdout)} <= {"step-acme"}


def test_errors_are_logged_in_their_workspace(wproxy: Proxy, upstream: Upstream) -> None:
    url = grant(wproxy, "acme", "--connector", "stripe", "--label", "acme-errors")
    tag = f"e{time.monotonic_ns()}"
    s = session(url, wproxy.ca)
    assert s.get(f"https://api.stripe.test:{upstream.port}/v1/{tag}/status?code=500").status_code == 500
    deadline = time.monotonic() + 10
    acme: list[dict[str, object]] = []
    while time.monotonic() < deadline and not acme:
        out = egress(wproxy.home, "logs", "--errors", "--json", "--workspace", "acme").stdout
        acme = [json.loads(line) for line in out.splitlines() if tag in line]
        time.sleep(0.3)
    assert acme and acme[0]["workspace"] == "acme" and acme[0]["connector"] == "acme/stripe"
    default = egress(wproxy.home, "logs", "--errors", "--json").stdout
    assert tag not in default
    stats = json.loads(egress(wproxy.home, "stats", "--json", "--workspace", "acme").stdout)
    assert [c["connector"] for c in stats["connectors"]] == ["acme/stripe"]

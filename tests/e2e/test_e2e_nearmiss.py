"""Near miss end to end: the 403 body, the blocked log, `egress check` and `--suggest`."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from tests.clients import session
from tests.conftest import network_args
from tests.harness import Upstream, add_connector, blocked_rows, egress, start_proxy

pytestmark = pytest.mark.e2e
SECRET = "sk_nearmiss_e2e_7c7c7c"


def test_near_miss_in_body_log_check_and_suggest(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    home = tmp_path / "home"
    port = upstream.port
    outputs = []
    for name, *flags in (
        ["stripe", "--pattern", f"https://api.stripe.test:{port}/v1/*", "--header", "Authorization"],
        ["wild", "--pattern", f"https://*.wild.test:{port}/*", "--header", "X-Api-Key"],
        ["ro", "--pattern", f"https://api.weather.test:{port}/*", "--query", "k", "--method", "GET"],
    ):
        res = add_connector(home, name, SECRET, *flags)
        outputs += [res.stdout, res.stderr]
    seen_before = len(upstream.records)
    proxy = start_proxy(home, *network_args(pki[0]))  # loopback: blocks explained
    try:
        s = session(proxy.url, proxy.ca)
        r = s.get(f"https://api.stripe.test:{port}/v2/charges?limit=1")
        assert r.status_code == 403
        assert r.json()["near_miss"] == {
            "connector": "stripe",
            "differs": "path",
            "detail": "pattern wants /v1/*, request has /v2/...",
        }
        r = s.delete(f"https://api.weather.test:{port}/x")
        assert r.status_code == 403 and r.json()["reason"] == "method-not-allowed"
        assert r.json()["near_miss"]["differs"] == "method"
        r = s.get(f"http://api.stripe.test:{port}/v1/charges")  # plain http through the proxy
        assert r.status_code == 403 and r.json()["reason"] == "plain-http"
        assert r.json()["near_miss"]["differs"] == "scheme"
        r = s.get(f"https://wild.test:{port}/x")  # refused host: explained inside the tunnel
        assert r.status_code == 403 and r.json()["near_miss"]["differs"] == "host"
        outputs += [proxy.log_text()]
        rows = blocked_rows(home, 4)
    finally:
        assert proxy.stop(signal.SIGTERM) == 0
    assert len(upstream.records) == seen_before  # nothing blocked reached the upstream

    near = {(r["method"], r["host"], r["path"]): r["near_miss"] for r in rows}
    assert near[("GET", f"api.stripe.test:{port}", "/v2/charges")]["differs"] == "path"
    assert near[("GET", f"api.stripe.test:{port}", "/v2/charges")]["pattern"] == (
        f"https://api.stripe.test:{port}/v1/*"
    )
    assert near[("DELETE", f"api.weather.test:{port}", "/x")]["differs"] == "method"
    connect = near[("GET", f"wild.test:{port}", "/x")]  # the explained request, not its CONNECT
    assert (connect["connector"], connect["differs"], connect["depth"]) == ("wild", "host", 1)

    table = egress(home, "logs", "--blocked").stdout
    assert "NEAR MISS" in table and "stripe path: pattern wants /v1/*" in table

    res = egress(home, "logs", "--blocked", "--suggest")
    assert res.returncode == 0, res.stderr
    assert f"add pattern https://api.stripe.test:{port}/v2/* to connector stripe" in res.stdout
    assert "add method DELETE to connector ro" in res.stdout
    suggestions = [
        json.loads(line)
        for line in egress(home, "logs", "--blocked", "--suggest", "--json").stdout.splitlines()
    ]
    assert {s["url"] for s in suggestions} >= {f"https://api.stripe.test:{port}/v2/charges"}
    # Suggestions are never applied.
    assert "/v2/*" not in egress(home, "connector", "show", "stripe").stdout

    check = egress(home, "check", f"http://api.stripe.test:{port}/v1/charges")
    assert check.returncode == 1
    assert "blocked: plain-http" in check.stdout and "near miss: connector stripe, scheme" in check.stdout
    check = egress(home, "check", f"https://api.stripe.test:{port}/v1")
    assert check.returncode == 0, check.stdout
    for text in (*outputs, table, res.stdout, check.stdout):
        assert SECRET not in text


def test_other_workspace_named_to_the_operator_only_the_word_to_the_client(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    home = tmp_path / "home"
    port = upstream.port
    for ws, name, pattern in (
        ("acme", "stripe", f"https://api.stripe.test:{port}/v1/*"),
        ("default", "weather", f"https://api.weather.test:{port}/v1/*"),
        ("acme", "weather2", f"https://api.weather.test:{port}/v2/*"),
    ):
        add_connector(
            home, name, SECRET, "--workspace", ws, "--pattern", pattern, "--header", "Authorization"
        )
    tokens = {}
    for scope in ((), ("--workspace", "default")):
        made = egress(home, "admin", "token", "create", *scope, "--label", f"t{len(tokens)}")
        assert made.returncode == 0, made.stderr
        tokens[scope] = made.stdout.strip()
    seen_before = len(upstream.records)
    proxy = start_proxy(home, *network_args(pki[0]), "--admin", "127.0.0.1:0")  # loopback: explained
    try:
        res = egress(
            home, "grant", "--json", "--proxy", proxy.addr, "--connector", "weather", "--label", "ws"
        )
        assert res.returncode == 0, res.stderr
        grant = json.loads(res.stdout)
        s = session(grant["proxy_url"], proxy.ca)
        word_only = {"differs": "other-workspace"}
        r = s.get(f"https://api.stripe.test:{port}/v1/charges")  # only acme covers the host: at CONNECT
        assert r.status_code == 403 and r.json()["reason"] == "not-granted"
        assert set(r.json()["near_miss"]) == {"differs", "detail"}
        assert r.json()["near_miss"].items() >= word_only.items()
        assert "acme" not in r.text
        r = s.get(f"https://api.weather.test:{port}/v2/x")  # the grant's tunnel: acme's path
        assert r.status_code == 403 and r.json()["reason"] == "not-granted"
        assert r.json()["detail"] == "only another workspace's connectors allow this URL"
        assert set(r.json()["near_miss"]) == {"differs", "detail"}
        assert r.json()["near_miss"].items() >= word_only.items()
        assert "acme" not in r.text and "weather2" not in r.text
        r = s.get(f"https://api.weather.test:{port}/v3/x")  # nearest is the grant's own: told whole
        assert r.status_code == 403 and r.json()["near_miss"]["connector"] == "weather"
        assert r.json()["near_miss"]["differs"] == "path"
        rows = blocked_rows(home, 3)
        check = egress(home, "check", "--grant", grant["token"], f"https://api.stripe.test:{port}/v1/charges")
        admin = f"http://{(home / 'run' / 'admin.addr').read_text().strip()}"
        api = {
            scope: httpx.get(f"{admin}/api/v1/workspaces/default/logs/blocked",
                             headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
            for scope, token in tokens.items()
        }  # fmt: skip
    finally:
        assert proxy.stop(signal.SIGTERM) == 0
    assert len(upstream.records) == seen_before

    near = {r["path"]: r["near_miss"] for r in rows}
    assert (near["/v1/charges"]["connector"], near["/v1/charges"]["differs"]) == (
        "acme/stripe",
        "other-workspace",
    )
    assert (near["/v2/x"]["connector"], near["/v2/x"]["differs"]) == ("acme/weather2", "other-workspace")
    assert near["/v2/x"]["pattern"] == f"https://api.weather.test:{port}/v2/*"
    assert (near["/v3/x"]["connector"], near["/v3/x"]["differs"]) == ("weather", "path")
    table = egress(home, "logs", "--blocked").stdout
    assert "acme/stripe other-workspace: connector acme/stripe is in workspace acme" in table
    suggest = egress(home, "logs", "--blocked", "--suggest").stdout
    assert "egress grant --workspace acme --connector weather2" in suggest
    assert check.returncode == 1
    assert "near miss: connector acme/stripe, other-workspace" in check.stdout
    # The admin API: every row with its near miss; a token of the grant's workspace alone
    # (default) is told only the word for acme's connectors, an all-workspace token all of it.
    everyone, default_only = api[()], api[("--workspace", "default")]
    assert {r["path"]: r["near_miss"] for r in everyone} == near
    told = {r["path"]: r["near_miss"] for r in default_only}
    assert told["/v3/x"] == near["/v3/x"]
    for path in ("/v1/charges", "/v2/x"):
        assert set(told[path]) == {"differs", "detail"} and told[path]["differs"] == "other-workspace"
    assert "acme" not in json.dumps(default_only)

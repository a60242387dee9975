"""Monitoring end to end: exact counts and rows after a known mix of outcomes."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import session
from tests.conftest import proxy_args
from tests.e2e.test_adversarial import exchange, tag, tunnel
from tests.harness import Proxy, Upstream, egress, start_proxy

pytestmark = pytest.mark.e2e
SECRET = "sk_monitoring_e2e_5a5a"
DOWN_SECRET = "down-monitoring-e2e-6b6b"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup_home(home: Path, upstream: Upstream, down_port: int) -> list[str]:
    outputs = []
    for args, secret in (
        (
            [
                "mon",
                "--pattern",
                f"https://api.stripe.test:{upstream.port}/v1/*",
                "--header",
                "Authorization",
            ],
            SECRET,
        ),
        (["down", "--pattern", f"https://api.late.test:{down_port}/*", "--query", "key"], DOWN_SECRET),
    ):
        res = egress(home, "connector", "add", *args, "--secret-stdin", stdin=secret)
        assert res.returncode == 0, res.stderr
        outputs += [res.stdout, res.stderr]
    return outputs


def drive_mix(proxy: Proxy, upstream: Upstream, down_port: int) -> None:
    s = session(proxy.url, proxy.ca)
    base = f"https://api.stripe.test:{upstream.port}"
    for i in range(3):
        assert s.get(f"{base}/v1/ok?i={i}").status_code == 200
    for _ in range(2):
        assert s.get(f"{base}/v1/status?code=404").status_code == 404
    assert s.post(f"{base}/v1/status?code=503&q=hidden", data=b"x").status_code == 503
    for _ in range(2):
        assert s.get(f"https://api.late.test:{down_port}/gone?key=client").status_code == 502
    for _ in range(2):
        assert s.get(f"{base}/v2/nope?q=1").status_code == 403
    with pytest.raises(requests.exceptions.ProxyError):
        s.get(f"https://evil.test:{upstream.port}/")


def test_known_mix_gives_exact_stats_logs_and_metrics(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    home = tmp_path / "home"
    down_port = closed_port()
    outputs = setup_home(home, upstream, down_port)
    proxy = start_proxy(home, *proxy_args(pki[0]), "--admin", "127.0.0.1:0")
    try:
        drive_mix(proxy, upstream, down_port)
        admin = (home / "run" / "admin.addr").read_text().strip()
        assert urllib.request.urlopen(f"http://{admin}/healthz", timeout=5).read() == b"ok\n"
        text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    finally:
        assert proxy.stop(signal.SIGTERM) == 0  # right after the last request
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("egress_requests_total", (("connector", "mon"),))] == 6
    assert samples[("egress_errors_total", (("connector", "mon"),))] == 3
    assert samples[("egress_errors_total", (("connector", "down"),))] == 2
    assert samples[("egress_blocked_total", (("reason", "no-connector"),))] == 3
    assert samples[("egress_upstream_latency_seconds_count", (("connector", "mon"),))] == 6

    res = egress(home, "stats", "--json")
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    by_name = {c["connector"]: c for c in stats["connectors"]}
    assert (by_name["mon"]["requests_24h"], by_name["mon"]["errors_24h"]) == (6, 3)
    assert by_name["mon"]["error_rate"] == 0.5
    # Two 404s and one 503 in six: errors, but not a broken connector.
    assert by_name["mon"]["health"]["state"] == "ok"
    assert by_name["mon"]["alert"] is False
    assert by_name["mon"]["health"]["last_24h"] == {
        "requests": 6,
        "rejected": 0,
        "client_errors": 2,
        "server_errors": 1,
        "transport_failures": 0,
    }
    assert by_name["down"]["health"]["last_1h"]["transport_failures"] == 2
    assert by_name["down"]["health"]["state"] == "ok"  # two failures are too few to judge by
    assert by_name["mon"]["last_error"]["status"] == 503
    assert (by_name["down"]["requests_24h"], by_name["down"]["errors_24h"]) == (2, 2)
    assert by_name["down"]["last_error"]["failure"] == "refused"
    blocked = {(b["host"], b["reason"]): b["count"] for b in stats["blocked"]}
    assert blocked == {
        (f"api.stripe.test:{upstream.port}", "no-connector"): 2,
        (f"evil.test:{upstream.port}", "no-connector"): 1,
    }

    res = egress(home, "logs", "--json")
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    errors = [r for r in rows if r["kind"] == "error"]
    blocks = [r for r in rows if r["kind"] == "blocked"]
    assert sorted(r.get("status", 0) for r in errors) == [0, 0, 404, 404, 503]
    assert {r["failure"] for r in errors if "failure" in r} == {"refused"}
    assert all("?" not in r["path"] for r in rows)
    post = next(r for r in errors if r.get("status") == 503)
    assert (post["method"], post["host"], post["path"]) == (
        "POST",
        f"api.stripe.test:{upstream.port}",
        "/v1/status",
    )
    assert len(blocks) == 3 and {r["reason"] for r in blocks} == {"no-connector"}
    assert rows == sorted(rows, key=lambda r: r["ts"], reverse=True)  # newest first
    assert len(json.loads(egress(home, "stats", "--json", "--connector", "down").stdout)["connectors"]) == 1
    only_blocked = egress(home, "logs", "--blocked", "--json").stdout.splitlines()
    assert len(only_blocked) == 3
    assert len(egress(home, "logs", "--errors", "--connector", "down", "--json").stdout.splitlines()) == 2
    table = egress(home, "stats").stdout
    assert "mon" in table and "50.0%" in table and "HEALTH" in table and "!" not in table
    logs_table = egress(home, "logs").stdout
    assert "/v1/status" in logs_table and "no-connector" in logs_table

    everything = [*outputs, text, res.stdout, table, logs_table, proxy.log_text()]
    for secret in (SECRET, DOWN_SECRET):
        assert not any(secret in t for t in everything)
        for f in home.rglob("*"):
            if f.is_file():
                assert secret.encode() not in f.read_bytes()


def test_credential_health_from_real_traffic(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    """401s mark a connector credential-rejected, 404s leave it ok, a dead upstream is failing."""
    home = tmp_path / "home"
    down_port = closed_port()
    for args in (
        ["keyed", "--pattern", f"https://api.stripe.test:{upstream.port}/v1/*", "--header", "Authorization"],
        ["lookup", "--pattern", f"https://api.weather.test:{upstream.port}/*", "--query", "key"],
        ["down", "--pattern", f"https://api.late.test:{down_port}/*", "--query", "key"],
        ["idle", "--pattern", f"https://wild.test:{upstream.port}/*", "--query", "key"],
    ):
        res = egress(home, "connector", "add", *args, "--secret-stdin", stdin=SECRET)
        assert res.returncode == 0, res.stderr
    proxy = start_proxy(home, *proxy_args(pki[0]), "--admin", "127.0.0.1:0")
    try:
        s = session(proxy.url, proxy.ca)
        keyed = f"https://api.stripe.test:{upstream.port}/v1"
        for code in (401, 401, 401, 403, 200):  # 4 of 5 refused: the key is bad
            assert s.get(f"{keyed}/status?code={code}").status_code == code
        for i in range(8):  # a sandbox probing for things that do not exist
            assert s.get(f"https://api.weather.test:{upstream.port}/status?code=404&i={i}").status_code == 404
        assert s.get(f"https://api.weather.test:{upstream.port}/found").status_code == 200
        for _ in range(5):
            assert s.get(f"https://api.late.test:{down_port}/x").status_code == 502
        admin = (home / "run" / "admin.addr").read_text().strip()
        deadline = time.monotonic() + 10
        while True:  # the state comes from the store, written about once a second
            text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
            state = {
                s.labels["connector"]: s.labels["state"]
                for fam in text_string_to_metric_families(text)
                for s in fam.samples
                if s.name == "egress_connector_state" and s.value == 1
            }
            if state.get("down") == "failing" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        assert proxy.stop(signal.SIGTERM) == 0
    assert state == {"keyed": "credential-rejected", "lookup": "ok", "down": "failing", "idle": "unused"}
    classes = {
        (s.labels["connector"], s.labels["class"]): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "egress_errors_by_class_total"
    }
    assert classes == {
        ("keyed", "rejected"): 4,
        ("lookup", "client"): 8,
        ("down", "transport"): 5,
    }

    res = egress(home, "stats", "--json")
    assert res.returncode == 0, res.stderr
    by_name = {c["connector"]: c for c in json.loads(res.stdout)["connectors"]}
    assert {n: (c["health"]["state"], c["alert"]) for n, c in by_name.items()} == {
        "keyed": ("credential-rejected", True),
        "lookup": ("ok", False),
        "down": ("failing", True),
        "idle": ("unused", False),
    }
    assert by_name["keyed"]["health"]["last_1h"] == {
        "requests": 5,
        "rejected": 4,
        "client_errors": 0,
        "server_errors": 0,
        "transport_failures": 0,
    }
    assert by_name["keyed"]["health"]["rejected_share_1h"] == 0.8
    assert by_name["keyed"]["health"]["last_24h"] == by_name["keyed"]["health"]["last_1h"]
    assert (by_name["lookup"]["errors_24h"], by_name["lookup"]["health"]["last_24h"]["client_errors"]) == (
        8,
        8,
    )
    assert by_name["down"]["health"]["last_24h"]["transport_failures"] == 5
    table = egress(home, "stats").stdout.splitlines()
    line = {row.split()[0]: row for row in table[1:] if row.strip()}
    assert table[0].split()[:2] == ["CONNECTOR", "HEALTH"]
    assert line["keyed"].split()[1] == "credential-rejected" and "4/5 got 401/403" in line["keyed"]
    assert line["down"].split()[1] == "failing" and "5/5 got 5xx or no response" in line["down"]
    assert line["lookup"].split()[1] == "ok" and "!" not in line["lookup"]
    assert line["idle"].split()[1] == "unused"


def test_two_proxies_sharing_a_store_add_up(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    home = tmp_path / "home"
    setup_home(home, upstream, closed_port())
    first = start_proxy(home, *proxy_args(pki[0]), log=tmp_path / "a.log")
    second = start_proxy(home, *proxy_args(pki[0]), log=tmp_path / "b.log")
    try:
        for proxy, n in ((first, 7), (second, 5)):
            s = session(proxy.url, proxy.ca)
            for i in range(n):
                assert s.get(f"https://api.stripe.test:{upstream.port}/v1/shared?i={i}").status_code == 200
    finally:
        assert first.stop() == 0
        assert second.stop() == 0
    stats = json.loads(egress(home, "stats", "--json", "--connector", "mon").stdout)
    assert stats["connectors"][0]["requests_24h"] == 12


def test_corrupt_store_is_reported_and_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert egress(home, "init").returncode == 0
    db = home / "egress.db"
    garbage = b"this is not sqlite " * 100
    db.write_bytes(garbage)
    for args in (["stats"], ["logs"], ["connector", "list"]):
        res = egress(home, *args)
        assert res.returncode == 2, (args, res.stderr)
        assert str(db) in res.stderr and res.stderr.count("\n") == 1
    assert db.read_bytes() == garbage


def test_logs_follow_streams_new_rows(proxy: Proxy, upstream: Upstream) -> None:
    import select
    import subprocess
    import time

    from tests.harness import EGRESS, clean_env

    follower = subprocess.Popen(
        [EGRESS, "logs", "--blocked", "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(proxy.home),
    )
    try:
        time.sleep(0.5)
        marker = f"/v9/follow-{time.monotonic_ns()}"
        r = session(proxy.url, proxy.ca).get(f"https://api.stripe.test:{upstream.port}{marker}?secret=no")
        assert r.status_code == 403
        assert follower.stdout is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not select.select([follower.stdout], [], [], deadline - time.monotonic())[0]:
                continue
            row = json.loads(follower.stdout.readline())
            if row["path"] == marker:
                assert row["reason"] == "no-connector"
                break
        else:
            pytest.fail("followed row did not arrive")
    finally:
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 130


def test_hostile_text_reaches_operators_escaped(proxy: Proxy, upstream: Upstream) -> None:
    """A path with a terminal escape and a bidi override is logged as visible escapes."""
    t = tag()
    authority = f"api.stripe.test:{upstream.port}"
    conn = tunnel(proxy, authority)
    raw = f"GET /v1/{t}/\x1b[2J\u202e HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    (reply,) = exchange(conn, raw)
    conn.close()
    assert reply.status in (400, 403), str(reply)
    deadline = time.monotonic() + 10
    while True:
        out = egress(proxy.home, "logs", "--blocked")
        rows = [line for line in out.stdout.splitlines() if t in line]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert rows, out.stdout
    assert "\x1b" not in out.stdout and "\u202e" not in out.stdout
    assert "\\x1b[2J" in rows[0] and "\\u202e" in rows[0]


def test_client_that_does_not_trust_the_ca_is_logged(proxy: Proxy, upstream: Upstream) -> None:
    """The most common integration failure shows up in the blocked log, not nowhere."""
    import subprocess

    from tests.harness import clean_env

    authority = f"api.stripe.test:{upstream.port}"
    before = {e["request_id"] for e in _blocked_rows(proxy) if e["reason"] == "client-tls"}
    r = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-x", proxy.url, f"https://{authority}/v1/untrusted"],
        capture_output=True, text=True, timeout=30, env=clean_env(proxy.home),
    )  # fmt: skip
    assert r.returncode != 0  # curl refused the proxy's certificate
    deadline = time.monotonic() + 10
    while True:
        rows = [
            e for e in _blocked_rows(proxy) if e["reason"] == "client-tls" and e["request_id"] not in before
        ]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert rows and rows[0]["host"] == authority and rows[0]["method"] == "TLS"


def _blocked_rows(proxy: Proxy) -> list[dict[str, object]]:
    out = egress(proxy.home, "logs", "--blocked", "--json")
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

"""End to end: the real proxy, a real TLS upstream, real clients.

Each test asserts what the upstream received (the oracle) and what the client got.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from urllib.parse import quote

import pytest
import requests

from tests.clients import curl, httpx_client, session
from tests.conftest import SECRETS
from tests.harness import Proxy, Upstream, egress, pattern_bytes

pytestmark = pytest.mark.e2e


def tag() -> str:
    return uuid.uuid4().hex[:12]


def stripe(upstream: Upstream, path: str) -> str:
    return f"https://api.stripe.test:{upstream.port}{path}"


def assert_blocked(resp: requests.Response | object, reason: str) -> None:
    status = getattr(resp, "status_code")  # noqa: B009
    headers = getattr(resp, "headers")  # noqa: B009
    assert status == 403
    assert headers["x-egress-blocked"] == reason
    body = json.loads(getattr(resp, "text"))  # noqa: B009
    assert body["error"] == "blocked"
    assert body["reason"] == reason
    assert body["request_id"]


def test_header_injected_exactly_as_templated(proxy: Proxy, upstream: Upstream) -> None:
    t = tag()
    r = session(proxy.url, proxy.ca).get(stripe(upstream, f"/v1/charges?t={t}"))
    assert r.status_code == 200
    (rec,) = upstream.find(t)
    assert rec.header("Authorization") == [f"Bearer {SECRETS['stripe']}"]
    assert rec.header("Host") == [f"api.stripe.test:{upstream.port}"]
    assert rec.sni == "api.stripe.test"
    assert SECRETS["stripe"] not in r.text


def test_client_authorization_is_overwritten(proxy: Proxy, upstream: Upstream) -> None:
    t = tag()
    res = curl(
        proxy.home,
        proxy.url,
        proxy.ca,
        "-H",
        "Authorization: Bearer attacker-1",
        "-H",
        "authorization: Bearer attacker-2",
        stripe(upstream, f"/v1/x?t={t}"),
    )
    assert res.returncode == 0, res.stderr
    (rec,) = upstream.find(t)
    assert rec.header("Authorization") == [f"Bearer {SECRETS['stripe']}"]


def test_query_injection_replaces_client_parameter(proxy: Proxy, upstream: Upstream) -> None:
    t = tag()
    url = f"https://api.weather.test:{upstream.port}/data/now?appid=evil&t={t}&%61ppid=evil2&city=a%20b"
    with httpx_client(proxy.url, proxy.ca) as client:
        r = client.get(url)
    assert r.status_code == 200
    (rec,) = upstream.find(t)
    assert rec.path == f"/data/now?t={t}&city=a%20b&appid={quote(SECRETS['weather'], safe='')}"
    assert "evil" not in rec.path
    assert rec.header("Authorization") == []


def test_cookies_stripped_both_ways(proxy: Proxy, upstream: Upstream) -> None:
    t = tag()
    s = session(proxy.url, proxy.ca)
    r = s.get(stripe(upstream, f"/v1/set-cookie?t={t}"), headers={"Cookie": "sid=sandbox"})
    assert r.status_code == 200
    assert "set-cookie" not in r.headers
    assert not s.cookies
    (rec,) = upstream.find(t)
    assert rec.header("Cookie") == []


def test_unlisted_host_refused_at_connect_without_upstream_contact(proxy: Proxy, upstream: Upstream) -> None:
    before = upstream.connections
    t = tag()
    res = curl(
        proxy.home, proxy.url, proxy.ca, "-w", "%{http_connect}", f"https://evil.test:{upstream.port}/?t={t}"
    )
    assert res.returncode != 0
    assert res.stdout.strip().endswith("403")
    with pytest.raises(requests.exceptions.ProxyError):
        session(proxy.url, proxy.ca).get(f"https://evil.test:{upstream.port}/v1/x?t={t}")
    # Same host, port no connector names.
    with pytest.raises(requests.exceptions.ProxyError):
        session(proxy.url, proxy.ca).get(f"https://api.stripe.test:{upstream.port + 1}/v1/x?t={t}")
    assert upstream.connections == before
    assert upstream.find(t) == []
    assert "blocked no-connector CONNECT evil.test" in proxy.log_text()


def test_allowed_host_other_path_blocked_with_json(proxy: Proxy, upstream: Upstream) -> None:
    t = tag()
    r = session(proxy.url, proxy.ca).get(stripe(upstream, f"/v2/charges?t={t}"))
    assert_blocked(r, "no-connector")
    r = session(proxy.url, proxy.ca).get(stripe(upstream, f"/v1%2f..%2fadmin?t={t}"))
    assert_blocked(r, "bad-path")
    assert upstream.find(t) == []


def test_wildcard_host_rules(proxy: Proxy, upstream: Upstream) -> None:
    s = session(proxy.url, proxy.ca)
    for host in ("a.wild.test", "b.c.wild.test"):
        t = tag()
        r = s.get(f"https://{host}:{upstream.port}/anything?t={t}")
        assert r.status_code == 200, r.text
        (rec,) = upstream.find(t)
        assert rec.header("X-Api-Key") == [SECRETS["wild"]]
        assert rec.sni == host
    t = tag()
    with pytest.raises(requests.exceptions.ProxyError):
        s.get(f"https://wild.test:{upstream.port}/anything?t={t}")
    assert upstream.find(t) == []


def test_plain_http_blocked(proxy: Proxy, upstream: Upstream) -> None:
    t = tag()
    r = session(proxy.url, proxy.ca).get(f"http://api.stripe.test:{upstream.port}/v1/x?t={t}")
    assert_blocked(r, "plain-http")
    res = curl(proxy.home, proxy.url, proxy.ca, "-i", f"http://api.stripe.test:{upstream.port}/v1/y?t={t}")
    assert "x-egress-blocked: plain-http" in res.stdout.lower()
    assert upstream.find(t) == []


def test_host_header_spoofing_blocked(proxy: Proxy, upstream: Upstream) -> None:
    t = tag()
    r = session(proxy.url, proxy.ca).get(
        stripe(upstream, f"/v1/x?t={t}"), headers={"Host": f"evil.test:{upstream.port}"}
    )
    assert_blocked(r, "host-mismatch")
    assert upstream.find(t) == []


def test_curl_http2_and_httpx(proxy: Proxy, upstream: Upstream) -> None:
    t = tag()
    res = curl(
        proxy.home,
        proxy.url,
        proxy.ca,
        "--http2",
        "-b",
        "a=b",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        stripe(upstream, f"/v1/h2?t={t}"),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "2 200"
    t2 = tag()
    with httpx_client(proxy.url, proxy.ca) as client:
        r = client.get(stripe(upstream, f"/v1/h2?t={t2}"), headers={"authorization": "x"})
        assert r.status_code == 200
    for rec in (*upstream.find(t), *upstream.find(t2)):
        assert rec.header("Authorization") == [f"Bearer {SECRETS['stripe']}"]
        assert rec.header("Host") == [f"api.stripe.test:{upstream.port}"]
        assert rec.header("Cookie") == []
    assert len(upstream.find(t)) == len(upstream.find(t2)) == 1


def test_50mib_download_and_upload_stream_intact(proxy: Proxy, upstream: Upstream) -> None:
    size = 50 * 1024 * 1024
    s = session(proxy.url, proxy.ca)
    digest = hashlib.sha256()
    got = 0
    with s.get(stripe(upstream, f"/v1/download?size={size}"), stream=True) as r:
        assert r.status_code == 200
        for chunk in r.iter_content(1 << 20):
            digest.update(chunk)
            got += len(chunk)
    expected = hashlib.sha256()
    block = pattern_bytes(1 << 20)
    for _ in range(size // len(block)):
        expected.update(block)
    assert got == size
    assert digest.hexdigest() == expected.hexdigest()

    payload = pattern_bytes(size)
    t = tag()
    r = s.post(stripe(upstream, f"/v1/upload?t={t}"), data=io.BytesIO(payload))
    assert r.status_code == 200
    (rec,) = upstream.find(t)
    assert rec.body_len == size
    assert rec.body_sha256 == hashlib.sha256(payload).hexdigest()
    assert rec.header("Authorization") == [f"Bearer {SECRETS['stripe']}"]


def test_connector_added_while_running_takes_effect(proxy: Proxy, upstream: Upstream) -> None:
    url = f"https://api.late.test:{upstream.port}/hello"
    s = session(proxy.url, proxy.ca)
    with pytest.raises(requests.exceptions.ProxyError):
        s.get(url)
    res = egress(
        proxy.home,
        "connector",
        "add",
        "late",
        "--pattern",
        f"https://api.late.test:{upstream.port}/*",
        "--header",
        "X-Late",
        "--secret-stdin",
        stdin=SECRETS["late"],
    )
    proxy.outputs.extend([res.stdout, res.stderr])
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 5
    while True:
        try:
            t = tag()
            r = s.get(f"{url}?t={t}")
            break
        except requests.exceptions.ProxyError:
            assert time.monotonic() < deadline, "new connector not active within 5 s"
            time.sleep(0.2)
    assert r.status_code == 200
    (rec,) = upstream.find(t)
    assert rec.header("X-Late") == [f"Bearer {SECRETS['late']}"]
    res = egress(proxy.home, "connector", "remove", "late")
    assert res.returncode == 0


def test_secrets_never_leak_to_logs_output_or_state(proxy: Proxy, upstream: Upstream) -> None:
    # Exercise allowed, blocked and failing paths first, then look everywhere.
    s = session(proxy.url, proxy.ca)
    s.get(stripe(upstream, "/v1/leak-check?x=1"))
    s.get(f"https://api.weather.test:{upstream.port}/data/leak?appid=zzz")
    s.get(stripe(upstream, "/v2/blocked"))
    s.get(stripe(upstream, "/v1/status?code=500"))
    for cmd in (
        ["connector", "list"],
        ["connector", "list", "--json"],
        ["connector", "show", "stripe", "--json"],
    ):
        res = egress(proxy.home, *cmd)
        proxy.outputs.extend([res.stdout, res.stderr])
    texts = [*proxy.outputs, proxy.log_text()]
    files = [p for p in proxy.home.rglob("*") if p.is_file()]
    contents = {}
    for path in files:
        try:
            contents[path] = path.read_bytes()
        except FileNotFoundError:  # a journal segment the running proxy committed and removed meanwhile
            continue
    assert any(p.name == "egress.db" for p in contents)
    for secret in SECRETS.values():
        forms = {secret.encode(), secret.encode("utf-16-le"), quote(secret, safe="").encode()}
        for text in texts:
            assert secret not in text
        for path, data in contents.items():
            for form in forms:
                assert form not in data, f"secret found in {path}"


def test_master_key_rotation_keeps_running_proxy_injecting(proxy: Proxy, upstream: Upstream) -> None:
    key_file = proxy.home / "master.key"
    before = key_file.read_bytes()
    res = egress(proxy.home, "keys", "rotate")
    proxy.outputs.extend([res.stdout, res.stderr])
    assert res.returncode == 0, res.stderr
    assert key_file.read_bytes() != before
    assert (proxy.home / "master.key.old").read_bytes() == before
    time.sleep(1.5)  # past one reload
    t = tag()
    r = session(proxy.url, proxy.ca).get(stripe(upstream, f"/v1/rotated?t={t}"))
    assert r.status_code == 200
    (rec,) = upstream.find(t)
    assert rec.header("Authorization") == [f"Bearer {SECRETS['stripe']}"]
    assert "reload failed" not in proxy.log_text()
    check = egress(proxy.home, "check", stripe(upstream, "/v1/x"))
    assert check.returncode == 0, check.stderr

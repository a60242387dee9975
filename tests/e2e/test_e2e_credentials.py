"""Credentials beyond one string, end to end: fields, Basic, several headers,
placeholder headers, methods, live replacement and OAuth2, through the real
proxy to a recording TLS upstream."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.clients import session
from tests.conftest import proxy_args
from tests.harness import Proxy, Upstream, egress, oauth_connector_yaml, start_proxy

pytestmark = pytest.mark.e2e

PASSWORD = "pw-e2e-Basic-7c1f"
ORG_KEY = "org-e2e-key-55aa"
PROP_KEY = "prop-e2e-key-override-91"
CLIENT_SECRET = "cs-e2e-oauth-secret-3e8d"


def ok(res: object) -> None:
    assert getattr(res, "returncode", 1) == 0, getattr(res, "stderr", res)


@pytest.fixture(scope="module")
def cproxy(
    tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, object], upstream: Upstream
) -> Iterator[Proxy]:
    home = tmp_path_factory.mktemp("credentials-home")
    port = upstream.port
    ok(egress(home, "init"))
    ok(
        egress(
            home, "connector", "add", "jira", "--pattern", f"https://api.late.test:{port}/jira/*",
            "--basic", "--field", "username=env:JIRA_USER", "--field", "password=env:JIRA_PASSWORD",
            "--method", "GET", "--method", "PUT",
            JIRA_USER="ops@example.com", JIRA_PASSWORD=PASSWORD,
        )
    )  # fmt: skip
    props = home / "props.json"
    props.write_text(json.dumps({"api_key": PROP_KEY, "unused_extra": "x-unused-1"}))
    yaml = home / "connectors.yaml"
    yaml.write_text(
        f"""
connectors:
  - name: twohead
    patterns: ["https://a.wild.test:{port}/two/*"]
    strip_headers: [Authorization]
    secret:
      fields:
        api_key: {{env: TWO_API_KEY}}
        org: {{env: TWO_ORG}}
      properties_json: {{file: {props}}}
    inject:
      headers:
        X-Api-Key: "{{{{api_key}}}}"
        X-Org: "org={{{{org}}}}"
"""
        + oauth_connector_yaml(port, "egress-e2e", "        scope: read\n")
    )
    res = egress(
        home,
        "apply",
        "-f",
        str(yaml),
        TWO_API_KEY="replaced-by-props",
        TWO_ORG=ORG_KEY,
        OAUTH_SECRET=CLIENT_SECRET,
    )
    ok(res)
    assert "unused_extra" in res.stderr  # a stored field no placement uses is a warning
    props.unlink()
    proxy = start_proxy(home, *proxy_args(pki[0]))
    yield proxy
    proxy.stop()


def test_basic_auth_from_two_fields(cproxy: Proxy, upstream: Upstream) -> None:
    tag = f"b{time.monotonic_ns()}"
    s = session(cproxy.url, cproxy.ca)
    r = s.get(
        f"https://api.late.test:{upstream.port}/jira/issue?t={tag}",
        headers={"Authorization": "Basic cGxhY2Vob2xkZXI6eA=="},
    )
    assert r.status_code == 200
    (rec,) = upstream.find(tag)
    expected = base64.b64encode(f"ops@example.com:{PASSWORD}".encode()).decode()
    assert rec.header("authorization") == [f"Basic {expected}"]


def test_method_not_allowed_never_reaches_upstream(cproxy: Proxy, upstream: Upstream) -> None:
    tag = f"m{time.monotonic_ns()}"
    s = session(cproxy.url, cproxy.ca)
    r = s.post(f"https://api.late.test:{upstream.port}/jira/issue?t={tag}", data=b"x")
    assert r.status_code == 403
    assert r.json()["reason"] == "method-not-allowed"
    assert upstream.find(tag) == []
    assert s.put(f"https://api.late.test:{upstream.port}/jira/issue?t={tag}p", data=b"x").status_code == 200
    res = egress(cproxy.home, "check", f"https://api.late.test:{upstream.port}/jira/x", "--method", "DELETE")
    assert res.returncode == 1
    assert "method-not-allowed" in res.stdout


def test_several_headers_properties_override_and_placeholders_removed(
    cproxy: Proxy, upstream: Upstream
) -> None:
    tag = f"h{time.monotonic_ns()}"
    s = session(cproxy.url, cproxy.ca)
    r = s.get(
        f"https://a.wild.test:{upstream.port}/two/x?t={tag}",
        headers={"Authorization": "Bearer placeholder", "x-api-key": "placeholder", "X_Org": "sandbox"},
    )
    assert r.status_code == 200
    (rec,) = upstream.find(tag)
    assert rec.header("x-api-key") == [PROP_KEY]  # properties_json overrides the field
    assert rec.header("x-org") == [f"org={ORG_KEY}"]
    assert rec.header("authorization") == []  # the SDK's placeholder never goes upstream
    assert not [v for k, v in rec.headers if k.lower() == "x_org"]


def test_replaced_field_takes_effect_live_and_keeps_the_others(cproxy: Proxy, upstream: Upstream) -> None:
    res = egress(
        cproxy.home,
        "connector",
        "update",
        "jira",
        "--field",
        "password=env:NEW_PW",
        NEW_PW="pw-rotated-e2e-2",
    )
    ok(res)
    expected = base64.b64encode(b"ops@example.com:pw-rotated-e2e-2").decode()
    s = session(cproxy.url, cproxy.ca)
    deadline = time.monotonic() + 10
    seen: list[str] = []
    while time.monotonic() < deadline:
        tag = f"r{time.monotonic_ns()}"
        assert s.get(f"https://api.late.test:{upstream.port}/jira/x?t={tag}").status_code == 200
        seen = upstream.find(tag)[0].header("authorization")
        if seen == [f"Basic {expected}"]:
            break
        time.sleep(0.2)
    assert seen == [f"Basic {expected}"]
    ok(egress(cproxy.home, "connector", "update", "jira", "--field", "password=env:P", P=PASSWORD))


def test_oauth2_one_token_call_for_concurrent_requests(cproxy: Proxy, upstream: Upstream) -> None:
    calls = upstream.token_calls
    tag = f"o{time.monotonic_ns()}"
    upstream.token_delay = 0.5  # every request arrives while the first fetch is in flight

    def get(i: int) -> int:
        s = session(cproxy.url, cproxy.ca)
        return s.get(f"https://api.oauth.test:{upstream.port}/oauth-api/x?t={tag}-{i}").status_code

    try:
        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(get, range(20)))
    finally:
        upstream.token_delay = 0
    assert statuses == [200] * 20
    assert upstream.token_calls == calls + 1
    tokens = {r.header("authorization")[0] for r in upstream.find(tag)}
    assert len(tokens) == 1 and next(iter(tokens)).startswith("Bearer at-")
    (call,) = [r for r in upstream.records if r.path == "/oauth/token"][-1:]
    assert call.method == "POST"
    expected = base64.b64encode(f"egress-e2e:{CLIENT_SECRET}".encode()).decode()
    assert call.header("authorization") == [f"Basic {expected}"]


def test_oauth2_token_never_reaches_the_sandbox(cproxy: Proxy, upstream: Upstream) -> None:
    s = session(cproxy.url, cproxy.ca)
    r = s.get(f"https://api.oauth.test:{upstream.port}/oauth-api/echo")
    assert r.status_code == 200
    token = upstream.find("/oauth-api/echo")[-1].header("authorization")[0].split()[1]
    assert token not in r.text
    assert token not in json.dumps(dict(r.headers))


def test_oauth2_refreshes_once_after_a_401(cproxy: Proxy, upstream: Upstream) -> None:
    s = session(cproxy.url, cproxy.ca)
    tag = f"u{time.monotonic_ns()}"
    assert s.get(f"https://api.oauth.test:{upstream.port}/oauth-api/a?t={tag}").status_code == 200
    old = upstream.find(tag)[0].header("authorization")[0]
    upstream.rejected.add(old)
    calls = upstream.token_calls
    assert s.get(f"https://api.oauth.test:{upstream.port}/oauth-api/b?t={tag}").status_code == 401
    assert s.get(f"https://api.oauth.test:{upstream.port}/oauth-api/c?t={tag}").status_code == 200
    assert s.get(f"https://api.oauth.test:{upstream.port}/oauth-api/d?t={tag}").status_code == 200
    assert upstream.token_calls == calls + 1
    assert upstream.find(f"c?t={tag}")[0].header("authorization")[0] != old


def test_oauth2_endpoint_down_blocks_with_credential_unavailable(cproxy: Proxy, upstream: Upstream) -> None:
    s = session(cproxy.url, cproxy.ca)
    tag = f"d{time.monotonic_ns()}"
    assert s.get(f"https://api.oauth.test:{upstream.port}/oauth-api/a?t={tag}").status_code == 200
    upstream.rejected.add(upstream.find(tag)[0].header("authorization")[0])
    assert s.get(f"https://api.oauth.test:{upstream.port}/oauth-api/b?t={tag}").status_code == 401
    upstream.token_status = 500
    try:
        r = s.get(f"https://api.oauth.test:{upstream.port}/oauth-api/c?t={tag}")
    finally:
        upstream.token_status = 200
    assert r.status_code == 502
    assert r.json()["reason"] == "credential-unavailable"
    assert upstream.find(f"c?t={tag}") == []  # never forwarded without a credential
    assert CLIENT_SECRET not in r.text
    deadline = time.monotonic() + 10
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline and not rows:
        res = egress(cproxy.home, "logs", "--errors", "--connector", "oauth", "--json")
        rows = [json.loads(line) for line in res.stdout.splitlines() if "credential-unavailable" in line]
        time.sleep(0.3)
    assert rows, "the failure is in the connector's error log"
    assert CLIENT_SECRET not in cproxy.log_text()

"""The admin API in process: auth, workspace isolation, every endpoint's happy path and its 400."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from proxy.errors import ConfigError
from proxy.nearmiss import NearMiss
from proxy.runtime.api.auth import FailureLimiter
from proxy.service.connectors import Connectors
from proxy.service.home import Home
from proxy.stats import Batch, Event
from tests.api.conftest import CSP, SECRETS, CheckedClient, Tokens

V1 = "/api/v1"
D = f"{V1}/workspaces/default"
ACME = f"{V1}/workspaces/acme"
STRIPE = {"name": "stripe", "preset": "stripe", "secret": {"value": SECRETS[0]}}


def stored_fields(home: Home, name: str, workspace: str = "default") -> dict[str, str]:
    with Connectors(home.in_workspace(workspace)) as c:
        _, stored = c.get(name)
        return c._open(stored)


# ---- authentication


def test_no_token_is_401_with_a_bearer_challenge(api: CheckedClient) -> None:
    r = api.as_(None).get(f"{V1}/whoami")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"] == "unauthorized"


@pytest.mark.parametrize("header", ["Bearer nope", "Basic abc", "Bearer", "egress_adm_x"])
def test_a_bad_or_malformed_token_is_401(api: CheckedClient, header: str) -> None:
    assert api.as_(None).get(f"{V1}/whoami", headers={"Authorization": header}).status_code == 401


def test_a_revoked_token_is_refused(api: CheckedClient, tokens: Tokens) -> None:
    assert api.as_(tokens.revoked).get(f"{V1}/whoami").status_code == 401


def test_a_token_with_its_secret_changed_is_refused(api: CheckedClient, tokens: Tokens) -> None:
    """The id alone never authenticates: the whole token's hash must match."""
    forged = tokens.admin[:-4] + ("AAAA" if not tokens.admin.endswith("AAAA") else "BBBB")
    assert api.as_(forged).get(f"{V1}/whoami").status_code == 401


def test_whoami_says_scope_and_access(api: CheckedClient, tokens: Tokens) -> None:
    assert api.get(f"{V1}/whoami").json() == {"workspace": None, "read_only": False}
    assert api.as_(tokens.acme_reader).get(f"{V1}/whoami").json() == {"workspace": "acme", "read_only": True}


def test_bootstrap_token_from_the_environment(api_home: Home, raw_client: object) -> None:
    from starlette.testclient import TestClient

    from proxy.runtime.api import AdminConfig, create_app

    boot = "bootstrap-token-for-tests-0123456789"
    home = Home(api_home.root, {**api_home.env, "EGRESS_ADMIN_TOKEN": boot})
    with TestClient(create_app(AdminConfig(home, lambda: b"", lambda: True))) as client:
        ok = client.get(f"{V1}/whoami", headers={"Authorization": f"Bearer {boot}"})
        assert ok.json() == {"workspace": None, "read_only": False}
        assert client.get(f"{V1}/whoami", headers={"Authorization": f"Bearer {boot}x"}).status_code == 401


def test_failed_logins_are_limited_per_address_and_logged_without_the_token(
    api: CheckedClient, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "egress_adm_000000000000_" + "x" * 43
    with caplog.at_level(logging.WARNING, logger="egress.admin"):
        for _ in range(10):
            assert api.as_(wrong).get(f"{V1}/whoami").status_code == 401
    r = api.as_(wrong).get(f"{V1}/whoami")
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # while limited, even the right token waits: the limit is no oracle
    assert api.get(f"{V1}/whoami").status_code == 429
    assert len([rec for rec in caplog.records if "refused a token" in rec.getMessage()]) == 10
    assert wrong not in caplog.text and tokens.admin not in caplog.text


def test_the_limit_forgets_failures_after_the_window() -> None:
    now = [0.0]
    limiter = FailureLimiter(limit=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        limiter.fail("1.2.3.4")
    assert limiter.retry_after("1.2.3.4") == 60
    assert limiter.retry_after("5.6.7.8") is None
    now[0] = 30
    assert limiter.retry_after("1.2.3.4") == 30
    now[0] = 60.5
    assert limiter.retry_after("1.2.3.4") is None


def test_read_only_tokens_get_403_on_every_write(api: CheckedClient, tokens: Tokens) -> None:
    assert api.post(f"{D}/connectors", STRIPE).status_code == 201
    ro = api.as_(tokens.reader)
    assert ro.get(f"{D}/connectors").status_code == 200
    writes = [
        ("POST", f"{D}/connectors", {**STRIPE, "name": "other"}),
        ("PATCH", f"{D}/connectors/stripe", {"methods": ["GET"]}),
        ("PUT", f"{D}/connectors/stripe/secret", {"value": SECRETS[1]}),
        ("DELETE", f"{D}/connectors/stripe", None),
        ("POST", f"{D}/grants", {"connectors": ["stripe"]}),
        ("DELETE", f"{D}/grants/abc", None),
    ]
    for method, path, body in writes:
        r = ro.request(method, path, body)
        assert r.status_code == 403, (method, path, r.text)
    assert stored_fields(api.home, "stripe") == {"secret": SECRETS[0]}


def test_a_workspace_token_sees_only_its_workspace(api: CheckedClient, tokens: Tokens) -> None:
    assert api.post(f"{D}/connectors", STRIPE).status_code == 201
    acme = api.as_(tokens.acme)
    gh = {"name": "gh", "preset": "github", "secret": {"value": SECRETS[2]}}
    assert acme.post(f"{ACME}/connectors", gh).status_code == 201
    assert [c["name"] for c in acme.get(f"{ACME}/connectors").json()] == ["gh"]
    assert acme.get(f"{V1}/workspaces").json() == [{"name": "acme"}]
    for method, path in [
        ("GET", f"{D}/connectors"),
        ("GET", f"{D}/connectors/stripe"),
        ("DELETE", f"{D}/connectors/stripe"),
        ("GET", f"{D}/stats"),
        ("GET", f"{D}/logs/errors"),
        ("GET", f"{D}/grants"),
        ("GET", f"{V1}/workspaces/nosuch/connectors"),
    ]:
        r = acme.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
    # a read-only token of another workspace gets 404 too, never 403: existence is not revealed
    assert api.as_(tokens.acme_reader).delete(f"{D}/connectors/stripe").status_code == 404
    assert {w["name"] for w in api.get(f"{V1}/workspaces").json()} == {"default", "acme"}
    assert [c["name"] for c in api.get(f"{D}/connectors").json()] == ["stripe"]


# ---- connectors


def test_connector_lifecycle(api: CheckedClient) -> None:
    r = api.post(f"{D}/connectors", STRIPE)
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["name"] == "stripe" and doc["workspace"] == "default" and doc["preset"] == "stripe"
    assert doc["inject_summary"] == "header Authorization: Bearer {{secret}}"
    assert doc["secret_set"] is True and doc["fields"] == ["secret"]
    assert doc["requests_24h"] == 0 and doc["errors_24h"] == 0
    assert doc["health"]["state"] == "unused" and doc["health"]["alert"] is False
    assert api.get(f"{D}/connectors/stripe").json()["patterns"] == doc["patterns"]
    assert api.post(f"{D}/connectors", STRIPE).status_code == 409

    r = api.patch(
        f"{D}/connectors/stripe", {"methods": ["get", "POST"], "patterns": ["https://api.stripe.com/v1/*"]}
    )
    assert r.status_code == 200, r.text
    patched = r.json()
    assert patched["methods"] == ["GET", "POST"] and patched["patterns"] == ["https://api.stripe.com/v1/*"]
    assert patched["inject"] == doc["inject"]  # untouched keys are kept
    assert patched["secret_updated_at"] == doc["secret_updated_at"]  # no secret given: unchanged
    assert stored_fields(api.home, "stripe") == {"secret": SECRETS[0]}
    assert api.patch(f"{D}/connectors/stripe", {"methods": None}).json()["methods"] is None

    time.sleep(0.01)
    r = api.put(f"{D}/connectors/stripe/secret", {"value": SECRETS[1]})
    assert r.status_code == 200
    assert r.json()["secret_updated_at"] > doc["secret_updated_at"]
    assert stored_fields(api.home, "stripe") == {"secret": SECRETS[1]}
    # the same value again is no change
    again = api.put(f"{D}/connectors/stripe/secret", {"value": SECRETS[1]}).json()
    assert again["secret_updated_at"] == r.json()["secret_updated_at"]

    assert api.delete(f"{D}/connectors/stripe").status_code == 204
    assert api.get(f"{D}/connectors/stripe").status_code == 404
    assert api.delete(f"{D}/connectors/stripe").status_code == 404
    assert api.get(f"{D}/connectors").json() == []


def test_multi_field_credentials_merge_on_patch_and_are_replaced_on_put(api: CheckedClient) -> None:
    body = {
        "name": "jira",
        "preset": "atlassian",
        "secret": {"fields": {"email": "ops@example.com", "api_token": SECRETS[3]}},
    }
    assert api.post(f"{D}/connectors", body).status_code == 201
    r = api.patch(f"{D}/connectors/jira", {"secret": {"fields": {"api_token": SECRETS[4]}}})
    assert r.status_code == 200, r.text
    assert stored_fields(api.home, "jira") == {"email": "ops@example.com", "api_token": SECRETS[4]}
    # a PUT replaces the whole credential: one value no longer fits a two-field placement
    r = api.put(f"{D}/connectors/jira/secret", {"value": SECRETS[1]})
    assert r.status_code == 400 and r.json()["field"] == "secret"
    assert stored_fields(api.home, "jira")["api_token"] == SECRETS[4]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**STRIPE, "name": "Not Valid"}, "name"),
        ({**STRIPE, "name": None}, "name"),
        (
            {
                "name": "x",
                "patterns": ["http://plain.test/*"],
                "inject": {"header": "X"},
                "secret": {"value": "v"},
            },
            "patterns",
        ),
        (
            {
                "name": "x",
                "patterns": "https://a.test/*",
                "inject": {"header": "X"},
                "secret": {"value": "v"},
            },
            "patterns",
        ),
        ({"name": "x", "patterns": ["https://a.test/*"], "secret": {"value": "v"}}, "inject"),
        (
            {
                "name": "x",
                "patterns": ["https://a.test/*"],
                "inject": {"cookie": "c"},
                "secret": {"value": "v"},
            },
            "inject",
        ),
        (
            {
                "name": "x",
                "patterns": ["https://a.test/*"],
                "inject": {"header": "Bad Name"},
                "secret": {"value": "v"},
            },
            "inject",
        ),
        ({**STRIPE, "methods": ["GET", "NOT A METHOD"]}, "methods"),
        ({**STRIPE, "methods": "GET"}, "methods"),
        ({**STRIPE, "strip_headers": ["bad header"]}, "strip_headers"),
        ({**STRIPE, "preset": "nosuch"}, "preset"),
        ({"name": "x", "preset": "stripe"}, "secret"),
        ({**STRIPE, "secret": {"value": ""}}, "secret"),
        ({**STRIPE, "secret": {"value": "line\nbreak"}}, "secret"),
        ({**STRIPE, "secret": {"value": 5}}, "secret"),
        ({**STRIPE, "secret": "bare"}, "secret"),
        ({**STRIPE, "secret": {"fields": {"bad-name": "v"}}}, "secret"),
        ({"name": "x", "preset": "atlassian", "secret": {"value": "v"}}, "secret"),
        ({**STRIPE, "colour": "blue"}, "colour"),
        ([1, 2], "body"),
    ],
)
def test_create_refuses_bad_input_naming_the_field(api: CheckedClient, body: object, field: str) -> None:
    r = api.post(f"{D}/connectors", body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field, r.json()
    assert r.json()["error"] == "bad_request"
    assert api.get(f"{D}/connectors").json() == []


def test_the_api_and_the_cli_refuse_with_the_same_words(
    api: CheckedClient, capsys: pytest.CaptureFixture[str]
) -> None:
    from proxy.cli import main

    r = api.post(f"{D}/connectors", {**STRIPE, "methods": ["NOT A METHOD"]})
    assert r.status_code == 400
    capsys.readouterr()
    code = main(
        ["connector", "add", "stripe", "--preset", "stripe", "--method", "NOT A METHOD", "--secret-env", "X"]
    )
    assert code == 2
    assert capsys.readouterr().err == f"egress: error: {r.json()['detail']}\n"


def test_bad_json_and_bad_patches(api: CheckedClient) -> None:
    r = api.request(
        "POST", f"{D}/connectors", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["field"] == "body"
    assert api.post(f"{D}/connectors", STRIPE).status_code == 201
    assert api.patch(f"{D}/connectors/stripe", {"name": "renamed"}).json()["field"] == "name"
    assert api.patch(f"{D}/connectors/stripe", {"patterns": "https://a.test/*"}).json()["field"] == "patterns"
    assert api.put(f"{D}/connectors/stripe/secret", {"value": "a", "fields": {}}).json()["field"] == "secret"
    assert api.patch(f"{D}/connectors/nosuch", {"methods": ["GET"]}).status_code == 404
    assert api.put(f"{D}/connectors/nosuch/secret", {"value": "x"}).status_code == 404
    assert api.get(f"{V1}/workspaces/Not_Valid/connectors").json()["field"] == "workspace"


def test_presets_list_every_preset_without_secrets(api: CheckedClient) -> None:
    from proxy.connectors import PRESETS

    presets = api.get(f"{V1}/presets").json()
    assert [p["name"] for p in presets] == sorted(PRESETS)
    atlassian = next(p for p in presets if p["name"] == "atlassian")
    assert atlassian["fields"] == ["email", "api_token"]
    assert set(atlassian) >= {"name", "patterns", "inject", "fields", "strip_headers", "placeholders"}


# ---- monitoring


def record(home: Home, batch: Batch) -> None:
    store = home.store()
    try:
        store.monitoring.flush(batch)
    finally:
        store.close()


def test_stats_series_and_logs(api: CheckedClient) -> None:
    assert api.post(f"{D}/connectors", STRIPE).status_code == 201
    now = time.time()
    minute = int(now // 60)
    batch = Batch()
    batch.requests[("stripe", minute)] = [5, 2, 1, 1, 0, 0]
    batch.requests[("stripe", minute - 180)] = [3, 0, 0, 0, 0, 0]
    batch.events.append(
        Event("error", now - 7200, "GET", "api.stripe.com", "/v1/old", "r0", connector="stripe", status=500)
    )
    batch.events.append(
        Event("error", now, "GET", "api.stripe.com", "/v1/x", "r1", connector="stripe", status=401)
    )
    batch.blocked[("evil.test", "no_route", minute)] = 2
    batch.events.append(
        Event("blocked", now, "GET", "evil.test", "/", "r2", reason="no_route", grant_label="step")
    )
    record(api.home, batch)

    doc = api.get(f"{D}/connectors/stripe").json()
    assert doc["requests_24h"] == 8 and doc["errors_24h"] == 2

    hours = api.get(f"{D}/connectors/stripe/series").json()["hours"]
    assert len(hours) == 24
    assert [h["hour"] for h in hours] == sorted(h["hour"] for h in hours)
    assert hours[-1] == {"hour": (minute // 60) * 3600, "requests": 5, "errors": 2}
    assert sum(h["requests"] for h in hours) == 8
    assert api.get(f"{D}/connectors/nosuch/series").status_code == 404

    stats = api.get(f"{D}/stats").json()
    assert stats["window_hours"] == 24
    (row,) = stats["connectors"]
    assert row["connector"] == "stripe" and row["requests_24h"] == 8 and row["errors_24h"] == 2
    assert stats["blocked"] == [{"host": "evil.test", "reason": "no_route", "count": 2}]

    errors = api.get(f"{D}/logs/errors").json()
    assert [e["path"] for e in errors] == ["/v1/x", "/v1/old"]
    assert errors[0]["connector"] == "stripe" and errors[0]["status"] == 401
    assert [e["path"] for e in api.get(f"{D}/logs/errors?since=1h").json()] == ["/v1/x"]
    assert len(api.get(f"{D}/logs/errors?limit=1").json()) == 1
    assert api.get(f"{D}/logs/errors?connector=stripe").status_code == 200
    assert api.get(f"{D}/logs/errors?connector=nosuch").json() == []  # a removed one's rows stay readable
    assert api.get(f"{D}/logs/errors?since=soon").json()["field"] == "since"
    assert api.get(f"{D}/logs/errors?limit=5000").json()["field"] == "limit"
    blocked = api.get(f"{D}/logs/blocked").json()
    assert [(e["host"], e["reason"], e["grant_label"]) for e in blocked] == [
        ("evil.test", "no_route", "step")
    ]


def test_stats_per_node(api: CheckedClient) -> None:
    assert api.post(f"{D}/connectors", STRIPE).status_code == 201
    minute = int(time.time() // 60)
    for node, n in (("pod-a", 4), ("pod-b", 9)):
        batch = Batch(node=node)
        batch.requests[("stripe", minute)] = [n, 1, 0, 0, 1, 0]
        batch.requests[("acme/other", minute)] = [100, 0, 0, 0, 0, 0]  # another workspace's
        record(api.home, batch)
    doc = api.get(f"{D}/stats/nodes").json()
    assert [(n["node"], n["requests_24h"], n["errors_24h"]) for n in doc["nodes"]] == [
        ("pod-b", 9, 1),
        ("pod-a", 4, 1),
    ]
    assert doc["nodes"][0]["connectors"] == [{"connector": "stripe", "requests_24h": 9, "errors_24h": 1}]
    assert doc["nodes"][0]["last_seen"] == minute * 60
    assert api.get(f"{D}/stats/nodes?connector=nosuch").status_code == 404


def test_blocked_rows_carry_their_near_miss_as_the_schema_says(api: CheckedClient, tokens: Tokens) -> None:
    now = time.time()
    batch = Batch()
    own = NearMiss("acme/gh", "path", "pattern wants /v1/*, request has /v2/...", "https://gh.test/v1/*")
    foreign = NearMiss("stripe", "other-workspace", "connector stripe is in workspace default; ...",
                       "https://api.stripe.com/v1/*", also=("path",))  # fmt: skip
    batch.events += [
        Event("blocked", now - 2, "GET", "gh.test", "/v2/x", "r1", reason="no-connector",
              workspace="acme", near_miss=own),
        Event("blocked", now - 1, "GET", "api.stripe.com", "/v2/x", "r2", reason="not-granted",
              workspace="acme", near_miss=foreign),
        Event("blocked", now, "GET", "nothing.test", "/", "r3", reason="no-connector", workspace="acme"),
    ]  # fmt: skip
    record(api.home, batch)
    doc = api.get(f"{V1}/openapi.json").json()
    registry: Registry = Registry().with_resource("urn:api", Resource.from_contents(doc, DRAFT202012))
    event = Draft202012Validator({"$ref": "urn:api#/components/schemas/Event"}, registry=registry)

    # An all-workspace token sees every near miss whole.
    rows = api.get(f"{ACME}/logs/blocked").json()
    for row in rows:
        event.validate(row)
    by_id = {r["request_id"]: r for r in rows}
    assert by_id["r1"]["near_miss"] == own.to_dict()
    assert by_id["r2"]["near_miss"] == foreign.to_dict()
    assert "near_miss" not in by_id["r3"]
    # The workspace's own token: its own near miss whole, another workspace's only as the word.
    for token in (tokens.acme, tokens.acme_reader):
        rows = api.as_(token).get(f"{ACME}/logs/blocked").json()
        for row in rows:
            event.validate(row)
        by_id = {r["request_id"]: r for r in rows}
        assert by_id["r1"]["near_miss"] == own.to_dict()
        concealed = by_id["r2"]["near_miss"]
        assert concealed["differs"] == "other-workspace"
        assert set(concealed) == {"differs", "detail"}
        assert "stripe" not in json.dumps(by_id["r2"]["near_miss"])


# ---- grants


def test_grants_mint_list_revoke(api: CheckedClient, tokens: Tokens) -> None:
    assert api.post(f"{D}/connectors", STRIPE).status_code == 201
    r = api.post(f"{D}/grants", {"connectors": ["stripe"], "ttl": "15m", "label": "step-1"})
    assert r.status_code == 201, r.text
    minted = r.json()
    assert minted["connectors"] == ["stripe"] and minted["label"] == "step-1"
    assert minted["token"].startswith("eg1.") and minted["expires_at"] > time.time() + 800
    listed = api.get(f"{D}/grants").json()
    assert [(g["id"], g["state"]) for g in listed] == [(minted["id"], "active")]
    assert "token" not in listed[0]
    assert api.as_(tokens.acme).delete(f"{D}/grants/{minted['id']}").status_code == 404
    assert api.delete(f"{D}/grants/{minted['id']}").status_code == 204
    assert api.get(f"{D}/grants").json()[0]["state"] == "revoked"
    assert api.delete(f"{D}/grants/{minted['id']}").status_code == 404
    assert api.post(f"{D}/grants", {"connectors": ["stripe"], "ttl": 60}).status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"connectors": ["nosuch"]}, "connectors"),
        ({"connectors": []}, "connectors"),
        ({"connectors": "stripe"}, "connectors"),
        ({"connectors": ["stripe"], "ttl": "forever"}, "ttl"),
        ({"connectors": ["stripe"], "ttl": 0}, "ttl"),
        ({"connectors": ["stripe"], "label": 7}, "label"),
        ({"connectors": ["stripe"], "why": "x"}, "why"),
    ],
)
def test_grant_mint_refuses_bad_input_naming_the_field(api: CheckedClient, body: object, field: str) -> None:
    assert api.post(f"{D}/connectors", STRIPE).status_code == 201
    r = api.post(f"{D}/grants", body)
    assert r.status_code == 400 and r.json()["field"] == field, r.text


def test_a_workspace_grant_reaches_only_its_workspace(api: CheckedClient, tokens: Tokens) -> None:
    assert api.post(f"{D}/connectors", STRIPE).status_code == 201
    acme = api.as_(tokens.acme)
    r = acme.post(f"{ACME}/grants", {"connectors": ["stripe"]})  # acme has no stripe
    assert r.status_code == 400 and r.json()["field"] == "connectors"


# ---- the open endpoints, headers, the document


def test_healthz_metrics_and_dashboard_are_open(api: CheckedClient) -> None:
    anon = api.as_(None)
    assert anon.get("/healthz").text == "ok\n"
    assert anon.get("/metrics").text == "egress_up 1\n"
    r = anon.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]


def test_metrics_behind_a_token_when_asked(api_home: Home, tokens: Tokens) -> None:
    from starlette.testclient import TestClient

    from proxy.runtime.api import AdminConfig, create_app

    app = create_app(AdminConfig(api_home, lambda: b"egress_up 1\n", lambda: True, metrics_token=True))
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {tokens.reader}"}).status_code == 200
        assert client.get("/metrics", headers={"Authorization": f"Bearer {tokens.acme}"}).status_code == 403
        assert client.get("/healthz").status_code == 200


def test_unknown_paths_and_methods_are_json_errors(api: CheckedClient) -> None:
    assert api.get(f"{V1}/nosuch").status_code == 404
    assert api.request("PUT", f"{V1}/whoami").status_code == 405


def test_openapi_validates_and_describes_every_route(api: CheckedClient, raw_client: object) -> None:
    from starlette.routing import Route

    doc = api.get(f"{V1}/openapi.json").json()
    validate(doc)
    assert api.as_(None).get(f"{V1}/openapi.json").status_code == 401
    app = api.client.app.app  # type: ignore[attr-defined]  # inside the security-headers wrapper
    routes = {
        (m, r.path) for r in app.routes if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"
    }
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert {r for r in routes if r[1] != "/"} == described


def test_the_dashboard_is_served_under_a_strict_csp_and_runs_no_inline_code(api: CheckedClient) -> None:
    anon = api.as_(None)
    for path in ("/", "/static/app.js", "/static/app.css"):
        r = anon.get(path)
        assert r.status_code == 200, path  # check_response compares the header with CSP
    policy = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert policy["default-src"] == policy["script-src"] == policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == policy["base-uri"] == "'none'"
    assert policy["connect-src"] == policy["form-action"] == "'self'"
    assert "unsafe" not in CSP and "*" not in CSP
    html = anon.get("/").text
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="/static/app.js">']
    assert "<style" not in html and " style=" not in html
    assert re.search(r"\son[a-z]+\s*=", html) is None  # no inline event handler


def test_the_login_limit_comes_from_the_environment() -> None:
    from proxy.runtime.adminserver import login_limit

    assert login_limit({}) == 10
    assert login_limit({"EGRESS_ADMIN_LOGIN_LIMIT": "250"}) == 250
    for bad in ("0", "-1", "ten"):
        with pytest.raises(ConfigError, match="EGRESS_ADMIN_LOGIN_LIMIT"):
            login_limit({"EGRESS_ADMIN_LOGIN_LIMIT": bad})

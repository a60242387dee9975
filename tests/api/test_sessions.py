"""The dashboard's session: login for an HttpOnly cookie, CSRF on every change, same origin only,
logout and revocation end it on the server, and Bearer clients see no difference."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from proxy.runtime.api import AdminConfig, create_app
from proxy.runtime.api.auth import FailureLimiter
from proxy.runtime.api.sessions import COOKIE, IDLE_SECONDS, MAX_AGE_SECONDS, Sessions
from proxy.service.admin_tokens import AdminTokens
from proxy.service.grants import Grants
from proxy.service.home import Home
from tests.api.conftest import SECRETS, CheckedClient, Tokens
from tests.api.test_api import STRIPE, V1, D, stored_fields

SESSION = f"{V1}/session"
ORIGIN = "http://testserver"  # the TestClient's own origin
_CSRF = object()  # "send the session's own CSRF token"


@dataclass
class Tab:
    """A dashboard tab: the cookie the browser sends by itself, and the CSRF token the page keeps."""

    api: CheckedClient
    sid: str
    csrf: str

    def request(
        self, method: str, path: str, body: Any = None, csrf: object = _CSRF, **headers: str
    ) -> httpx.Response:
        sent = {"Cookie": f"{COOKIE}={self.sid}", **headers}
        token = self.csrf if csrf is _CSRF else csrf
        if isinstance(token, str):
            sent["X-CSRF-Token"] = token
        r = self.api.as_(None).request(method, path, body, headers=sent)
        self.api.client.cookies.clear()  # only the Cookie header above speaks for the tab
        return r


def login(api: CheckedClient, token: str, **headers: str) -> tuple[httpx.Response, Tab]:
    r = api.as_(token).post(SESSION, headers=headers)
    api.client.cookies.clear()
    sid = r.cookies.get(COOKIE, "") if r.status_code == 201 else ""
    return r, Tab(api, sid, r.json().get("csrf_token", "") if r.status_code == 201 else "")


def logged_in(api: CheckedClient, token: str) -> Tab:
    r, tab = login(api, token)
    assert r.status_code == 201, r.text
    return tab


def connector_names(home: Home) -> list[str]:
    from proxy.service.connectors import Connectors

    with Connectors(home) as c:
        return [connector.name for connector, _ in c.all()]


def grant_states(home: Home) -> list[tuple[str, bool]]:
    with Grants(home) as g:
        return [(row["id"], row["revoked_at"] is None) for row in g.list()]


# ---- login


def test_login_sets_an_httponly_strict_session_cookie(api: CheckedClient, tokens: Tokens) -> None:
    r, tab = login(api, tokens.admin)
    assert r.status_code == 201, r.text
    cookie = r.headers["set-cookie"]
    attrs = [a.strip() for a in cookie.split(";")]
    assert attrs[0] == f"{COOKIE}={tab.sid}"
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attrs[1:])
    assert "Secure" not in attrs  # plain http here
    assert not any(a.lower().startswith(("expires", "max-age", "domain")) for a in attrs)  # session-only
    doc = r.json()
    assert doc["workspace"] is None and doc["read_only"] is False
    assert doc["idle_timeout"] == IDLE_SECONDS
    assert abs(doc["expires_at"] - (time.time() + MAX_AGE_SECONDS)) < 60
    assert len(tab.sid) >= 43 and len(tab.csrf) >= 43 and tab.sid != tab.csrf
    assert tokens.admin not in cookie and tokens.admin not in r.text
    assert r.headers["cache-control"] == "no-store"


def test_over_https_the_cookie_is_secure(api_home: Home, tokens: Tokens) -> None:
    app = create_app(AdminConfig(api_home, lambda: b"", lambda: True))
    with TestClient(app, base_url="https://testserver") as client:
        r = client.post(SESSION, headers={"Authorization": f"Bearer {tokens.admin}"})
        assert r.status_code == 201
        assert "Secure" in [a.strip() for a in r.headers["set-cookie"].split(";")]
        out = client.delete(SESSION, headers={"X-CSRF-Token": r.json()["csrf_token"]})
        assert out.status_code == 204 and "Secure" in out.headers["set-cookie"]


def test_login_takes_a_bearer_token_only(api: CheckedClient, tokens: Tokens) -> None:
    tab = logged_in(api, tokens.admin)
    # the cookie cannot log in again by itself, nor can a token in the body
    assert tab.request("POST", SESSION).status_code == 401
    assert api.as_(None).post(SESSION, {"token": tokens.admin}).status_code == 401
    assert login(api, "egress_adm_000000000000_" + "x" * 43)[0].status_code == 401
    assert login(api, tokens.revoked)[0].status_code == 401


def test_a_new_login_ends_the_tabs_previous_session(api: CheckedClient, tokens: Tokens) -> None:
    old = logged_in(api, tokens.admin)
    r = api.as_(tokens.admin).post(SESSION, headers={"Cookie": f"{COOKIE}={old.sid}"})
    api.client.cookies.clear()
    assert r.status_code == 201 and r.cookies[COOKIE] != old.sid
    assert old.request("GET", f"{V1}/whoami").status_code == 401
    assert Tab(api, r.cookies[COOKIE], "").request("GET", f"{V1}/whoami").status_code == 200


def test_failed_logins_are_limited(api: CheckedClient, tokens: Tokens) -> None:
    wrong = "egress_adm_000000000000_" + "y" * 43
    for _ in range(3):  # no Authorization at all, or a cookie that names nothing: not a failed login
        assert api.as_(None).post(SESSION).status_code == 401
        assert Tab(api, "no-such-session", "").request("GET", SESSION).status_code == 401
    for _ in range(10):
        assert login(api, wrong)[0].status_code == 401
    r, _ = login(api, tokens.admin)
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    assert COOKIE not in r.headers.get("set-cookie", "")


def test_login_from_another_origin_is_refused(api: CheckedClient, tokens: Tokens) -> None:
    for headers in ({"Origin": "http://evil.test"}, {"Sec-Fetch-Site": "cross-site"}):
        r, _ = login(api, tokens.admin, **headers)
        assert r.status_code == 403, headers
        assert "set-cookie" not in r.headers
    assert login(api, tokens.admin, Origin=ORIGIN, **{"Sec-Fetch-Site": "same-origin"})[0].status_code == 201


# ---- using the session


def test_the_cookie_reads_like_its_token(api: CheckedClient, tokens: Tokens) -> None:
    assert api.post(f"{D}/connectors", STRIPE).status_code == 201
    tab = logged_in(api, tokens.admin)
    assert tab.request("GET", f"{V1}/whoami", csrf=None).json() == {"workspace": None, "read_only": False}
    assert [c["name"] for c in tab.request("GET", f"{D}/connectors", csrf=None).json()] == ["stripe"]
    assert tab.request("GET", SESSION, csrf=None).json()["csrf_token"] == tab.csrf
    # a page opened from a bookmark (Sec-Fetch-Site: none) and the page's own fetches are the same origin
    assert tab.request("GET", f"{V1}/whoami", **{"Sec-Fetch-Site": "none"}).status_code == 200
    assert tab.request("GET", f"{V1}/whoami", Origin=ORIGIN).status_code == 200
    assert api.as_(None).get(f"{V1}/whoami").status_code == 401  # no cookie, no token


def test_a_change_without_the_right_csrf_token_is_refused_and_changes_nothing(
    api: CheckedClient, tokens: Tokens
) -> None:
    assert api.post(f"{D}/connectors", STRIPE).status_code == 201
    grant = api.post(f"{D}/grants", {"connectors": ["stripe"]}).json()["id"]
    tab = logged_in(api, tokens.admin)
    writes: list[tuple[str, str, Any]] = [
        ("POST", f"{D}/connectors", {**STRIPE, "name": "other"}),
        ("PATCH", f"{D}/connectors/stripe", {"methods": ["GET"]}),
        ("PUT", f"{D}/connectors/stripe/secret", {"value": SECRETS[1]}),
        ("POST", f"{D}/grants", {"connectors": ["stripe"]}),
        ("DELETE", f"{D}/grants/{grant}", None),
        ("DELETE", f"{D}/connectors/stripe", None),
        ("DELETE", SESSION, None),
    ]
    before = (connector_names(api.home), stored_fields(api.home, "stripe"), grant_states(api.home))
    methods = api.get(f"{D}/connectors/stripe").json()["methods"]
    for csrf in (None, "", "wrong", tab.csrf[:-1], tab.csrf + "x", tab.sid):
        for method, path, body in writes:
            r = tab.request(method, path, body, csrf=csrf)
            assert r.status_code == 403, (csrf, method, path, r.text)
            assert r.json()["error"] == "forbidden" and "CSRF" in r.json()["detail"]
    assert (connector_names(api.home), stored_fields(api.home, "stripe"), grant_states(api.home)) == before
    assert api.get(f"{D}/connectors/stripe").json()["methods"] == methods
    assert tab.request("GET", f"{V1}/whoami").status_code == 200  # the session lives on

    # with its token every change goes through
    assert tab.request("POST", f"{D}/connectors", {**STRIPE, "name": "other"}).status_code == 201
    assert tab.request("PATCH", f"{D}/connectors/stripe", {"methods": ["GET"]}).json()["methods"] == ["GET"]
    assert tab.request("PUT", f"{D}/connectors/stripe/secret", {"value": SECRETS[1]}).status_code == 200
    assert stored_fields(api.home, "stripe") == {"secret": SECRETS[1]}
    assert tab.request("POST", f"{D}/grants", {"connectors": ["stripe"]}).status_code == 201
    assert tab.request("DELETE", f"{D}/grants/{grant}").status_code == 204
    assert tab.request("DELETE", f"{D}/connectors/stripe").status_code == 204
    assert connector_names(api.home) == ["other"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.test"},
        {"Origin": "http://testserver.evil.test"},
        {"Origin": "http://testserver:8080"},  # same site, another origin
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": ORIGIN, "Sec-Fetch-Site": "same-site"},
    ],
)
def test_a_session_request_from_another_origin_is_refused(
    api: CheckedClient, tokens: Tokens, headers: dict[str, str]
) -> None:
    assert api.post(f"{D}/connectors", STRIPE).status_code == 201
    tab = logged_in(api, tokens.admin)
    assert tab.request("GET", f"{D}/connectors", **headers).status_code == 403
    r = tab.request("DELETE", f"{D}/connectors/stripe", **headers)  # even with the right CSRF token
    assert r.status_code == 403
    assert connector_names(api.home) == ["stripe"]
    assert tab.request("DELETE", SESSION, **headers).status_code == 403
    assert tab.request("GET", f"{V1}/whoami").status_code == 200  # not logged out


def test_bearer_clients_need_no_csrf_and_win_over_a_cookie(api: CheckedClient, tokens: Tokens) -> None:
    reader = logged_in(api, tokens.reader)
    cookie = {"Cookie": f"{COOKIE}={reader.sid}"}
    # the Authorization header decides: an admin token writes despite a read-only session's cookie,
    # with no CSRF token and whatever Origin an API client sends
    r = api.post(f"{D}/connectors", STRIPE, headers={**cookie, "Origin": "http://elsewhere.test"})
    assert r.status_code == 201, r.text
    assert api.delete(f"{D}/connectors/stripe", headers=cookie).status_code == 204
    assert api.as_(tokens.reader).post(f"{D}/connectors", STRIPE).status_code == 403


# ---- what a session may do


def test_a_read_only_tokens_session_cannot_write(api: CheckedClient, tokens: Tokens) -> None:
    assert api.post(f"{D}/connectors", STRIPE).status_code == 201
    tab = logged_in(api, tokens.reader)
    assert tab.request("GET", SESSION).json()["read_only"] is True
    assert tab.request("GET", f"{D}/connectors").status_code == 200
    for method, path, body in [
        ("POST", f"{D}/connectors", {**STRIPE, "name": "other"}),
        ("PUT", f"{D}/connectors/stripe/secret", {"value": SECRETS[1]}),
        ("DELETE", f"{D}/connectors/stripe", None),
    ]:
        r = tab.request(method, path, body)
        assert r.status_code == 403 and "read-only" in r.json()["detail"], r.text
    assert connector_names(api.home) == ["stripe"]
    assert stored_fields(api.home, "stripe") == {"secret": SECRETS[0]}


def test_a_workspace_tokens_session_sees_only_its_workspace(api: CheckedClient, tokens: Tokens) -> None:
    assert api.post(f"{D}/connectors", STRIPE).status_code == 201
    tab = logged_in(api, tokens.acme)
    assert tab.request("GET", SESSION).json()["workspace"] == "acme"
    assert tab.request("GET", f"{D}/connectors").status_code == 404
    assert tab.request("DELETE", f"{D}/connectors/stripe").status_code == 404
    assert tab.request("GET", f"{V1}/workspaces").json() == [{"name": "acme"}]
    assert connector_names(api.home) == ["stripe"]


# ---- how a session ends


def test_logout_ends_the_session_on_the_server(api: CheckedClient, tokens: Tokens) -> None:
    tab = logged_in(api, tokens.admin)
    r = tab.request("DELETE", SESSION)
    assert r.status_code == 204
    assert r.headers["set-cookie"].startswith(f"{COOKIE}=;") and "Max-Age=0" in r.headers["set-cookie"]
    # the old cookie, sent again (as a copied one would be), no longer works
    r = tab.request("GET", f"{V1}/whoami")
    assert r.status_code == 401 and "Max-Age=0" in r.headers["set-cookie"]
    assert tab.request("POST", f"{D}/connectors", STRIPE).status_code == 401
    assert connector_names(api.home) == []
    assert tab.request("DELETE", SESSION).status_code == 204  # logging out twice is no error


def test_revoking_the_admin_token_ends_its_sessions(api: CheckedClient, api_home: Home) -> None:
    with AdminTokens(api_home) as t:
        token, row = t.create(None, False, "laptop")
    first, second = logged_in(api, token), logged_in(api, token)
    assert first.request("GET", f"{V1}/whoami").status_code == 200
    with AdminTokens(api_home) as t:
        t.revoke(row["id"])
    r = first.request("POST", f"{D}/connectors", STRIPE)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert connector_names(api.home) == []
    assert second.request("GET", f"{V1}/whoami").status_code == 401
    assert first.request("GET", SESSION).status_code == 401


@pytest.fixture
def clock() -> list[float]:
    return [1_000_000.0]


@pytest.fixture
def timed(api_home: Home, clock: list[float], tokens: Tokens) -> Iterator[CheckedClient]:
    sessions = Sessions(clock=lambda: clock[0])
    app = create_app(AdminConfig(api_home, lambda: b"", lambda: True), FailureLimiter(), sessions)
    with TestClient(app) as client:
        yield CheckedClient(client, api_home, None)


def test_a_session_ends_after_an_idle_hour(timed: CheckedClient, tokens: Tokens, clock: list[float]) -> None:
    tab = logged_in(timed, tokens.admin)
    clock[0] += IDLE_SECONDS - 1
    assert tab.request("GET", f"{V1}/whoami").status_code == 200  # a request restarts the idle clock
    clock[0] += IDLE_SECONDS - 1
    assert tab.request("GET", f"{V1}/whoami").status_code == 200
    clock[0] += IDLE_SECONDS
    assert tab.request("GET", f"{V1}/whoami").status_code == 401


def test_a_session_ends_twelve_hours_after_login_however_busy(
    timed: CheckedClient, tokens: Tokens, clock: list[float]
) -> None:
    tab = logged_in(timed, tokens.admin)
    login_at = clock[0]
    while clock[0] + 1800 < login_at + MAX_AGE_SECONDS:
        clock[0] += 1800
        assert tab.request("GET", f"{V1}/whoami").status_code == 200
    clock[0] = login_at + MAX_AGE_SECONDS
    assert tab.request("GET", f"{V1}/whoami").status_code == 401


def test_the_document_describes_the_session(api: CheckedClient) -> None:
    doc = api.get(f"{V1}/openapi.json").json()
    assert set(doc["paths"][SESSION]) == {"post", "get", "delete"}
    assert doc["paths"][SESSION]["post"]["security"] == [{"bearer": []}]
    scheme = doc["components"]["securitySchemes"]["session"]
    assert scheme["type"] == "apiKey" and scheme["in"] == "cookie" and scheme["name"] == COOKIE
    assert {"bearer": []} in doc["security"] and {"session": []} in doc["security"]

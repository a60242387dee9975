"""An initialised home, admin tokens of every kind, and an in-process client that checks every answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from proxy.runtime.api import AdminConfig, create_app
from proxy.runtime.api.app import CSP
from proxy.runtime.api.auth import FailureLimiter
from proxy.service.admin_tokens import AdminTokens
from proxy.service.home import Home

# Every secret value any API test sends: none may ever come back.
SECRETS = (
    "sk_api_test_0123456789abcdef",
    "sk_api_rotated_fedcba9876543210",
    "ghp_api_acme_5555aaaa",
    "atlassian-api-token-77aa",
    "merged-password-1234",
)


@dataclass
class Tokens:
    admin: str
    reader: str
    acme: str
    acme_reader: str
    revoked: str


class CheckedClient:
    """A TestClient whose every response is scanned for secrets, tokens' hashes and missing headers."""

    def __init__(self, client: TestClient, home: Home, token: str | None) -> None:
        self.client = client
        self.home = home
        self.token = token
        self.responses: list[httpx.Response] = []

    def as_(self, token: str | None) -> CheckedClient:
        return CheckedClient(self.client, self.home, token)

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if self.token is not None:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        if body is not None:
            kw["content"] = json.dumps(body)
            headers["content-type"] = "application/json"
        r = self.client.request(method, path, headers=headers, **kw)
        check_response(r, self.home)
        self.responses.append(r)
        return r

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.request("POST", path, body, **kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.request("PATCH", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", path, **kw)


def check_response(r: httpx.Response, home: Home) -> None:
    text = r.text
    for s in SECRETS:
        assert s not in text, f"a secret came back from {r.request.method} {r.request.url}"
    store = home.store()
    try:
        for row in store.admin_tokens():
            assert row["token_hash"] not in text, "a token hash came back"
    finally:
        store.close()
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    if r.request.url.path.startswith("/api/"):
        assert r.headers["cache-control"] == "no-store"
    if r.status_code >= 400 and r.request.url.path.startswith("/api/"):
        doc = r.json()
        assert set(doc) >= {"error", "detail"}, doc
        assert ("field" in doc) == (r.status_code == 400), doc


@pytest.fixture
def api_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    root = tmp_path / "home"
    for var in ("EGRESS_MASTER_KEY", "EGRESS_MASTER_KEY_FILE", "EGRESS_DATABASE_URL", "EGRESS_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EGRESS_HOME", str(root))
    home = Home(root, {"EGRESS_HOME": str(root)})
    home.init()
    return home


@pytest.fixture
def tokens(api_home: Home) -> Tokens:
    with AdminTokens(api_home) as t:
        made = Tokens(
            t.create(None, False, "admin")[0],
            t.create(None, True, "reader")[0],
            t.create("acme", False, "acme")[0],
            t.create("acme", True, "acme reader")[0],
            t.create(None, False, "gone")[0],
        )
        gone = next(r["id"] for r in t.list() if r["label"] == "gone")
        t.revoke(gone)
    return made


@pytest.fixture
def limiter() -> FailureLimiter:
    return FailureLimiter()


@pytest.fixture
def raw_client(api_home: Home, limiter: FailureLimiter) -> Iterator[TestClient]:
    app = create_app(AdminConfig(api_home, lambda: b"egress_up 1\n", lambda: True), limiter)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def api(raw_client: TestClient, api_home: Home, tokens: Tokens) -> CheckedClient:
    return CheckedClient(raw_client, api_home, tokens.admin)

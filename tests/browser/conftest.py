"""The dashboard in a real chromium, against the real proxy's admin API (`egress run --admin`).

The proxy runs with a bootstrap admin token and one connector, ``flaky``, whose
upstream is the recording test server: requests under ``/v1/`` reach it (and
``/v1/status?code=500`` fails), anything else on that host is blocked, so the
tests make real error-log and blocked-log rows.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.clients import session
from tests.conftest import proxy_args
from tests.harness import Proxy, Upstream, egress, start_proxy

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright never downloads a browser here
ADMIN_TOKEN = "egress-admin-e2e-5b1d9f0c3a7e"
FLAKY_SECRET = "sk_flaky_BROWSER_e2e_77d1"
ACME_SECRET = "sk_acme_BROWSER_e2e_5f5f"
HOST = "api.stripe.test"
STEP_MS = 10_000  # every single browser wait; the whole test is bounded by pytest-timeout


@dataclass
class Dash:
    """What the tests need from a running dashboard, whatever serves it."""

    url: str
    token: str
    proxy: Proxy
    upstream: Upstream
    secrets: list[str] = field(default_factory=list)  # values that must never reach the page

    @property
    def target(self) -> str:
        return f"{HOST}:{self.upstream.port}"

    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return requests.request(method, f"{self.url}/api/v1{path}", headers=headers, timeout=10, **kw)

    def add_connector(self, name: str, secret: str, path: str = "/v1/*") -> None:
        """Through the API: the page under test is not the only way in."""
        self.secrets.append(secret)
        body = {
            "name": name,
            "patterns": [f"https://{self.target}{path}"],
            "inject": {"header": "Authorization", "template": "Bearer {{secret}}"},
            "secret": {"value": secret},
        }
        res = self.api("POST", "/workspaces/default/connectors", json=body)
        assert res.status_code == 201, res.text

    def admin_token(self, *args: str) -> str:
        """A token from `egress admin token create`, which prints it once (its last word)."""
        res = egress(self.proxy.home, "admin", "token", "create", *args)
        assert res.returncode == 0, res.stderr
        return res.stdout.split()[-1]

    def fail(self, n: int) -> None:
        """n real requests through the proxy that the upstream answers 500, once they are logged."""
        s = session(self.proxy.url, self.proxy.ca)
        for _ in range(n):
            assert s.get(f"https://{self.target}/v1/status?code=500", timeout=10).status_code == 500
        self._wait(
            lambda: len(self.api("GET", "/workspaces/default/logs/errors?connector=flaky").json()) >= n
        )

    def injected(self, path: str, expected: str) -> bool:
        """Whether requests to ``path`` through the proxy reach the upstream with ``expected`` as their
        Authorization header, within the second a running proxy takes to reload a changed secret."""
        s = session(self.proxy.url, self.proxy.ca)
        deadline = time.monotonic() + 5
        while True:
            before = len(self.upstream.find(path))
            assert s.get(f"https://{self.target}{path}", timeout=10).status_code == 200
            if self.upstream.find(path)[before].header("authorization") == [expected]:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)

    def block(self, path: str, grant: str | None = None) -> None:
        """One request for ``path`` (sent as is, not percent-encoded), blocked, once it is logged."""
        ctx = ssl.create_default_context(cafile=self.proxy.ca)
        conn = http.client.HTTPSConnection(self.proxy.host, self.proxy.port, context=ctx, timeout=10)
        headers = {}
        if grant:
            headers["Proxy-Authorization"] = "Basic " + base64.b64encode(f"grant:{grant}".encode()).decode()
        conn.set_tunnel(self.target, headers=headers)
        try:
            conn.request("GET", path)
            assert conn.getresponse().status == 403
        finally:
            conn.close()
        self._wait(
            lambda: any(
                e.get("path", "").startswith(path)
                for e in self.api("GET", "/workspaces/default/logs/blocked").json()
            )
        )

    def grant(self, label: str) -> str:
        res = egress(
            self.proxy.home,
            "grant",
            "--json",
            "--connector",
            "flaky",
            "--label",
            label,
            "--proxy",
            self.proxy.addr,
        )
        assert res.returncode == 0, res.stderr
        return str(json.loads(res.stdout)["token"])

    @staticmethod
    def _wait(done: Callable[[], bool], seconds: float = 15) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < deadline, "the proxy did not log it in time"
            time.sleep(0.25)


@pytest.fixture(scope="session")
def dash(
    tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, object], upstream: Upstream
) -> Iterator[Dash]:
    home = tmp_path_factory.mktemp("dash-home")
    assert egress(home, "init").returncode == 0
    # flaky in default; acme-only in acme, for the workspace token to see alone.
    for workspace, name, path, secret in (
        ("default", "flaky", "/v1/*", FLAKY_SECRET),
        ("acme", "acme-only", "/v1/acme/*", ACME_SECRET),
    ):
        res = egress(
            home, "connector", "add", name, "--workspace", workspace,
            "--pattern", f"https://{HOST}:{upstream.port}{path}",
            "--header", "Authorization", "--template", "Bearer {{secret}}",
            "--secret-stdin", stdin=secret,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
    # start_proxy hands the subprocess a copy of this environment: the bootstrap token goes that way.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EGRESS_ADMIN_TOKEN", ADMIN_TOKEN)
        proc = start_proxy(home, *proxy_args(pki[0]), "--admin", "127.0.0.1:0")
    try:
        addr_file = home / "run" / "admin.addr"
        deadline = time.monotonic() + 15
        while not (addr_file.exists() and addr_file.read_text().strip()):
            assert time.monotonic() < deadline, "no admin address"
            time.sleep(0.05)
        yield Dash(
            f"http://{addr_file.read_text().strip()}",
            ADMIN_TOKEN,
            proc,
            upstream,
            [FLAKY_SECRET, ACME_SECRET],
        )
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--no-proxy-server"])
        yield b
        b.close()


@dataclass
class Watch:
    """What a page did that it must not: JS dialogs (an XSS would open one), CSP violations, exceptions."""

    dialogs: list[str] = field(default_factory=list)
    csp: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def watch() -> Watch:
    return Watch()


def screenshot_dir(config: pytest.Config) -> Path:
    """Where each test leaves a screenshot of its last page: EGRESS_TEST_OUTPUT or ./test-output."""
    root = Path(os.environ.get("EGRESS_TEST_OUTPUT") or config.rootpath / "test-output")
    return root / "screenshots"


@pytest.fixture
def page(browser: Any, dash: Dash, watch: Watch, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    # Loopback only: anything but the admin address is refused, so a page cannot reach out.
    context.route(
        "**/*",
        lambda route: route.continue_() if route.request.url.startswith(dash.url + "/") else route.abort(),
    )
    p = context.new_page()
    p.set_default_timeout(STEP_MS)
    p.on("dialog", lambda d: (watch.dialogs.append(d.message), d.dismiss()))
    p.on(
        "console",
        lambda m: watch.csp.append(m.text) if "Content Security Policy" in m.text else None,
    )
    p.on("pageerror", lambda e: watch.errors.append(str(e)))
    yield p
    shots = screenshot_dir(request.config)
    shots.mkdir(parents=True, exist_ok=True)
    p.screenshot(path=str(shots / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not watch.csp, watch.csp
    assert not watch.errors, watch.errors

"""Findings of an adversarial review of the credentials, OAuth2, SigV4, workspace,
explain-blocks and ``egress exec`` features: each test failed before its fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import session
from tests.conftest import proxy_args
from tests.harness import Proxy, Upstream, egress, oauth_connector_yaml, start_proxy

pytestmark = pytest.mark.e2e

CLIENT_SECRET = "cs-review-oauth-secret-77a1"


@pytest.fixture(scope="module")
def oproxy(
    tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, object], upstream: Upstream
) -> Iterator[Proxy]:
    home = tmp_path_factory.mktemp("review-home")
    port = upstream.port
    assert egress(home, "init").returncode == 0
    yaml = home / "connectors.yaml"
    yaml.write_text("connectors:\n" + oauth_connector_yaml(port, "egress-review"))
    res = egress(home, "apply", "-f", str(yaml), OAUTH_SECRET=CLIENT_SECRET)
    assert res.returncode == 0, res.stderr
    proxy = start_proxy(home, *proxy_args(pki[0]))
    yield proxy
    proxy.stop()


def test_sandbox_steered_401s_cannot_hammer_the_token_endpoint(oproxy: Proxy, upstream: Upstream) -> None:
    """An endpoint the sandbox can make answer 401 must not turn every request into a token fetch."""
    s = session(oproxy.url, oproxy.ca)
    base = f"https://api.oauth.test:{upstream.port}/oauth-api"
    assert s.get(f"{base}/warm").status_code == 200
    calls = upstream.token_calls
    for _ in range(30):
        assert s.get(f"{base}/x/status?code=401").status_code == 401
    assert upstream.token_calls - calls <= 5, upstream.token_calls - calls

"""Response scrubbing end to end: an upstream echoing the injected secret."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.clients import session
from tests.conftest import SECRETS
from tests.harness import Proxy, Upstream

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("chunk", [0, 3])
def test_echoed_secret_is_masked_in_headers_and_body(proxy: Proxy, upstream: Upstream, chunk: int) -> None:
    r = session(proxy.url, proxy.ca).get(f"https://api.stripe.test:{upstream.port}/v1/echo?chunk={chunk}")
    assert r.status_code == 200
    secret = SECRETS["stripe"]
    assert secret not in r.text
    assert secret not in str(r.headers)
    assert r.headers["x-echo-auth"] == "Bearer " + "*" * len(secret)
    assert r.json()["headers"]["Authorization"] == "Bearer " + "*" * len(secret)


def test_echoed_query_secret_is_masked(proxy: Proxy, upstream: Upstream) -> None:
    r = session(proxy.url, proxy.ca).get(f"https://api.weather.test:{upstream.port}/data/echo?chunk=2")
    encoded = quote(SECRETS["weather"], safe="")
    assert encoded not in r.text and encoded not in r.headers["x-echo-path"]
    assert r.json()["path"].endswith("appid=" + "*" * len(encoded))

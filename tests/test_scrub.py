"""Response scrubbing: unit properties and end to end through the proxy."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.scrub import StreamScrubber, masks, scrub_text
from tests.clients import session
from tests.conftest import SECRETS
from tests.harness import Proxy, Upstream


@settings(max_examples=300, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=12).filter(lambda b: b"*" not in b),
    parts=st.lists(st.binary(max_size=20), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_stream_scrubber_masks_across_any_chunking(
    secret: bytes, parts: list[bytes], cuts: list[int]
) -> None:
    data = secret.join(parts)
    expected = data.replace(secret, b"*" * len(secret))
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if data[a:b]]
    scrubber = StreamScrubber(masks([secret]))
    out = b"".join(scrubber(c) for c in chunks) + scrubber(b"")
    assert len(out) == len(data)
    assert secret not in out
    assert out == expected


def test_scrub_text_masks_every_form() -> None:
    pairs = masks([b"s3cr/et", quote("s3cr/et", safe="").encode()])
    assert scrub_text("x s3cr/et y s3cr%2Fet", pairs) == "x ******* y *********"


@pytest.mark.e2e
@pytest.mark.parametrize("chunk", [0, 3])
def test_echoed_secret_is_masked_in_headers_and_body(proxy: Proxy, upstream: Upstream, chunk: int) -> None:
    r = session(proxy.url, proxy.ca).get(f"https://api.stripe.test:{upstream.port}/v1/echo?chunk={chunk}")
    assert r.status_code == 200
    secret = SECRETS["stripe"]
    assert secret not in r.text
    assert secret not in str(r.headers)
    assert r.headers["x-echo-auth"] == "Bearer " + "*" * len(secret)
    assert r.json()["headers"]["Authorization"] == "Bearer " + "*" * len(secret)


@pytest.mark.e2e
def test_echoed_query_secret_is_masked(proxy: Proxy, upstream: Upstream) -> None:
    r = session(proxy.url, proxy.ca).get(f"https://api.weather.test:{upstream.port}/data/echo?chunk=2")
    encoded = quote(SECRETS["weather"], safe="")
    assert encoded not in r.text and encoded not in r.headers["x-echo-path"]
    assert r.json()["path"].endswith("appid=" + "*" * len(encoded))

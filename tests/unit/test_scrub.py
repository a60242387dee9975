"""Response scrubbing: masks keep the length and survive any chunking."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.scrub import StreamScrubber, masks, scrub_text


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

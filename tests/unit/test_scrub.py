"""Response scrubbing: masks keep the length and survive any chunking."""

from __future__ import annotations

import base64
import re
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.scrub import StreamScrubber, _char_forms, _form_bytes, masks, needles_for, scrub_text
from tests.e2e.hostile import ENCODINGS


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


SECRETS_UNDER_TEST = ["wx/KEY+e2e=&7d3b", "sk_test_e2e_STRIPE_4f9a2c", "p@ss w\u00f6rd<>\"'"]


@pytest.mark.parametrize("secret", SECRETS_UNDER_TEST)
@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_every_spelling_is_masked_in_place(secret: str, name: str) -> None:
    spelled = ENCODINGS[name](secret).encode()
    data = b'{"echo": "' + spelled + b'", "n": 1}'
    out = needles_for([secret]).mask(data)
    assert spelled not in out
    assert len(out) == len(data)
    assert out.startswith(b'{"echo": "') and out.endswith(b'", "n": 1}')


@pytest.mark.parametrize("secret", SECRETS_UNDER_TEST)
def test_base64_of_a_secret_inside_longer_data_is_masked(secret: str) -> None:
    for pad in (b"", b"x", b"xy"):
        blob = base64.b64encode(pad + secret.encode() + b"tail").decode()
        out = needles_for([secret]).text(f"token={blob}")[6:]
        assert "*" in out and len(out) == len(blob)
        decoded = base64.b64decode(out.replace("*", "A"))  # what a reader could still recover
        assert secret.encode() not in decoded


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=12),
    name=st.sampled_from(sorted(ENCODINGS)),
)
def test_stream_masks_encoded_forms_across_any_chunking(cuts: list[int], name: str) -> None:
    secret = SECRETS_UNDER_TEST[0]
    spelled = ENCODINGS[name](secret).encode()
    data = b"a" * 40 + spelled + b"b" * 40 + spelled
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if data[a:b]]
    scrubber = StreamScrubber(needles_for([secret]))
    out = b"".join(scrubber(c) for c in chunks) + scrubber(b"")
    assert len(out) == len(data) and spelled not in out


def test_unrelated_text_is_untouched() -> None:
    needles = needles_for(SECRETS_UNDER_TEST)
    text = b"GET /v1/charges?limit=3 HTTP/1.1 wx KEY e2e sk_test_ \\u0077 %2F"
    assert needles.mask(text) == text


@pytest.mark.parametrize(
    ("secret", "spelled"),
    [
        ("abc~def_ghi.jkl", "abc%7Edef_ghi.jkl"),  # PHP/Java/.NET encode ~
        ("wx/KEY+e2e=&7d3b", "wx/KEY&#43;e2e=&amp;7d3b"),  # Go html/template
        ("wx/KEY+e2e=&7d3b", "wx&#x2f;KEY+e2e&#61;&7d3b"),
    ],
)
def test_more_spellings_from_real_encoders(secret: str, spelled: str) -> None:
    out = needles_for([secret]).mask(spelled.encode())
    assert out == b"*" * len(spelled)


UNRESERVED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._"


@settings(max_examples=40, deadline=None)
@given(
    secret=st.text(UNRESERVED, min_size=12, max_size=24)
    | st.tuples(
        st.text(UNRESERVED, min_size=12, max_size=16), st.text("/+=&<>\"' ~", min_size=1, max_size=3)
    ).map("".join),
    filler=st.binary(min_size=100, max_size=300),
    name=st.sampled_from(sorted(ENCODINGS)),
)
def test_secret_split_at_every_boundary_is_masked(secret: str, filler: bytes, name: str) -> None:
    """Chunks cleared by the prefilter skip the full mask: a secret in any spelling, cut at every
    position (two chunks) or in every chunk size (many), must still come out masked exactly as
    masking the whole body would."""
    needles = needles_for([secret])
    assert needles.prefilter is not None  # the fast path is the one under test
    spelled = ENCODINGS[name](secret).encode()
    for data in (filler + spelled + filler, filler + spelled + filler[::-1] + spelled + filler):
        expected = needles.mask(data)
        assert spelled not in expected
        splits = [[data[:i], data[i:]] for i in range(1, len(data))]
        splits += [[data[i : i + n] for i in range(0, len(data), n)] for n in range(needles.keep + 1, 400, 7)]
        for chunks in splits:
            scrubber = StreamScrubber(needles)
            out = b"".join(scrubber(c) for c in chunks) + scrubber(b"")
            assert out == expected, (name, [len(c) for c in chunks])


@pytest.mark.parametrize(
    "ch", ["/", "+", "=", "&", "<", ">", '"', "'", " ", "~", "a", "Z", "7", "\u00f6", "\u20ac"]
)
def test_form_bytes_cover_every_match_of_a_char(ch: str) -> None:
    """The prefilter holds back runs of these bytes: a pattern match outside them could be cut."""
    allowed = _form_bytes(ch)

    @settings(max_examples=100, deadline=None)
    @given(st.from_regex(re.compile(b"^" + _char_forms(ch) + b"$"), fullmatch=True))
    def check(match: bytes) -> None:
        assert set(match) <= allowed

    check()


def test_text_bodies_pause_the_prefilter() -> None:
    """On text every chunk passes the run check; the scrubber then masks whole for a while."""
    needles = needles_for(["bench-secret"])
    scrubber = StreamScrubber(needles)
    text = b"some ordinary words in a long enough text body " * 40
    out = b"".join(scrubber(text) for _ in range(20)) + scrubber(b"")
    assert out == text * 20

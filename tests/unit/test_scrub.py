"""Response scrubbing: masks keep the length and survive any chunking."""

from __future__ import annotations

import base64
import random
import re
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proxy.scrub import (
    _CANDIDATES,
    _SAMPLED_FROM,
    StreamScrubber,
    _char_forms,
    _form_bytes,
    lacks_run,
    masks,
    needles_for,
    scrub_text,
)
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


def secrets(longest: int) -> st.SearchStrategy[str]:
    """Secrets of 12 to ``longest`` unreserved characters, or shorter ones ending in a few
    characters every encoder escapes."""
    special = st.text("/+=&<>\"' ~", min_size=1, max_size=3)
    return st.text(UNRESERVED, min_size=12, max_size=longest) | st.tuples(
        st.text(UNRESERVED, min_size=12, max_size=longest - 8), special
    ).map("".join)


@settings(max_examples=40, deadline=None)
@given(
    secret=secrets(24),
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


@settings(max_examples=40, deadline=None)
@given(
    secret=secrets(32),
    name=st.sampled_from(sorted(ENCODINGS)),
    sizes=st.tuples(*[st.integers(_SAMPLED_FROM, 3 * _SAMPLED_FROM)] * 3),
    cuts=st.lists(st.integers(0, 10 * _SAMPLED_FROM), max_size=8),
    seed=st.integers(0, 2**32),
)
def test_random_bytes_around_a_secret_are_masked_as_a_whole(
    secret: str, name: str, sizes: tuple[int, int, int], cuts: list[int], seed: int
) -> None:
    """Random bytes, the case the sampled prefilter clears, around a secret in any spelling:
    cut at every position of it (two chunks of KiB, the seam the fast path checks) or, with a
    second one, anywhere, the stream comes out exactly as masking the whole body would."""
    needles = needles_for([secret])
    assume(needles.prefilter is not None and needles.prefilter.stride > 1)
    rnd = random.Random(seed)
    spelled = ENCODINGS[name](secret).encode()
    one = rnd.randbytes(sizes[0]) + spelled + rnd.randbytes(sizes[1])
    two = one + spelled + rnd.randbytes(sizes[2])
    splits = [(one, [i]) for i in range(sizes[0] - 1, sizes[0] + len(spelled) + 2)]
    splits.append((two, sorted({c % (len(two) + 1) for c in cuts})))
    for data, cut in splits:
        expected = needles.mask(data)
        assert spelled not in expected
        chunks = [data[a:b] for a, b in zip([0, *cut], [*cut, len(data)], strict=True) if data[a:b]]
        scrubber = StreamScrubber(needles)
        out = b"".join(scrubber(c) for c in chunks) + scrubber(b"")
        assert out == expected, (name, cut)


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


# -- lacks_run: a run of marked bytes ruled out from every k-th byte ----------------------

MARK = 1


def _table(marked: set[int], wide: set[int]) -> bytes:
    """A translate table marking ``marked`` (other values, like WIDE, must not count)."""
    return bytes(MARK if b in marked else 2 if b in wide else 0 for b in range(256))


def _has_run(data: bytes, table: bytes, length: int) -> bool:
    return bytes([MARK]) * length in data.translate(table)


def _run_of(rnd: random.Random, values: list[int], n: int) -> bytes:
    return bytes(rnd.choices(values, k=n))


@settings(max_examples=300, deadline=None)
@given(
    marked=st.sets(st.integers(0, 255), min_size=1, max_size=100),
    wide=st.sets(st.integers(0, 255), max_size=40),
    length=st.integers(2, 40),
    stride=st.integers(1, 40),
    size=st.integers(_SAMPLED_FROM, 3 * _SAMPLED_FROM),
    features=st.lists(st.tuples(st.sampled_from(["run", "near", "sampled"]), st.floats(0, 1)), max_size=6),
    seed=st.integers(0, 2**32),
)
def test_lacks_run_never_misses_a_run(
    marked: set[int],
    wide: set[int],
    length: int,
    stride: int,
    size: int,
    features: list[tuple[str, float]],
    seed: int,
) -> None:
    """Random bytes under any table (any share of them marked), with runs, runs one byte short
    and marked bytes at every k-th position placed anywhere, also flush with either edge:
    whenever ``lacks_run`` says no run, there is none."""
    rnd = random.Random(seed)
    stride = min(stride, length)
    table = _table(marked, wide - marked)
    ones = sorted(marked)
    data = bytearray(rnd.randbytes(size))
    for kind, where in features:
        piece = _feature(rnd, kind, ones, list(range(256)), length, stride)
        at = round(where * (size - len(piece)))
        data[at : at + len(piece)] = piece
    if lacks_run(bytes(data), table, bytes([MARK]) * length, stride):
        assert not _has_run(bytes(data), table, length)


def _feature(rnd: random.Random, kind: str, ones: list[int], others: list[int], length: int, k: int) -> bytes:
    """A run of marked bytes, one a byte short, marked bytes k apart (a run as the sample
    sees it) with ``others`` between, or those leading into a run."""
    if kind == "run":
        return _run_of(rnd, ones, length)
    if kind == "near":
        return _run_of(rnd, ones, length - 1)
    spaced = bytes(rnd.choice(ones if i % k == 0 else others) for i in range(length))
    if kind == "led":
        return spaced[: rnd.randrange(1, length)] + _run_of(rnd, ones, length)
    return spaced


@settings(max_examples=300, deadline=None)
@given(
    marked=st.sets(st.integers(0, 255), min_size=1, max_size=128),
    length=st.integers(4, 40),
    stride=st.integers(2, 20),
    size=st.integers(_SAMPLED_FROM, 2 * _SAMPLED_FROM),
    features=st.lists(
        st.tuples(st.sampled_from(["run", "near", "sampled"]), st.integers(0, 2000)),
        max_size=_CANDIDATES // 2,
    ),
    at_end=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_lacks_run_decides_sparse_data_exactly(
    marked: set[int],
    length: int,
    stride: int,
    size: int,
    features: list[tuple[str, int]],
    at_end: bool,
    seed: int,
) -> None:
    """Unmarked bytes around a few runs, near-runs and false candidates (each at most two
    candidates, set apart): the sample decides, and it is right both ways. (At least two
    sampled bytes per run, as ``_stride`` always gives: one would pass the share check only
    on runs of hundreds of bytes.)"""
    rnd = random.Random(seed)
    stride = min(stride, length // 2)
    table = _table(marked, set())
    ones, zeros = sorted(marked), [b for b in range(256) if b not in marked]
    parts = []
    for kind, gap in features:
        parts += [_run_of(rnd, zeros, length + gap), _feature(rnd, kind, ones, zeros, length, stride)]
    body = b"".join(parts[1:])  # the first feature flush with the start...
    filler = _run_of(rnd, zeros, max(0, size - len(body)))
    data = filler + body if at_end else body + filler  # ...or with the end
    assert lacks_run(data, table, bytes([MARK]) * length, stride) is not _has_run(data, table, length)


@pytest.mark.parametrize("length", [2, 3, 7, 12, 32])
def test_lacks_run_finds_a_run_at_every_offset_modulo_the_stride(length: int) -> None:
    table = _table({ord("x")}, set())
    for stride in range(2, length + 1):
        size = _SAMPLED_FROM + 3 * stride
        for at in [*range(2 * stride), size - length - 1, size - length]:
            data = bytearray(b"." * size)
            data[at : at + length] = b"x" * length
            assert not lacks_run(bytes(data), table, b"\1" * length, stride), (stride, at)
            data[at] = ord(".")  # one short: refuted
            assert lacks_run(bytes(data), table, b"\1" * length, stride), (stride, at)


@pytest.mark.parametrize("length", [4, 7, 12])
def test_lacks_run_finds_a_run_behind_false_candidates(length: int) -> None:
    """Marked bytes k apart right before a run: the sample's first candidates are false and
    overlap the run's, so the search must go on from each one to the very next."""
    table = _table({ord("x")}, set())
    for stride in range(2, length // 2 + 1):
        for start in range(64, 64 + stride):
            for lead in range(1, 2 * length):
                data = bytearray(b"." * _SAMPLED_FROM)
                data[start : start + lead : stride] = b"x" * len(range(start, start + lead, stride))
                data[start + lead : start + lead + length] = b"x" * length
                assert not lacks_run(bytes(data), table, b"\1" * length, stride), (stride, start, lead)


def test_lacks_run_leaves_text_to_the_full_pass() -> None:
    """A marked share like text's predicts thousands of false candidates: such data goes to the
    full pass before any sample is taken (even where, as here, the sample would show none)."""
    table = _table({ord("x")}, set())
    data = b"x." * 3000
    assert not lacks_run(data, table, b"\1" * 12, 3) and not _has_run(data, table, 12)


def test_lacks_run_gives_up_on_too_many_false_candidates() -> None:
    """Few marked bytes, but each at a sampled position: every candidate is false, and past a
    few of them the full pass is left to decide (a bounded cost, whatever the data)."""
    table = _table({ord("x")}, set())
    data = b"x.." * 2000
    assert not lacks_run(data, table, b"\1" * 24, 3) and not _has_run(data, table, 24)

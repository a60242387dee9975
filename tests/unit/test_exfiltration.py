"""The exfiltration guard's matcher: every spelling of every secret, across chunks, at scale."""

from __future__ import annotations

import base64
import binascii
import random
import string
import time
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.connectors import make_connector
from proxy.policy import Policy
from proxy.scrub import _SAMPLED_FROM, MIN_GUARDED, Guards, LiveSecrets, SecretFound, SecretIndex, StreamGuard

SECRET = "sk_live_Ab3/x+Y=z&Q9_secret"
INDEX = SecretIndex([("stripe", SECRET), ("other", "other-secret-value-77")])


def spellings(secret: str) -> dict[str, bytes]:
    raw = secret.encode()
    return {
        "raw": raw,
        "lower": secret.lower().encode(),
        "upper": secret.upper().encode(),
        "base64": base64.b64encode(raw),
        "base64url": base64.urlsafe_b64encode(raw).rstrip(b"="),
        "base64 inside": base64.b64encode(b"user:" + raw),  # Basic auth with the secret as password
        "percent": quote(secret, safe="").encode(),
        "percent upper": quote(secret, safe="").upper().encode(),  # %2F, and every letter upper too
        "percent all": "".join(f"%{b:02X}" for b in raw).encode(),
        "hex": binascii.hexlify(raw),
        "HEX": binascii.hexlify(raw).upper(),
        "json unicode": "".join(f"\\u{ord(c):04x}" for c in secret).encode(),
    }


@pytest.mark.parametrize("form", list(spellings(SECRET)))
def test_every_spelling_is_found(form: str) -> None:
    value = spellings(SECRET)[form]
    assert INDEX.find(b'{"note": "' + value + b'", "n": 1}') == "stripe"
    assert INDEX.find(value) == "stripe"


def test_nothing_else_is_found() -> None:
    assert INDEX.find(b"GET /v1/charges HTTP/1.1\nAuthorization: Bearer sk_live_PLACEHOLDER") is None
    assert INDEX.find(SECRET[:-1].encode()) is None  # all but one character
    assert INDEX.find(b"") is None
    assert SecretIndex([]).find(SECRET.encode()) is None


@given(
    before=st.lists(  # random bytes, and runs of bytes the secret's spellings are made of
        st.binary(max_size=80) | st.text("abcdef0123456789%", min_size=12, max_size=80).map(str.encode),
        max_size=12,
    ),
    after=st.binary(max_size=200),
    form=st.sampled_from(sorted(spellings(SECRET))),
    secret_len=st.sampled_from([MIN_GUARDED, 16, 27]),  # 12: a short spelling, grams sliced at step 5
)
@settings(max_examples=300, deadline=None)
def test_a_spelling_is_found_after_any_number_of_candidate_runs(
    before: list[bytes], after: bytes, form: str, secret_len: int
) -> None:
    """Runs of the secrets' bytes before it (searched one by one, then the rest at once)
    never hide it, whatever separates them."""
    secret = (SECRET * 2)[:secret_len]
    value = spellings(secret)[form]
    index = SecretIndex([("stripe", secret)])
    data = b" ".join([*before, value, after])
    assert index.find(data) == "stripe"
    assert value not in index.mask(data)


def test_short_values_are_not_guarded() -> None:
    short = "x" * (MIN_GUARDED - 1)
    assert SecretIndex([("c", short)]).find(short.encode()) is None
    assert SecretIndex([("c", short + "y")]).find(short.encode() + b"y") == "c"


def test_mask_stars_out_every_occurrence_keeping_length() -> None:
    data = b"/v1/" + SECRET.encode() + b"/x?k=" + quote(SECRET, safe="").encode()
    masked = INDEX.mask(data)
    assert len(masked) == len(data)
    assert INDEX.find(masked) is None
    assert masked.startswith(b"/v1/*") and b"/x?k=*" in masked


@pytest.mark.parametrize("form", ["raw", "base64", "percent", "hex"])
def test_split_across_chunks_is_found_before_any_of_it_leaves(form: str) -> None:
    value = spellings(SECRET)[form]
    body = b"a" * 5000 + value + b"b" * 5000
    for cut in (5000 + 1, 5000 + len(value) // 2, 5000 + len(value) - 1):
        chunks = [part[i : i + 997] for part in (body[:cut], body[cut:]) for i in range(0, len(part), 997)]
        guard = StreamGuard(INDEX)
        sent = bytearray()
        with pytest.raises(SecretFound) as e:
            for chunk in chunks:
                sent += guard(chunk)
            guard(b"")
        assert e.value.owner == "stripe" and SECRET not in str(e.value)
        assert value[:8] not in sent  # not even the start of it left
        assert sent == body[: len(sent)]


@settings(max_examples=30, deadline=None)
@given(
    secret=st.text(string.ascii_letters + string.digits + "_-", min_size=24, max_size=40),
    form=st.sampled_from(["raw", "upper", "base64", "percent", "hex", "json unicode"]),
    sizes=st.tuples(
        st.integers(_SAMPLED_FROM, 3 * _SAMPLED_FROM), st.integers(_SAMPLED_FROM, 3 * _SAMPLED_FROM)
    ),
    chunk=st.integers(_SAMPLED_FROM, 4 * _SAMPLED_FROM),
    seed=st.integers(0, 2**32),
)
def test_a_secret_split_anywhere_in_random_bytes_is_found_before_any_of_it_leaves(
    secret: str, form: str, sizes: tuple[int, int], chunk: int, seed: int
) -> None:
    """Random bytes around it, so the chunks are cleared from a sample: cut at every position
    (two chunks of KiB) or in chunks of any size, the secret is found, and nothing of it left."""
    index = SecretIndex([("c", secret)])
    assert index._stride > 1  # the sampled path is the one under test
    value = spellings(secret)[form]
    rnd = random.Random(seed)
    body = rnd.randbytes(sizes[0]) + value + rnd.randbytes(sizes[1])
    splits = [[body[:cut], body[cut:]] for cut in range(sizes[0] - 1, sizes[0] + len(value) + 2)]
    splits.append([body[i : i + chunk] for i in range(0, len(body), chunk)])
    for chunks in splits:
        guard = StreamGuard(index)
        sent = bytearray()
        with pytest.raises(SecretFound):
            for part in chunks:
                sent += guard(part)
            guard(b"")
        assert sent == body[: len(sent)] and len(sent) <= sizes[0]


def test_a_clean_stream_comes_out_whole() -> None:
    body = bytes(random.Random(1).randrange(256) for _ in range(100_000))
    guard = StreamGuard(INDEX)
    out = b"".join(guard(body[i : i + 4096]) for i in range(0, len(body), 4096)) + guard(b"")
    assert out == body


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 3 * _SAMPLED_FROM), min_size=1, max_size=30), seed=st.integers(0, 2**32))
def test_a_clean_stream_holds_back_no_more_than_the_overlap(sizes: list[int], seed: int) -> None:
    """Chunks of any size, small ones too: every call forwards all but the last ``keep`` bytes."""
    body = random.Random(seed).randbytes(sum(sizes))
    guard, fed, sent = StreamGuard(INDEX), 0, bytearray()
    for size in sizes:
        sent += guard(body[fed : fed + size])
        fed += size
        assert len(sent) >= fed - INDEX.keep
    assert sent + guard(b"") == body


def test_the_policy_guards_every_connector_secret_but_only_the_client_request_is_scanned() -> None:
    header = {"header": "Authorization", "template": "Bearer {{secret}}"}
    policy = Policy(
        [
            (
                make_connector("a", patterns=["https://a.test/*"], inject=header),
                {"secret": "a-secret-0123456789"},
            ),
            (
                make_connector("b", patterns=["https://b.test/*"], inject=header),
                {"secret": "b-secret-0123456789"},
            ),
        ]
    )
    assert policy.guard.find(b"x-leak: b-secret-0123456789") == "b"
    assert policy.guard.find(b"Authorization: Bearer placeholder") is None
    assert not Policy([(make_connector("m", patterns=["https://m.test/*"], inject=header), None)]).guard


def test_thousands_of_secrets_stay_fast() -> None:
    """A sanity check of scale (no timing assert): 5,000 secrets, a KiB scanned many times."""
    rnd = random.Random(7)
    alphabet = string.ascii_letters + string.digits
    secrets = [(f"c{i}", "sk_" + "".join(rnd.choice(alphabet) for _ in range(32))) for i in range(5000)]
    started = time.perf_counter()
    index = SecretIndex(secrets)
    built = time.perf_counter() - started
    data = bytes(rnd.randrange(32, 127) for _ in range(1024))
    started = time.perf_counter()
    for _ in range(1000):
        assert index.find(data) is None
    per_kib_us = (time.perf_counter() - started) * 1000
    assert index.find(b"x" + base64.b64encode(secrets[4321][1].encode()) + b"y") == "c4321"
    print(f"5000 secrets: built in {built:.2f} s, {per_kib_us:.1f} us per KiB")


# -- secrets learnt while running (OAuth2 tokens): an index of their own -----------------

TOKEN = "at-live-oauth-token-5b5b5b"


def test_live_secrets_are_guarded_beside_the_policys_in_every_spelling() -> None:
    live = LiveSecrets()
    assert live.guard(INDEX) is INDEX  # nothing learnt yet: the policy's index, as it is
    live.update("oauth", [TOKEN])
    guard = live.guard(INDEX)
    for form, data in spellings(TOKEN).items():
        assert guard.find(b"x " + data + b" y") == "oauth", form
    assert guard.find(b"x" + SECRET.encode()) == "stripe"  # the policy's still are
    assert guard.find(b"nothing to see here at all") is None
    assert guard.keep >= INDEX.keep
    assert TOKEN.encode() not in guard.mask(b"a " + TOKEN.encode() + b" " + SECRET.encode())
    assert SECRET not in guard.text(f"{TOKEN} {SECRET}")


def test_live_secrets_rebuild_only_when_a_value_changes() -> None:
    live = LiveSecrets()
    live.update("oauth", [TOKEN, "rt-refresh-token-0a0a0a"])
    first = live.index()
    combined = live.guard(INDEX)
    live.update("oauth", [TOKEN, "rt-refresh-token-0a0a0a"])  # every request says the same
    assert live.index() is first and live.guard(INDEX) is combined
    live.update("oauth", ["at-next-oauth-token-6c6c6c"])
    assert live.index() is not first
    # A replaced token stays guarded a while (it may still be valid), up to KEEP per connector.
    assert live.guard(INDEX).find(TOKEN.encode()) == "oauth"
    for i in range(LiveSecrets.KEEP):
        live.update("oauth", [f"at-more-oauth-token-{i:06d}"])
    assert live.guard(INDEX).find(TOKEN.encode()) is None
    other = SecretIndex([("x", "another-policy-secret-1")])
    assert live.guard(other) is not combined and live.guard(other).find(b"another-policy-secret-1") == "x"


def test_live_secrets_of_removed_connectors_are_forgotten() -> None:
    live = LiveSecrets()
    live.update("oauth", [TOKEN])
    live.update("gone", ["at-gone-oauth-token-7d7d7d"])
    live.retain(["oauth", "stripe"])
    guard = live.guard(INDEX)
    assert guard.find(b"at-gone-oauth-token-7d7d7d") is None and guard.find(TOKEN.encode()) == "oauth"
    live.update("oauth", ["short"])  # too short to guard: nothing breaks
    assert live.guard(INDEX).find(TOKEN.encode()) == "oauth"


def test_a_stream_is_guarded_against_both_indexes() -> None:
    live = LiveSecrets()
    live.update("oauth", [TOKEN])
    scan = StreamGuard(live.guard(INDEX))
    out = scan(b"x" * 100 + TOKEN[:5].encode())
    assert TOKEN[:5].encode() not in out  # held back
    with pytest.raises(SecretFound) as e:
        scan(TOKEN[5:].encode())
    assert e.value.owner == "oauth"
    assert Guards().find(TOKEN.encode()) is None and not Guards(SecretIndex())

"""The return-path addon on real flows: cookies stripped, echoes masked, stream composed."""

from __future__ import annotations

from mitmproxy.test import tflow

from addons.scrub import Scrub
from tests.adapters.helpers import SECRET, stripe_policy, tunnel_flow, wired


def admitted_flow() -> tflow.HTTPFlow:
    _, tunnels, inject = wired(stripe_policy())
    f = tunnel_flow(tunnels)
    inject.requestheaders(f)
    assert f.response is None
    f.response = tflow.tresp()
    return f


def test_admitted_request_asks_for_identity_encoding() -> None:
    _, tunnels, inject = wired(stripe_policy())
    f = tunnel_flow(tunnels)
    f.request.headers["accept-encoding"] = "gzip, br"
    inject.requestheaders(f)
    Scrub().requestheaders(f)
    assert f.request.headers["accept-encoding"] == "identity"


def test_set_cookie_stripped_and_echoed_secret_masked_in_headers() -> None:
    f = admitted_flow()
    f.response.headers.add("set-cookie", "a=1")
    f.response.headers.add("Set-Cookie", "b=2")
    f.response.headers["x-echo"] = f"Bearer {SECRET}"
    Scrub().responseheaders(f)
    assert "set-cookie" not in f.response.headers
    assert f.response.headers["x-echo"] == "Bearer " + "*" * len(SECRET)


def test_stream_masks_a_secret_split_across_chunks_and_counts_bytes() -> None:
    f = admitted_flow()
    Scrub().responseheaders(f)
    stream = f.response.stream
    assert callable(stream)
    half = len(SECRET) // 2
    parts = [stream(b"x" + SECRET[:half].encode()), stream(SECRET[half:].encode() + b"y"), stream(b"")]
    out = b"".join(p if isinstance(p, bytes) else b"".join(p) for p in parts)
    assert out == b"x" + b"*" * len(SECRET) + b"y"
    assert f.metadata["egress"].bytes_out == len(out)


def test_stream_never_emits_an_empty_chunk_mid_body() -> None:
    """mitmproxy frames b"" as the end of a chunked body: held-back bytes must be []."""
    f = admitted_flow()
    Scrub().responseheaders(f)
    assert f.response.stream(b"ab") == []  # shorter than the secret: held back, nothing sent
    assert f.response.stream(b"") == b"ab"


def test_our_own_blocked_answer_is_left_alone() -> None:
    _, _, inject = wired(stripe_policy())
    f = tflow.tflow()
    inject.requestheaders(f)  # outside any tunnel: blocked
    assert f.response is not None
    Scrub().responseheaders(f)
    assert f.response.stream is False


def test_response_hook_exception_kills_flow() -> None:
    f = admitted_flow()
    f.response.headers = None  # type: ignore[assignment]  # any failure inside the hook
    Scrub().responseheaders(f)
    assert f.error is not None

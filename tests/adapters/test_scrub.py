"""The return-path addon on real flows: cookies stripped, echoes masked, stream composed."""

from __future__ import annotations

import gzip

import pytest
from mitmproxy import http, websocket
from mitmproxy.test import tflow
from wsproto.frame_protocol import Opcode

from addons.scrub import Scrub
from proxy.scrub import Needles
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


def test_reason_phrase_and_header_names_are_cleaned() -> None:
    f = admitted_flow()
    f.response.reason = f"OK {SECRET}"
    f.response.headers[f"x-{SECRET}"] = "1"
    f.response.headers["set-cookie2"] = "a=1"
    Scrub().responseheaders(f)
    assert f.response.reason == "OK"
    assert SECRET.encode() not in b"".join(k + v for k, v in f.response.headers.fields)
    assert "set-cookie2" not in f.response.headers


def test_compressed_echo_is_decoded_then_masked() -> None:
    f = admitted_flow()
    body = gzip.compress(b'{"echo": "' + SECRET.encode() + b'"}' * 50)
    f.response.headers["content-encoding"] = "gzip"
    f.response.headers["content-length"] = str(len(body))
    Scrub().responseheaders(f)
    assert "content-encoding" not in f.response.headers and "content-length" not in f.response.headers
    stream = f.response.stream
    parts = [stream(body[i : i + 7]) for i in range(0, len(body), 7)] + [stream(b"")]
    out = b"".join(p if isinstance(p, bytes) else b"".join(p) for p in parts)
    assert out.startswith(b'{"echo": "*') and SECRET.encode() not in out


@pytest.mark.parametrize(
    ("header", "value"), [("content-encoding", "compress"), ("transfer-encoding", "gzip")]
)
def test_a_coding_that_cannot_be_scrubbed_is_refused(header: str, value: str) -> None:
    f = admitted_flow()
    f.response.headers[header] = value
    Scrub().responseheaders(f)
    assert f.error is not None  # killed, never passed unscrubbed


def test_trailers_scrubbed_for_h2_clients_dropped_for_h1() -> None:
    for version, kept in (("HTTP/2.0", True), ("HTTP/1.1", False)):
        f = admitted_flow()
        f.request.http_version = version
        f.response.trailers = http.Headers(x_leak=SECRET, set_cookie="a=1", grpc_status="0")
        Scrub().response(f)
        if not kept:
            assert f.response.trailers is None
            continue
        assert f.response.trailers is not None
        assert f.response.trailers["x-leak"] == "*" * len(SECRET)
        assert "set-cookie" not in f.response.trailers
        assert f.response.trailers["grpc-status"] == "0"


def test_websocket_messages_from_the_upstream_are_masked_and_not_kept() -> None:
    f = admitted_flow()
    f.websocket = websocket.WebSocketData()
    scrub = Scrub()
    f.websocket.messages.append(websocket.WebSocketMessage(Opcode.TEXT, False, f"token={SECRET}".encode()))
    scrub.websocket_message(f)
    assert f.websocket.messages[-1].content == b"token=" + b"*" * len(SECRET)
    f.websocket.messages.append(websocket.WebSocketMessage(Opcode.TEXT, True, f"mine={SECRET}".encode()))
    scrub.websocket_message(f)
    assert f.websocket.messages[-1].content == f"mine={SECRET}".encode()  # the sandbox's own
    assert len(f.websocket.messages) == 1  # relayed messages are not kept


def test_a_websocket_message_that_fails_to_scrub_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    f = admitted_flow()
    f.websocket = websocket.WebSocketData()
    f.websocket.messages.append(websocket.WebSocketMessage(Opcode.TEXT, False, f"token={SECRET}".encode()))

    def broken(self: object, data: bytes) -> bytes:
        raise RuntimeError("scrubber bug")

    monkeypatch.setattr(Needles, "mask", broken)
    Scrub().websocket_message(f)
    assert f.websocket.messages[-1].dropped  # never relayed unmasked


def test_decompression_bomb_is_refused_within_its_budget() -> None:
    from addons.decoding import FREE, Unscrubbable, step_for

    step = step_for("gzip")
    assert step is not None
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
    produced = 0
    with pytest.raises(Unscrubbable, match="bomb"):
        for i in range(0, len(bomb), 4096):
            produced += len(step(bomb[i : i + 4096]))
    assert produced < FREE + 200 * len(bomb)


def test_corrupt_and_multi_member_gzip() -> None:
    from addons.decoding import Unscrubbable, step_for

    step = step_for("gzip")
    assert step is not None
    assert step(gzip.compress(b"one ") + gzip.compress(b"two")) + step(b"") == b"one two"
    bad = step_for("gzip")
    assert bad is not None
    with pytest.raises(Unscrubbable, match="corrupt"):
        bad(b"\x1f\x8b\x08\x00garbage-garbage-garbage")


@pytest.mark.parametrize("coding", ["br", "zstd"])
def test_brotli_and_zstd_decode_in_bounded_pieces(coding: str) -> None:
    import brotli

    from addons.decoding import Unscrubbable, step_for

    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        from backports import zstd
    compress = brotli.compress if coding == "br" else zstd.compress
    data = b'{"echo": "hello"} ' * 2000
    blob, step = compress(data), step_for(coding)
    assert step is not None
    assert b"".join(step(blob[i : i + 100]) for i in range(0, len(blob), 100)) + step(b"") == data
    bomb, step = compress(b"\0" * (64 << 20)), step_for(coding)
    assert step is not None
    with pytest.raises(Unscrubbable, match="bomb"):
        for i in range(0, len(bomb), 4096):
            step(bomb[i : i + 4096])

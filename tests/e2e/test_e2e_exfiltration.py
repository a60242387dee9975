"""Exfiltration guard end to end: another connector's secret never leaves, nor reaches a log."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import signal
import socket
import ssl
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import brotli  # type: ignore[import-untyped]
import pytest
import requests

from tests.clients import session
from tests.conftest import proxy_args
from tests.harness import (
    Proxy,
    Upstream,
    add_connector,
    blocked_rows,
    egress,
    oauth_connector_yaml,
    start_proxy,
    ws_frame,
)

pytestmark = pytest.mark.e2e
STRIPE = "sk_exfil_e2e_stripe_3d3d3d"
OTHER = "wx/exfil+e2e=other&9e9e9e"  # percent-encoding changes it


@pytest.fixture
def guarded(tmp_path: Path, pki: tuple[Path, object], upstream: Upstream) -> Iterator[Proxy]:
    """A proxy with connectors stripe (secret STRIPE) and weather (OTHER, which requests to
    stripe must not carry), both injecting Authorization."""
    home = tmp_path / "home"
    port = upstream.port
    for name, pattern, secret in (
        ("stripe", f"https://api.stripe.test:{port}/v1/*", STRIPE),
        ("weather", f"https://api.weather.test:{port}/*", OTHER),
    ):
        add_connector(home, name, secret, "--pattern", pattern, "--header", "Authorization")
    proxy = start_proxy(home, *proxy_args(pki[0]))
    yield proxy
    proxy.stop()  # the tests stop it themselves; this is for one that failed before


def test_another_connectors_secret_is_refused_everywhere(guarded: Proxy, upstream: Upstream) -> None:
    proxy, home, port = guarded, guarded.home, upstream.port
    base = f"https://api.stripe.test:{port}/v1"
    try:
        s = session(proxy.url, proxy.ca)
        assert s.get(f"{base}/ok-before").status_code == 200  # the guard passes clean requests
        seen = len(upstream.records)
        answers = [
            s.get(f"{base}/a", headers={"X-Note": OTHER}),
            s.get(f"{base}/b", params={"q": OTHER}),  # percent-encoded by requests
            s.post(f"{base}/c", json={"key": OTHER}),
            s.post(f"{base}/d", data=base64.b64encode(b"prefix:" + OTHER.encode())),
            s.get(f"{base}/e", headers={"X-Hex": OTHER.encode().hex().upper()}),
        ]
        for r in answers:
            assert r.status_code == 403, r.text
            assert r.json()["reason"] == "secret-exfiltration"
            assert r.headers["x-egress-blocked"] == "secret-exfiltration"
            assert OTHER not in r.text and quote(OTHER, safe="") not in r.text

        def chunks() -> Iterator[bytes]:  # chunked: streamed, the secret split across two chunks
            yield b"x" * 200_000
            yield OTHER[:9].encode()
            time.sleep(0.05)
            yield OTHER[9:].encode() + b"y" * 1000

        with pytest.raises(requests.exceptions.RequestException):
            s.post(f"{base}/streamed", data=chunks()).raise_for_status()
        assert len(upstream.records) == seen  # the upstream completed none of them
        assert s.get(f"{base}/ok-after").status_code == 200
        rows = blocked_rows(home, 6)
        log_text = proxy.log_text()
    finally:
        assert proxy.stop(signal.SIGTERM) == 0
    assert len(rows) == 6 and {r["reason"] for r in rows} == {"secret-exfiltration"}
    assert {r["path"] for r in rows} == {"/v1/a", "/v1/b", "/v1/c", "/v1/d", "/v1/e", "/v1/streamed"}
    assert "secret-exfiltration" in log_text and "connector weather" in log_text
    texts = [log_text, json.dumps(rows), egress(home, "logs").stdout, egress(home, "stats", "--json").stdout]
    for secret in (OTHER, STRIPE):
        for spelling in (secret, quote(secret, safe=""), secret.encode().hex()):
            assert not any(spelling in t for t in texts)
        for f in home.rglob("*"):
            if f.is_file():
                assert secret.encode() not in f.read_bytes()


def ws_connect(proxy: Proxy, host: str, port: int, path: str) -> ssl.SSLSocket:
    """A WebSocket through the proxy, after its 101 and the upstream's "hello"."""
    raw = socket.create_connection((proxy.host, proxy.port), timeout=10)
    raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=proxy.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    tls = ctx.wrap_socket(raw, server_hostname=host)
    key = base64.b64encode(os.urandom(16)).decode()
    tls.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    data = b""
    while b"hello" not in data:
        chunk = tls.recv(4096)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 101"), data[:200]
    return tls


def closed(tls: ssl.SSLSocket) -> bool:
    """Does the proxy close this connection (EOF or reset; a close frame at most before it)?"""
    tls.settimeout(10)
    try:
        while chunk := tls.recv(4096):
            if not chunk.startswith(b"\x88"):
                return False
    except TimeoutError:
        return False
    except (ssl.SSLError, OSError):
        pass
    return True


def test_a_websocket_message_carrying_a_secret_closes_the_connection(
    guarded: Proxy, upstream: Upstream
) -> None:
    proxy, home, port = guarded, guarded.home, upstream.port
    tag = f"ws{time.monotonic_ns()}".encode()
    try:
        cases = [
            [b"clean " + tag, b"note: " + base64.b64encode(OTHER.encode()) + tag],  # one message
            [b"clean2 " + tag, OTHER[:9].encode(), OTHER[9:].encode() + tag],  # split across two
            [b"clean3 " + tag, quote(OTHER, safe="").encode()],
        ]
        for messages in cases:
            tls = ws_connect(proxy, "api.stripe.test", port, "/v1/ws-sink")
            for m in messages:
                tls.sendall(ws_frame(m))
            assert closed(tls)
            tls.close()
        deadline = time.monotonic() + 10
        while len([m for m in upstream.ws_messages if tag in m]) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        rows = blocked_rows(home, 3)
        log_text = proxy.log_text()
    finally:
        assert proxy.stop(signal.SIGTERM) == 0
    got = [m for m in upstream.ws_messages if tag in m or OTHER[:9].encode() in m]
    # What came before the secret was relayed; the message that completes it never was.
    assert sorted(got) == sorted([b"clean " + tag, b"clean2 " + tag, OTHER[:9].encode(), b"clean3 " + tag])
    assert len(rows) == 3 and {r["reason"] for r in rows} == {"secret-exfiltration"}
    assert {r["path"] for r in rows} == {"/v1/ws-sink"}
    assert "WebSocket message" in log_text and "connector weather" in log_text
    assert OTHER not in log_text and base64.b64encode(OTHER.encode()).decode() not in log_text


def test_an_oauth2_token_the_proxy_fetched_is_refused_like_a_secret(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    home = tmp_path / "home"
    port = upstream.port
    yaml = home / "connectors.yaml"
    home.mkdir()
    yaml.write_text(
        f"""connectors:
  - name: stripe
    patterns: ["https://api.stripe.test:{port}/v1/*"]
    secret: {{env: STRIPE_KEY}}
    inject: {{header: Authorization}}
"""
        + oauth_connector_yaml(port, "exfil-e2e")
    )
    res = egress(home, "apply", "-f", str(yaml), STRIPE_KEY=STRIPE, OAUTH_SECRET="cs-exfil-e2e-oauth-1c1c")
    assert res.returncode == 0, res.stderr
    proxy = start_proxy(home, *proxy_args(pki[0]))
    tag = f"o{time.monotonic_ns()}"
    try:
        s = session(proxy.url, proxy.ca)
        assert s.get(f"https://api.oauth.test:{port}/oauth-api/first?t={tag}").status_code == 200
        (first,) = upstream.find(tag)
        token = first.header("authorization")[0].split()[1]  # the sandbox never saw it
        seen = len(upstream.records)
        base = f"https://api.stripe.test:{port}/v1"
        answers = [
            s.get(f"{base}/a", headers={"X-Note": token}),
            s.get(f"{base}/b", params={"q": token.upper()}),
            s.post(f"{base}/c", data=base64.b64encode(token.encode())),
            s.get(f"{base}/d", headers={"X-Hex": token.encode().hex()}),
            s.get(f"https://api.oauth.test:{port}/oauth-api/e", headers={"X-Copy": token}),  # its own too
        ]
        for r in answers:
            assert r.status_code == 403, r.text
            assert r.json()["reason"] == "secret-exfiltration"
            assert token not in r.text
        assert len(upstream.records) == seen  # none reached an upstream (nor the token endpoint)
        assert s.get(f"https://api.oauth.test:{port}/oauth-api/again?t={tag}").status_code == 200
        log_text = proxy.log_text()
    finally:
        assert proxy.stop(signal.SIGTERM) == 0
    assert "secret-exfiltration" in log_text and "connector oauth" in log_text
    assert token not in log_text and token not in egress(home, "logs", "--blocked", "--json").stdout


def test_compressed_request_bodies_are_decoded_for_the_scan_or_refused(
    guarded: Proxy, upstream: Upstream
) -> None:
    proxy, port = guarded, upstream.port
    base = f"https://api.stripe.test:{port}/v1"
    tag = f"z{time.monotonic_ns()}"
    try:
        s = session(proxy.url, proxy.ca)
        clean = gzip.compress(json.dumps({"note": "nothing secret here"}).encode())
        r = s.post(f"{base}/clean?t={tag}", data=clean, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 200, r.text
        (rec,) = upstream.find(tag)
        assert rec.body_sha256 == hashlib.sha256(clean).hexdigest()  # forwarded as it came
        seen = len(upstream.records)
        for coding, body in (
            ("gzip", gzip.compress(json.dumps({"k": OTHER}).encode())),
            ("deflate", zlib.compress(OTHER.encode())),
            ("br", brotli.compress(base64.b64encode(OTHER.encode()))),
        ):
            r = s.post(f"{base}/{coding}", data=body, headers={"Content-Encoding": coding})
            assert r.status_code == 403 and r.json()["reason"] == "secret-exfiltration", (coding, r.text)

        def chunks() -> Iterator[bytes]:  # not announced: cannot be decoded whole before it leaves
            yield gzip.compress(b"anything")

        for data in (chunks(), gzip.compress(os.urandom(200_000))):
            r = s.post(f"{base}/big", data=data, headers={"Content-Encoding": "gzip"})
            assert r.status_code == 415 and r.json()["reason"] == "bad-request", r.text
        assert len(upstream.records) == seen
    finally:
        assert proxy.stop(signal.SIGTERM) == 0

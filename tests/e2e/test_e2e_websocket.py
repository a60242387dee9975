"""WebSocket upgrades: secret injected on an allowed handshake, others blocked."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import time

import pytest

from tests.conftest import SECRETS
from tests.harness import Proxy, Upstream

pytestmark = pytest.mark.e2e


def handshake(proxy: Proxy, host: str, port: int, path: str) -> bytes:
    raw = socket.create_connection((proxy.host, proxy.port), timeout=10)
    raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=proxy.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    with ctx.wrap_socket(raw, server_hostname=host) as tls:
        key = base64.b64encode(os.urandom(16)).decode()
        tls.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Authorization: Bearer sandbox-guess\r\n\r\n"
            ).encode()
        )
        data = b""
        deadline = time.monotonic() + 10
        while b"hello" not in data and time.monotonic() < deadline:
            try:
                chunk = tls.recv(4096)
            except (ssl.SSLError, OSError):
                break
            if not chunk:
                break
            data += chunk
            if data.startswith(b"HTTP/1.1 403") and b"\r\n\r\n" in data:
                break
        return data


def test_websocket_to_allowed_url_gets_secret(proxy: Proxy, upstream: Upstream) -> None:
    tag = f"ws{time.monotonic_ns()}"
    data = handshake(proxy, "api.stripe.test", upstream.port, f"/v1/socket?t={tag}")
    assert data.startswith(b"HTTP/1.1 101"), data[:200]
    assert b"hello" in data
    (rec,) = upstream.find(tag)
    assert rec.header("Authorization") == [f"Bearer {SECRETS['stripe']}"]
    assert rec.header("Upgrade") == ["websocket"]


def test_websocket_to_other_path_is_blocked(proxy: Proxy, upstream: Upstream) -> None:
    tag = f"ws{time.monotonic_ns()}"
    data = handshake(proxy, "api.stripe.test", upstream.port, f"/admin/socket?t={tag}")
    assert data.startswith(b"HTTP/1.1 403")
    assert b"x-egress-blocked: no-connector" in data.lower()
    assert upstream.find(tag) == []

"""Oversized request heads are cut off before they can grow the proxy's memory."""

from __future__ import annotations

import socket

import pytest

from tests.harness import Proxy

pytestmark = pytest.mark.e2e


def test_endless_request_head_gets_431(proxy: Proxy) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
        s.sendall(b"CONNECT api.stripe.test:443 HTTP/1.1\r\nX-Pad: ")
        reply = b""
        try:
            for _ in range(64):  # up to 1 MiB, the proxy must answer long before
                s.sendall(b"a" * 16384)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := s.recv(4096):
                reply += chunk
        except ConnectionResetError:
            pass
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert b"x-egress-blocked: bad-request" in reply


def test_normal_large_header_still_works(proxy: Proxy) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
        s.sendall(b"CONNECT evil.test:443 HTTP/1.1\r\nX-Pad: " + b"a" * 30000 + b"\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 403")

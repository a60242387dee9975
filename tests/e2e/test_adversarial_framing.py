"""Regressions from review: framing headers named in Connection, TLS to the proxy itself."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from tests.e2e.test_adversarial import tunnel
from tests.harness import Proxy, Upstream

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("framing", ["content-length", "transfer-encoding"])
def test_connection_naming_a_framing_header_smuggles_nothing(
    proxy: Proxy, upstream: Upstream, framing: str
) -> None:
    authority = f"api.stripe.test:{upstream.port}"
    tag = f"smug{time.monotonic_ns()}"
    smuggled = f"GET /admin/{tag}-smuggled HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    if framing == "content-length":
        body, length = smuggled, f"Content-Length: {len(smuggled)}"
    else:
        body, length = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled), "Transfer-Encoding: chunked"
    conn = tunnel(proxy, authority)
    conn.send(
        f"POST /v1/{tag} HTTP/1.1\r\nHost: {authority}\r\nConnection: {framing}\r\n{length}\r\n\r\n".encode()
        + body
    )
    reply = conn.response()
    conn.send(f"GET /v1/{tag}-next HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    conn.response()
    conn.close()
    time.sleep(0.3)
    assert reply.status == 200
    assert upstream.find(f"{tag}-smuggled") == []  # arrived as a body, never as a request
    (post,) = [r for r in upstream.find(tag) if r.path == f"/v1/{tag}"]
    assert post.body_len == len(smuggled)
    assert post.header("Connection") == []


def test_tls_to_the_proxy_itself_cannot_open_tunnels(proxy: Proxy, upstream: Upstream) -> None:
    ctx = ssl.create_default_context(cafile=proxy.ca)
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["http/1.1"])
    before = upstream.connections
    with ctx.wrap_socket(
        socket.create_connection((proxy.host, proxy.port), timeout=5), server_hostname="proxy"
    ) as s:
        authority = f"api.stripe.test:{upstream.port}"
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 400"), head[:200]
    assert b"x-egress-blocked: bad-request" in head.lower()
    assert upstream.connections == before

"""Keep-alive latency at concurrency 1, timed per request with ``perf_counter``.

hey prints latencies with 0.1 ms resolution, too coarse for a direct nginx
round trip, so this client does it: one TLS connection (through a CONNECT
tunnel when a proxy is given), HTTP/1.1, one request at a time, for a fixed
duration. Blocking sockets and no parsing beyond status and framing keep its
own cost at a few tens of microseconds per request.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

HEAD_END = b"\r\n\r\n"


@dataclass
class ProbeResult:
    latencies: list[float] = field(default_factory=list)  # seconds, 2xx only
    ok: int = 0
    non_2xx: int = 0
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0


class _Reader:
    def __init__(self, sock: ssl.SSLSocket | socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by peer")
        self.buf += chunk

    def head(self) -> bytes:
        while (end := self.buf.find(HEAD_END)) < 0:
            self._fill()
        head = bytes(self.buf[:end])
        del self.buf[: end + len(HEAD_END)]
        return head

    def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def skip(self, n: int) -> None:
        while len(self.buf) < n:
            self._fill()
        del self.buf[:n]

    def response(self) -> int:
        """Read one response; return its status code."""
        head = self.head()
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        chunked = False
        for raw in lines[1:]:
            name, _, value = raw.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while True:
                size = int(self.line().split(b";")[0], 16)
                if size == 0:
                    while self.line():
                        pass
                    break
                self.skip(size + 2)
        else:
            self.skip(length)
        return status


def connect(
    upstream: tuple[str, int],
    host: str,
    port: int,
    cafile: str,
    proxy: tuple[str, int] | None,
    timeout: float = 10.0,
    ctx: ssl.SSLContext | None = None,
    session: ssl.SSLSession | None = None,
) -> tuple[ssl.SSLSocket, _Reader]:
    """A TLS connection to ``host`` (verified with ``cafile``), tunnelled if ``proxy``; resuming
    ``session``, which must come from ``ctx``."""
    raw = socket.create_connection(proxy or upstream, timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if proxy:
        authority = f"{host}:{port}"
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        reader = _Reader(raw)
        status = int(reader.head().split(b" ", 2)[1])
        if status != 200:
            raw.close()
            raise ConnectionError(f"CONNECT answered {status}")
    tls = (ctx or context(cafile)).wrap_socket(raw, server_hostname=host, session=session)
    return tls, _Reader(tls)


def context(cafile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def run(
    upstream: tuple[str, int],
    host: str,
    port: int,
    cafile: str,
    proxy: tuple[str, int] | None,
    duration: float,
    headers: dict[str, str] | None = None,
    path: str = "/",
) -> ProbeResult:
    """Sequential keep-alive GETs for ``duration`` seconds."""
    authority = host if port == 443 else f"{host}:{port}"
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n".encode()
    result = ProbeResult()
    sock: ssl.SSLSocket | None = None
    reader: _Reader | None = None
    clock = time.perf_counter
    start = clock()
    deadline = start + duration
    try:
        while clock() < deadline:
            if sock is None or reader is None:
                try:
                    sock, reader = connect(upstream, host, port, cafile, proxy)
                except (OSError, ConnectionError) as e:
                    result.errors.append(f"connect: {e}")
                    if len(result.errors) > 20:
                        break
                    time.sleep(0.05)
                    continue
            t0 = clock()
            try:
                sock.sendall(request)
                status = reader.response()
            except (OSError, ConnectionError, ValueError, IndexError) as e:
                result.errors.append(f"request: {type(e).__name__}: {e}")
                sock.close()
                sock = reader = None
                if len(result.errors) > 20:
                    break
                continue
            elapsed = clock() - t0
            if 200 <= status < 300:
                result.ok += 1
                result.latencies.append(elapsed)
            else:
                result.non_2xx += 1
    finally:
        result.elapsed = clock() - start
        if sock is not None:
            sock.close()
    return result

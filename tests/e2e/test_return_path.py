"""The return path: a secret the upstream sends back must never reach the sandbox.

The proxy injects a secret into requests and scrubs echoes of it from response
header values and identity bodies. A hostile upstream (tests/hostile.py) sends
the injected secret back through every other channel a response has; these
tests drive the real proxy with real TLS and real clients and look at every
byte the client received.

Each test checks two things: no spelling of the secret (tests.hostile.ENCODINGS)
is in anything the client got, and the client got a sensible answer, so that an
empty or hung answer is not a silent pass. Where refusing is a legitimate
defence (a head the proxy cannot parse, a compressed body it cannot inspect, a
WebSocket it kills) the test says so and accepts the refusal, never the secret.
Problems are collected and reported together, with the secret redacted.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from tests.clients import httpx_client, session
from tests.conftest import SECRETS, proxy_args
from tests.e2e.hostile import DECOMPRESSORS, ENCODINGS, Hostile, Seen, forms, make_contexts
from tests.harness import Proxy, egress, start_proxy

pytestmark = pytest.mark.e2e

TIMEOUT = 4.0  # per exchange; a longer silence counts as a hang
OK_BODY = b'{"ok": true}'
STRIPE = ("api.stripe.test", "/v1/leak/")
WEATHER = ("api.weather.test", "/data/leak/")
ROUTES = {"stripe": STRIPE, "weather": WEATHER}


# --------------------------------------------------------------------------- fixtures


@dataclass
class Upstreams:
    h2: Hostile  # offers h2 and HTTP/1.1
    h1: Hostile  # HTTP/1.1 only

    def of(self, protocol: str) -> Hostile:
        return self.h2 if protocol == "h2" else self.h1


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Upstreams]]:
    ca_path, ctx_h2, ctx_h1 = make_contexts(tmp_path_factory.mktemp("hostile-pki"))
    servers = Upstreams(Hostile(ctx_h2).start(), Hostile(ctx_h1).start())
    yield ca_path, servers
    servers.h2.stop()
    servers.h1.stop()


@pytest.fixture(scope="module")
def upstreams(hostile: tuple[Path, Upstreams]) -> Upstreams:
    return hostile[1]


@pytest.fixture(scope="module")
def rproxy(tmp_path_factory: pytest.TempPathFactory, hostile: tuple[Path, Upstreams]) -> Iterator[Proxy]:
    """A proxy whose stripe (header) and weather (query) connectors cover both hostile servers."""
    ca_path, servers = hostile
    home = tmp_path_factory.mktemp("return-home")

    def run(*args: str, **env: str) -> None:
        result = egress(home, *args, **env)
        assert result.returncode == 0, result.stderr

    def patterns(host: str, prefix: str) -> list[str]:
        out = []
        for port in (servers.h2.port, servers.h1.port):
            out += ["--pattern", f"https://{host}:{port}{prefix.removesuffix('leak/')}*"]
        return out

    run("init")
    run(
        "connector", "add", "stripe", *patterns(*STRIPE),
        "--header", "Authorization", "--template", "Bearer {{secret}}",
        "--secret-stdin", stdin=SECRETS["stripe"],
    )  # fmt: skip
    run(
        "connector", "add", "weather", *patterns(*WEATHER),
        "--query", "appid", "--secret-env", "WEATHER_KEY", WEATHER_KEY=SECRETS["weather"],
    )  # fmt: skip
    proc = start_proxy(home, *proxy_args(ca_path))
    yield proc
    proc.stop()


# --------------------------------------------------------------------------- the oracle


def found(data: bytes | str, secret: str) -> list[str]:
    """Names of the spellings of ``secret`` that occur in ``data``."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    return [name for name, form in forms(secret).items() if form in text]


def redact(data: bytes | str, secret: str, limit: int = 600) -> str:
    """``data`` for a failure message: every spelling of the secret replaced by its name."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    for name, form in sorted(forms(secret).items(), key=lambda kv: -len(kv[1])):
        text = text.replace(form, f"<secret:{name}>")
    return repr(text[:limit])


def leak_problem(what: str, data: bytes | str, secret: str, *, show: bool = True) -> list[str]:
    """A problem if ``data`` spells the secret; quoted (redacted) unless ``show`` is False."""
    if not (names := found(data, secret)):
        return []
    return [f"{what} carries the secret as {names}" + (f": {redact(data, secret)}" if show else "")]


def frame_leaks(frames: bytes, secret: str) -> list[str]:
    """Raw HTTP/2 frames: HPACK may carry a literal; decoded fields are checked (and shown) apart."""
    return leak_problem("the raw HTTP/2 frames", frames, secret, show=False)


def assert_no_problems(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


def tag() -> str:
    return "t" + os.urandom(6).hex()


def seen_once(server: Hostile, t: str, protocol: str) -> Seen:
    """The upstream got the request, over ``protocol``, with the secret injected:
    the channel under test really was fed the secret."""
    records = server.find(t)
    assert len(records) == 1, f"upstream saw {len(records)} requests tagged {t}"
    assert records[0].protocol == protocol, records[0].protocol
    assert records[0].secret, "the proxy injected no secret"
    return records[0]


# --------------------------------------------------------------------------- clients


def open_tunnel(proxy: Proxy, host: str, port: int, alpn: str) -> ssl.SSLSocket:
    """CONNECT through the proxy, then TLS (verified against the proxy's CA) offering ``alpn``."""
    raw = socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)
    try:
        raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = raw.recv(4096)
            assert chunk, f"proxy closed during CONNECT: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        ctx = ssl.create_default_context(cafile=proxy.ca)
        ctx.set_alpn_protocols([alpn])
        tls = ctx.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise
    assert tls.selected_alpn_protocol() == alpn
    return tls


@dataclass
class H1Reply:
    """One HTTP/1.1 response; ``status`` None: no complete head; ``complete``: framing satisfied."""

    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = False

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class H1:
    """A raw HTTP/1.1 client over a tunnel that keeps every byte it received in ``wire``."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buf = b""
        self.wire = b""
        self.closed = False

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if self.closed or remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        self.wire += chunk
        return True

    def _line(self, deadline: float) -> bytes | None:
        while b"\r\n" not in self.buf:
            if not self._fill(deadline):
                return None
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def take(self, n: int, deadline: float) -> bytes | None:
        while len(self.buf) < n:
            if not self._fill(deadline):
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def get(self, authority: str, path: str, *extra: str) -> H1Reply:
        lines = [f"GET {path} HTTP/1.1", f"Host: {authority}", *extra]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return self.read()

    def read(self, wait: float = TIMEOUT) -> H1Reply:
        deadline = time.monotonic() + wait
        reply = H1Reply()
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                return reply
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        first, *lines = head.decode("latin-1").split("\r\n")
        version, _, rest = first.partition(" ")
        status, _, reply.reason = rest.partition(" ")
        if not (version.startswith("HTTP/") and status.isdigit()):  # out of step with the stream
            reply.reason, reply.body = first, head
            return reply
        reply.status = int(status)
        reply.headers = [(k.strip(), v.strip()) for k, _, v in (x.partition(":") for x in lines)]
        if reply.status == 101 or reply.status == 204:
            reply.complete = True
            return reply
        codings = ",".join(reply.header("transfer-encoding")).lower()
        if "chunked" in codings:
            while (size_line := self._line(deadline)) is not None:
                try:
                    size = int(size_line.split(b";")[0], 16)
                except ValueError:
                    break
                if size == 0:
                    while (t := self._line(deadline)) not in (None, b""):
                        k, _, v = t.decode("latin-1").partition(":")
                        reply.trailers.append((k.strip(), v.strip()))
                    reply.complete = t == b""
                    break
                if (chunk := self.take(size, deadline)) is None or self._line(deadline) is None:
                    reply.body += chunk or self.buf
                    break
                reply.body += chunk
        elif not codings and (length := reply.header("content-length")):
            body = self.take(int(length[0]), deadline)
            reply.body, reply.complete = (body, True) if body is not None else (self.buf, False)
        else:  # delimited by closing the connection
            while self._fill(deadline):
                pass
            reply.body, self.buf, reply.complete = self.buf, b"", self.closed
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class H2Reply:
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None

    @property
    def status(self) -> int | None:
        return next((int(v) for k, v in self.headers if k == ":status"), None)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def text(self) -> str:
        fields = [*self.headers, *self.trailers]
        return "\n".join(f"{k}: {v}" for k, v in fields) + "\n" + self.body.decode("latin-1")


class H2:
    """A raw HTTP/2 client over a tunnel; decoded headers, trailers and bodies per stream."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.sock = sock
        self.conn = h2.connection.H2Connection(config=config)
        self.replies: dict[int, H2Reply] = {}
        self.wire = b""
        self.terminated = False
        self.conn.initiate_connection()
        self._flush()

    def _flush(self) -> None:
        if data := self.conn.data_to_send():
            with contextlib.suppress(OSError):
                self.sock.sendall(data)

    def get(self, authority: str, path: str) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.replies[sid] = H2Reply()
        headers = [(":method", "GET"), (":authority", authority), (":scheme", "https"), (":path", path)]
        self.conn.send_headers(sid, headers, end_stream=True)
        self._flush()
        return sid

    def wait(self, sid: int, wait: float = TIMEOUT) -> H2Reply:
        deadline = time.monotonic() + wait
        reply = self.replies[sid]
        while not (reply.ended or reply.reset is not None or self.terminated):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                data = b""
            if not data:
                self.terminated = True
                break
            self.wire += data
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                self.terminated = True
                break
            for ev in events:
                r = self.replies.get(getattr(ev, "stream_id", 0) or 0)
                if isinstance(ev, h2.events.ResponseReceived) and r:
                    r.headers = [(str(k), str(v)) for k, v in ev.headers or []]
                elif isinstance(ev, h2.events.TrailersReceived) and r:
                    r.trailers = [(str(k), str(v)) for k, v in ev.headers or []]
                elif isinstance(ev, h2.events.DataReceived) and r:
                    r.body += ev.data or b""
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and r:
                    r.ended = True
                elif isinstance(ev, h2.events.StreamReset) and r:
                    r.reset = int(ev.error_code or 0)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.terminated = True
            self._flush()
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class Exchange:
    """One GET through a fresh tunnel. ``wire``: what the client got (HTTP/1.1: every byte;
    HTTP/2: the decoded fields and body), ``frames``: the raw HTTP/2 frames (b"" for HTTP/1.1);
    ``complete``: the response ended as framed; ``closed``: the connection closed (HTTP/2:
    or the stream reset)."""

    status: int | None
    body: bytes
    wire: bytes
    frames: bytes
    complete: bool
    closed: bool


def exchange(
    proxy: Proxy, server: Hostile, path: str, client: str, *, host: str = STRIPE[0], wait: float = TIMEOUT
) -> Exchange:
    """GET ``path`` from ``server`` over a tunnel speaking ``client`` ("h1" or "h2")."""
    authority = f"{host}:{server.port}"
    tls = open_tunnel(proxy, host, server.port, "h2" if client == "h2" else "http/1.1")
    try:
        if client == "h2":
            c2 = H2(tls)
            r2 = c2.wait(c2.get(authority, path), wait=wait)
            closed = r2.reset is not None or c2.terminated
            return Exchange(r2.status, r2.body, r2.text().encode(), c2.wire, r2.ended, closed)
        c1 = H1(tls)
        c1.send(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        r1 = c1.read(wait=wait)
        return Exchange(r1.status, r1.body, c1.wire, b"", r1.complete, c1.closed)
    finally:
        tls.close()


# --------------------------------------------------------------------------- 1. trailers


@pytest.mark.parametrize(
    ("client", "upstream"),
    [("h2", "h2"), ("h1", "h1"), ("h2", "h1")],
    ids=["h2-to-h2", "h1-to-h1-chunked", "h2-to-h1-chunked"],
)
def test_trailers_neither_leak_nor_wedge_the_connection(
    rproxy: Proxy, upstreams: Upstreams, client: str, upstream: str
) -> None:
    """Trailers arrive after the scrubbed body and headers, in a hook of their own
    (``response``, ``flow.response.trailers``); an HTTP/1.1 upstream's chunked
    trailers crash mitmproxy's HTTP/1 reader instead. Either way: no secret, no
    Set-Cookie, and the connection must go on serving requests."""
    server, secret, t = upstreams.of(upstream), SECRETS["stripe"], tag()
    host, prefix = STRIPE
    authority = f"{host}:{server.port}"
    tls = open_tunnel(rproxy, host, server.port, "h2" if client == "h2" else "http/1.1")
    problems: list[str] = []
    try:
        if client == "h2":
            c2 = H2(tls)
            first = c2.wait(c2.get(authority, f"{prefix}trailers?t={t}"))
            second = c2.wait(c2.get(authority, f"{prefix}ok?t={tag()}"))
            status, body, complete = first.status, first.body, first.ended
            trailers = first.trailers
            wire, frames = (first.text() + "\n" + second.text()).encode(), c2.wire
            got_second = second.status == 200 and second.ended and second.body == OK_BODY
        else:
            c1 = H1(tls)
            r1 = c1.get(authority, f"{prefix}trailers?t={t}")
            r2 = c1.get(authority, f"{prefix}ok?t={tag()}") if not c1.closed else H1Reply()
            status, body, complete, trailers = r1.status, r1.body, r1.complete, r1.trailers
            wire, frames = c1.wire, b""
            got_second = r2.status == 200 and r2.complete and r2.body == OK_BODY
    finally:
        tls.close()
    seen_once(server, t, {"h2": "h2", "h1": "http/1.1"}[upstream])
    problems += leak_problem("the client's bytes", wire, secret) + frame_leaks(frames, secret)
    if any(k.lower() == "set-cookie" for k, _ in trailers):
        problems.append(f"a Set-Cookie trailer reached the client: {redact(str(trailers), secret)}")
    if not (status == 200 and complete and body == OK_BODY):
        problems.append(
            f"the response is not the upstream's (status={status}, complete={complete}, "
            f"body={redact(body, secret)})"
        )
    if not got_second:
        problems.append("a second request on the same client connection got no answer")
    assert_no_problems(problems)


@pytest.mark.parametrize("size", [3, 64])
def test_chunked_body_is_masked_and_whole(rproxy: Proxy, upstreams: Upstreams, size: int) -> None:
    """A chunked HTTP/1.1 echo, in chunks smaller (3) or larger (64) than the secret.
    The streaming scrubber holds back up to len(secret)-1 bytes and returns b""
    for a short chunk; mitmproxy frames an empty chunk for an HTTP/1.1 client as
    ``0\\r\\n\\r\\n``, the end of the body. The client must get the whole body,
    masked, and the connection must go on serving requests."""
    server, secret, t = upstreams.h1, SECRETS["stripe"], tag()
    host, prefix = STRIPE
    authority = f"{host}:{server.port}"
    tls = open_tunnel(rproxy, host, server.port, "http/1.1")
    c = H1(tls)
    try:
        first = c.get(authority, f"{prefix}chunked.{size}?t={t}")
        second = c.get(authority, f"{prefix}ok?t={tag()}") if not c.closed else H1Reply()
    finally:
        c.close()
    seen_once(server, t, "http/1.1")
    problems = leak_problem("the client's bytes", c.wire, secret)
    try:
        echo = json.loads(first.body)
    except ValueError:
        echo = None
    if first.status != 200 or not first.complete or not isinstance(echo, dict) or "after" not in echo:
        problems.append(
            f"the body arrived cut short (status={first.status}, complete={first.complete}): "
            f"{redact(first.body, secret)}"
        )
    if second.status != 200 or second.body != OK_BODY:
        problems.append(
            f"the next response on the connection is wrong: status={second.status} "
            f"reason={second.reason!r} body={redact(second.body, secret)}"
        )
    assert_no_problems(problems)


# --------------------------------------------------------------------------- 2. reason phrase


@pytest.mark.parametrize("client", ["h1", "h2"])
def test_reason_phrase_does_not_carry_the_secret(rproxy: Proxy, upstreams: Upstreams, client: str) -> None:
    """``HTTP/1.1 200 <secret>``: mitmproxy copies an HTTP/1 reason phrase verbatim
    to an HTTP/1 client (an HTTP/2 client gets none: a guard)."""
    server, secret, t = upstreams.h1, SECRETS["stripe"], tag()
    r = exchange(rproxy, server, f"{STRIPE[1]}reason?t={t}", client)
    seen_once(server, t, "http/1.1")
    problems = leak_problem("the response", r.wire, secret) + frame_leaks(r.frames, secret)
    if r.status != 200 or r.body != OK_BODY:
        problems.append(f"no sensible answer: status={r.status} body={redact(r.body, secret)}")
    assert_no_problems(problems)


@pytest.mark.parametrize("upstream", ["h1", "h2"])
def test_header_names_do_not_carry_the_secret(rproxy: Proxy, upstreams: Upstreams, upstream: str) -> None:
    """``X-<secret>: 1``: the scrubber looks at header values only. (HTTP/2 lowercases
    the name, hence the "lower" spelling.)"""
    server, secret, t = upstreams.of(upstream), SECRETS["stripe"], tag()
    r = exchange(rproxy, server, f"{STRIPE[1]}header-name?t={t}", upstream)
    seen_once(server, t, "h2" if upstream == "h2" else "http/1.1")
    problems = leak_problem("the response", r.wire, secret) + frame_leaks(r.frames, secret)
    if r.status != 200 or r.body != OK_BODY:
        problems.append(f"no sensible answer: status={r.status} body={redact(r.body, secret)}")
    assert_no_problems(problems)


# --------------------------------------------------------------------------- 3. malformed heads

MALFORMED = [
    "status-line",
    "version",
    "header-line",
    "header-name",
    "content-length",
    "transfer-encoding",
    "truncated",
]


@pytest.mark.parametrize("kind", MALFORMED)
@pytest.mark.parametrize(
    ("connector", "client"),
    [("stripe", "h1"), ("weather", "h1"), ("stripe", "h2")],
    ids=["stripe-h1", "weather-h1", "stripe-h2"],
)
def test_error_page_does_not_quote_the_secret(
    rproxy: Proxy, upstreams: Upstreams, connector: str, client: str, kind: str
) -> None:
    """mitmproxy answers a head it cannot parse with its own 502 page, which quotes
    the bytes it choked on (``Bad HTTP response line: b'...'``, html-escaped).
    Refusing is right; quoting the secret is not. Accepted: a 5xx without the
    secret, or the connection or stream closed without an answer."""
    server, secret, t = upstreams.h1, SECRETS[connector], tag()
    host, prefix = ROUTES[connector]
    r = exchange(rproxy, server, f"{prefix}malformed.{kind}?t={t}", client, host=host)
    refused = r.closed if client == "h2" else r.status is None and r.closed
    answered = r.complete or refused
    seen_once(server, t, "http/1.1")
    problems = leak_problem("the proxy's answer", r.wire, secret) + frame_leaks(r.frames, secret)
    if not answered:
        problems.append(f"no answer within {TIMEOUT}s (status={r.status})")
    elif not refused and (r.status is None or r.status < 500):
        problems.append(f"a malformed upstream head was passed on as {r.status}")
    assert_no_problems(problems)


# --------------------------------------------------------------------------- 4. WebSocket


@dataclass
class WsResult:
    status: int | None
    messages: list[bytes] = field(default_factory=list)
    pings: list[bytes] = field(default_factory=list)
    close_reason: bytes | None = None
    closed: bool = False
    wire: bytes = b""


def ws_upgrade(proxy: Proxy, server: Hostile, path: str) -> tuple[H1, H1Reply]:
    """A WebSocket handshake for ``path`` on the stripe host of ``server``: the client and the answer."""
    host = STRIPE[0]
    c = H1(open_tunnel(proxy, host, server.port, "http/1.1"))
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        c.send(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{server.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        return c, c.read()
    except BaseException:
        c.close()
        raise


def websocket_session(proxy: Proxy, server: Hostile, path: str) -> WsResult:
    """Handshake through the proxy, then read frames (reassembling messages) until
    a close frame, the end of the connection or the timeout."""
    c, head = ws_upgrade(proxy, server, path)
    try:
        result = WsResult(head.status)
        if head.status != 101:
            result.wire = c.wire
            return result
        deadline = time.monotonic() + TIMEOUT
        partial = b""
        while True:
            hdr = c.take(2, deadline)
            if hdr is None:
                break
            fin, opcode, n = hdr[0] & 0x80, hdr[0] & 0x0F, hdr[1] & 0x7F
            if n == 126:
                n = int.from_bytes(c.take(2, deadline) or b"\0\0", "big")
            elif n == 127:
                n = int.from_bytes(c.take(8, deadline) or b"\0" * 8, "big")
            mask = c.take(4, deadline) if hdr[1] & 0x80 else None
            payload = c.take(n, deadline)
            if payload is None:
                break
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode in (0x0, 0x1, 0x2):
                partial += payload
                if fin:
                    result.messages.append(partial)
                    partial = b""
            elif opcode == 0x9:
                result.pings.append(payload)
            elif opcode == 0x8:
                result.close_reason = payload[2:]
                break
        result.closed = c.closed
        result.wire = c.wire
        return result
    finally:
        c.close()


@pytest.mark.parametrize("kind", ["text", "fragmented", "binary", "ping", "close-reason"])
def test_websocket_frames_do_not_carry_the_secret(rproxy: Proxy, upstreams: Upstreams, kind: str) -> None:
    """Frames after the handshake are relayed untouched; the ``websocket_message``
    hook sees each message reassembled from its fragments, but pings and the
    close reason are forwarded without any hook. The upstream ends every case
    with a text message "end" and a close. Accepted: the secret masked or the
    message dropped ("end" still arrives), or the WebSocket killed (closed)."""
    server, secret, t = upstreams.h1, SECRETS["stripe"], tag()
    result = websocket_session(rproxy, server, f"{STRIPE[1]}ws.{kind}?t={t}")
    seen_once(server, t, "http/1.1")
    problems = leak_problem("the WebSocket stream", result.wire, secret)
    for i, message in enumerate(result.messages):
        problems += leak_problem(f"reassembled message {i}", message, secret)
    for ping in result.pings:
        problems += leak_problem("a ping payload", ping, secret)
    problems += leak_problem("the close reason", result.close_reason or b"", secret)
    if result.status != 101:
        problems.append(f"the handshake was not accepted: {result.status}")
    elif b"end" not in result.messages and not result.closed:
        problems.append(f"neither the final message nor a close arrived within {TIMEOUT}s")
    assert_no_problems(problems)


# --------------------------------------------------------------------------- 5. encodings


@pytest.mark.parametrize("form", list(ENCODINGS))
@pytest.mark.parametrize("where", ["body", "header"])
def test_encoded_secret_is_masked(rproxy: Proxy, upstreams: Upstreams, where: str, form: str) -> None:
    """An upstream echoes the weather secret (it has ``/ + = &``) spelled as JSON,
    HTML, partly or lowercase percent-encoded, base64 or hex; the scrubber knows
    only the raw and uppercase percent-encoded spellings ("raw" and "pct" are guards)."""
    server, secret, t = upstreams.h1, SECRETS["weather"], tag()
    host, prefix = WEATHER
    r = session(rproxy.url, rproxy.ca).get(
        f"https://{host}:{server.port}{prefix}{where}.{form}?t={t}", timeout=TIMEOUT
    )
    seen_once(server, t, "http/1.1")
    headers = "\n".join(f"{k}: {v}" for k, v in r.headers.items())
    problems = leak_problem("the headers", headers, secret) + leak_problem("the body", r.content, secret)
    if r.status_code != 200:
        problems.append(f"no sensible answer: {r.status_code}")
    elif where == "body":
        echo = json.loads(r.content).get("echo")
        if not isinstance(echo, str) or len(echo) < len(secret) // 2:
            problems.append(f"the body lost its echo field: {redact(r.content, secret)}")
        else:
            problems += leak_problem("the JSON-decoded echo", echo, secret)
    elif not r.headers.get("x-echo"):
        problems.append("the X-Echo header vanished")
    assert_no_problems(problems)


# --------------------------------------------------------------------------- 6. compression


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "te-gzip"])
def test_compressed_body_does_not_carry_the_secret(rproxy: Proxy, upstreams: Upstreams, coding: str) -> None:
    """The proxy asks for ``Accept-Encoding: identity``; this upstream compresses
    anyway (``te-gzip``: as a transfer coding). The client decompresses what it
    got. Accepted: the body scrubbed (recompressed or not), or the response
    refused (5xx or closed); never the secret, compressed or not."""
    server, secret, t = upstreams.h1, SECRETS["stripe"], tag()
    host, prefix = STRIPE
    tls = open_tunnel(rproxy, host, server.port, "http/1.1")
    c = H1(tls)
    try:
        r = c.get(f"{host}:{server.port}", f"{prefix}compressed.{coding}?t={t}", "Accept-Encoding: identity")
    finally:
        c.close()
    seen = seen_once(server, t, "http/1.1")
    assert seen.header("accept-encoding") == ["identity"], seen.headers
    problems = leak_problem("the raw response", c.wire, secret)
    refused = (r.status is None and c.closed) or (r.status or 0) >= 500
    if not refused:
        codings = [
            x.strip().lower()
            for v in r.header("content-encoding") + r.header("transfer-encoding")
            for x in v.split(",")
            if x.strip().lower() != "chunked"
        ]
        plain = r.body
        try:
            for name in reversed(codings):
                plain = DECOMPRESSORS[name](plain)
            echo = json.loads(plain)["echo"]
        except Exception as e:
            problems.append(f"the client cannot decode the {codings} body ({type(e).__name__})")
        else:
            problems += leak_problem(f"the decoded body ({codings})", plain, secret)
            if r.status != 200 or not r.complete or not isinstance(echo, str):
                problems.append(f"no sensible answer: status={r.status} complete={r.complete}")
    assert_no_problems(problems)


# --------------------------------------------------------------------------- 7. Set-Cookie2


@pytest.mark.parametrize("client", ["httpx", "h2"])
def test_set_cookie2_is_stripped(rproxy: Proxy, upstreams: Upstreams, client: str) -> None:
    """Set-Cookie is stripped from responses; its obsolete twin Set-Cookie2 still
    plants a cookie in clients that honour it."""
    server, t = upstreams.h2, tag()
    host, prefix = STRIPE
    if client == "httpx":
        with httpx_client(rproxy.url, rproxy.ca) as hc:
            r = hc.get(f"https://{host}:{server.port}{prefix}set-cookie2?t={t}", timeout=TIMEOUT)
        status, body, names = r.status_code, r.content, [k.lower() for k in r.headers]
        protocol = "http/1.1"
    else:
        tls = open_tunnel(rproxy, host, server.port, "h2")
        c2 = H2(tls)
        try:
            r2 = c2.wait(c2.get(f"{host}:{server.port}", f"{prefix}set-cookie2?t={t}"))
        finally:
            c2.close()
        status, body, names, protocol = r2.status, r2.body, [k for k, _ in r2.headers], "h2"
    seen_once(server, t, protocol)
    problems = [f"{n} reached the client" for n in names if n in ("set-cookie", "set-cookie2")]
    if status != 200 or body != OK_BODY:
        problems.append(f"no sensible answer: status={status} body={body!r}")
    assert_no_problems(problems)


# --------------------------------------------------------------------------- 8. endless heads and chunk lines


def cut_off_within(server: Hostile, t: str, seconds: float = 10.0) -> int | None:
    """Bytes of an endless answer tagged ``t`` sent before the proxy closed; None: not closed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with server._lock:
            sent = next((n for path, n in server.cut_off.items() if t in path), None)
        if sent is not None:
            return sent
        time.sleep(0.1)
    return None


BOUND = 64 * 1024 * 1024  # what socket buffers may hold before the close is seen; the cap is 256 MiB


def upstream_cut_off(server: Hostile, t: str) -> list[str]:
    """A problem unless the proxy closed the upstream of the endless answer tagged ``t`` in time."""
    sent = cut_off_within(server, t)
    if sent is None or sent > BOUND:
        return [f"the upstream was not cut off (sent {sent} bytes before a close)"]
    return []


@pytest.mark.parametrize("client", ["h1", "h2"])
@pytest.mark.parametrize("kind", ["head", "header-value"])
def test_endless_response_head_gets_502(rproxy: Proxy, upstreams: Upstreams, kind: str, client: str) -> None:
    """An upstream whose response head never ends (endless header lines, or one endless
    value) was buffered whole. The proxy must give up after a bounded head: 502 to
    the client, without quoting the head (the secret is in it), and close the upstream."""
    server, secret, t = upstreams.h1, SECRETS["stripe"], tag()
    wait = 3 * TIMEOUT if client == "h2" else TIMEOUT
    r = exchange(rproxy, server, f"{STRIPE[1]}endless.{kind}?t={t}", client, wait=wait)
    seen_once(server, t, "http/1.1")
    problems = leak_problem("the proxy's answer", r.wire + r.frames, secret)
    if r.status != 502:
        problems.append(f"an endless response head was answered {r.status}, not 502")
    problems += upstream_cut_off(server, t)
    assert_no_problems(problems)


@pytest.mark.parametrize("client", ["h1", "h2"])
@pytest.mark.parametrize("kind", ["chunk-size", "chunk-extension", "trailers"])
def test_endless_chunk_line_is_cut_off(rproxy: Proxy, upstreams: Upstreams, kind: str, client: str) -> None:
    """A chunked body whose next chunk-size line, chunk extension or trailer block never
    ends was buffered whole. The head and the first chunk have gone to the client by
    then (the body is streamed), so no 502 is possible: the response must be cut off
    (connection closed, or the stream reset), never end as if complete, and the
    upstream must be closed after a bounded amount."""
    server, secret, t = upstreams.h1, SECRETS["stripe"], tag()
    r = exchange(rproxy, server, f"{STRIPE[1]}endless.{kind}?t={t}", client, wait=3 * TIMEOUT)
    seen_once(server, t, "http/1.1")
    problems = leak_problem("the proxy's answer", r.wire + r.frames, secret)
    if r.status != 200 or not r.body.startswith(b"start "):
        problems.append(f"the well-formed start did not arrive: status={r.status}")
    if not (r.closed and not r.complete):
        problems.append("the response was not cut off")
    problems += upstream_cut_off(server, t)
    assert_no_problems(problems)


# --------------------------------------------------------------------------- 9. unfinished WebSocket messages


def client_frame(opcode: int, payload: bytes, *, fin: bool) -> bytes:
    """A client-to-server frame, masked with a zero key (legal, and the payload stays as is)."""
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return bytes([(0x80 if fin else 0) | opcode]) + size + b"\0\0\0\0" + payload


def ws_open(proxy: Proxy, server: Hostile, path: str) -> H1:
    c, head = ws_upgrade(proxy, server, path)
    assert head.status == 101, head
    return c


def close_code_from(c: H1, wait: float) -> tuple[int | None, bytes]:
    """Read server frames until a close; its code (None: none came) and the data frames' payloads."""
    deadline = time.monotonic() + wait
    data = b""
    while (hdr := c.take(2, deadline)) is not None:
        n = hdr[1] & 0x7F
        if n >= 126:
            n = int.from_bytes(c.take(2 if n == 126 else 8, deadline) or b"", "big")
        payload = c.take(n, deadline)
        if payload is None:
            break
        if hdr[0] & 0x0F == 0x8:
            return (int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None), data
        data += payload
    return None, data


def test_endless_websocket_message_from_the_upstream_closes_1009(rproxy: Proxy, upstreams: Upstreams) -> None:
    """A WebSocket message is held until its last fragment; an upstream that never sends
    it grew the proxy without bound. Past the message limit both sides get close 1009,
    nothing of the message reaches the client, and the upstream is cut off."""
    server, secret, t = upstreams.h1, SECRETS["stripe"], tag()
    c = ws_open(rproxy, server, f"{STRIPE[1]}ws.endless?t={t}")
    try:
        code, data = close_code_from(c, 3 * TIMEOUT)
    finally:
        c.close()
    problems = leak_problem("the WebSocket stream", c.wire, secret)
    if code != 1009:
        problems.append(f"the client got close {code}, not 1009 (message too big)")
    if data:
        problems.append(f"{len(data)} bytes of the unfinished message reached the client")
    problems += upstream_cut_off(server, t)
    assert_no_problems(problems)


def test_endless_websocket_message_from_the_client_closes_1009(rproxy: Proxy, upstreams: Upstreams) -> None:
    """The same from the sandbox: a message that never ends is not buffered past the
    limit; the upstream gets close 1009 and none of the message, and so does the client."""
    server, t = upstreams.h1, tag()
    c = ws_open(rproxy, server, f"{STRIPE[1]}ws.listen?t={t}")
    sent, limit = 0, 256 * 1024 * 1024
    try:
        c.sock.settimeout(10)
        block = client_frame(0x0, b"x" * 60000, fin=False) * 16
        with contextlib.suppress(OSError):
            c.send(client_frame(0x1, b"start", fin=False))
            while sent < limit:
                c.send(block)
                sent += len(block)
        code, _ = close_code_from(c, TIMEOUT)
    finally:
        c.close()
    deadline = time.monotonic() + 5
    while not any(t in p for p in server.ws_closes) and time.monotonic() < deadline:
        time.sleep(0.1)
    upstream_code = next((v for p, v in server.ws_closes.items() if t in p), None)
    problems = []
    if sent >= limit // 2:
        problems.append(f"the proxy took {sent} bytes of one unfinished message")
    if upstream_code != 1009:
        problems.append(f"the upstream got close {upstream_code}, not 1009")
    if code not in (1009, None):  # the close may be lost when the proxy resets mid-send
        problems.append(f"the client got close {code}")
    assert_no_problems(problems)


# --------------------------------------------------------------------------- logs


def test_proxy_log_never_names_the_secret(rproxy: Proxy, upstreams: Upstreams) -> None:
    """Guard: the hostile answers above (run first, in file order; a few are
    repeated here) must not put the secret into the proxy's log either, e.g.
    through an error message or a logged ping payload."""
    host, prefix = STRIPE
    server = upstreams.h1
    websocket_session(rproxy, server, f"{prefix}ws.ping?t={tag()}")
    for case in ("malformed.status-line", "malformed.truncated", "endless.head", "endless.chunk-size"):
        tls = open_tunnel(rproxy, host, server.port, "http/1.1")
        with contextlib.closing(H1(tls)) as c:
            c.get(f"{host}:{server.port}", f"{prefix}{case}?t={tag()}")
    time.sleep(0.2)  # let the proxy flush its log
    log = rproxy.log_text()
    problems: list[str] = []
    for name, secret in SECRETS.items():
        problems += leak_problem(f"the proxy log ({name})", log, secret)
    assert_no_problems(problems)

"""A hostile upstream: a TLS server that sends the injected secret back by side doors.

The proxy scrubs an echoed secret from response header values and identity
bodies. This server echoes the credential it was sent (the ``Authorization``
bearer, or the ``appid`` query parameter) through every other channel a
response has: the reason phrase, header names, trailers, heads the proxy cannot
parse (and quotes in its own error page), WebSocket frames, encoded and
compressed bodies. Each path under ``.../leak/<case>`` names one crafted answer.

It listens on 127.0.0.1 only, speaks HTTP/2 when offered (``h2=True``) and
HTTP/1.1 otherwise, gives every socket a timeout and records what it was sent.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import html
import json
import socket
import ssl
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import brotli
import h2.config
import h2.connection
import h2.events
import h2.exceptions

from tests.harness import HOSTS, make_pki

try:  # Python 3.14 has it built in; before, mitmproxy depends on the backport
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the interpreter
    from backports import zstd

SOCKET_TIMEOUT = 10.0
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# How a careless upstream may spell a secret it echoes. The proxy masks only
# "raw" and "pct"; tests look for every one of these in what the client got.
ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "lower": str.lower,  # e.g. an HTTP/2 header name
    "pct": lambda s: quote(s, safe=""),
    "pct-lower": lambda s: "".join(
        c if c.isalnum() or c in "-._~" else "%" + format(ord(c), "02x") for c in s
    ),
    "pct-partial": lambda s: quote(s, safe="+=&"),  # only "/" encoded
    "json-slash": lambda s: s.replace("/", "\\/"),  # PHP's json_encode
    "json-amp": lambda s: s.replace("&", "\\u0026").replace("+", "\\u002b"),  # Go's encoding/json
    "json-unicode": lambda s: "".join(f"\\u{ord(c):04x}" for c in s),
    "html": html.escape,  # what an error page does
    "base64": lambda s: base64.b64encode(s.encode()).decode().rstrip("="),
    "base64url": lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("="),
    "hex": lambda s: s.encode().hex(),
    "hex-upper": lambda s: s.encode().hex().upper(),
}

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,  # zlib-wrapped, as RFC 9110 says
    "br": brotli.compress,
    "zstd": zstd.compress,
}

DECOMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "x-gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "br": brotli.decompress,
    "zstd": zstd.decompress,
    "identity": bytes,
}


def forms(secret: str) -> dict[str, str]:
    """Every spelling of ``secret`` in ENCODINGS, by name (duplicates merged)."""
    out: dict[str, str] = {}
    for name, encode in ENCODINGS.items():
        value = encode(secret)
        if value not in out.values():
            out[name] = value
    return out


@dataclass
class Canned:
    """A well-formed answer, framed for HTTP/1.1 (chunked if it has trailers) or HTTP/2."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    reason: str = "OK"
    close: bool = False
    chunk: int = 0  # HTTP/1.1: send the body chunked, in chunks of this size

    def h1(self) -> bytes:
        head = [f"HTTP/1.1 {self.status} {self.reason}", *(f"{k}: {v}" for k, v in self.headers)]
        if self.trailers or self.chunk:
            head.append("Transfer-Encoding: chunked")
            if self.trailers:
                head.append("Trailer: " + ", ".join(k for k, _ in self.trailers))
            size = self.chunk or len(self.body)
            parts = [self.body[i : i + size] for i in range(0, len(self.body), size)]
            tail = "".join(f"{k}: {v}\r\n" for k, v in self.trailers)
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n%s\r\n" % tail.encode()
        else:
            head.append(f"Content-Length: {len(self.body)}")
            body = self.body
        if self.close:
            head.append("Connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Raw:
    """Bytes sent exactly as given, then the connection is closed."""

    data: bytes


@dataclass
class WebSocket:
    """Accept a WebSocket handshake, send these frames, then a final "end" and close.

    ``endless``: after the frames, continuation frames until the proxy closes (``cut_off``);
    ``listen``: send nothing, read until the proxy's close frame (its code in ``ws_closes``)."""

    frames: list[bytes]
    close_reason: str = ""
    endless: bool = False
    listen: bool = False


@dataclass
class Endless:
    """``prefix``, then ``unit`` over and over: a head, chunk line or trailer block that never
    ends. Stops after ENDLESS_CAP bytes and then only waits, so a proxy that buffers it all
    is seen hanging; ``Hostile.cut_off`` records a proxy that closed the connection first."""

    prefix: bytes
    unit: bytes


@dataclass
class Silent:
    """Accept the request and never answer; ``Hostile.cut_off`` records the proxy's close (0)."""


ENDLESS_CAP = 256 * 1024 * 1024
Answer = Canned | Raw | WebSocket | Endless | Silent


@dataclass
class Seen:
    protocol: str
    path: str
    headers: list[tuple[str, str]]
    secret: str | None

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def credential(path: str, headers: list[tuple[str, str]]) -> str | None:
    """The secret the proxy injected: the bearer token, or the ``appid`` parameter."""
    for name, value in headers:
        if name.lower() == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    for item in urlsplit(path).query.split("&"):
        key, _, value = item.partition("=")
        if key == "appid":
            return unquote(value)
    return None


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One unmasked (server to client) WebSocket frame."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes([first, n]) + payload
    return bytes([first, 126]) + n.to_bytes(2, "big") + payload


def read_close(sock: ssl.SSLSocket, seconds: float = 30.0) -> int | None:
    """Read (masked, client-to-server) frames until a close frame; its code, or None on EOF."""
    sock.settimeout(seconds)
    buf = b""

    def take(n: int) -> bytes | None:
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buf += chunk
        out, buf = buf[:n], buf[n:]
        return out

    with contextlib.suppress(OSError):
        while (head := take(2)) is not None:
            n = head[1] & 0x7F
            if n >= 126:
                ext = take(2 if n == 126 else 8)
                n = int.from_bytes(ext or b"", "big")
            mask = take(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = take(n)
            if mask is None or payload is None:
                return None
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload[:2])) + payload[2:]
            if head[0] & 0x0F == 0x8:
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
    return None


def echo_json(text: str) -> bytes:
    """``{"echo": text}`` with ``text`` inserted verbatim (it is already JSON-safe)."""
    return b'{"echo": "' + text.encode() + b'"}'


def answer(case: str, secret: str) -> Answer:
    """The crafted answer for ``.../leak/<case>``; ``secret`` is what the proxy injected."""
    json_type = ("Content-Type", "application/json")
    match case.split(".", 1):
        case ["ok"]:
            return Canned(headers=[json_type], body=b'{"ok": true}')
        case ["reason"]:
            return Canned(reason=secret, headers=[json_type], body=b'{"ok": true}')
        case ["header-name"]:
            return Canned(headers=[(f"X-{secret}", "1"), json_type], body=b'{"ok": true}')
        case ["trailers"]:
            return Canned(
                headers=[json_type],
                body=b'{"ok": true}',
                trailers=[("X-Leak", secret), ("Set-Cookie", "trailer=planted; Path=/")],
            )
        case ["chunked", size]:
            body = json.dumps({"echo": secret, "after": "the rest of the body"}).encode()
            return Canned(headers=[json_type], body=body, chunk=int(size))
        case ["set-cookie2"]:
            return Canned(
                headers=[("Set-Cookie2", 'planted=1; Version="1"'), json_type], body=b'{"ok": true}'
            )
        case ["body", form]:
            return Canned(headers=[json_type], body=echo_json(ENCODINGS[form](secret)))
        case ["header", form]:
            return Canned(headers=[("X-Echo", ENCODINGS[form](secret)), json_type], body=b'{"ok": true}')
        case ["compressed", coding]:
            # Big and repetitive enough that no compressor stores the secret as a literal run.
            filler = [{"id": i, "note": "compressible filler"} for i in range(50)]
            body = json.dumps({"echo": secret, "items": filler}).encode()
            if coding == "te-gzip":  # a transfer coding, framed by closing the connection
                return Raw(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip\r\n"
                    b"Connection: close\r\n\r\n" + gzip.compress(body)
                )
            return Canned(
                headers=[json_type, ("Content-Encoding", coding), ("Vary", "Accept-Encoding")],
                body=COMPRESSORS[coding](body),
            )
        case ["malformed", kind]:
            return Raw(malformed(kind, secret))
        case ["endless", kind]:
            return endless(kind, secret)
        case ["silent"]:
            return Silent()
        case ["early"]:
            return Canned(headers=[json_type], body=b'{"early": true}')
        case ["ws", kind]:
            return websocket(kind, secret)
    return Canned(status=404, reason="Not Found", body=b"no such case")


def malformed(kind: str, secret: str) -> bytes:
    """A response head mitmproxy refuses, quoting the offending bytes in its message."""
    s = secret.encode()
    return {
        "status-line": b"HTTP/1.1 2OO " + s + b"\r\nContent-Length: 0\r\n\r\n",
        "version": b"HTTP/" + s + b" 200 OK\r\nContent-Length: 0\r\n\r\n",
        "header-line": b"HTTP/1.1 200 OK\r\nX-Token " + s + b"\r\nContent-Length: 0\r\n\r\n",
        "header-name": b"HTTP/1.1 200 OK\r\n" + s + b" x: 1\r\nContent-Length: 0\r\n\r\n",
        "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: " + s + b"\r\n\r\n",
        "transfer-encoding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + s + b"\r\n\r\n",
        "truncated": b"HTTP/1.1 200 OK\r\nX-Token: " + s,  # the head never ends
    }[kind]


def endless(kind: str, secret: str) -> Endless:
    """A response whose head, chunk-size line, chunk extension or trailers never end;
    the secret is in what comes first, so a proxy quoting the start would show it."""
    s = secret.encode()
    chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    first = b"start " + s + b" " + b"." * 4096  # longer than the scrubber holds back
    body = b"%x\r\n%s\r\n" % (len(first), first)
    return {
        "head": Endless(b"HTTP/1.1 200 OK\r\nX-Token: " + s + b"\r\n", b"X-Pad: " + b"a" * 1017 + b"\r\n"),
        "header-value": Endless(b"HTTP/1.1 200 OK\r\nX-Token: " + s, b"a" * 1024),
        "chunk-size": Endless(chunked + body + b"1", b"0" * 1024),
        "chunk-extension": Endless(chunked + body + b"5;ext=" + s, b"a" * 1024),
        "trailers": Endless(
            chunked + body + b"0\r\nX-Token: " + s + b"\r\n", b"X-Pad: " + b"a" * 1017 + b"\r\n"
        ),
    }[kind]


def websocket(kind: str, secret: str) -> WebSocket:
    s = secret.encode()
    half = len(s) // 2
    frames = {
        "text": [ws_frame(0x1, b"token=" + s)],
        "fragmented": [ws_frame(0x1, b"token=" + s[:half], fin=False), ws_frame(0x0, s[half:])],
        "binary": [ws_frame(0x2, b"\x00" + s)],
        "ping": [ws_frame(0x9, s)],
        "close-reason": [],
        "endless": [ws_frame(0x1, b"start " + s, fin=False)],  # the message never ends
        "listen": [],
    }[kind]
    return WebSocket(
        frames,
        close_reason=secret if kind == "close-reason" else "",
        endless=kind == "endless",
        listen=kind == "listen",
    )


class Hostile:
    """A threaded TLS server on 127.0.0.1: one thread per connection."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.seen: list[Seen] = []
        self.cut_off: dict[str, int] = {}  # path of an Endless answer -> bytes sent before the close
        self.ws_closes: dict[str, int | None] = {}  # path of a listening WebSocket -> close code it got
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def start(self) -> Hostile:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.close()

    def find(self, fragment: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if fragment in s.path]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(SOCKET_TIMEOUT)
            with self._lock:
                self._conns.add(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn: socket.socket = sock
        try:
            conn = tls = self.ctx.wrap_socket(sock, server_side=True)  # detaches ``sock``
            with self._lock:
                self._conns.add(tls)
            if tls.selected_alpn_protocol() == "h2":
                self._serve_h2(tls)
            else:
                self._serve_h1(tls)
        except (OSError, ValueError, h2.exceptions.H2Error):
            pass  # the peer went away or spoke nonsense: nothing to answer
        finally:
            with contextlib.suppress(OSError):
                conn.close()  # a close is also how Raw answers end
            with self._lock:
                self._conns.discard(sock)
                self._conns.discard(conn)

    def _record(self, protocol: str, path: str, headers: list[tuple[str, str]]) -> str | None:
        secret = credential(path, headers)
        with self._lock:
            self.seen.append(Seen(protocol, path, headers, secret))
        return secret

    def _answer(self, protocol: str, path: str, headers: list[tuple[str, str]]) -> Answer:
        secret = self._record(protocol, path, headers)
        route = urlsplit(path).path
        if secret is None or "/leak/" not in route:
            return Canned(status=400, reason="Bad Request", body=b"no credential injected")
        return answer(route.rsplit("/leak/", 1)[1], secret)

    def _serve_h1(self, tls: ssl.SSLSocket) -> None:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = tls.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
            length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
            if "/leak/early" in path:  # answer at once, then read and drop whatever comes
                early = self._answer("http/1.1", path, headers)
                assert isinstance(early, Canned)
                tls.sendall(early.h1())
                while tls.recv(65536):
                    pass
                return
            while len(buf) < length:
                chunk = tls.recv(65536)
                if not chunk:
                    return
                buf += chunk
            buf = buf[length:]
            reply = self._answer("http/1.1", path, headers)
            if isinstance(reply, Canned):
                tls.sendall(reply.h1())
                if reply.close:
                    return
            elif isinstance(reply, Raw):
                tls.sendall(reply.data)
                return
            elif isinstance(reply, Endless):
                self._endless(tls, path, reply)
                return
            elif isinstance(reply, Silent):
                with contextlib.suppress(OSError):
                    tls.settimeout(60)
                    while tls.recv(4096):
                        pass
                    with self._lock:
                        self.cut_off[path] = 0
                return
            else:
                self._websocket(tls, path, headers, reply)
                return

    def _endless(self, tls: ssl.SSLSocket, path: str, answer: Endless) -> None:
        sent = 0
        block = answer.unit * max(1, 65536 // len(answer.unit))
        try:
            tls.sendall(answer.prefix)
            while sent < ENDLESS_CAP and not self._stop.is_set():
                tls.sendall(block)
                sent += len(block)
        except OSError:  # the proxy closed the connection
            with self._lock:
                self.cut_off[path] = sent
            return
        with contextlib.suppress(OSError):  # the cap: wait, silently, until the socket times out
            while tls.recv(4096):
                pass

    def _websocket(
        self, tls: ssl.SSLSocket, path: str, headers: list[tuple[str, str]], ws: WebSocket
    ) -> None:
        key = next(v for k, v in headers if k.lower() == "sec-websocket-key").encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        tls.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        if ws.endless:
            self._endless(tls, path, Endless(b"".join(ws.frames), ws_frame(0x0, b"x" * 60000, fin=False)))
            return
        if ws.listen:
            code = read_close(tls)
            with self._lock:
                self.ws_closes[path] = code
            return
        close = (1000).to_bytes(2, "big") + ws.close_reason.encode()
        tls.sendall(b"".join(ws.frames) + ws_frame(0x1, b"end") + ws_frame(0x8, close))
        with contextlib.suppress(OSError):  # wait for the peer's close, briefly
            tls.settimeout(2)
            tls.recv(4096)

    def _serve_h2(self, tls: ssl.SSLSocket) -> None:
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding="utf-8",
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        requests: dict[int, list[tuple[str, str]]] = {}
        while True:
            data = tls.recv(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    requests[event.stream_id] = [(str(k), str(v)) for k, v in event.headers or []]
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if isinstance(event, h2.events.StreamEnded):  # also follows a RequestReceived
                    self._respond_h2(conn, event.stream_id, requests.pop(event.stream_id, []))
                if isinstance(event, h2.events.ConnectionTerminated):
                    return
            if out := conn.data_to_send():
                tls.sendall(out)

    def _respond_h2(self, conn: h2.connection.H2Connection, sid: int, headers: list[tuple[str, str]]) -> None:
        path = next((v for k, v in headers if k == ":path"), "/")
        reply = self._answer("h2", path, [(k, v) for k, v in headers if not k.startswith(":")])
        if not isinstance(reply, Canned):
            reply = Canned(status=501, body=b"this case needs HTTP/1.1")
        fields = [(":status", str(reply.status)), *((k.lower(), v) for k, v in reply.headers)]
        conn.send_headers(sid, [*fields, ("content-length", str(len(reply.body)))])
        conn.send_data(sid, reply.body, end_stream=not reply.trailers)
        if reply.trailers:
            conn.send_headers(sid, [(k.lower(), v) for k, v in reply.trailers], end_stream=True)


def make_contexts(directory: Path) -> tuple[Path, ssl.SSLContext, ssl.SSLContext]:
    """A trustme CA (its PEM path) and two server contexts with its certificate for
    the harness HOSTS: one offering h2 and HTTP/1.1, one HTTP/1.1 only.

    mitmproxy offers the upstream the ALPN list the client offered, so the
    protocol the client speaks usually reaches the upstream; the HTTP/1.1-only
    server makes an HTTP/2 client's request arrive as HTTP/1.1. The session's
    shared upstream context is not reused: setting ALPN on it would change the
    other tests' upstream.
    """
    ca, ca_path, _ = make_pki(directory)
    cert = ca.issue_cert(*HOSTS, "127.0.0.1")
    out = []
    for alpn in (["h2", "http/1.1"], ["http/1.1"]):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        ctx.set_alpn_protocols(alpn)
        out.append(ctx)
    return ca_path, out[0], out[1]

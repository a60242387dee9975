"""Test harness: a recording TLS upstream, the real proxy as a subprocess, clients.

Only loopback addresses are used. Every process started here is stopped by pid.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import signal
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trustme

from proxy.errors import ConfigError

BIN = Path(sys.executable).parent
EGRESS = str(BIN / "egress")
HOSTS = (
    "api.stripe.test",
    "api.weather.test",
    "api.late.test",
    "wild.test",
    "a.wild.test",
    "b.c.wild.test",
    "evil.test",
    "auth.oauth.test",
    "api.oauth.test",
    "s3.sig.test",
)
_STRIP_ENV = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "EGRESS_MASTER_KEY",
    "EGRESS_MASTER_KEY_FILE",
    "EGRESS_DATABASE_URL",
)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for a subprocess: no inherited proxy or CA variables."""
    env = {k: v for k, v in os.environ.items() if k not in _STRIP_ENV}
    env["EGRESS_HOME"] = str(home)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@dataclass
class Record:
    method: str
    path: str
    headers: list[tuple[str, str]]
    sni: str | None
    body_len: int
    body_sha256: str

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Upstream

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self, keep: list[bytes] | None = None) -> tuple[int, str]:
        """Read the request body: its length and SHA-256 (and its bytes into ``keep``)."""
        digest = hashlib.sha256()
        total = 0
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    digest.update(chunk)
                    if keep is not None:
                        keep.append(chunk)
                    remaining -= len(chunk)
                total += size
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("content-length") or 0)
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                if keep is not None:
                    keep.append(chunk)
                total += len(chunk)
                remaining -= len(chunk)
        return total, digest.hexdigest()

    def _handle(self) -> None:
        url = urlsplit(self.path)
        upload_pack = bool(self.server.git_repo) and url.path.endswith("/git-upload-pack")
        body: list[bytes] | None = [] if upload_pack else None
        length, sha = self._body(body)
        rec = Record(
            self.command,
            self.path,
            list(self.headers.items()),
            self.server.sni_of(self.connection),
            length,
            sha,
        )
        self.server.record(rec)
        if self.headers.get("upgrade", "").lower() == "websocket":
            self._websocket(sink=url.path.endswith("/ws-sink"))
            return
        if url.path.endswith("/info/refs") and self.server.git_repo:
            self._git_advertisement()
            return
        if body is not None:
            self._git_upload_pack(b"".join(body))
            return
        if "/simple/" in url.path or "/npm/" in url.path:
            self._registry(url.path)
            return
        if url.path.startswith("/s3-bucket/"):  # enough of S3 for an SDK to call it done
            self.send_response(200)
            self.send_header("ETag", f'"{sha[:32]}"')
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if url.path == "/oauth/token":
            self._token()
            return
        if url.path.startswith("/oauth-api/") and self.headers.get("authorization") in self.server.rejected:
            self._reply(401, b'{"error":"invalid_token"}')
            return
        if url.path.endswith("/download"):
            size = int(parse_qs(url.query)["size"][0])
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(size))
            self.end_headers()
            block = pattern_bytes(1 << 20)
            sent = 0
            while sent < size:
                part = block[: min(len(block), size - sent)]
                self.wfile.write(part)
                sent += len(part)
            return
        status = 200
        extra: list[tuple[str, str]] = []
        if url.path.endswith("/set-cookie"):
            extra = [("Set-Cookie", "session=upstream; Path=/"), ("Set-Cookie", "other=1")]
        if url.path.endswith("/status"):
            status = int(parse_qs(url.query)["code"][0])
        if url.path.endswith("/echo"):  # a careless upstream that reflects credentials
            extra = [("X-Echo-Auth", self.headers.get("authorization", "")), ("X-Echo-Path", self.path)]
            body = json.dumps({"headers": dict(self.headers.items()), "path": self.path}).encode()
            chunk = int(parse_qs(url.query).get("chunk", ["0"])[0])
            self.send_response(status)
            for k, v in extra:
                self.send_header(k, v)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            for i in range(0, len(body), chunk or len(body)):  # small writes split the secret
                self.wfile.write(body[i : i + (chunk or len(body))])
                self.wfile.flush()
            return
        body = json.dumps({"method": self.command, "path": self.path, "len": length, "sha256": sha}).encode()
        self.send_response(status)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _registry(self, path: str) -> None:
        """A package index with one package, ``egress-probe`` 1.0: PEP 503 for pip
        (``.../simple/egress-probe/`` and its wheel) and npm's (``.../npm/egress-probe``,
        its packument, and its tarball)."""
        if path.endswith(".whl") or path.endswith(".tgz"):
            data = probe_wheel() if path.endswith(".whl") else probe_tarball()
            self._reply(200, data, "application/octet-stream")
        elif "/simple/" in path:
            name = f"egress_probe-1.0-py3-none-any.whl#sha256={hashlib.sha256(probe_wheel()).hexdigest()}"
            page = f'<!DOCTYPE html><html><body><a href="{name}">{name.split("#")[0]}</a></body></html>'
            self._reply(200, page.encode(), "text/html")
        else:
            tarball = f"https://{self.headers['host']}{path}/-/egress-probe-1.0.0.tgz"
            data = probe_tarball()
            dist = {
                "tarball": tarball,
                "shasum": hashlib.sha1(data).hexdigest(),
                "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
            }
            version = {"name": "egress-probe", "version": "1.0.0", "dist": dist}
            doc = {"name": "egress-probe", "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": version}}
            self._reply(200, json.dumps(doc).encode())

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _token(self) -> None:
        """An OAuth2 token endpoint: counts calls, fails or slows down when told to."""
        server = self.server
        with server._lock:
            server.token_calls += 1
            n = server.token_calls
        if server.token_delay:
            time.sleep(server.token_delay)
        if server.token_status != 200:
            self._reply(server.token_status, b'{"error":"server_error"}')
            return
        answer = {"access_token": f"at-{n}-{os.urandom(6).hex()}", "token_type": "Bearer"}
        answer["expires_in"] = server.token_lifetime  # type: ignore[assignment]
        self._reply(200, json.dumps(answer).encode())

    def _websocket(self, sink: bool = False) -> None:
        """Accept the handshake, send one text frame ("hello"), close; or, for a sink, record
        every message the client sends (``ws_messages``) until it closes or goes away."""
        key = self.headers["sec-websocket-key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.write(b"\x81\x05hello" + (b"" if sink else b"\x88\x00"))
        self.wfile.flush()
        self.close_connection = True
        while sink:
            frame = read_ws_frame(self.rfile)
            if frame is None or frame[0] == 8:
                break
            self.server.record_ws(frame[1])

    def _git_advertisement(self) -> None:
        """Smart-HTTP ref advertisement (protocol v0), enough for `git ls-remote`."""
        refs = subprocess.run(
            ["git", "upload-pack", "--stateless-rpc", "--advertise-refs", str(self.server.git_repo)],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        first = b"# service=git-upload-pack\n"
        body = b"%04x" % (len(first) + 4) + first + b"0000" + refs
        self.send_response(200)
        self.send_header("content-type", "application/x-git-upload-pack-advertisement")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _git_upload_pack(self, request: bytes) -> None:
        """Smart-HTTP fetch (``POST .../git-upload-pack``): with the advertisement, enough for `git clone`."""
        if self.headers.get("content-encoding", "").lower() == "gzip":
            request = gzip.decompress(request)
        pack = subprocess.run(
            ["git", "upload-pack", "--stateless-rpc", str(self.server.git_repo)],
            input=request,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        self.send_response(200)
        self.send_header("content-type", "application/x-git-upload-pack-result")
        self.send_header("content-length", str(len(pack)))
        self.end_headers()
        self.wfile.write(pack)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


def read_ws_frame(stream: Any) -> tuple[int, bytes] | None:
    """(opcode, payload) of one WebSocket frame, unmasked; None at EOF."""
    head = stream.read(2)
    if len(head) < 2:
        return None
    size = head[1] & 0x7F
    if size in (126, 127):
        ext = stream.read(2 if size == 126 else 8)
        size = int.from_bytes(ext, "big")
    mask = stream.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    payload = stream.read(size)
    return head[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    size = len(payload)
    length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + size.to_bytes(2, "big")
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@functools.cache
def probe_wheel() -> bytes:
    """``egress_probe-1.0-py3-none-any.whl``: the smallest wheel pip accepts."""
    files = {
        "egress_probe/__init__.py": b"VERSION = '1.0'\n",
        "egress_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: egress-probe\nVersion: 1.0\n",
        "egress_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
        f"{len(data)}\n"
        for name, data in files.items()
    )
    files["egress_probe-1.0.dist-info/RECORD"] = (record + "egress_probe-1.0.dist-info/RECORD,,\n").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as whl:
        for name, data in files.items():
            whl.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


@functools.cache
def probe_tarball() -> bytes:
    """``egress-probe-1.0.0.tgz``: an npm package tarball (``package/package.json``)."""
    manifest = json.dumps({"name": "egress-probe", "version": "1.0.0"}).encode()
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo("package/package.json")
        info.size, info.mode = len(manifest), 0o644
        tar.addfile(info, io.BytesIO(manifest))
    return out.getvalue()


def pattern_bytes(n: int) -> bytes:
    seed = hashlib.sha256(b"egress").digest()
    return (seed * (n // len(seed) + 1))[:n]


class Upstream(ThreadingHTTPServer):
    """A TLS HTTP/1.1 server on 127.0.0.1 that records every request it gets."""

    daemon_threads = True

    def __init__(self, ctx: ssl.SSLContext, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.ctx = ctx
        self._sni: dict[int, str | None] = {}
        ctx.sni_callback = self._on_sni
        self.records: list[Record] = []
        self.connections = 0
        self.git_repo: Path | None = None
        self._lock = threading.Lock()
        # the OAuth2 token endpoint (/oauth/token) and the API that refuses tokens (/oauth-api/)
        self.token_calls = 0
        self.token_status = 200
        self.token_delay = 0.0
        self.token_lifetime = 3600
        self.rejected: set[str] = set()
        self.ws_messages: list[bytes] = []  # what clients sent to a /ws-sink WebSocket

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def _on_sni(self, sslobj: Any, name: str | None, ctx: ssl.SSLContext) -> None:
        self._sni[id(sslobj)] = name

    def sni_of(self, sock: Any) -> str | None:
        return self._sni.get(id(sock))

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self.connections += 1
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        self.RequestHandlerClass(tls, client_address, self)

    def record(self, rec: Record) -> None:
        with self._lock:
            self.records.append(rec)

    def record_ws(self, payload: bytes) -> None:
        with self._lock:
            self.ws_messages.append(payload)

    def find(self, fragment: str) -> list[Record]:
        with self._lock:
            return [r for r in self.records if fragment in r.path]

    def start(self) -> Upstream:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


def oauth_connector_yaml(port: int, client_id: str, extra: str = "") -> str:
    """The ``oauth`` connector against the Upstream's token endpoint, as a YAML list item.

    Its client secret comes from $OAUTH_SECRET; ``extra`` adds keys under ``oauth2:``.
    """
    return f"""  - name: oauth
    patterns: ["https://api.oauth.test:{port}/oauth-api/*"]
    secret:
      fields:
        client_secret: {{env: OAUTH_SECRET}}
    inject:
      oauth2:
        token_url: https://auth.oauth.test:{port}/oauth/token
        grant: client_credentials
        client_id: {client_id}
        client_secret: "{{{{client_secret}}}}"
{extra}"""


def make_pki(directory: Path) -> tuple[trustme.CA, Path, ssl.SSLContext]:
    ca = trustme.CA()
    ca_path = directory / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert = ca.issue_cert(*HOSTS, "*.wild.test", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ca, ca_path, ctx


@dataclass
class Proxy:
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path
    addr: str
    outputs: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def host(self) -> str:
        return self.addr.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    @property
    def ca(self) -> str:
        return str(self.home / "ca" / "mitmproxy-ca-cert.pem")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def egress(home: Path, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``egress`` command with a clean environment."""
    return subprocess.run(
        [EGRESS, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=clean_env(home, **env),
        timeout=60,
    )


def config_error(fn: Any, *args: Any, **kwargs: Any) -> str:
    """The message of the ConfigError ``fn(*args, **kwargs)`` raises (it must raise one)."""
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    return str(e.value)


def add_connector(home: Path, name: str, secret: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """``egress connector add NAME FLAGS... --secret-stdin``, which must succeed."""
    res = egress(home, "connector", "add", name, *flags, "--secret-stdin", stdin=secret)
    assert res.returncode == 0, res.stderr
    return res


def blocked_rows(home: Path, want: int) -> list[dict[str, Any]]:
    """The blocked log, once the proxy has flushed ``want`` rows (about once a second)."""
    deadline = time.monotonic() + 10
    while True:
        res = egress(home, "logs", "--blocked", "--json")
        assert res.returncode == 0, res.stderr
        rows = [json.loads(line) for line in res.stdout.splitlines()]
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def start_proxy(
    home: Path,
    *args: str,
    log: Path | None = None,
    prefix: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Proxy:
    """Start ``egress run`` on a free loopback port and wait until it listens.

    ``prefix`` runs it under another command (``ip netns exec NS``); ``env``
    adds variables (``EGRESS_DATABASE_URL``...) to the clean environment; ``cwd``
    is where it starts."""
    home.mkdir(parents=True, exist_ok=True)
    log = log or home / "proxy.log"
    addr_file = home / "run" / "proxy.addr"
    addr_file.unlink(missing_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *prefix,
                EGRESS,
                "run",
                "--listen",
                "127.0.0.1:0",
                *(() if "--workers" in args else ("--workers", "1")),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(home, **(env or {})),
            cwd=cwd,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if addr_file.exists() and addr_file.read_text().strip():
            return Proxy(home, proc, log, addr_file.read_text().strip())
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"proxy did not start:\n{log.read_text()}")


def handshake_in_memory(client: Any, server: Any) -> None:
    """Complete a TLS handshake between two pyOpenSSL connections over their memory BIOs."""
    from OpenSSL import SSL

    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                a.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                b.bio_write(a.bio_read(65536))

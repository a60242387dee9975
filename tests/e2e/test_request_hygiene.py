"""Request hygiene: what the proxy must refuse or strip before it injects a secret.

Regression tests for weaknesses found in review. Each sends through a real
tunnel and checks the oracle, a raw TLS upstream that records every request
head byte for byte: the recording upstream in the harness parses with
``http.server``, which answers a malformed request line with 400 before it
records anything, so it cannot show what a lenient upstream would have read.

- A request method that is not an RFC 9110 token (an HTTP/2 ``:method`` with a
  space, an HTTP/1 method with separators) becomes the HTTP/1.1 request line
  upstream: ``GET /v2/secret /v1/ok HTTP/1.1``, with the secret injected.
- Header values with obs-fold, bare CR, NUL or other controls are forwarded
  verbatim, where a lenient upstream reads them as further header lines.
- ``Cookie2`` and underscore spellings (``X_Api_Key``, ``Proxy_Authorization``)
  pass beside the injected header; CGI/WSGI, PHP and some nginx setups read
  ``_`` as ``-``, so the sandbox's value can shadow or sit next to the secret.

Fixed behaviour: 400 with ``x-egress-blocked: bad-request`` (HTTP/2: that
answer, or a stream/connection error) and nothing upstream; stripped names gone.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import proxy_args
from tests.e2e.test_adversarial import Conn, H2Client, H2Result, Reply, tag, tunnel
from tests.harness import Proxy, egress, make_pki, start_proxy

pytestmark = pytest.mark.e2e

STRIPE_SECRET = "sk_hygiene_0b7e41d2"
WILD_SECRET = "wild-hygiene-5c93"
STRIPE = "api.stripe.test"
WILD = "a.wild.test"
# RFC 9110 §5.6.2: token = 1*tchar
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: field-value = *field-content; no CTL but HTAB, no obs-fold
FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


class RawUpstream:
    """TLS on 127.0.0.1; records each request head exactly as received, answers 200."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.heads: list[bytes] = []
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(self) -> RawUpstream:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def find(self, fragment: str) -> list[bytes]:
        with self._lock:
            return [h for h in self.heads if fragment.encode() in h]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(10)
        try:
            with self.ctx.wrap_socket(client, server_side=True) as tls:
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        chunk = tls.recv(65536)
                        if not chunk or len(buf) > 1 << 20:
                            return
                        buf += chunk
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    with self._lock:
                        self.heads.append(head)
                    m = re.search(rb"\r\ncontent-length: *([0-9]+)", head, re.IGNORECASE)
                    need = int(m[1]) if m else 0
                    while len(buf) < need and (chunk := tls.recv(65536)):
                        buf += chunk
                    buf = buf[need:]
                    tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
        except (OSError, ssl.SSLError):
            return


def header_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    """(name, value) of each header line; a folded line is its own entry with name b''."""
    out: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n")[1:]:
        if line[:1] in (b" ", b"\t"):
            out.append((b"", line))
        else:
            name, _, value = line.partition(b":")
            out.append((name, value.strip(b" \t")))
    return out


def normalised(name: bytes) -> bytes:
    """The name as CGI/WSGI-style upstreams read it: case-folded, ``_`` as ``-``."""
    return name.lower().replace(b"_", b"-")


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RawUpstream, Path]]:
    _, ca_path, ctx = make_pki(tmp_path_factory.mktemp("raw-pki"))
    server = RawUpstream(ctx).start()
    yield server, ca_path
    server.close()


@pytest.fixture(scope="module")
def hproxy(tmp_path_factory: pytest.TempPathFactory, raw: tuple[RawUpstream, Path]) -> Iterator[Proxy]:
    """A proxy whose stripe and wild connectors point at the raw upstream."""
    server, ca_path = raw
    home = tmp_path_factory.mktemp("hygiene-home")
    port = server.port
    res = egress(home, "init")
    assert res.returncode == 0, res.stderr
    for args, secret in (
        (
            [
                "--pattern",
                f"https://{STRIPE}:{port}/v1/*",
                "--header",
                "Authorization",
                "--template",
                "Bearer {{secret}}",
            ],
            STRIPE_SECRET,
        ),
        (
            [
                "--pattern",
                f"https://*.wild.test:{port}/*",
                "--header",
                "X-Api-Key",
                "--template",
                "{{secret}}",
            ],
            WILD_SECRET,
        ),
    ):
        name = "stripe" if secret == STRIPE_SECRET else "wild"
        res = egress(home, "connector", "add", name, *args, "--secret-stdin", stdin=secret)
        assert res.returncode == 0, res.stderr
    proc = start_proxy(home, *proxy_args(ca_path))
    yield proc
    proc.stop()


def h1(proxy: Proxy, port: int, host: str, raw_request: bytes) -> Reply:
    conn = tunnel(proxy, f"{host}:{port}")
    conn.send(raw_request)
    reply = conn.response()
    conn.close()
    return reply


def h2(proxy: Proxy, port: int, host: str, headers: list[tuple[str, str]]) -> H2Result:
    conn: Conn = tunnel(proxy, f"{host}:{port}", alpn=["h2"])
    client = H2Client(conn.sock)
    sid = client.send(headers)
    result = client.wait()[sid]
    client.close()
    return result


def assert_bad_request_h1(reply: Reply) -> None:
    assert reply.status == 400, str(reply)
    assert reply.blocked == "bad-request", str(reply)


def assert_bad_request_h2(result: H2Result, *, answered: bool = False) -> None:
    """400 bad-request or, unless ``answered``, the stream/connection torn down unanswered."""
    if answered or result.status is not None:
        assert result.status == 400, result
        assert result.header("x-egress-blocked") == "bad-request", result


def malformed_lines(server: RawUpstream, t: str) -> list[tuple[bytes, bytes]]:
    """Header lines upstream that are folded or hold a control character."""
    return [
        (n, v)
        for head in server.find(t)
        for n, v in header_lines(head)
        if not n or not FIELD_VALUE.fullmatch(v)
    ]


def assert_nothing_upstream(server: RawUpstream, t: str) -> None:
    heads = server.find(t)
    assert heads == [], f"reached the upstream: {heads!r}"


# --------------------------------------------------------------------------- methods

H2_METHODS = [
    pytest.param("GET /v2/secret?t={t}", id="space-request-line"),
    pytest.param("GET\t/v2/secret?t={t}", id="htab"),
    pytest.param("G(E)T", id="separator-parens"),
    pytest.param('G"E"T', id="separator-dquote"),
    pytest.param("GET/", id="separator-slash"),
    pytest.param("GE\x7fT", id="del"),
]


@pytest.mark.parametrize("method", H2_METHODS)
def test_h2_method_not_a_token_is_refused(hproxy: Proxy, raw: tuple[RawUpstream, Path], method: str) -> None:
    """h2 checks pseudo-header values only for CR/LF/NUL and edge whitespace, and
    mitmproxy writes ``:method`` into the HTTP/1.1 request line as it is."""
    server, _ = raw
    t = tag()
    headers = [
        (":method", method.format(t=t)),
        (":authority", f"{STRIPE}:{server.port}"),
        (":scheme", "https"),
        (":path", f"/v1/ok?t={t}"),
    ]
    result = h2(hproxy, server.port, STRIPE, headers)
    seen = server.find(t)
    smuggled = [h for h in seen if STRIPE_SECRET.encode() in h]
    assert not smuggled, f"request line {smuggled[0].split(b'\r\n')[0]!r} sent with the secret"
    assert_nothing_upstream(server, t)
    assert_bad_request_h2(result, answered=True)  # the client learns why


H1_METHODS = [
    pytest.param(b"G(E)T", id="separator-parens"),
    pytest.param(b'G"E"T', id="separator-dquote"),
    pytest.param(b"GET/", id="separator-slash"),
    pytest.param(b"GE,T", id="separator-comma"),
    pytest.param(b"GE\x00T", id="nul"),
    pytest.param(b"GE\x7fT", id="del"),
    pytest.param(b"GE\x01T", id="ctl"),
    pytest.param("GÉT".encode(), id="non-ascii"),
]


@pytest.mark.parametrize("method", H1_METHODS)
def test_h1_method_not_a_token_is_refused(
    hproxy: Proxy, raw: tuple[RawUpstream, Path], method: bytes
) -> None:
    """mitmproxy splits the request line on whitespace and accepts any other bytes as the method."""
    server, _ = raw
    t = tag()
    reply = h1(
        hproxy,
        server.port,
        STRIPE,
        method + f" /v1/ok?t={t} HTTP/1.1\r\nHost: {STRIPE}:{server.port}\r\n\r\n".encode(),
    )
    assert_nothing_upstream(server, t)
    assert_bad_request_h1(reply)


# --------------------------------------------------------------------------- header values

H1_VALUES = [
    pytest.param(b"X-A: a\r\n Host: evil.test\r\n", id="obs-fold-space"),
    pytest.param(b"X-A: a\r\n\tAuthorization: Bearer sandbox\r\n", id="obs-fold-htab"),
    pytest.param(b"X-A: a\rHost: evil.test\r\n", id="bare-cr"),
    pytest.param(b"X-A: a\x00b\r\n", id="nul"),
    pytest.param(b"X-A: a\x0bb\r\n", id="vertical-tab"),
    pytest.param(b"X-A: a\x1bb\r\n", id="escape"),
    pytest.param(b"X-A: a\x7fb\r\n", id="del"),
]


@pytest.mark.parametrize("line", H1_VALUES)
def test_h1_header_value_with_ctl_or_fold_is_refused(
    hproxy: Proxy, raw: tuple[RawUpstream, Path], line: bytes
) -> None:
    """mitmproxy keeps obs-fold as ``\\r\\n `` inside the value and never checks values for
    controls, so the upstream gets the line exactly as the sandbox wrote it."""
    server, _ = raw
    t = tag()
    reply = h1(
        hproxy,
        server.port,
        STRIPE,
        f"GET /v1/ok?t={t} HTTP/1.1\r\nHost: {STRIPE}:{server.port}\r\n".encode() + line + b"\r\n",
    )
    bad = malformed_lines(server, t)
    assert not bad, f"forwarded verbatim: {bad!r}"
    assert_nothing_upstream(server, t)
    assert_bad_request_h1(reply)


H2_VALUES = [
    pytest.param("a\x01b", id="soh"),
    pytest.param("a\x0bb", id="vertical-tab"),
    pytest.param("a\x1bb", id="escape"),
    pytest.param("a\x7fb", id="del"),
]


@pytest.mark.parametrize("value", H2_VALUES)
def test_h2_header_value_with_ctl_is_refused(
    hproxy: Proxy, raw: tuple[RawUpstream, Path], value: str
) -> None:
    """h2 refuses CR, LF and NUL (RFC 9113 §8.2.1) but no other control, and the
    HTTP/1.1 upstream gets the value as it came."""
    assert_h2_value_refused(hproxy, raw[0], value)


H2_FRAMING_VALUES = [
    pytest.param("a\r\nhost: evil.test", id="crlf"),
    pytest.param("a\rhost: evil.test", id="bare-cr"),
    pytest.param("a\nhost: evil.test", id="bare-lf"),
    pytest.param("a\r\n host: evil.test", id="obs-fold"),
    pytest.param("a\x00b", id="nul"),
]


@pytest.mark.parametrize("value", H2_FRAMING_VALUES)
def test_h2_header_value_with_cr_lf_nul_stays_refused(
    hproxy: Proxy, raw: tuple[RawUpstream, Path], value: str
) -> None:
    """Guard, passes today: h2 ends the connection (PROTOCOL_ERROR) on these. A fix
    that turns off h2's own validation to answer 400 must not let them through."""
    assert_h2_value_refused(hproxy, raw[0], value)


def assert_h2_value_refused(hproxy: Proxy, server: RawUpstream, value: str) -> None:
    t = tag()
    headers = [
        (":method", "GET"),
        (":authority", f"{STRIPE}:{server.port}"),
        (":scheme", "https"),
        (":path", f"/v1/ok?t={t}"),
        ("x-a", value),
    ]
    result = h2(hproxy, server.port, STRIPE, headers)
    bad = malformed_lines(server, t)
    assert not bad, f"forwarded verbatim: {bad!r}"
    assert_nothing_upstream(server, t)
    assert_bad_request_h2(result)


# --------------------------------------------------------------------------- stripped and injected names

STRIPPED = {b"cookie", b"cookie2", b"proxy-authorization", b"proxy-connection", b"keep-alive"}
VARIANTS = [
    pytest.param(("Cookie2", "$Version=1; sid=sandbox"), id="cookie2"),
    pytest.param(("X_Api_Key", "sandbox-value"), id="x_api_key"),
    pytest.param(("x_api_key", "sandbox-value"), id="x_api_key-lower"),
    pytest.param(("X-Api_Key", "sandbox-value"), id="x-api_key-mixed"),
    pytest.param(("Proxy_Authorization", "Basic c2FuZGJveDpzYW5kYm94"), id="proxy_authorization"),
    pytest.param(("Proxy_Connection", "keep-alive"), id="proxy_connection"),
    pytest.param(("Keep_Alive", "timeout=5"), id="keep_alive"),
]


def assert_clean_names(head: bytes) -> None:
    """Exactly one X-Api-Key (by any spelling), ours; no stripped name by any spelling."""
    lines = header_lines(head)
    keys = [v for n, v in lines if normalised(n) == b"x-api-key"]
    assert keys == [WILD_SECRET.encode()], f"X-Api-Key spellings upstream: {lines!r}"
    stripped = [(n, v) for n, v in lines if normalised(n) in STRIPPED]
    assert not stripped, f"stripped names forwarded: {stripped!r}"


@pytest.mark.parametrize("header", VARIANTS)
def test_h1_name_variants_are_stripped(
    hproxy: Proxy, raw: tuple[RawUpstream, Path], header: tuple[str, str]
) -> None:
    """Names are compared exactly, so ``Cookie2`` and ``_`` spellings pass the strip list."""
    server, _ = raw
    t = tag()
    name, value = header
    reply = h1(
        hproxy,
        server.port,
        WILD,
        f"GET /x?t={t} HTTP/1.1\r\nHost: {WILD}:{server.port}\r\n{name}: {value}\r\n\r\n".encode(),
    )
    assert reply.status == 200, str(reply)
    (head,) = server.find(t)
    assert_clean_names(head)


@pytest.mark.parametrize("header", VARIANTS)
def test_h2_name_variants_are_stripped(
    hproxy: Proxy, raw: tuple[RawUpstream, Path], header: tuple[str, str]
) -> None:
    server, _ = raw
    t = tag()
    name, value = header
    headers = [
        (":method", "GET"),
        (":authority", f"{WILD}:{server.port}"),
        (":scheme", "https"),
        (":path", f"/x?t={t}"),
        (name.lower(), value),
    ]
    result = h2(hproxy, server.port, WILD, headers)
    assert result.status == 200, result
    (head,) = server.find(t)
    assert_clean_names(head)


def test_control_requests_pass(hproxy: Proxy, raw: tuple[RawUpstream, Path]) -> None:
    """The module's proxy and oracle work: a clean request is injected, over h1 and h2."""
    server, _ = raw
    t = tag()
    reply = h1(
        hproxy, server.port, WILD, f"GET /x?t={t} HTTP/1.1\r\nHost: {WILD}:{server.port}\r\n\r\n".encode()
    )
    assert reply.status == 200, str(reply)
    result = h2(
        hproxy,
        server.port,
        STRIPE,
        [
            (":method", "GET"),
            (":authority", f"{STRIPE}:{server.port}"),
            (":scheme", "https"),
            (":path", f"/v1/ok?t={t}"),
        ],
    )
    assert result.status == 200, result
    wild_head, stripe_head = sorted(server.find(t), key=lambda h: STRIPE.encode() in h)
    assert_clean_names(wild_head)
    assert f"\r\nAuthorization: Bearer {STRIPE_SECRET}".encode() in stripe_head
    assert TOKEN.fullmatch(stripe_head.split(b" ", 1)[0])

"""The exfiltration guard in the inject addon: head, buffered body, streamed body."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import zlib

import brotli  # type: ignore[import-untyped]
import pytest
from mitmproxy.test import tflow
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from addons.gate import Gate
from addons.inject import Inject
from addons.oauth import OAuth
from addons.record import described
from addons.source import PolicySource
from addons.state import Tunnels
from proxy.connectors import make_connector
from proxy.context import Tunnel
from proxy.policy import Policy, Target
from proxy.scrub import SecretFound
from tests.adapters.helpers import SECRET, tunnel_flow, wired
from tests.adapters.helpers import STRIPE as STRIPE_TARGET

try:
    from compression.zstd import compress as zstd_compress  # type: ignore[import-not-found]
except ImportError:
    from backports.zstd import compress as zstd_compress

OAUTH_API = Target("api.oauth.test", 443)

OTHER = "wx-other-connector-secret-2f2f"


def two_connectors() -> Policy:
    header = {"header": "Authorization"}
    return Policy(
        [
            (
                make_connector("stripe", patterns=["https://api.stripe.test/v1/*"], inject=header),
                {"secret": SECRET},
            ),
            (make_connector("other", patterns=["https://other.test/*"], inject=header), {"secret": OTHER}),
        ]
    )


def refused(f: object) -> dict[str, str]:
    response = f.response  # type: ignore[attr-defined]
    assert response is not None and response.status_code == 403
    doc: dict[str, str] = json.loads(response.content)
    assert doc["reason"] == "secret-exfiltration"
    assert OTHER not in response.text and SECRET not in response.text
    return doc


@pytest.mark.parametrize(
    ("where", "edit"),
    [
        ("header", lambda f: f.request.headers.__setitem__("x-note", OTHER)),
        ("query", lambda f: setattr(f.request, "path", f"/v1/charges?q={OTHER}")),
        ("path", lambda f: setattr(f.request, "path", f"/v1/{OTHER}")),
    ],
)
def test_a_secret_in_the_head_is_refused_and_never_logged(
    where: str, edit: object, caplog: pytest.LogCaptureFixture
) -> None:
    _, tunnels, inject = wired(two_connectors())
    f = tunnel_flow(tunnels)
    edit(f)  # type: ignore[operator]
    with caplog.at_level(logging.INFO):
        inject.requestheaders(f)
    refused(f)
    s = f.metadata["egress"]
    assert s.route is None  # nothing injected, nothing routed
    assert OTHER not in " ".join(described(f, s)) and OTHER not in str(f.request.headers)
    assert OTHER not in caplog.text and "connector other" in caplog.text


def test_the_injected_credential_itself_is_not_a_leak() -> None:
    _, tunnels, inject = wired(two_connectors())
    f = tunnel_flow(tunnels)
    inject.requestheaders(f)
    assert f.response is None
    assert f.request.headers["authorization"] == f"Bearer {SECRET}"
    inject.request(f)  # the buffered body is scanned after injection: still clean
    assert f.response is None


def test_a_small_body_is_read_whole_and_refused_before_anything_is_sent() -> None:
    _, tunnels, inject = wired(two_connectors())
    f = tunnel_flow(tunnels)
    f.request.content = json.dumps({"k": OTHER}).encode()
    inject.requestheaders(f)
    assert f.response is None and f.request.stream is False  # read whole first
    inject.request(f)
    refused(f)


def test_scan_bodies_off_forwards_bodies_but_still_refuses_heads() -> None:
    """--no-scan-bodies: bodies and WebSocket messages go unscanned (streamed as mitmproxy would);
    the head is still checked, since the logs keep it."""
    _, tunnels, inject = wired(two_connectors())
    inject.scan_bodies = False
    f = tunnel_flow(tunnels)
    f.request.content = json.dumps({"k": OTHER}).encode()
    inject.requestheaders(f)
    assert f.response is None and f.request.stream is True  # not held back for a scan
    inject.request(f)
    assert f.response is None and f.request.headers["authorization"] == f"Bearer {SECRET}"
    assert not say(inject, ws_flow(tunnels), OTHER.encode()).dropped  # type: ignore[attr-defined]
    head = tunnel_flow(tunnels)
    head.request.headers["x-note"] = OTHER
    inject.requestheaders(head)
    refused(head)


def test_a_large_streamed_body_is_scanned_chunk_by_chunk() -> None:
    _, tunnels, inject = wired(two_connectors())
    f = tunnel_flow(tunnels)
    f.request.headers["content-length"] = str(1 << 20)
    inject.requestheaders(f)
    stream = f.request.stream
    assert callable(stream)
    assert stream(b"ab") == []  # held back, never an empty chunk (that would end a chunked body)
    out = stream(b"x" * 4096)
    assert isinstance(out, bytes) and out.startswith(b"abx") and len(out) < 4098  # the tail is held
    with pytest.raises(SecretFound):
        stream(OTHER[:10].encode())
        stream(OTHER[10:].encode())
    s = f.metadata["egress"]
    assert s.blocked is not None and str(s.blocked.reason) == "secret-exfiltration"


# -- OAuth2 access tokens the proxy fetched: guarded like secrets -------------------------

TOKEN = "at-fetched-by-the-proxy-4a4a4a"
OAUTH = {
    "oauth2": {
        "token_url": "https://auth.oauth.test/token",
        "grant": "client_credentials",
        "client_id": "cid",
        "client_secret": "{{client_secret}}",
    }
}


class FakeBroker:
    """The broker's two calls the adapter makes, with a token already fetched."""

    async def token(self, connector: str, request: object) -> str:
        return TOKEN

    def secrets(self, connector: str) -> tuple[str, ...]:
        return (TOKEN,) if connector == "oauth" else ()

    def close(self) -> None:
        pass


def oauth_world() -> tuple[PolicySource, Tunnels, Inject, OAuth]:
    header = {"header": "Authorization"}
    policy = Policy(
        [
            (make_connector("stripe", patterns=["https://api.stripe.test/v1/*"], inject=header),
             {"secret": SECRET}),
            (make_connector("oauth", patterns=["https://api.oauth.test/api/*"], inject=OAUTH),
             {"client_secret": "client-secret-of-oauth-9f9f"}),
            (make_connector("peer", patterns=["https://api.oauth.test/peer/*"], inject=header),
             {"secret": "peer-static-secret-8e8e"}),
        ]
    )  # fmt: skip
    source, tunnels, inject = wired(policy)
    oauth = OAuth(source, Gate(source, tunnels))
    oauth.broker = FakeBroker()  # type: ignore[assignment]
    return source, tunnels, inject, oauth


def through(inject: Inject, oauth: OAuth, f: object) -> None:
    inject.requestheaders(f)  # type: ignore[arg-type]
    asyncio.run(oauth.requestheaders(f))  # type: ignore[arg-type]


def test_a_fetched_access_token_is_refused_in_any_request_and_spelling() -> None:
    source, tunnels, inject, oauth = oauth_world()
    f = tunnel_flow(tunnels, OAUTH_API, path="/api/x")
    through(inject, oauth, f)
    assert f.response is None and f.request.headers["authorization"] == f"Bearer {TOKEN}"
    inject.request(f)  # the injected token itself is no leak
    assert f.response is None
    for edit in (
        lambda g: g.request.headers.__setitem__("x-note", TOKEN),
        lambda g: g.request.headers.__setitem__("x-b64", base64.b64encode(TOKEN.encode()).decode()),
        lambda g: setattr(g.request, "path", f"/v1/charges?t={TOKEN.upper()}"),
    ):
        g = tunnel_flow(tunnels)  # another connector's tunnel
        edit(g)
        inject.requestheaders(g)
        assert g.response is not None and json.loads(g.response.content)["reason"] == "secret-exfiltration"
    g = tunnel_flow(tunnels)  # in a body read whole
    g.request.content = json.dumps({"k": TOKEN.encode().hex()}).encode()
    inject.requestheaders(g)
    inject.request(g)
    assert g.response is not None and json.loads(g.response.content)["reason"] == "secret-exfiltration"
    g = tunnel_flow(tunnels, OAUTH_API, path="/api/y")  # to its own connector, in another header
    g.request.headers["x-note"] = TOKEN
    inject.requestheaders(g)
    assert g.response is not None and TOKEN not in g.response.text
    assert source.live.guard(source.rules.policy.guard).find(TOKEN.encode()) == "oauth"


def test_a_fetched_token_is_masked_in_responses_of_connectors_on_its_hosts() -> None:
    _, tunnels, inject, oauth = oauth_world()
    f = tunnel_flow(tunnels, OAUTH_API, path="/peer/x")  # peer: static, on the oauth host
    through(inject, oauth, f)
    s = f.metadata["egress"]
    assert s.route.connector == "peer" and s.route.oauth_peers == frozenset({"oauth"})
    assert TOKEN.encode() not in s.route.scrub.mask(b"echo " + TOKEN.encode())
    assert b"peer-static-secret-8e8e" not in s.route.scrub.mask(b"peer-static-secret-8e8e")
    g = tunnel_flow(tunnels)  # stripe shares no host with oauth: its needles stay as they were
    through(inject, oauth, g)
    assert g.metadata["egress"].route.oauth_peers == frozenset()
    assert TOKEN.encode() in g.metadata["egress"].route.scrub.mask(TOKEN.encode())


# -- WebSocket messages from the client ---------------------------------------------------


def ws_flow(tunnels: Tunnels) -> object:
    f = tflow.twebsocketflow()
    tunnels.open(f.client_conn, Tunnel(STRIPE_TARGET, "127.0.0.1"))
    return f


def say(inject: Inject, f: object, content: bytes, from_client: bool = True) -> object:
    message = WebSocketMessage(Opcode.TEXT, from_client, content)
    f.websocket.messages.append(message)  # type: ignore[attr-defined]
    inject.websocket_message(f)  # type: ignore[arg-type]
    return message


def test_a_client_websocket_message_with_a_secret_is_dropped_and_the_flow_blocked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, tunnels, inject = wired(two_connectors())
    f = ws_flow(tunnels)
    assert not say(inject, f, b"clean message").dropped  # type: ignore[attr-defined]
    assert not say(inject, f, OTHER.encode(), from_client=False).dropped  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO):
        m = say(inject, f, b"k=" + base64.b64encode(OTHER.encode()))
    assert m.dropped and m.content == b""  # type: ignore[attr-defined]
    s = f.metadata["egress"]  # type: ignore[attr-defined]
    assert s.blocked is not None and str(s.blocked.reason) == "secret-exfiltration"
    assert "connector other" in caplog.text and OTHER not in caplog.text
    assert say(inject, f, b"anything after").dropped  # type: ignore[attr-defined]


def test_a_secret_split_across_two_websocket_messages_stops_the_second() -> None:
    _, tunnels, inject = wired(two_connectors())
    f = ws_flow(tunnels)
    assert not say(inject, f, b"x" * 5000 + OTHER[:10].encode()).dropped  # type: ignore[attr-defined]
    assert say(inject, f, OTHER[10:].encode()).dropped  # type: ignore[attr-defined]


# -- compressed request bodies --------------------------------------------------------------


def sent_encoded(tunnels: Tunnels, inject: Inject, coding: str, body: bytes, refuse: bool) -> None:
    """A request with ``body`` as Content-Encoding ``coding``: refused if ``refuse``, else sent as it came."""
    f = tunnel_flow(tunnels)
    f.request.headers["content-encoding"] = coding
    f.request.raw_content = body
    inject.requestheaders(f)
    inject.request(f)
    if refuse:
        refused(f)
    else:
        assert f.response is None and f.request.raw_content == body


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "gzip, br"])
def test_a_compressed_body_is_decoded_for_the_scan_and_sent_as_it_came(coding: str) -> None:
    _, tunnels, inject = wired(two_connectors())
    for secret, refused_ in ((OTHER, True), ("nothing secret in here at all", False)):
        body = compress(json.dumps({"k": secret}).encode(), coding)
        sent_encoded(tunnels, inject, coding, body, refused_)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"content-length": str(1 << 20)}, None),  # too large to be read whole
        ({"transfer-encoding": "chunked"}, None),  # not announced
        ({}, b"\x1f\x8b corrupt"),
        ({}, gzip.compress(b"a" * (2 << 20))),  # decodes past 1 MiB
    ],
)
def test_a_compressed_body_that_cannot_be_checked_is_refused_415(
    headers: dict[str, str], body: bytes | None
) -> None:
    _, tunnels, inject = wired(two_connectors())
    f = tunnel_flow(tunnels)
    f.request.headers["content-encoding"] = "gzip"
    if body is not None:
        f.request.raw_content = body
    for k, v in headers.items():
        f.request.headers[k] = v
    inject.requestheaders(f)
    if f.response is None:
        inject.request(f)
    assert f.response is not None and f.response.status_code == 415
    assert json.loads(f.response.content)["reason"] == "bad-request"
    f = tunnel_flow(tunnels)  # an unknown coding too
    f.request.headers["content-encoding"] = "compress"
    f.request.raw_content = b"whatever"
    inject.requestheaders(f)
    inject.request(f)
    assert f.response is not None and f.response.status_code == 415


def test_aws_chunked_framing_is_scanned_as_sent_not_refused() -> None:
    _, tunnels, inject = wired(two_connectors())
    for secret, refused_ in ((OTHER, True), ("hello from the sandbox", False)):
        body = f"{len(secret):x};chunk-signature=abc\r\n{secret}\r\n0;chunk-signature=def\r\n\r\n".encode()
        sent_encoded(tunnels, inject, "aws-chunked", body, refused_)


def compress(data: bytes, coding: str) -> bytes:
    for c in (c.strip() for c in coding.split(",")):
        data = {
            "gzip": gzip.compress,
            "deflate": zlib.compress,
            "br": brotli.compress,
            "zstd": zstd_compress,
        }[c](data)
    return data

"""The exfiltration guard in the inject addon: head, buffered body, streamed body."""

from __future__ import annotations

import json
import logging

import pytest

from addons.record import described
from proxy.connectors import make_connector
from proxy.policy import Policy
from proxy.scrub import SecretFound
from tests.adapters.helpers import SECRET, tunnel_flow, wired

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

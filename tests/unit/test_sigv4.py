"""aws_sigv4: the proxy's own signer must produce exactly what botocore's signer does.

Every signature here is recomputed by ``botocore.auth.SigV4Auth`` /
``S3SigV4Auth`` on an ``AWSRequest`` with the real credentials and the same
clock, and compared whole (``authorization``, dates, token, payload hash).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.credentials.signing import Signed, Unsignable
from proxy.credentials.sigv4 import SigV4Placement, SigV4Signer
from proxy.policy import header_key
from tests.harness import config_error

KEY_ID = "AKIAREALKEY000000001"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYREALSECRET"
TOKEN = "IQoJb3JpZ2luX2VjEREALSESSIONTOKEN//////////wEaCXVzLWVhc3QtMSJHMEUCIQ=="
DUMMY_AUTH = (
    "AWS4-HMAC-SHA256 Credential=AKIADUMMY/20240101/us-east-1/s3/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
)
NOW = 1_718_000_000.25  # 2024-06-10T06:13:20Z
FIELDS = {"access_key_id": KEY_ID, "secret_access_key": SECRET, "session_token": TOKEN}
SPEC = {
    "aws_sigv4": {
        "access_key_id": "{{access_key_id}}",
        "secret_access_key": "{{secret_access_key}}",
        "region": "us-east-1",
        "service": "s3",
    }
}
EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def spec(**changes: Any) -> dict[str, Any]:
    body = dict(SPEC["aws_sigv4"])
    body.update(changes)
    return {"aws_sigv4": {k: v for k, v in body.items() if v is not None}}


def signer(service: str = "s3", region: str = "us-east-1", token: str | None = None) -> SigV4Signer:
    return SigV4Signer(KEY_ID, SECRET, region, service, token)


@pytest.fixture(autouse=True)
def botocore_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """botocore reads the clock itself; give it ours."""
    moment = datetime.datetime.fromtimestamp(int(NOW), datetime.UTC).replace(tzinfo=None)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: moment)
    yield


def reference(
    method: str,
    authority: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    *,
    service: str = "s3",
    region: str = "us-east-1",
    token: str | None = None,
    params: Sequence[tuple[str, str]] | None = None,
    query: str = "",
    payload: str = "UNSIGNED-PAYLOAD",
    body: bytes = b"",
    secret: str = SECRET,
) -> dict[str, str]:
    """What botocore puts on the request, for the headers the proxy signs.

    ``params`` are decoded query parameters (botocore encodes them itself);
    ``query`` is an already encoded query string. ``payload`` is what the
    request's x-amz-content-sha256 should end up as; each is reached through
    botocore's own switches, not by overriding its code.
    """
    url = f"https://{authority}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, params=list(params or []))
    for name, value in headers:
        request.headers[name] = value  # HTTPHeaders: a second assignment adds a second value
    auth: SigV4Auth
    if service == "s3":
        auth = S3SigV4Auth(Credentials(KEY_ID, secret, token), service, region)
        if payload == "UNSIGNED-PAYLOAD":
            request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
        elif payload == "STREAMING-UNSIGNED-PAYLOAD-TRAILER":
            request.context["checksum"] = {
                "request_algorithm": {"in": "trailer", "name": "x-amz-checksum-crc32"}
            }
        else:
            assert hashlib.sha256(body).hexdigest() == payload
    else:
        auth = SigV4Auth(Credentials(KEY_ID, secret, token), service, region)
        request.headers["X-Amz-Content-SHA256"] = payload
    auth.add_auth(request)
    out = {name.lower(): value for name, value in request.headers.items()}
    assert out.get("x-amz-content-sha256") == payload, "the reference did not sign the intended payload"
    return out


def ours(
    s: SigV4Signer, method: str, authority: str, target: str, headers: Sequence[tuple[str, str]], **kw: Any
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The signer's answer applied to ``headers`` as the proxy applies it."""
    result = s.sign(method, authority, target, headers, NOW, **kw)
    assert isinstance(result, Signed), result
    final = [(n, v) for n, v in headers if header_key(n) not in result.remove]
    final.extend(result.add)
    return dict(result.add), final


def signed_headers(auth: str) -> list[str]:
    return auth.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")


# -- agreement with botocore ------------------------------------------------------


def test_get_with_query_needing_encoding_and_repeated_keys() -> None:
    # Sent with spellings AWS re-encodes: raw "!*'()", "+", lowercase hex, a bare flag.
    target = "/bucket?list-type=2&prefix=a%20b!*'()&key=v2&key=v1&Plus=a+b&slash=x%2fy&flag&uni=%e2%82%ac"
    params = [
        ("list-type", "2"),
        ("prefix", "a b!*'()"),
        ("key", "v2"),
        ("key", "v1"),
        ("Plus", "a+b"),
        ("slash", "x/y"),
        ("flag", ""),
        ("uni", "\u20ac"),
    ]
    headers = [
        ("Host", "s3.amazonaws.com"),
        ("Authorization", DUMMY_AUTH),
        ("X-Amz-Date", "20240101T000000Z"),
    ]
    got, final = ours(signer(), "GET", "s3.amazonaws.com", target, headers)
    want = reference("GET", "s3.amazonaws.com", "/bucket", [], params=params)
    assert got["authorization"] == want["authorization"]
    assert got["x-amz-date"] == want["x-amz-date"] == "20240610T061320Z"
    assert [v for n, v in final if n.lower() == "authorization"] == [want["authorization"]]
    assert DUMMY_AUTH not in dict(final).values()


def test_query_already_canonical_is_signed_as_sent() -> None:
    query = "delimiter=%2F&list-type=2&prefix=photos%2F2024%20june%2F"
    got, _ = ours(signer(), "GET", "bucket.s3.us-east-1.amazonaws.com", f"/?{query}", [])
    want = reference("GET", "bucket.s3.us-east-1.amazonaws.com", "/", [], query=query)
    assert got["authorization"] == want["authorization"]


def test_put_with_client_content_sha256_and_signed_client_headers() -> None:
    body = b"hello, world\n" * 100
    digest = hashlib.sha256(body).hexdigest()
    md5 = "bWQ1LWJhc2U2NA=="
    client = [
        ("Host", "bucket.s3.eu-west-1.amazonaws.com"),
        ("User-Agent", "Boto3/1.34.0 Python/3.12"),
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(body))),
        ("Content-MD5", md5),
        ("X-Amz-Meta-Owner", "  the   sandbox "),
        ("x-amz-storage-class", "STANDARD_IA"),
        ("X-Amz-Content-SHA256", digest),
        ("X-Amz-Date", "20240101T000000Z"),
        ("Authorization", DUMMY_AUTH),
        ("Accept-Encoding", "identity"),
    ]
    got, final = ours(
        signer(region="eu-west-1"), "PUT", "bucket.s3.eu-west-1.amazonaws.com", "/dir/key.txt", client
    )
    signable = [
        ("Content-Type", "text/plain"),
        ("Content-MD5", md5),
        ("X-Amz-Meta-Owner", "  the   sandbox "),
        ("x-amz-storage-class", "STANDARD_IA"),
    ]
    want = reference(
        "PUT",
        "bucket.s3.eu-west-1.amazonaws.com",
        "/dir/key.txt",
        signable,
        region="eu-west-1",
        payload=digest,
        body=body,
    )
    assert got["authorization"] == want["authorization"]
    assert got["x-amz-content-sha256"] == digest
    assert signed_headers(got["authorization"]) == [
        "content-md5",
        "content-type",
        "host",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-amz-meta-owner",
        "x-amz-storage-class",
    ]
    # Unsigned headers travel untouched: they may still change after signing (length, encoding).
    for name in ("User-Agent", "Content-Length", "Accept-Encoding"):
        assert [v for n, v in final if n == name] == [v for n, v in client if n == name]


def test_no_content_sha256_signs_unsigned_payload() -> None:
    got, final = ours(
        signer(), "PUT", "bucket.s3.amazonaws.com", "/k", [("Content-Type", "application/json")]
    )
    want = reference("PUT", "bucket.s3.amazonaws.com", "/k", [("Content-Type", "application/json")])
    assert got["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert got["authorization"] == want["authorization"]
    assert ("x-amz-content-sha256", "UNSIGNED-PAYLOAD") in final


def test_caller_computed_payload_hash_wins() -> None:
    """A caller that buffered the body passes its hash (services that refuse UNSIGNED-PAYLOAD)."""
    got, _ = ours(
        signer("sts"),
        "POST",
        "sts.amazonaws.com",
        "/",
        [("Content-Type", "application/x-www-form-urlencoded"), ("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD")],
        payload_sha256=EMPTY_SHA,
    )
    want = reference(
        "POST",
        "sts.amazonaws.com",
        "/",
        [("Content-Type", "application/x-www-form-urlencoded")],
        service="sts",
        payload=EMPTY_SHA,
    )
    assert got["authorization"] == want["authorization"]
    with pytest.raises(ValueError):
        signer().sign("GET", "h", "/", [], NOW, payload_sha256="UNSIGNED-PAYLOAD")


def test_session_token_added_signed_and_dummy_removed() -> None:
    client = [
        ("X-Amz-Security-Token", "dummy-sandbox-token"),
        ("x_amz_security_token", "dummy-folded"),
        ("X-Amz-Date", "20240101T000000Z"),
        ("authorization", DUMMY_AUTH),
    ]
    got, final = ours(signer(token=TOKEN), "GET", "bucket.s3.amazonaws.com", "/k", client)
    want = reference("GET", "bucket.s3.amazonaws.com", "/k", [], token=TOKEN)
    assert got["authorization"] == want["authorization"]
    assert "x-amz-security-token" in signed_headers(got["authorization"])
    tokens = [v for n, v in final if header_key(n) == "x-amz-security-token"]
    assert tokens == [TOKEN] == [want["x-amz-security-token"]]
    assert [v for n, v in final if header_key(n) == "x-amz-date"] == [want["x-amz-date"]]
    assert [v for n, v in final if header_key(n) == "authorization"] == [want["authorization"]]


def test_no_session_token_drops_the_clients() -> None:
    got, final = ours(signer(), "GET", "b.s3.amazonaws.com", "/", [("X-Amz-Security-Token", "dummy")])
    assert all(header_key(n) != "x-amz-security-token" for n, _ in final)
    assert got["authorization"] == reference("GET", "b.s3.amazonaws.com", "/", [])["authorization"]


@pytest.mark.parametrize(
    "path",
    [
        "/bucket/a%2Fb",
        "/bucket/with%20space/file%20name.txt",
        "/bucket/caf%C3%A9/%E2%82%AC%F0%9F%98%80",
        "/bucket/./a//b/../c",
        "/bucket/tilde~and-._",
        "/",
        "/bucket/trailing/",
        "/bucket/%25literal-percent",
    ],
)
@pytest.mark.parametrize("service", ["s3", "execute-api", "sts"])
def test_paths_s3_versus_other_services(path: str, service: str) -> None:
    authority = "abc123.execute-api.us-east-1.amazonaws.com" if service != "s3" else "s3.amazonaws.com"
    payload = EMPTY_SHA if service != "s3" else "UNSIGNED-PAYLOAD"
    got, _ = ours(signer(service), "GET", authority, path, [("X-Amz-Content-SHA256", payload)])
    want = reference("GET", authority, path, [], service=service, payload=payload)
    assert got["authorization"] == want["authorization"]


def test_s3_and_other_services_really_canonicalise_differently() -> None:
    """Guards the path tests: one path, two services, two different signatures."""
    s3 = signer("s3").sign("GET", "h", "/a%2Fb/./c", [], NOW)
    other = SigV4Signer(KEY_ID, SECRET, "us-east-1", "s3", None)
    other.s3 = False
    non_s3 = other.sign("GET", "h", "/a%2Fb/./c", [], NOW)
    assert isinstance(s3, Signed) and isinstance(non_s3, Signed)
    assert dict(s3.add)["authorization"] != dict(non_s3.add)["authorization"]


def test_s3_path_with_raw_unencodable_characters_is_encoded_for_signing_only() -> None:
    raw = "/bucket/caf\u00e9 %zz"
    got, _ = ours(signer(), "GET", "s3.amazonaws.com", raw, [])
    want = reference("GET", "s3.amazonaws.com", "/bucket/caf%C3%A9%20%25zz", [])
    assert got["authorization"] == want["authorization"]


def test_repeated_signed_headers_join_with_commas() -> None:
    headers = [("X-Amz-Meta-Tag", "one"), ("x-amz-meta-tag", " two  words ")]
    got, _ = ours(signer(), "PUT", "s3.amazonaws.com", "/b/k", headers)
    want = reference("PUT", "s3.amazonaws.com", "/b/k", headers)
    assert got["authorization"] == want["authorization"]


def test_streaming_unsigned_trailer_passes() -> None:
    headers = [
        ("X-Amz-Content-SHA256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        ("x-amz-trailer", "x-amz-checksum-crc32"),
        ("x-amz-decoded-content-length", "1024"),
    ]
    got, _ = ours(signer(), "PUT", "s3.amazonaws.com", "/b/k", headers)
    want = reference(
        "PUT", "s3.amazonaws.com", "/b/k", headers[1:], payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    )
    assert got["authorization"] == want["authorization"]


def test_http1_host_header_is_signed_as_the_authority() -> None:
    # The proxy sets Host to the tunnel's authority; the signer signs that authority.
    got, _ = ours(signer(), "GET", "s3.amazonaws.com:8443", "/b", [("Host", "s3.amazonaws.com:8443")])
    assert got["authorization"] == reference("GET", "s3.amazonaws.com:8443", "/b", [])["authorization"]


def test_a_wrong_secret_disagrees() -> None:
    """The comparisons above can fail: botocore with another secret gives another signature."""
    got, _ = ours(signer(), "GET", "s3.amazonaws.com", "/b", [])
    want = reference("GET", "s3.amazonaws.com", "/b", [], secret=SECRET + "x")
    assert got["authorization"] != want["authorization"]


def test_signing_key_is_cached_per_day() -> None:
    s = signer()
    first = s.signing_key("20240610")
    assert s.signing_key("20240610") is first
    assert s.signing_key("20240611") != first
    tomorrow = NOW + 86_400
    result = s.sign("GET", "s3.amazonaws.com", "/b", [], tomorrow)
    assert isinstance(result, Signed)
    assert dict(result.add)["x-amz-date"] == "20240611T061320Z"
    assert "/20240611/us-east-1/s3/aws4_request" in dict(result.add)["authorization"]


# -- refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
    ],
)
def test_signed_streaming_payloads_are_refused(value: str) -> None:
    result = signer().sign("PUT", "s3.amazonaws.com", "/b/k", [("x-amz-content-sha256", value)], NOW)
    assert isinstance(result, Unsignable)
    assert "chunk signatures" in result.detail


@pytest.mark.parametrize("value", ["abc", EMPTY_SHA.upper(), EMPTY_SHA + "0", "unsigned-payload", ""])
def test_invalid_content_sha256_is_refused(value: str) -> None:
    result = signer().sign("PUT", "s3.amazonaws.com", "/b/k", [("X-Amz-Content-SHA256", value)], NOW)
    assert isinstance(result, Unsignable)
    assert "x-amz-content-sha256" in result.detail


def test_two_content_sha256_headers_are_refused() -> None:
    headers = [("x-amz-content-sha256", EMPTY_SHA), ("X_Amz_Content_Sha256", "UNSIGNED-PAYLOAD")]
    assert isinstance(signer().sign("PUT", "h", "/", headers, NOW), Unsignable)


@pytest.mark.parametrize(
    "target",
    [
        "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIADUMMY%2F20240101",
        "/b/k?x-amz-signature=abc",
        "/b/k?X-Amz-%53ignature=abc",
    ],
)
def test_presigned_urls_are_refused(target: str) -> None:
    result = signer().sign("GET", "s3.amazonaws.com", target, [], NOW)
    assert isinstance(result, Unsignable)
    assert "presigned" in result.detail


def test_non_origin_form_target_is_refused() -> None:
    assert isinstance(signer().sign("OPTIONS", "h", "*", [], NOW), Unsignable)


# -- property: botocore agrees ---------------------------------------------------

SEGMENT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
QUERY_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=10)
HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
META_NAME = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-"), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    service=st.sampled_from(["s3", "execute-api", "sts", "es"]),
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD"]),
    segments=st.lists(SEGMENT, min_size=0, max_size=4),
    trailing=st.booleans(),
    params=st.lists(st.tuples(QUERY_TEXT.filter(bool), QUERY_TEXT), max_size=5),
    meta=st.lists(st.tuples(META_NAME, HEADER_VALUE), max_size=4),
    content_type=st.one_of(st.none(), HEADER_VALUE),
    token=st.one_of(st.none(), st.just(TOKEN)),
)
def test_property_botocore_agrees(
    service: str,
    method: str,
    segments: list[str],
    trailing: bool,
    params: list[tuple[str, str]],
    meta: list[tuple[str, str]],
    content_type: str | None,
    token: str | None,
) -> None:
    # The path as an SDK sends it: each segment percent-encoded once ("/" inside one as %2F).
    path = "/" + "/".join(quote(s, safe="~") for s in segments) + ("/" if trailing and segments else "")
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params)
    if any(k.lower() in ("x-amz-signature", "x-amz-credential", "x-amz-algorithm") for k, _ in params):
        return
    headers = [(f"X-Amz-Meta-{name}", value) for name, value in meta]
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    authority = f"api.{service}.us-west-2.amazonaws.com"
    got, _ = ours(
        signer(service, "us-west-2", token),
        method,
        authority,
        path + (f"?{query}" if query else ""),
        [*headers, ("User-Agent", "sdk"), ("Authorization", DUMMY_AUTH)],
    )
    want = reference(
        method, authority, path, headers, service=service, region="us-west-2", token=token, params=params
    )
    assert got["authorization"] == want["authorization"]


# -- configuration ----------------------------------------------------------------


def test_from_spec_round_trips() -> None:
    p = SigV4Placement.from_spec(spec(session_token="{{session_token}}"), "connector 'aws'")
    assert p.region == "us-east-1" and p.service == "s3"
    assert p.where == "aws_sigv4 us-east-1/s3"
    assert SigV4Placement.from_spec(p.to_spec(), "c") == p
    assert p.fields() == {"access_key_id", "secret_access_key", "session_token"}
    assert "{{secret_access_key}}" in p.describe()
    no_token = SigV4Placement.from_spec(SPEC, "c")
    assert no_token.session_token is None
    assert "session_token" not in no_token.to_spec()["aws_sigv4"]
    assert no_token.fields() == {"access_key_id", "secret_access_key"}
    assert "session_token" not in no_token.describe()


def test_rendered_secrets_and_signer() -> None:
    p = SigV4Placement.from_spec(spec(session_token="{{session_token}}"), "c")
    r = p.render(FIELDS)
    assert SECRET in r.secrets and TOKEN in r.secrets and KEY_ID in r.secrets
    assert r.headers == () and r.query == ()
    assert isinstance(r.signer, SigV4Signer)
    got, _ = ours(r.signer, "GET", "s3.amazonaws.com", "/b", [])
    assert (
        got["authorization"] == reference("GET", "s3.amazonaws.com", "/b", [], token=TOKEN)["authorization"]
    )
    for text in (repr(r), repr(r.signer), repr(r.signer.sign("GET", "h", "/", [], NOW))):
        assert SECRET not in text and TOKEN not in text and "Signature=" not in text


def test_templates_may_combine_fields() -> None:
    p = SigV4Placement.from_spec(spec(access_key_id="AKIA{{access_key_id}}"), "c")
    r = p.render({**FIELDS, "access_key_id": "SUFFIX"})
    assert isinstance(r.signer, SigV4Signer)
    result = r.signer.sign("GET", "h", "/", [], NOW)
    assert isinstance(result, Signed)
    assert "Credential=AKIASUFFIX/" in dict(result.add)["authorization"]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"region": None}, "region is required"),
        ({"service": None}, "service is required"),
        ({"access_key_id": None}, "access_key_id is required"),
        ({"secret_access_key": None}, "secret_access_key is required"),
        ({"region": "US-EAST-1"}, "inject.aws_sigv4.region"),
        ({"region": "us-east-1/s3"}, "inject.aws_sigv4.region"),
        ({"region": ""}, "inject.aws_sigv4.region"),
        ({"region": 1}, "inject.aws_sigv4.region"),
        ({"service": "S3"}, "inject.aws_sigv4.service"),
        ({"service": "s3 "}, "inject.aws_sigv4.service"),
        ({"service": "s3/aws4_request"}, "inject.aws_sigv4.service"),
        ({"service": "-s3"}, "inject.aws_sigv4.service"),
        ({"service": "x" * 65}, "inject.aws_sigv4.service"),
        ({"access_key_id": "{{secret_access_key}}\n"}, "control characters"),
        ({"access_key_id": 5}, "inject.aws_sigv4.access_key_id"),
        ({"secret_access_key": ""}, "inject.aws_sigv4.secret_access_key"),
        ({"endpoint": "x"}, "unknown key(s) endpoint"),
    ],
)
def test_config_errors_name_where_and_field(changes: dict[str, Any], words: str) -> None:
    msg = config_error(SigV4Placement.from_spec, spec(**changes), "connector 'aws'")
    assert msg.startswith("connector 'aws': inject.aws_sigv4")
    assert words in msg


def test_literal_secret_in_template_is_refused_without_echo() -> None:
    msg = config_error(SigV4Placement.from_spec, spec(secret_access_key=SECRET), "connector 'aws'")
    assert "secret_access_key" in msg and "field" in msg
    assert SECRET not in msg


@pytest.mark.parametrize("body", [None, "x", ["access_key_id"]])
def test_body_must_be_a_mapping(body: Any) -> None:
    assert "inject.aws_sigv4 must be a mapping" in config_error(
        SigV4Placement.from_spec, {"aws_sigv4": body}, "c"
    )


def test_sibling_keys_are_refused() -> None:
    msg = config_error(SigV4Placement.from_spec, {**SPEC, "template": "Bearer {{secret}}"}, "c")
    assert "inject.template" in msg


def test_unknown_fields_are_the_connectors_check() -> None:
    from proxy.connectors import make_connector

    s = spec(secret_access_key="{{aws_secret}}")
    pat = ["https://s3.amazonaws.com/*"]
    msg = config_error(
        make_connector, "c", patterns=pat, inject=s, fields=["access_key_id", "secret_access_key"]
    )
    assert "aws_secret" in msg and "'c'" in msg
    ok = make_connector("c", patterns=pat, inject=s, fields=["access_key_id", "aws_secret"])
    assert ok.inject.fields() == {"access_key_id", "aws_secret"}


@pytest.mark.parametrize(
    ("field", "value"),
    [("access_key_id", "AKIA/EVIL"), ("access_key_id", "a b"), ("session_token", "t\r\nx")],
)
def test_render_refuses_values_that_break_the_header(field: str, value: str) -> None:
    p = SigV4Placement.from_spec(spec(session_token="{{session_token}}"), "c")
    msg = config_error(p.render, {**FIELDS, field: value})
    assert field in msg and value not in msg

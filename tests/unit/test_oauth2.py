"""The oauth2 placement: spec validation, the token request it builds, the answers it reads."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import pytest

from proxy.credentials.oauth2 import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    OAuth2Placement,
    Token,
    TokenFailure,
    TokenRequest,
    basic_credentials,
    refresh_at,
)
from proxy.errors import ConfigError

CC = {
    "token_url": "https://auth.example.com/oauth/token",
    "grant": "client_credentials",
    "client_id": "my-app",
    "client_secret": "{{secret}}",
}
RT = {
    "token_url": "https://auth.example.com/oauth/token",
    "grant": "refresh_token",
    "client_id": "{{client_id}}",
    "client_secret": "{{client_secret}}",
    "refresh_token": "{{refresh_token}}",
}
FIELDS = {"secret": "s3cr3t", "client_id": "id", "client_secret": "cs", "refresh_token": "rt-1"}


def placement(**overrides: Any) -> OAuth2Placement:
    spec = {**CC, **overrides}
    return OAuth2Placement.from_spec({"oauth2": {k: v for k, v in spec.items() if v is not None}}, "conn")


def request(**overrides: Any) -> TokenRequest:
    rendered = placement(**overrides).render(FIELDS)
    assert rendered.oauth2 is not None
    return rendered.oauth2


def bad(**overrides: Any) -> str:
    with pytest.raises(ConfigError) as e:
        placement(**overrides)
    message = str(e.value)
    assert message.startswith("conn: inject.oauth2")
    return message


def form(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True))


# -- spec ----------------------------------------------------------------------


def test_client_credentials_spec_round_trips() -> None:
    p = placement(scope=["read", "write"])
    assert p.grant == "client_credentials"
    assert p.client_auth == "basic"
    assert p.scope == "read write"
    assert p.fields() == {"secret"}
    assert p.where == "header Authorization"
    assert "auth.example.com" in p.describe()
    assert OAuth2Placement.from_spec(p.to_spec(), "conn") == p
    assert "s3cr3t" not in repr(p.render(FIELDS))


def test_refresh_token_spec_and_fields() -> None:
    p = OAuth2Placement.from_spec({"oauth2": RT}, "conn")
    assert p.fields() == {"client_id", "client_secret", "refresh_token"}
    rendered = p.render(FIELDS)
    assert rendered.oauth2 is not None
    assert rendered.oauth2.refresh_token == "rt-1"
    assert rendered.secrets == ("cs", "rt-1")
    assert rendered.headers == ()
    assert OAuth2Placement.from_spec(p.to_spec(), "conn") == p


def test_token_url_is_normalised() -> None:
    assert placement(token_url="HTTPS://Auth.Example.COM:443/t?x=1").token_url == (
        "https://auth.example.com/t?x=1"
    )
    assert placement(token_url="https://auth.example.com:8443").token_url == "https://auth.example.com:8443/"
    req = request(token_url="https://[::1]:9443/token")
    assert (req.host, req.port, req.path) == ("::1", 9443, "/token")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://auth.example.com/token", "must be https://"),
        ("ftp://auth.example.com/token", "must be https://"),
        ("auth.example.com/token", "must be https://"),
        ("https://user:pw@auth.example.com/token", "userinfo"),
        ("https:///token", "empty host"),
        ("https://auth.example.com:0/token", "invalid port"),
        ("https://auth.example.com:99999/token", "invalid port"),
        ("https://0x7f.1/token", "ambiguous numeric host"),
        ("https://auth.example.com/token#frag", "fragment"),
        ("https://auth.example.com/to ken", "spaces"),
        ("https://auth.example.com/token\r\nX: y", "control characters"),
        (42, "must be an https:// URL"),
        (None, "must be an https:// URL"),
    ],
)
def test_bad_token_urls(url: object, words: str) -> None:
    message = bad(token_url=url)
    assert "token_url" in message
    assert words in message


def test_unknown_grant_and_client_auth() -> None:
    assert "grant 'password' is not one of client_credentials, refresh_token" in bad(grant="password")
    assert "grant" in bad(grant=None)
    assert "client_auth 'jwt'" in bad(client_auth="jwt")


def test_refresh_token_required_for_refresh_grant_only() -> None:
    assert "refresh_token is required for the refresh_token grant" in bad(grant="refresh_token")
    assert "refresh_token grant only" in bad(refresh_token="{{refresh_token}}")


def test_unknown_template_field_is_named_by_the_connector() -> None:
    from proxy.connectors import make_connector

    inject = {"oauth2": {**CC, "client_secret": "{{client_secrte}}"}}
    with pytest.raises(ConfigError) as e:
        make_connector("c", patterns=["https://api.example.com/*"], inject=inject, fields=["client_secret"])
    assert "client_secrte" in str(e.value)
    assert "'c'" in str(e.value)
    ok = make_connector("c", patterns=["https://api.example.com/*"], inject=inject, fields=["client_secrte"])
    assert ok.inject.fields() == {"client_secrte"}


@pytest.mark.parametrize("template", ["{{ secret }}", "{{secret}", "{{1x}}", "x}}"])
def test_malformed_placeholders(template: str) -> None:
    assert "client_secret" in bad(client_secret=template)


def test_secrets_never_sit_in_the_file() -> None:
    assert "client_secret must come from a field" in bad(client_secret="hunter2")
    assert "refresh_token must come from a field" in bad(grant="refresh_token", refresh_token="rt-literal")
    # The client id is an identifier, not a secret: a literal is fine.
    assert placement(client_id="literal-id").client_id == "literal-id"


def test_other_bad_specs() -> None:
    assert "unknown key(s) audience" in bad(audience="x")
    assert "client_id must be a non-empty string" in bad(client_id="")
    assert "client_secret must be a non-empty string" in bad(client_secret=None)
    assert "control characters" in bad(client_id="a\nb")
    assert "scope" in bad(scope='read "write"')
    assert "scope" in bad(scope="read  write")
    assert "scope" in bad(scope=[1])
    with pytest.raises(ConfigError, match=r"conn: inject.oauth2 must be a mapping"):
        OAuth2Placement.from_spec({"oauth2": "https://auth.example.com"}, "conn")


def test_render_names_a_missing_field() -> None:
    p = OAuth2Placement.from_spec({"oauth2": RT}, "conn")
    with pytest.raises(ConfigError, match="refresh_token"):
        p.render({"client_id": "id", "client_secret": "cs"})


def test_repr_hides_credentials() -> None:
    req = request(grant="refresh_token", refresh_token="{{refresh_token}}")
    shown = repr(req) + str(req) + repr(req.build())
    for secret in ("s3cr3t", "rt-1", "my-app"):
        assert secret not in shown
    token = Token("at-123", 10.0, "rt-2", issued_at=0.0)
    assert "at-123" not in repr(token)
    assert "rt-2" not in repr(token)


def test_changed_secret_makes_a_different_request() -> None:
    p = placement()
    assert p.render(FIELDS).oauth2 == p.render(dict(FIELDS)).oauth2
    assert p.render(FIELDS).oauth2 != p.render({**FIELDS, "secret": "rotated"}).oauth2


# -- the request ---------------------------------------------------------------

ODD = "p@ss w:rd/&=+%é"


def test_basic_client_auth() -> None:
    call = request(client_id="id:with space", scope="read write").build()
    assert (call.method, call.host, call.port, call.path) == ("POST", "auth.example.com", 443, "/oauth/token")
    headers = dict(call.headers)
    assert headers["Host"] == "auth.example.com"
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert headers["Connection"] == "close"
    assert headers["Content-Length"] == str(len(call.body))
    assert form(call.body) == {"grant_type": "client_credentials", "scope": "read write"}
    scheme, _, encoded = headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(encoded).decode("ascii").partition(":")
    # RFC 6749 2.3.1: each part form-urlencoded before Basic, so ':' in the id survives.
    assert (user, password) == ("id%3Awith+space", "s3cr3t")
    assert (unquote_plus(user), unquote_plus(password)) == ("id:with space", "s3cr3t")


def test_basic_credentials_encode_odd_characters() -> None:
    value = basic_credentials(ODD, ODD)
    user, _, password = base64.b64decode(value.removeprefix("Basic ")).decode("ascii").partition(":")
    assert ":" not in user + password
    assert unquote_plus(user) == unquote_plus(password) == ODD


def test_body_client_auth_encodes_odd_characters() -> None:
    req = request(client_auth="body", client_id=ODD)
    call = req.build()
    assert "Authorization" not in dict(call.headers)
    assert form(call.body) == {
        "grant_type": "client_credentials",
        "client_id": ODD,
        "client_secret": "s3cr3t",
    }
    raw = call.body.decode("ascii")
    assert " " not in raw and "@" not in raw and "é" not in raw
    assert "client_id=p%40ss+w%3Ard%2F%26%3D%2B%25%C3%A9" in raw
    assert req.secrets == ("s3cr3t",)


def test_refresh_grant_sends_the_refresh_token() -> None:
    req = OAuth2Placement.from_spec({"oauth2": {**RT, "scope": "offline"}}, "c").render(FIELDS).oauth2
    assert req is not None
    assert form(req.build().body) == {
        "grant_type": "refresh_token",
        "refresh_token": "rt-1",
        "scope": "offline",
    }
    assert form(req.with_refresh_token("rt-2").build().body)["refresh_token"] == "rt-2"


def test_port_in_host_header() -> None:
    assert dict(request(token_url="https://auth.example.com:8443/t").build().headers)["Host"] == (
        "auth.example.com:8443"
    )


# -- the answer ----------------------------------------------------------------


def answer(status: int, body: Any, now: float = 1000.0) -> Token | TokenFailure:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request().parse(status, raw, now)


def test_good_answer() -> None:
    token = answer(200, {"access_token": "at-1", "token_type": "bearer", "expires_in": 120})
    assert token == Token("at-1", 1120.0, None, issued_at=1000.0)
    rotated = answer(200, {"access_token": "at-1", "token_type": "Bearer", "refresh_token": "rt-9"})
    assert isinstance(rotated, Token)
    assert rotated.refresh_token == "rt-9"


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(None, DEFAULT_LIFETIME), (3, 3.0), ("60", 60.0), (1.5, 1.5), (10**12, MAX_LIFETIME)],
)
def test_expires_in(expires_in: object, lifetime: float) -> None:
    body: dict[str, Any] = {"access_token": "at"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    token = answer(200, body, now=0.0)
    assert isinstance(token, Token)
    assert token.expires_at == lifetime


@pytest.mark.parametrize("expires_in", [0, -5, "soon", "1e3", True, [60], {"s": 1}])
def test_odd_expires_in_is_refused(expires_in: object) -> None:
    assert answer(200, {"access_token": "at", "expires_in": expires_in}) == TokenFailure(
        "expires_in is not a positive number"
    )


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_expires_in_is_refused(constant: bytes) -> None:
    assert isinstance(answer(200, b'{"access_token": "at", "expires_in": ' + constant + b"}"), TokenFailure)


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (200, {"token_type": "Bearer"}, "response has no access_token"),
        (200, {"access_token": ""}, "response has no access_token"),
        (200, {"access_token": 7}, "response has no access_token"),
        (200, {"access_token": "a b"}, "access_token has characters a header cannot carry"),
        (200, {"access_token": "a\r\nSet-Cookie: x"}, "access_token has characters a header cannot carry"),
        (200, {"access_token": "at", "token_type": "mac"}, "token_type is not Bearer"),
        (200, {"access_token": "at", "refresh_token": 5}, "refresh_token in the response is not a token"),
        (200, b"<html>hello</html>", "response is not JSON"),
        (200, b"\xff\xfe", "response is not JSON"),
        (200, b"", "response is not JSON"),
        (200, ["access_token"], "response is not a JSON object"),
        (500, b"oops", "token endpoint answered 500"),
        (302, b"", "token endpoint answered 302"),
        (401, {"error": "invalid_client"}, "token endpoint answered 401 (invalid_client)"),
        (
            400,
            {"error": "invalid_grant", "error_description": "rt-1 s3cr3t"},
            "token endpoint answered 400 (invalid_grant)",
        ),
        # An error code the RFC does not define is not repeated: it could be anything.
        (400, {"error": "s3cr3t"}, "token endpoint answered 400"),
        (200, {"error": "invalid_scope"}, "response has no access_token"),
    ],
)
def test_failures_say_why_without_secrets(status: int, body: Any, reason: str) -> None:
    result = answer(status, body)
    assert result == TokenFailure(reason)
    assert isinstance(result, TokenFailure)
    for secret in ("s3cr3t", "rt-1"):
        assert secret not in result.reason


# -- when to refresh -----------------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [(3.0, 0.3), (1.0, 0.1), (300.0, 30.0), (600.0, 60.0), (3600.0, 60.0), (0.0, 0.0)],
)
def test_refresh_margin(lifetime: float, margin: float) -> None:
    token = Token("at", 100.0 + lifetime, issued_at=100.0)
    assert refresh_at(token) == pytest.approx(100.0 + lifetime - margin)
    assert refresh_at(token) <= token.expires_at

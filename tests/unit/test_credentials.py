"""Credential placements (header, query) and the secret sources they are read from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.connectors import make_connector
from proxy.credentials import HeaderPlacement, QueryPlacement, placement_from_spec
from proxy.credentials.header import FORBIDDEN_HEADERS
from proxy.credentials.query import with_query_item
from proxy.credentials.sources import SecretSource, check_secret, source_from_yaml
from proxy.errors import ConfigError
from tests.harness import config_error

HEADER = {"header": "Authorization", "template": "Bearer {{secret}}"}
PAT = ["https://api.example.com/*"]


# -- injection -----------------------------------------------------------------


@pytest.mark.parametrize(
    "header", ["Authorization", "X-Api-Key", "x-api-key", "api_key", "X.Key", "Ocp-Apim-Subscription-Key"]
)
def test_valid_headers(header: str) -> None:
    inj = placement_from_spec({"header": header}, "c")
    assert inj.header == header
    assert inj.template == "Bearer {{secret}}"
    assert not isinstance(inj, QueryPlacement)


@pytest.mark.parametrize(
    "header",
    ["", "X Key", "X:Key", ":authority", "X-Key\r\n", "X-Key\n", "X\x00", "X-K\u00e9y", "(x)", 5],
)
def test_invalid_header_names(header: Any) -> None:
    msg = config_error(placement_from_spec, {"header": header}, "connector 'c'")
    assert "connector 'c'" in msg
    assert "inject.header" in msg


@pytest.mark.parametrize(
    "header",
    [
        "Host",
        "host",
        "HOST",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Cookie",
        "Set-Cookie",
        "Proxy-Authorization",
        "Upgrade",
        "TE",
        "Expect",
        "Keep-Alive",
        "Trailer",
        "Proxy-Connection",
    ],
)
def test_forbidden_headers(header: str) -> None:
    assert header.lower() in FORBIDDEN_HEADERS
    msg = config_error(placement_from_spec, {"header": header}, "connector 'c'")
    assert "cannot carry a secret" in msg
    assert header in msg


@pytest.mark.parametrize(
    "template", ["{{secret}}", "Bearer {{secret}}", "token={{secret}}; v=1", "{{secret}}{{secret}}"]
)
def test_valid_templates(template: str) -> None:
    inj = placement_from_spec({"header": "X-Key", "template": template}, "c")
    assert inj.render({"secret": "S"}).headers[0][1] == template.replace("{{secret}}", "S")


@pytest.mark.parametrize("template", ["Bearer", "", "{{ secret }}", "{secret}", "{{1x}}", 5, None])
def test_template_must_contain_placeholder(template: Any) -> None:
    spec = {"header": "X-Key", "template": template}
    if template is None:
        # An explicit null means "default template".
        assert placement_from_spec(spec, "c").template == "Bearer {{secret}}"
        return
    assert "{{secret}}" in config_error(placement_from_spec, spec, "c")


@pytest.mark.parametrize("template", ["Bearer {{secret}}\r\nX-Evil: 1", "{{secret}}\n", "\x00{{secret}}"])
def test_template_control_characters_refused(template: str) -> None:
    assert "control" in config_error(placement_from_spec, {"header": "X-Key", "template": template}, "c")


@pytest.mark.parametrize("param", ["appid", "api_key", "key", "a.b", "a~b", "a-b", "key[]", "K3Y"])
def test_valid_query_params(param: str) -> None:
    inj = placement_from_spec({"query": param}, "c")
    assert inj.query == param
    assert not isinstance(inj, HeaderPlacement)


@pytest.mark.parametrize(
    "param", ["", "a b", "a=b", "a&b", "a#b", "a?b", "a%20b", "caf\u00e9", "a+b", "key\n", 5]
)
def test_invalid_query_params(param: Any) -> None:
    msg = config_error(placement_from_spec, {"query": param}, "connector 'c'")
    assert "inject.query" in msg


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"header": "X-Key", "query": "k"},
        {"template": "{{secret}}"},
        {"query": "k", "basic": {"username": "{{u}}", "password": "{{p}}"}},
        {"basic": {"username": "{{u}}", "password": "{{p}}"}, "template": "{{secret}}"},
        {"header": "X-Key", "bogus": 1},
        "Authorization",
        ["header", "X"],
    ],
)
def test_invalid_injection_shapes(spec: Any) -> None:
    assert "connector 'c'" in config_error(placement_from_spec, spec, "connector 'c'")


def test_inject_required_without_preset() -> None:
    assert "inject is required" in config_error(make_connector, "c", patterns=PAT, inject=None)


def test_query_item_is_percent_encoded() -> None:
    inj = QueryPlacement("appid")
    assert inj.render({"secret": "a b/&=?#+%"}).query[0][1] == "appid=a%20b%2F%26%3D%3F%23%2B%25"


def test_injection_round_trips_to_dict() -> None:
    for spec in ({"header": "X-Key", "template": "K {{secret}}"}, {"query": "appid"}):
        assert placement_from_spec(placement_from_spec(spec, "c").to_spec(), "c").to_spec() == spec


# -- secrets -------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret", ["sk\nlive", "sk\rlive", "sk\x00", "\x00", "a\tb", "x\x7f", "line1\r\nline2"]
)
def test_secrets_with_control_characters_refused(secret: str) -> None:
    msg = config_error(check_secret, secret, "where")
    assert msg.startswith("where:")
    assert secret not in msg


def test_empty_and_oversized_secrets_refused() -> None:
    assert "empty" in config_error(check_secret, "", "w")
    assert "longer" in config_error(check_secret, "x" * (16 * 1024 + 1), "w")
    assert check_secret("x" * (16 * 1024), "w") == "x" * (16 * 1024)


def test_good_secret_passes_unchanged() -> None:
    assert check_secret("sk_live_ABC+/=~ \u00e9", "w") == "sk_live_ABC+/=~ \u00e9"


def test_source_from_yaml_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESS_TEST_SECRET", "s3cret\n")
    assert SecretSource("env", "EGRESS_TEST_SECRET").read("w") == "s3cret"
    monkeypatch.setenv("EGRESS_TEST_SECRET", "s3\ncret")
    msg = config_error(SecretSource("env", "EGRESS_TEST_SECRET").read, "f.yaml: connector 'x': secret")
    assert msg.startswith("f.yaml: connector 'x': secret")
    assert "s3\ncret" not in msg


def test_source_from_yaml_missing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EGRESS_TEST_NOPE", raising=False)
    msg = config_error(SecretSource("env", "EGRESS_TEST_NOPE").read, "f.yaml: connector 'x': secret")
    assert "f.yaml" in msg
    assert "'x'" in msg
    assert "EGRESS_TEST_NOPE" in msg


def test_source_from_yaml_file(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_text("file-secret\r\n")
    assert SecretSource("file", str(f)).read("w") == "file-secret"
    missing = tmp_path / "missing"
    msg = config_error(SecretSource("file", str(missing)).read, "f.yaml: connector 'x': secret")
    assert str(missing) in msg
    assert "'x'" in msg
    f.write_bytes(b"\xff\xfe\x00bad")
    assert str(f) in config_error(SecretSource("file", str(f)).read, "w")


@pytest.mark.parametrize(
    "spec",
    [
        "sk_live_inline",
        {"env": "A", "file": "/b"},
        {"value": "sk_live_inline"},
        {},
        None,
        {"env": ""},
        {"file": 5},
    ],
)
def test_source_from_yaml_shapes(spec: Any) -> None:
    msg = config_error(source_from_yaml, spec, "f.yaml: connectors[0] (x)")
    assert msg.startswith("f.yaml: connectors[0] (x): secret")
    assert "sk_live_inline" not in msg


# -- with_query_item ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/x", "/x?api_key=NEW"),
        ("/x?", "/x?api_key=NEW"),
        ("/x?api_key=old", "/x?api_key=NEW"),
        ("/x?api_key", "/x?api_key=NEW"),
        ("/x?api_key=1&api_key=2", "/x?api_key=NEW"),
        ("/x?%61pi_key=evil", "/x?api_key=NEW"),
        ("/x?%61%70%69%5f%6b%65%79=evil", "/x?api_key=NEW"),
        ("/x?api%5Fkey=evil&a=1", "/x?a=1&api_key=NEW"),
        ("/x?a=1&api_key=old&b=2", "/x?a=1&b=2&api_key=NEW"),
        ("/x?API_KEY=keep", "/x?API_KEY=keep&api_key=NEW"),
        ("/x?api_keys=keep", "/x?api_keys=keep&api_key=NEW"),
        ("/x?xapi_key=keep", "/x?xapi_key=keep&api_key=NEW"),
        ("/x?%2561pi_key=keep", "/x?%2561pi_key=keep&api_key=NEW"),
    ],
)
def test_with_query_item(path: str, expected: str) -> None:
    assert with_query_item(path, "api_key", "api_key=NEW") == expected


def test_with_query_item_keeps_other_params_byte_identical() -> None:
    others = ["b=%20x", "c=1+2", "d", "e=", "f=%C3%A9", "g=a=b", "h=%2F%2f", "%7E=~", "i=%41"]
    query = "&".join([others[0], "api_key=1", *others[1:5], "%61pi_key=2", *others[5:]])
    out = with_query_item(f"/p/a%20th?{query}", "api_key", "api_key=NEW")
    base, _, q = out.partition("?")
    assert base == "/p/a%20th"
    assert q.split("&") == [*others, "api_key=NEW"]


def test_with_query_item_appends_exactly_one_copy() -> None:
    out = with_query_item("/x?api_key=a&%61pi_key=b&api%5fkey=c&z=1", "api_key", "api_key=S")
    assert out.count("api_key=") == 1
    assert out.endswith("&api_key=S")


# -- fields: rendering can never break out of a header ------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(values=st.dictionaries(st.sampled_from(["secret", "user", "org"]), st.text(max_size=40), min_size=3))
def test_rendering_never_injects_a_header(values: dict[str, str]) -> None:
    from proxy.credentials.sources import parse_properties

    try:
        fields = parse_properties(json.dumps(values), "props")
    except ConfigError:
        # refused values are exactly those that could break a header, or are empty
        assert any(not v or any(ord(c) < 32 or ord(c) == 127 for c in v) for v in values.values())
        return
    for spec in (
        {"header": "X-Key", "template": "k={{secret}};u={{user}}"},
        {"headers": {"X-A": "{{secret}}", "X-B": "{{org}}-{{user}}"}},
        {"query": "key", "template": "{{secret}}:{{org}}"},
    ):
        rendered = placement_from_spec(spec, "c").render(fields)
        for name, value in rendered.headers:
            assert not any(ch in value for ch in "\r\n\x00"), (name, value)
        for _, item in rendered.query:
            assert all(32 < ord(c) < 127 for c in item), item
    if ":" not in fields["user"]:
        basic = placement_from_spec({"basic": {"username": "{{user}}", "password": "{{secret}}"}}, "c")
        ((_, value),) = basic.render(fields).headers
        assert value.startswith("Basic ") and value.isascii() and "\n" not in value


def test_basic_username_with_colon_is_refused() -> None:
    basic = placement_from_spec({"basic": {"username": "{{u}}", "password": "{{p}}"}}, "c")
    with pytest.raises(ConfigError, match="':'"):
        basic.render({"u": "a:b", "p": "x"})

"""Connector validation, presets, YAML loading (DESIGN §5) and Policy decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.connectors import (
    FORBIDDEN_HEADERS,
    MAX_PATTERNS,
    PRESETS,
    Injection,
    SecretSource,
    check_name,
    check_secret,
    load_yaml,
    make_connector,
    make_injection,
    secret_source,
)
from proxy.errors import ConfigError
from proxy.policy import Allow, Block, Policy, Reason, Target, with_query_item

HEADER = {"header": "Authorization", "template": "Bearer {{secret}}"}
PAT = ["https://api.example.com/*"]


def bad(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    return str(e.value)


# -- names -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "0", "stripe", "my-api_2", "a" * 63, "9lives", "a-", "a_"])
def test_valid_names(name: str) -> None:
    assert make_connector(name, patterns=PAT, inject=HEADER).name == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",
        "Stripe",
        "-a",
        "_a",
        "a" * 64,
        "a b",
        "a.b",
        "a/b",
        "caf\u00e9",
        None,
        42,
        "a\n",
        "stripe\n",
        "a\r",
        "a\x00",
    ],
)
def test_invalid_names(name: Any) -> None:
    msg = bad(make_connector, name, patterns=PAT, inject=HEADER)
    assert "name" in msg


def test_check_name_message_names_the_place() -> None:
    msg = bad(check_name, "Bad", "cfg.yaml: connectors[3]")
    assert msg.startswith("cfg.yaml: connectors[3]: name 'Bad' is invalid")


# -- patterns ----------------------------------------------------------------


def test_one_to_twenty_patterns() -> None:
    patterns = [f"https://api{i}.example.com/*" for i in range(MAX_PATTERNS)]
    assert MAX_PATTERNS == 20
    c = make_connector("c", patterns=patterns, inject=HEADER)
    assert [p.text for p in c.patterns] == patterns
    assert len(make_connector("c", patterns=patterns[:1], inject=HEADER).patterns) == 1


def test_twenty_one_patterns_refused() -> None:
    patterns = [f"https://api{i}.example.com/*" for i in range(21)]
    msg = bad(make_connector, "c", patterns=patterns, inject=HEADER)
    assert "21 patterns" in msg
    assert "20" in msg
    assert "'c'" in msg


@pytest.mark.parametrize("patterns", [None, [], ()])
def test_zero_patterns_refused(patterns: Any) -> None:
    assert "at least one pattern" in bad(make_connector, "c", patterns=patterns, inject=HEADER)


@pytest.mark.parametrize("patterns", ["https://api.example.com/*", {"a": 1}, 5])
def test_patterns_must_be_a_list(patterns: Any) -> None:
    assert "list" in bad(make_connector, "c", patterns=patterns, inject=HEADER)


def test_bad_pattern_error_names_connector_and_index() -> None:
    msg = bad(
        make_connector,
        "weather",
        patterns=["https://ok.example.com/*", "http://plain.example.com/*"],
        inject=HEADER,
    )
    assert "'weather'" in msg
    assert "patterns[1]" in msg
    assert "http://plain.example.com/*" in msg


def test_non_string_pattern_refused() -> None:
    assert "patterns[0]" in bad(make_connector, "c", patterns=[123], inject=HEADER)


# -- injection -----------------------------------------------------------------


@pytest.mark.parametrize(
    "header", ["Authorization", "X-Api-Key", "x-api-key", "api_key", "X.Key", "Ocp-Apim-Subscription-Key"]
)
def test_valid_headers(header: str) -> None:
    inj = make_injection({"header": header}, "c")
    assert inj.header == header
    assert inj.template == "Bearer {{secret}}"
    assert inj.query is None


@pytest.mark.parametrize(
    "header",
    ["", "X Key", "X:Key", ":authority", "X-Key\r\n", "X-Key\n", "X\x00", "X-K\u00e9y", "(x)", 5],
)
def test_invalid_header_names(header: Any) -> None:
    msg = bad(make_injection, {"header": header}, "connector 'c'")
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
    msg = bad(make_injection, {"header": header}, "connector 'c'")
    assert "cannot carry a secret" in msg
    assert header in msg


@pytest.mark.parametrize(
    "template", ["{{secret}}", "Bearer {{secret}}", "token={{secret}}; v=1", "{{secret}}{{secret}}"]
)
def test_valid_templates(template: str) -> None:
    inj = make_injection({"header": "X-Key", "template": template}, "c")
    assert inj.header_value("S") == template.replace("{{secret}}", "S")


@pytest.mark.parametrize("template", ["Bearer", "", "{{ secret }}", "{secret}", "{{SECRET}}", 5, None])
def test_template_must_contain_placeholder(template: Any) -> None:
    spec = {"header": "X-Key", "template": template}
    if template is None:
        # An explicit null means "default template".
        assert make_injection(spec, "c").template == "Bearer {{secret}}"
        return
    assert "{{secret}}" in bad(make_injection, spec, "c")


@pytest.mark.parametrize("template", ["Bearer {{secret}}\r\nX-Evil: 1", "{{secret}}\n", "\x00{{secret}}"])
def test_template_control_characters_refused(template: str) -> None:
    assert "control" in bad(make_injection, {"header": "X-Key", "template": template}, "c")


@pytest.mark.parametrize("param", ["appid", "api_key", "key", "a.b", "a~b", "a-b", "key[]", "K3Y"])
def test_valid_query_params(param: str) -> None:
    inj = make_injection({"query": param}, "c")
    assert inj.query == param
    assert inj.header is None


@pytest.mark.parametrize(
    "param", ["", "a b", "a=b", "a&b", "a#b", "a?b", "a%20b", "caf\u00e9", "a+b", "key\n", 5]
)
def test_invalid_query_params(param: Any) -> None:
    msg = bad(make_injection, {"query": param}, "connector 'c'")
    assert "inject.query" in msg


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"header": "X-Key", "query": "k"},
        {"template": "{{secret}}"},
        {"query": "k", "template": "{{secret}}"},
        {"header": "X-Key", "bogus": 1},
        "Authorization",
        ["header", "X"],
    ],
)
def test_invalid_injection_shapes(spec: Any) -> None:
    assert "connector 'c'" in bad(make_injection, spec, "connector 'c'")


def test_inject_required_without_preset() -> None:
    assert "inject is required" in bad(make_connector, "c", patterns=PAT, inject=None)


def test_query_item_is_percent_encoded() -> None:
    inj = Injection(query="appid")
    assert inj.query_item("a b/&=?#+%") == "appid=a%20b%2F%26%3D%3F%23%2B%25"


def test_injection_round_trips_to_dict() -> None:
    for spec in ({"header": "X-Key", "template": "K {{secret}}"}, {"query": "appid"}):
        assert make_injection(make_injection(spec, "c").to_dict(), "c").to_dict() == spec


# -- secrets -------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret", ["sk\nlive", "sk\rlive", "sk\x00", "\x00", "a\tb", "x\x7f", "line1\r\nline2"]
)
def test_secrets_with_control_characters_refused(secret: str) -> None:
    msg = bad(check_secret, secret, "where")
    assert msg.startswith("where:")
    assert secret not in msg


def test_empty_and_oversized_secrets_refused() -> None:
    assert "empty" in bad(check_secret, "", "w")
    assert "longer" in bad(check_secret, "x" * (16 * 1024 + 1), "w")
    assert check_secret("x" * (16 * 1024), "w") == "x" * (16 * 1024)


def test_good_secret_passes_unchanged() -> None:
    assert check_secret("sk_live_ABC+/=~ \u00e9", "w") == "sk_live_ABC+/=~ \u00e9"


def test_secret_source_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESS_TEST_SECRET", "s3cret\n")
    assert SecretSource(env="EGRESS_TEST_SECRET").read("w") == "s3cret"
    monkeypatch.setenv("EGRESS_TEST_SECRET", "s3\ncret")
    msg = bad(SecretSource(env="EGRESS_TEST_SECRET").read, "f.yaml: connector 'x': secret")
    assert msg.startswith("f.yaml: connector 'x': secret")
    assert "s3\ncret" not in msg


def test_secret_source_missing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EGRESS_TEST_NOPE", raising=False)
    msg = bad(SecretSource(env="EGRESS_TEST_NOPE").read, "f.yaml: connector 'x': secret")
    assert "f.yaml" in msg
    assert "'x'" in msg
    assert "EGRESS_TEST_NOPE" in msg


def test_secret_source_file(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_text("file-secret\r\n")
    assert SecretSource(file=str(f)).read("w") == "file-secret"
    missing = tmp_path / "missing"
    msg = bad(SecretSource(file=str(missing)).read, "f.yaml: connector 'x': secret")
    assert str(missing) in msg
    assert "'x'" in msg
    f.write_bytes(b"\xff\xfe\x00bad")
    assert str(f) in bad(SecretSource(file=str(f)).read, "w")


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
def test_secret_source_shapes(spec: Any) -> None:
    msg = bad(secret_source, spec, "f.yaml: connectors[0] (x)")
    assert msg.startswith("f.yaml: connectors[0] (x): secret")
    assert "sk_live_inline" not in msg


# -- presets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "host"),
    [
        ("stripe", "api.stripe.com"),
        ("github", "api.github.com"),
        ("openai", "api.openai.com"),
        ("slack", "slack.com"),
    ],
)
def test_presets_fill_patterns_and_inject(preset: str, host: str) -> None:
    assert preset in PRESETS
    c = make_connector("c", preset=preset)
    assert c.preset == preset
    assert c.patterns
    assert any(p.host == host for p in c.patterns)
    assert c.inject.header == "Authorization"
    assert "{{secret}}" in c.inject.template
    assert c.to_spec()["preset"] == preset


def test_explicit_fields_override_preset() -> None:
    c = make_connector(
        "c",
        preset="stripe",
        patterns=["https://api.stripe.com/v1/charges/*"],
        inject={"header": "X-Stripe-Key", "template": "{{secret}}"},
    )
    assert [p.text for p in c.patterns] == ["https://api.stripe.com/v1/charges/*"]
    assert c.inject == Injection(header="X-Stripe-Key", template="{{secret}}")
    only_patterns = make_connector("c", preset="github", patterns=["https://api.github.com/repos/*"])
    assert only_patterns.inject.header == "Authorization"
    assert [p.text for p in only_patterns.patterns] == ["https://api.github.com/repos/*"]
    only_inject = make_connector("c", preset="openai", inject={"query": "key"})
    assert only_inject.inject == Injection(query="key")
    assert [p.text for p in only_inject.patterns] == PRESETS["openai"]["patterns"]


def test_using_preset_does_not_mutate_it() -> None:
    before = {k: (list(v["patterns"]), dict(v["inject"])) for k, v in PRESETS.items()}
    make_connector("c", preset="stripe", patterns=["https://x.example.com/*"])
    make_connector("c", preset="stripe")
    assert {k: (list(v["patterns"]), dict(v["inject"])) for k, v in PRESETS.items()} == before


def test_unknown_preset() -> None:
    msg = bad(make_connector, "c", preset="strype")
    assert "'strype'" in msg
    assert "stripe" in msg
    assert "'c'" in msg


# -- YAML ------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "connectors.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = """\
connectors:
  - name: stripe
    preset: stripe
    secret: {env: STRIPE_API_KEY}
  - name: weather
    patterns: ["https://api.weather.example/v1/*"]
    secret: {file: /run/secrets/weather}
    inject: {query: appid}
  - name: custom
    patterns:
      - "https://api.custom.example/*"
      - "https://*.custom.example/upload/*"
    secret: {env: CUSTOM}
    inject: {header: X-Api-Key, template: "{{secret}}"}
"""


def test_load_good_yaml(tmp_path: Path) -> None:
    declared = load_yaml(write(tmp_path, GOOD))
    assert [d.connector.name for d in declared] == ["stripe", "weather", "custom"]
    stripe, weather, custom = declared
    assert stripe.connector.preset == "stripe"
    assert stripe.secret == SecretSource(env="STRIPE_API_KEY")
    assert weather.secret == SecretSource(file="/run/secrets/weather")
    assert weather.connector.inject == Injection(query="appid")
    assert custom.connector.inject == Injection(header="X-Api-Key", template="{{secret}}")
    assert [p.text for p in custom.connector.patterns] == [
        "https://api.custom.example/*",
        "https://*.custom.example/upload/*",
    ]


def test_explicitly_empty_file(tmp_path: Path) -> None:
    assert load_yaml(write(tmp_path, "connectors: []\n")) == []


@pytest.mark.parametrize("text", ["", "connectors:\n", "# only a comment\n"])
def test_blank_files_are_refused_not_read_as_no_connectors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="connectors: \\[\\]"):
        load_yaml(write(tmp_path, text))


def test_demo_config_loads() -> None:
    demo = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
    declared = load_yaml(demo)
    assert [d.connector.name for d in declared] == ["demo"]


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.yaml"
    assert str(p) in bad(load_yaml, p)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            'connectors:\n  - name: a\n    patterns: ["https://a.example.com/*"]\n'
            "    secret: {env: X\n    inject: {query: appid}\n",
            5,
        ),
        ("connectors:\n  - name: a\n\tpatterns: [x]\n", 3),
        ("connectors:\n  - name: a\n    patterns: [x]\n   bad: : :\n", 4),
    ],
)
def test_broken_yaml_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    p = write(tmp_path, text)
    msg = bad(load_yaml, p)
    assert msg.startswith(str(p))
    assert f"line {line}" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_mapping(tmp_path: Path, text: str) -> None:
    p = write(tmp_path, text)
    assert str(p) in bad(load_yaml, p)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    p = write(tmp_path, "connectors: []\nconectors: []\n")
    msg = bad(load_yaml, p)
    assert str(p) in msg
    assert "conectors" in msg


def test_connectors_must_be_a_list(tmp_path: Path) -> None:
    p = write(tmp_path, "connectors:\n  stripe: {preset: stripe}\n")
    assert "list" in bad(load_yaml, p)


def test_connector_must_be_mapping(tmp_path: Path) -> None:
    p = write(tmp_path, "connectors:\n  - stripe\n")
    msg = bad(load_yaml, p)
    assert str(p) in msg
    assert "connectors[0]" in msg


def test_unknown_connector_key(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "connectors:\n  - name: good\n    preset: openai\n    secret: {env: A}\n"
        "  - name: typo\n    preset: stripe\n    secret: {env: B}\n    injcet: {query: k}\n",
    )
    msg = bad(load_yaml, p)
    assert str(p) in msg
    assert "connectors[1]" in msg
    assert "typo" in msg
    assert "injcet" in msg


def test_duplicate_names(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "connectors:\n  - name: dup\n    preset: openai\n    secret: {env: A}\n"
        "  - name: dup\n    preset: stripe\n    secret: {env: B}\n",
    )
    msg = bad(load_yaml, p)
    assert str(p) in msg
    assert "duplicate" in msg
    assert "dup" in msg
    assert "connectors[1]" in msg


def test_inline_secret_refused_and_not_echoed(tmp_path: Path) -> None:
    p = write(tmp_path, "connectors:\n  - name: s\n    preset: stripe\n    secret: sk_live_INLINE_VALUE\n")
    msg = bad(load_yaml, p)
    assert str(p) in msg
    assert "(s)" in msg
    assert "secret" in msg
    assert "sk_live_INLINE_VALUE" not in msg


def test_missing_secret_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "connectors:\n  - name: s\n    preset: stripe\n")
    msg = bad(load_yaml, p)
    assert str(p) in msg
    assert "secret" in msg


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('    patterns: ["http://a.example.com/*"]\n    inject: {query: k}\n', "patterns[0]"),
        ('    patterns: ["https://a.example.com/*"]\n    inject: {header: Host}\n', "inject.header"),
        (
            '    patterns: ["https://a.example.com/*"]\n    inject: {header: X, template: "no"}\n',
            "inject.template",
        ),
        ('    patterns: ["https://a.example.com/*"]\n    inject: {query: "a b"}\n', "inject.query"),
        ('    patterns: ["https://a.example.com/*"]\n', "inject"),
        ("    inject: {query: k}\n", "pattern"),
        ('    preset: nope\n    patterns: ["https://a.example.com/*"]\n', "preset"),
    ],
)
def test_field_errors_name_file_connector_and_field(tmp_path: Path, body: str, field: str) -> None:
    p = write(
        tmp_path,
        "connectors:\n  - name: fine\n    preset: openai\n    secret: {env: A}\n"
        "  - name: broken\n    secret: {env: B}\n" + body,
    )
    msg = bad(load_yaml, p)
    assert msg.startswith(f"{p}: connectors[1] (broken)")
    assert field in msg


def test_too_many_patterns_in_yaml(tmp_path: Path) -> None:
    pats = "".join(f'      - "https://h{i}.example.com/*"\n' for i in range(21))
    p = write(
        tmp_path,
        "connectors:\n  - name: many\n    secret: {env: A}\n    inject: {query: k}\n    patterns:\n" + pats,
    )
    msg = bad(load_yaml, p)
    assert str(p) in msg
    assert "(many)" in msg
    assert "21 patterns" in msg


def test_invalid_name_in_yaml(tmp_path: Path) -> None:
    p = write(tmp_path, "connectors:\n  - name: Bad Name\n    preset: openai\n    secret: {env: A}\n")
    msg = bad(load_yaml, p)
    assert str(p) in msg
    assert "connectors[0]" in msg
    assert "Bad Name" in msg


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


# -- Policy ----------------------------------------------------------------------


def policy(*specs: tuple[str, list[str], dict[str, str], str | None]) -> Policy:
    return Policy(
        (make_connector(name, patterns=pats, inject=inj), secret) for name, pats, inj, secret in specs
    )


@pytest.fixture
def pol() -> Policy:
    return policy(
        ("stripe", ["https://api.stripe.com/*"], HEADER, "sk_live_1"),
        (
            "stripe-files",
            ["https://api.stripe.com/v1/files/*"],
            {"header": "X-Key", "template": "{{secret}}"},
            "fk",
        ),
        ("weather", ["https://api.weather.example/v1/*"], {"query": "appid"}, "w e/t"),
        ("wild", ["https://*.example.org/*"], HEADER, "wk"),
        ("dup-a", ["https://dup.example.net/v1/*"], HEADER, "a"),
        ("dup-b", ["https://dup.example.net/v1/*"], HEADER, "b"),
        ("alt", ["https://alt.example.com:8443/*"], HEADER, None),
    )


def test_explain_allow_header(pol: Policy) -> None:
    d = pol.explain("https://api.stripe.com/v1/charges?limit=3")
    assert isinstance(d, Allow)
    assert d.connector == "stripe"
    assert d.header == "Authorization"
    assert d.header_value == "Bearer sk_live_1"
    assert d.query is None


def test_explain_most_specific_connector(pol: Policy) -> None:
    d = pol.explain("https://api.stripe.com/v1/files/f_123")
    assert isinstance(d, Allow)
    assert d.connector == "stripe-files"
    assert d.header_value == "fk"


def test_explain_allow_query(pol: Policy) -> None:
    d = pol.explain("https://API.Weather.Example./v1")
    assert isinstance(d, Allow)
    assert d.connector == "weather"
    assert d.query == "appid"
    assert d.query_item == "appid=w%20e%2Ft"
    assert d.header is None


def test_secrets_not_in_repr(pol: Policy) -> None:
    for url in ("https://api.stripe.com/x", "https://api.weather.example/v1/x"):
        d = pol.explain(url)
        assert "sk_live_1" not in repr(d)
        assert "w%20e" not in repr(d)


def test_explain_allow_without_secret(pol: Policy) -> None:
    d = pol.explain("https://alt.example.com:8443/x")
    assert isinstance(d, Allow)
    assert d.connector == "alt"
    assert d.header_value is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://api.github.com/x", Reason.NO_CONNECTOR),
        ("https://api.stripe.com:8443/x", Reason.NO_CONNECTOR),
        ("https://alt.example.com/x", Reason.NO_CONNECTOR),
        ("https://api.weather.example/v2/x", Reason.NO_CONNECTOR),
        ("https://api.weather.example/v1x", Reason.NO_CONNECTOR),
        ("https://example.org/x", Reason.NO_CONNECTOR),
        ("https://api.stripe.com.evil.io/x", Reason.NO_CONNECTOR),
        ("https://api.stripe.com/v1/../admin", Reason.BAD_PATH),
        ("https://api.stripe.com/v1/%2e%2e/admin", Reason.BAD_PATH),
        ("https://api.stripe.com/v1%2fadmin", Reason.BAD_PATH),
        ("https://api.stripe.com/v1/%252e", Reason.BAD_PATH),
        ("https://api.stripe.com/a\\b", Reason.BAD_PATH),
        ("https://api.stripe.com/a/..;/b", Reason.BAD_PATH),
        ("https://dup.example.net/v1/x", Reason.AMBIGUOUS),
        ("https://dup.example.net/v1", Reason.AMBIGUOUS),
        ("http://api.stripe.com/v1/charges", Reason.PLAIN_HTTP),
        ("HTTP://api.stripe.com/v1/charges", Reason.PLAIN_HTTP),
        ("ftp://api.stripe.com/x", Reason.PLAIN_HTTP),
        ("https://user@api.stripe.com/x", Reason.BAD_HOST),
        ("https://0x7f.0.0.1/x", Reason.BAD_HOST),
        ("https://2130706433/x", Reason.BAD_HOST),
        ("https://api.stripe.com:0/x", Reason.BAD_HOST),
    ],
)
def test_explain_blocks(pol: Policy, url: str, reason: Reason) -> None:
    d = pol.explain(url)
    assert isinstance(d, Block), d
    assert d.reason == reason
    assert d.status == 403
    assert "sk_live_1" not in d.detail


def test_ambiguous_names_both_connectors(pol: Policy) -> None:
    d = pol.explain("https://dup.example.net/v1/x")
    assert isinstance(d, Block)
    assert "dup-a" in d.detail
    assert "dup-b" in d.detail


def test_reason_words_are_fixed() -> None:
    assert str(Reason.NO_CONNECTOR) == "no-connector"
    assert str(Reason.BAD_PATH) == "bad-path"
    assert str(Reason.AMBIGUOUS) == "ambiguous"
    assert str(Reason.PLAIN_HTTP) == "plain-http"


def test_route_directly(pol: Policy) -> None:
    t = Target("api.stripe.com", 443)
    assert isinstance(pol.route(t, "/v1/x"), Allow)
    bad_path = pol.route(t, "/v1/./x")
    assert isinstance(bad_path, Block)
    assert bad_path.reason == Reason.BAD_PATH
    none = pol.route(Target("nothing.example", 443), "/")
    assert isinstance(none, Block)
    assert none.reason == Reason.NO_CONNECTOR
    amb = pol.route(Target("dup.example.net", 443), "/v1/a")
    assert isinstance(amb, Block)
    assert amb.reason == Reason.AMBIGUOUS


def test_route_with_grants(pol: Policy) -> None:
    t = Target("api.stripe.com", 443)
    ok = pol.route(t, "/v1/x", frozenset({"stripe"}))
    assert isinstance(ok, Allow)
    assert ok.connector == "stripe"
    denied = pol.route(t, "/v1/x", frozenset({"weather"}))
    assert isinstance(denied, Block)
    assert denied.reason == Reason.NOT_GRANTED
    # Granting only one of two ambiguous connectors removes the ambiguity.
    one = pol.route(Target("dup.example.net", 443), "/v1/x", frozenset({"dup-b"}))
    assert isinstance(one, Allow)
    assert one.connector == "dup-b"


def test_connect_decisions(pol: Policy) -> None:
    assert pol.connect(Target("api.stripe.com", 443)) is None
    assert pol.connect(Target("a.b.example.org", 443)) is None
    no = pol.connect(Target("api.stripe.com", 444))
    assert isinstance(no, Block)
    assert no.reason == Reason.NO_CONNECTOR
    ng = pol.connect(Target("api.stripe.com", 443), frozenset({"weather"}))
    assert isinstance(ng, Block)
    assert ng.reason == Reason.NOT_GRANTED


def test_same_connector_twice_is_not_ambiguous() -> None:
    p = policy(("one", ["https://h.example.com/v1/*", "https://h.example.com/v1/*"], HEADER, "s"))
    d = p.explain("https://h.example.com/v1/x")
    assert isinstance(d, Allow)
    assert d.connector == "one"


def test_policy_len() -> None:
    assert len(policy()) == 0
    assert len(policy(("a", PAT, HEADER, "s"), ("b", ["https://b.example.com/*"], HEADER, "s"))) == 2

"""Connectors files: YAML validation with file, connector and field in every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.credentials import HeaderPlacement, QueryPlacement
from proxy.credentials.sources import CredentialSource, SecretSource
from proxy.errors import ConfigError
from proxy.service.apply import load_yaml
from tests.harness import config_error

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
    assert stripe.secret == CredentialSource.single(SecretSource("env", "STRIPE_API_KEY"))
    assert weather.secret == CredentialSource.single(SecretSource("file", "/run/secrets/weather"))
    assert weather.connector.inject == QueryPlacement("appid")
    assert custom.connector.inject == HeaderPlacement("X-Api-Key", "{{secret}}")
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
    demo = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
    declared = load_yaml(demo)
    assert [d.connector.name for d in declared] == ["demo"]


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.yaml"
    assert str(p) in config_error(load_yaml, p)


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
    msg = config_error(load_yaml, p)
    assert msg.startswith(str(p))
    assert f"line {line}" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_mapping(tmp_path: Path, text: str) -> None:
    p = write(tmp_path, text)
    assert str(p) in config_error(load_yaml, p)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    p = write(tmp_path, "connectors: []\nconectors: []\n")
    msg = config_error(load_yaml, p)
    assert str(p) in msg
    assert "conectors" in msg


def test_connectors_must_be_a_list(tmp_path: Path) -> None:
    p = write(tmp_path, "connectors:\n  stripe: {preset: stripe}\n")
    assert "list" in config_error(load_yaml, p)


def test_connector_must_be_mapping(tmp_path: Path) -> None:
    p = write(tmp_path, "connectors:\n  - stripe\n")
    msg = config_error(load_yaml, p)
    assert str(p) in msg
    assert "connectors[0]" in msg


def test_unknown_connector_key(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "connectors:\n  - name: good\n    preset: openai\n    secret: {env: A}\n"
        "  - name: typo\n    preset: stripe\n    secret: {env: B}\n    injcet: {query: k}\n",
    )
    msg = config_error(load_yaml, p)
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
    msg = config_error(load_yaml, p)
    assert str(p) in msg
    assert "duplicate" in msg
    assert "dup" in msg
    assert "connectors[1]" in msg


def test_inline_secret_refused_and_not_echoed(tmp_path: Path) -> None:
    p = write(tmp_path, "connectors:\n  - name: s\n    preset: stripe\n    secret: sk_live_INLINE_VALUE\n")
    msg = config_error(load_yaml, p)
    assert str(p) in msg
    assert "(s)" in msg
    assert "secret" in msg
    assert "sk_live_INLINE_VALUE" not in msg


def test_missing_secret_refused(tmp_path: Path) -> None:
    p = write(tmp_path, "connectors:\n  - name: s\n    preset: stripe\n")
    msg = config_error(load_yaml, p)
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
    msg = config_error(load_yaml, p)
    assert msg.startswith(f"{p}: connectors[1] (broken)")
    assert field in msg


def test_too_many_patterns_in_yaml(tmp_path: Path) -> None:
    pats = "".join(f'      - "https://h{i}.example.com/*"\n' for i in range(21))
    p = write(
        tmp_path,
        "connectors:\n  - name: many\n    secret: {env: A}\n    inject: {query: k}\n    patterns:\n" + pats,
    )
    msg = config_error(load_yaml, p)
    assert str(p) in msg
    assert "(many)" in msg
    assert "21 patterns" in msg


def test_invalid_name_in_yaml(tmp_path: Path) -> None:
    p = write(tmp_path, "connectors:\n  - name: Bad Name\n    preset: openai\n    secret: {env: A}\n")
    msg = config_error(load_yaml, p)
    assert str(p) in msg
    assert "connectors[0]" in msg
    assert "Bad Name" in msg

"""Connectors: names, patterns, presets."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.connectors import MAX_PATTERNS, PRESETS, check_name, make_connector
from proxy.credentials import HeaderPlacement, QueryPlacement
from tests.harness import config_error

HEADER = {"header": "Authorization", "template": "Bearer {{secret}}"}
PAT = ["https://api.example.com/*"]


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
    msg = config_error(make_connector, name, patterns=PAT, inject=HEADER)
    assert "name" in msg


def test_check_name_message_names_the_place() -> None:
    msg = config_error(check_name, "Bad", "cfg.yaml: connectors[3]")
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
    msg = config_error(make_connector, "c", patterns=patterns, inject=HEADER)
    assert "21 patterns" in msg
    assert "20" in msg
    assert "'c'" in msg


@pytest.mark.parametrize("patterns", [None, [], ()])
def test_zero_patterns_refused(patterns: Any) -> None:
    assert "at least one pattern" in config_error(make_connector, "c", patterns=patterns, inject=HEADER)


@pytest.mark.parametrize("patterns", ["https://api.example.com/*", {"a": 1}, 5])
def test_patterns_must_be_a_list(patterns: Any) -> None:
    assert "list" in config_error(make_connector, "c", patterns=patterns, inject=HEADER)


def test_bad_pattern_error_names_connector_and_index() -> None:
    msg = config_error(
        make_connector,
        "weather",
        patterns=["https://ok.example.com/*", "http://plain.example.com/*"],
        inject=HEADER,
    )
    assert "'weather'" in msg
    assert "patterns[1]" in msg
    assert "http://plain.example.com/*" in msg


def test_non_string_pattern_refused() -> None:
    assert "patterns[0]" in config_error(make_connector, "c", patterns=[123], inject=HEADER)


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
    assert c.inject == HeaderPlacement("X-Stripe-Key", "{{secret}}")
    only_patterns = make_connector("c", preset="github", patterns=["https://api.github.com/repos/*"])
    assert only_patterns.inject.header == "Authorization"
    assert [p.text for p in only_patterns.patterns] == ["https://api.github.com/repos/*"]
    only_inject = make_connector("c", preset="openai", inject={"query": "key"})
    assert only_inject.inject == QueryPlacement("key")
    assert [p.text for p in only_inject.patterns] == list(PRESETS["openai"].patterns)


def test_using_preset_does_not_mutate_it() -> None:
    before = {k: (list(v.patterns), dict(v.inject)) for k, v in PRESETS.items()}
    make_connector("c", preset="stripe", patterns=["https://x.example.com/*"])
    make_connector("c", preset="stripe")
    assert {k: (list(v.patterns), dict(v.inject)) for k, v in PRESETS.items()} == before


def test_unknown_preset() -> None:
    msg = config_error(make_connector, "c", preset="strype")
    assert "'strype'" in msg
    assert "stripe" in msg
    assert "'c'" in msg

"""Connectors: a name, allowed URL patterns and where the credential goes.

Validation lives here so the CLI, YAML files, the store (and the admin API)
refuse the same mistakes with the same words. Presets fill patterns and
placement for common APIs; explicit fields override them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.credentials import Placement, placement_from_spec
from proxy.errors import ConfigError
from proxy.patterns import Pattern, parse_pattern

MAX_PATTERNS = 20
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")

PRESETS: dict[str, dict[str, Any]] = {
    "stripe": {
        "patterns": ["https://api.stripe.com/*", "https://files.stripe.com/*"],
        "inject": {"header": "Authorization", "template": "Bearer {{secret}}"},
    },
    "github": {
        "patterns": ["https://api.github.com/*", "https://uploads.github.com/*"],
        "inject": {"header": "Authorization", "template": "Bearer {{secret}}"},
    },
    "openai": {
        "patterns": ["https://api.openai.com/*"],
        "inject": {"header": "Authorization", "template": "Bearer {{secret}}"},
    },
    "anthropic": {
        "patterns": ["https://api.anthropic.com/*"],
        "inject": {"header": "x-api-key", "template": "{{secret}}"},
    },
    "slack": {
        "patterns": ["https://slack.com/api/*"],
        "inject": {"header": "Authorization", "template": "Bearer {{secret}}"},
    },
}


@dataclass(frozen=True, slots=True)
class Connector:
    name: str
    patterns: tuple[Pattern, ...]
    inject: Placement
    preset: str | None = None

    def to_spec(self) -> dict[str, Any]:
        """The JSON-able form kept in the store (never the secret)."""
        return {
            "patterns": [p.text for p in self.patterns],
            "inject": self.inject.to_spec(),
            "preset": self.preset,
        }


def check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"{where}: name {name!r} is invalid (lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit, at most 63 characters)"
        )
    return name


def make_connector(
    name: Any,
    *,
    patterns: Any = None,
    inject: Any = None,
    preset: Any = None,
    where: str = "connector",
) -> Connector:
    """Validate fields (after filling them from a preset) into a Connector."""
    name = check_name(name, where)
    where = f"{where} {name!r}" if where == "connector" else where
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"{where}: unknown preset {preset!r} (known: {', '.join(sorted(PRESETS))})")
        patterns = patterns if patterns else PRESETS[preset]["patterns"]
        inject = inject if inject else PRESETS[preset]["inject"]
    if not patterns:
        raise ConfigError(f"{where}: at least one pattern is required")
    if isinstance(patterns, str) or not isinstance(patterns, list | tuple):
        raise ConfigError(f"{where}: patterns must be a list of URLs")
    if len(patterns) > MAX_PATTERNS:
        raise ConfigError(f"{where}: {len(patterns)} patterns, at most {MAX_PATTERNS} allowed")
    parsed: list[Pattern] = []
    for i, text in enumerate(patterns):
        try:
            parsed.append(parse_pattern(text))
        except ConfigError as e:
            raise ConfigError(f"{where}: patterns[{i}]: {e}") from None
    if inject is None:
        raise ConfigError(f"{where}: inject is required (a header or a query parameter)")
    return Connector(name, tuple(parsed), placement_from_spec(inject, where), preset)


def connector_from_spec(name: str, spec: Mapping[str, Any]) -> Connector:
    """Rebuild a stored connector (validated again: the store is input too)."""
    return make_connector(
        name,
        patterns=spec.get("patterns"),
        inject=spec.get("inject"),
        preset=spec.get("preset"),
        where=f"stored connector {name!r}",
    )


def ambiguities(connectors: Iterable[Connector]) -> list[str]:
    """Pairs of connectors with equally specific patterns that can overlap."""
    seen: dict[tuple[str, bool, int, tuple[int, int, int, int]], list[tuple[str, str]]] = {}
    warnings: list[str] = []
    for c in connectors:
        for p in c.patterns:
            key = (p.host, p.wildcard_host, p.port, p.specificity)
            prefix = p.path.split("*", 1)[0]
            for other_name, other_prefix in seen.get(key, []):
                if other_name != c.name and (
                    prefix.startswith(other_prefix) or other_prefix.startswith(prefix)
                ):
                    warnings.append(
                        f"connectors {other_name!r} and {c.name!r} have equally specific patterns "
                        f"for {p.text}: requests they both match are blocked as ambiguous"
                    )
            seen.setdefault(key, []).append((c.name, prefix))
    return warnings

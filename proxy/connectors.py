"""Connectors: a name, allowed URL patterns and where the credential goes.

Validation lives here so the CLI, YAML files, the store (and the admin API)
refuse the same mistakes with the same words. Presets fill patterns and
placement for common APIs; explicit fields override them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.credentials import Placement, placement_from_spec
from proxy.credentials.header import TOKEN_RE
from proxy.credentials.sources import check_field_name
from proxy.credentials.templates import SECRET_FIELD
from proxy.errors import ConfigError
from proxy.patterns import Pattern, parse_pattern

MAX_PATTERNS = 20
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
METHOD_RE = re.compile(r"^[A-Z][A-Z0-9_-]{0,31}\Z")

PLACEHOLDER = "egress-placeholder"


@dataclass(frozen=True, slots=True)
class Preset:
    """A known API: its patterns, placement, the credential headers its SDKs send
    (removed before injecting), and the placeholder variables those SDKs need to start."""

    patterns: tuple[str, ...]
    inject: Mapping[str, Any]
    strip_headers: tuple[str, ...] = ()
    placeholders: Mapping[str, str] = field(default_factory=dict)
    fields: tuple[str, ...] = (SECRET_FIELD,)


_BEARER = {"header": "Authorization", "template": "Bearer {{secret}}"}
PRESETS: dict[str, Preset] = {
    "stripe": Preset(
        ("https://api.stripe.com/*", "https://files.stripe.com/*"),
        _BEARER,
        placeholders={"STRIPE_API_KEY": f"sk_test_{PLACEHOLDER}"},
    ),
    "github": Preset(
        ("https://api.github.com/*", "https://uploads.github.com/*"),
        _BEARER,
        placeholders={"GITHUB_TOKEN": PLACEHOLDER, "GH_TOKEN": PLACEHOLDER},
    ),
    "openai": Preset(
        ("https://api.openai.com/*",),
        _BEARER,
        strip_headers=("OpenAI-Organization", "OpenAI-Project"),
        placeholders={"OPENAI_API_KEY": PLACEHOLDER},
    ),
    "anthropic": Preset(
        ("https://api.anthropic.com/*",),
        {"header": "x-api-key", "template": "{{secret}}"},
        strip_headers=("Authorization",),
        placeholders={"ANTHROPIC_API_KEY": PLACEHOLDER},
    ),
    "slack": Preset(
        ("https://slack.com/api/*",),
        _BEARER,
        placeholders={"SLACK_BOT_TOKEN": f"xoxb-{PLACEHOLDER}"},
    ),
    "gemini": Preset(
        ("https://generativelanguage.googleapis.com/*",),
        {"header": "x-goog-api-key", "template": "{{secret}}"},
        strip_headers=("Authorization", "x-goog-api-client-key"),
        placeholders={"GEMINI_API_KEY": PLACEHOLDER, "GOOGLE_API_KEY": PLACEHOLDER},
    ),
    "aws-s3": Preset(
        (
            "https://s3.amazonaws.com/*",
            "https://*.s3.amazonaws.com/*",
            "https://s3.us-east-1.amazonaws.com/*",
            "https://*.s3.us-east-1.amazonaws.com/*",
        ),
        {
            "aws_sigv4": {
                "access_key_id": "{{access_key_id}}",
                "secret_access_key": "{{secret_access_key}}",
                "region": "us-east-1",
                "service": "s3",
            }
        },
        placeholders={"AWS_ACCESS_KEY_ID": "AKIAEGRESSPLACEHOLDER", "AWS_SECRET_ACCESS_KEY": PLACEHOLDER},
        fields=("access_key_id", "secret_access_key"),
    ),
    "atlassian": Preset(
        ("https://*.atlassian.net/*",),
        {"basic": {"username": "{{email}}", "password": "{{api_token}}"}},
        fields=("email", "api_token"),
    ),
}


@dataclass(frozen=True, slots=True)
class Connector:
    name: str
    patterns: tuple[Pattern, ...]
    inject: Placement
    preset: str | None = None
    methods: frozenset[str] | None = None  # None: every method
    # Credential headers the sandbox's SDK sends (placeholders): removed before injecting.
    strip_headers: tuple[str, ...] = ()
    fields: tuple[str, ...] | None = None  # the credential's field names (None: not known here)

    def to_spec(self) -> dict[str, Any]:
        """The JSON-able form kept in the store (field names, never their values)."""
        spec: dict[str, Any] = {
            "patterns": [p.text for p in self.patterns],
            "inject": self.inject.to_spec(),
            "preset": self.preset,
        }
        if self.methods is not None:
            spec["methods"] = sorted(self.methods)
        if self.strip_headers:
            spec["strip_headers"] = list(self.strip_headers)
        if self.fields is not None:
            spec["fields"] = list(self.fields)
        return spec

    def unused_fields(self) -> list[str]:
        """Stored fields no placement renders (kept, but worth a warning)."""
        return sorted(set(self.fields or ()) - self.inject.fields())


def check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"{where}: name {name!r} is invalid (lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit, at most 63 characters)"
        )
    return name


def _methods(methods: Any, where: str) -> frozenset[str] | None:
    if methods is None:
        return None
    if isinstance(methods, str) or not isinstance(methods, list | tuple) or not methods:
        raise ConfigError(f"{where}: methods must be a non-empty list such as [GET, POST]")
    out = set()
    for m in methods:
        if not isinstance(m, str) or not METHOD_RE.match(m.upper()):
            raise ConfigError(f"{where}: methods: {m!r} is not an HTTP method")
        out.add(m.upper())
    return frozenset(out)


def _strip_headers(names: Any, where: str) -> tuple[str, ...]:
    if names is None:
        return ()
    if isinstance(names, str) or not isinstance(names, list | tuple) or len(names) > MAX_PATTERNS:
        raise ConfigError(f"{where}: strip_headers must be a list of at most {MAX_PATTERNS} header names")
    for n in names:
        if not isinstance(n, str) or not TOKEN_RE.match(n):
            raise ConfigError(f"{where}: strip_headers: {n!r} is not a valid header name")
    return tuple(names)


def _field_names(fields: Any, where: str) -> tuple[str, ...] | None:
    if fields is None:
        return None
    if isinstance(fields, str) or not isinstance(fields, list | tuple | set | frozenset):
        raise ConfigError(f"{where}: fields must be a list of names")
    return tuple(sorted(check_field_name(f, where) for f in fields))


def make_connector(
    name: Any,
    *,
    patterns: Any = None,
    inject: Any = None,
    preset: Any = None,
    methods: Any = None,
    strip_headers: Any = None,
    fields: Any = None,
    where: str = "connector",
) -> Connector:
    """Validate fields (after filling them from a preset) into a Connector.

    ``fields`` are the credential's field names when known (a credential being
    written): every field a placement renders must be among them.
    """
    name = check_name(name, where)
    where = f"{where} {name!r}" if where == "connector" else where
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"{where}: unknown preset {preset!r} (known: {', '.join(sorted(PRESETS))})")
        known = PRESETS[preset]
        patterns = patterns if patterns else list(known.patterns)
        inject = inject if inject else dict(known.inject)
        strip_headers = strip_headers if strip_headers is not None else list(known.strip_headers)
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
    placement = placement_from_spec(inject, where)
    names = _field_names(fields, where)
    if names is not None:
        missing = sorted(placement.fields() - set(names))
        if missing:
            raise ConfigError(
                f"{where}: inject uses field(s) {', '.join(missing)} that the credential does not have "
                f"(it has: {', '.join(names) or 'none'})"
            )
    return Connector(
        name,
        tuple(parsed),
        placement,
        preset,
        _methods(methods, where),
        _strip_headers(strip_headers, where),
        names,
    )


def connector_from_spec(name: str, spec: Mapping[str, Any]) -> Connector:
    """Rebuild a stored connector (validated again: the store is input too)."""
    return make_connector(
        name,
        patterns=spec.get("patterns"),
        inject=spec.get("inject"),
        preset=spec.get("preset"),
        methods=spec.get("methods"),
        strip_headers=spec.get("strip_headers", ()),
        fields=spec.get("fields"),
        where=f"stored connector {name!r}",
    )


def check_credential(connector: Connector, fields: Mapping[str, str], where: str) -> None:
    """Render once: a credential that cannot be placed is refused before it is stored."""
    missing = sorted(connector.inject.fields() - set(fields))
    if missing:
        raise ConfigError(
            f"{where}: inject uses field(s) {', '.join(missing)} that the credential does not have"
        )
    try:
        connector.inject.render(fields)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


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

"""Connectors: name, allowed URL patterns and where the secret goes.

Validation lives here so the CLI, YAML files and the store all refuse the same
mistakes with the same words. Presets fill patterns and injection for common
APIs; explicit fields override them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from proxy.errors import ConfigError
from proxy.patterns import Pattern, parse_pattern

MAX_PATTERNS = 20
MAX_SECRET_BYTES = 16 * 1024
PLACEHOLDER = "{{secret}}"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z")
_PARAM_RE = re.compile(r"^[A-Za-z0-9._~\-\[\]]+\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Headers whose meaning is framing, routing or state; a secret never goes there.
FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "cookie",
        "set-cookie",
        "proxy-authorization",
        "proxy-connection",
        "expect",
    }
)

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
class Injection:
    """Where the secret goes: a templated header, or a query parameter."""

    header: str | None = None
    template: str = "Bearer " + PLACEHOLDER
    query: str | None = None

    def describe(self) -> str:
        if self.header:
            return f"header {self.header}: {self.template}"
        return f"query parameter {self.query}"

    def to_dict(self) -> dict[str, str]:
        if self.header:
            return {"header": self.header, "template": self.template}
        assert self.query
        return {"query": self.query}

    def header_value(self, secret: str) -> str:
        return self.template.replace(PLACEHOLDER, secret)

    def query_item(self, secret: str) -> str:
        assert self.query
        return f"{quote(self.query, safe='')}={quote(secret, safe='')}"


@dataclass(frozen=True, slots=True)
class Connector:
    name: str
    patterns: tuple[Pattern, ...]
    inject: Injection
    preset: str | None = None

    def to_spec(self) -> dict[str, Any]:
        """The JSON-able form kept in the store (never the secret)."""
        return {
            "patterns": [p.text for p in self.patterns],
            "inject": self.inject.to_dict(),
            "preset": self.preset,
        }


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where an operator keeps a secret: an environment variable or a file."""

    env: str | None = None
    file: str | None = None

    def read(self, where: str) -> str:
        if self.env:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"{where}: environment variable {self.env} is not set")
        else:
            assert self.file
            try:
                value = Path(self.file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                reason = getattr(e, "strerror", None) or "not UTF-8 text"
                raise ConfigError(f"{where}: cannot read secret file {self.file}: {reason}") from None
        return check_secret(value.rstrip("\r\n"), where)


@dataclass(frozen=True, slots=True)
class Declared:
    """A connector as declared in YAML, with where its secret comes from."""

    connector: Connector
    secret: SecretSource


def check_secret(value: str, where: str) -> str:
    """Refuse secrets that could break out of a header or be mistaken for none."""
    if not value:
        raise ConfigError(f"{where}: secret is empty")
    if len(value.encode("utf-8")) > MAX_SECRET_BYTES:
        raise ConfigError(f"{where}: secret is longer than {MAX_SECRET_BYTES} bytes")
    if _CONTROL_RE.search(value):
        raise ConfigError(f"{where}: secret contains control characters (line breaks, NUL, ...)")
    return value


def check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"{where}: name {name!r} is invalid (lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit, at most 63 characters)"
        )
    return name


def make_injection(spec: Any, where: str) -> Injection:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: inject must be a mapping with 'header' or 'query'")
    unknown = set(spec) - {"header", "template", "query"}
    if unknown:
        raise ConfigError(f"{where}: inject: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    header, query, template = spec.get("header"), spec.get("query"), spec.get("template")
    if (header is None) == (query is None):
        raise ConfigError(f"{where}: inject needs exactly one of 'header' or 'query'")
    if query is not None:
        if template is not None:
            raise ConfigError(f"{where}: inject.template applies to headers only")
        if not isinstance(query, str) or not _PARAM_RE.match(query):
            raise ConfigError(f"{where}: inject.query {query!r} is not a valid parameter name")
        return Injection(query=query)
    if not isinstance(header, str) or not _TOKEN_RE.match(header):
        raise ConfigError(f"{where}: inject.header {header!r} is not a valid header name")
    if header.lower() in FORBIDDEN_HEADERS:
        raise ConfigError(f"{where}: inject.header {header!r} cannot carry a secret")
    if template is None:
        template = "Bearer " + PLACEHOLDER
    if not isinstance(template, str) or PLACEHOLDER not in template:
        raise ConfigError(f"{where}: inject.template must contain {PLACEHOLDER}")
    if _CONTROL_RE.search(template):
        raise ConfigError(f"{where}: inject.template contains control characters")
    return Injection(header=header, template=template)


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
    return Connector(name, tuple(parsed), make_injection(inject, where), preset)


def connector_from_spec(name: str, spec: Mapping[str, Any]) -> Connector:
    """Rebuild a stored connector (validated again: the store is input too)."""
    return make_connector(
        name,
        patterns=spec.get("patterns"),
        inject=spec.get("inject"),
        preset=spec.get("preset"),
        where=f"stored connector {name!r}",
    )


_TOP_KEYS = {"connectors"}
_CONNECTOR_KEYS = {"name", "preset", "patterns", "secret", "inject"}


def load_yaml(path: str | Path) -> list[Declared]:
    """Read a connectors file; every error names the file, connector and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{at}: {problem}") from None
    if doc is None or (isinstance(doc, dict) and doc.get("connectors", []) is None):
        # An empty file is more often a mistake (a bad mount) than an intent; with
        # --prune it would remove every connector. Say `connectors: []` to mean none.
        raise ConfigError(f"{path}: declares nothing (write `connectors: []` to mean no connectors)")
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping with a 'connectors' list")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))}")
    items = doc.get("connectors") or []
    if not isinstance(items, list):
        raise ConfigError(f"{path}: 'connectors' must be a list")
    out: list[Declared] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{path}: connectors[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be a mapping")
        if isinstance(item.get("name"), str):
            where += f" ({item['name']})"
        unknown = set(item) - _CONNECTOR_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        connector = make_connector(
            item.get("name"),
            patterns=item.get("patterns"),
            inject=item.get("inject"),
            preset=item.get("preset"),
            where=where,
        )
        if connector.name in seen:
            raise ConfigError(f"{where}: duplicate connector name {connector.name!r}")
        seen.add(connector.name)
        out.append(Declared(connector, secret_source(item.get("secret"), where)))
    return out


def secret_source(spec: Any, where: str) -> SecretSource:
    if not isinstance(spec, dict) or len(spec) != 1 or not (set(spec) <= {"env", "file"}):
        raise ConfigError(f"{where}: secret must be {{env: VAR}} or {{file: PATH}} (never the value itself)")
    ((kind, value),) = spec.items()
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: secret.{kind} must be a non-empty string")
    return SecretSource(**{kind: value})

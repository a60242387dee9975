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
from proxy.secrets import DEFAULT_WORKSPACE

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


def connector_key(workspace: str, name: str) -> str:
    """How a connector is known across workspaces: ``name`` in the default one, ``ws/name`` elsewhere.

    Names cannot hold "/", so the key is unambiguous; the default workspace's
    keys are plain names, which keeps stores, grants and metrics written
    before workspaces existed meaning what they meant.
    """
    return name if workspace == DEFAULT_WORKSPACE else f"{workspace}/{name}"


def split_key(key: str) -> tuple[str, str]:
    """(workspace, name) of a connector key."""
    workspace, sep, name = key.partition("/")
    return (workspace, name) if sep else (DEFAULT_WORKSPACE, key)


def workspace_of(keys: Iterable[str]) -> str:
    """The workspace of a set of connector keys (a grant's: grants never span two)."""
    return next((split_key(k)[0] for k in keys), DEFAULT_WORKSPACE)


def check_workspace(workspace: Any, where: str = "workspace") -> str:
    if not isinstance(workspace, str) or not NAME_RE.match(workspace):
        raise ConfigError(
            f"{where} {workspace!r} is invalid (lowercase letters, digits, '-' and '_', at most 63 characters)",
            field="workspace",
        )
    return workspace


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
    workspace: str = DEFAULT_WORKSPACE

    @property
    def key(self) -> str:
        """Unique across workspaces: what routes, grants, stats and metrics name."""
        return connector_key(self.workspace, self.name)

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
            "starting with a letter or digit, at most 63 characters)",
            field="name",
        )
    return name


def _methods(methods: Any, where: str) -> frozenset[str] | None:
    if methods is None:
        return None
    if isinstance(methods, str) or not isinstance(methods, list | tuple) or not methods:
        raise ConfigError(f"{where}: methods must be a non-empty list such as [GET, POST]", field="methods")
    out = set()
    for m in methods:
        if not isinstance(m, str) or not METHOD_RE.match(m.upper()):
            raise ConfigError(f"{where}: methods: {m!r} is not an HTTP method", field="methods")
        out.add(m.upper())
    return frozenset(out)


def _strip_headers(names: Any, where: str) -> tuple[str, ...]:
    if names is None:
        return ()
    if isinstance(names, str) or not isinstance(names, list | tuple) or len(names) > MAX_PATTERNS:
        raise ConfigError(
            f"{where}: strip_headers must be a list of at most {MAX_PATTERNS} header names",
            field="strip_headers",
        )
    for n in names:
        if not isinstance(n, str) or not TOKEN_RE.match(n):
            raise ConfigError(
                f"{where}: strip_headers: {n!r} is not a valid header name", field="strip_headers"
            )
    return tuple(names)


def _field_names(fields: Any, where: str) -> tuple[str, ...] | None:
    if fields is None:
        return None
    if isinstance(fields, str) or not isinstance(fields, list | tuple | set | frozenset):
        raise ConfigError(f"{where}: fields must be a list of names", field="fields")
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
    workspace: Any = DEFAULT_WORKSPACE,
    where: str = "connector",
) -> Connector:
    """Validate fields (after filling them from a preset) into a Connector.

    ``fields`` are the credential's field names when known (a credential being
    written): every field a placement renders must be among them.
    """
    name = check_name(name, where)
    workspace = check_workspace(workspace, f"{where}: workspace")
    if where == "connector":
        where = f"connector {connector_key(workspace, name)!r}"
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(
                f"{where}: unknown preset {preset!r} (known: {', '.join(sorted(PRESETS))})", field="preset"
            )
        known = PRESETS[preset]
        patterns = patterns if patterns else list(known.patterns)
        inject = inject if inject else dict(known.inject)
        strip_headers = strip_headers if strip_headers is not None else list(known.strip_headers)
    if not patterns:
        raise ConfigError(f"{where}: at least one pattern is required", field="patterns")
    if isinstance(patterns, str) or not isinstance(patterns, list | tuple):
        raise ConfigError(f"{where}: patterns must be a list of URLs", field="patterns")
    if len(patterns) > MAX_PATTERNS:
        raise ConfigError(
            f"{where}: {len(patterns)} patterns, at most {MAX_PATTERNS} allowed", field="patterns"
        )
    parsed: list[Pattern] = []
    for i, text in enumerate(patterns):
        try:
            parsed.append(parse_pattern(text))
        except ConfigError as e:
            raise ConfigError(f"{where}: patterns[{i}]: {e}", field="patterns") from None
    if inject is None:
        raise ConfigError(f"{where}: inject is required (a header or a query parameter)", field="inject")
    try:
        placement = placement_from_spec(inject, where)
    except ConfigError as e:
        e.field = e.field or "inject"  # every credential kind's own checks are about `inject`
        raise
    names = _field_names(fields, where)
    if names is not None:
        missing = sorted(placement.fields() - set(names))
        if missing:
            raise ConfigError(
                f"{where}: inject uses field(s) {', '.join(missing)} that the credential does not have "
                f"(it has: {', '.join(names) or 'none'})",
                field="inject",
            )
    return Connector(
        name,
        tuple(parsed),
        placement,
        preset,
        _methods(methods, where),
        _strip_headers(strip_headers, where),
        names,
        workspace,
    )


def connector_from_spec(key: str, spec: Mapping[str, Any]) -> Connector:
    """Rebuild a stored connector from its key (validated again: the store is input too)."""
    workspace, name = split_key(key)
    return make_connector(
        name,
        workspace=workspace,
        patterns=spec.get("patterns"),
        inject=spec.get("inject"),
        preset=spec.get("preset"),
        methods=spec.get("methods"),
        strip_headers=spec.get("strip_headers", ()),
        fields=spec.get("fields"),
        where=f"stored connector {key!r}",
    )


def check_credential(connector: Connector, fields: Mapping[str, str], where: str) -> None:
    """Render once: a credential that cannot be placed is refused before it is stored."""
    missing = sorted(connector.inject.fields() - set(fields))
    if missing:
        raise ConfigError(
            f"{where}: inject uses field(s) {', '.join(missing)} that the credential does not have",
            field="secret",
        )
    try:
        connector.inject.render(fields)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}", field="secret") from None


def ambiguities(
    connectors: Iterable[Connector], grants: Mapping[str, frozenset[str]] | None = None
) -> list[str]:
    """Connectors with equally specific overlapping patterns that nothing tells apart.

    Methods that do not overlap tell two connectors apart; so does a grant
    naming only one of them. ``grants`` (label or id -> connector keys, the
    active ones) lets the warning name the grants under which a pair stays
    ambiguous; without grants (``--insecure-no-auth``) every overlap does.
    """
    seen: dict[tuple[str, bool, int, tuple[int, int, int, int]], list[tuple[Connector, str]]] = {}
    warnings: list[str] = []
    for c in connectors:
        for p in c.patterns:
            key = (p.host, p.wildcard_host, p.port, p.specificity)
            prefix = p.path.split("*", 1)[0]
            for other, other_prefix in seen.get(key, []):
                if other.key == c.key or not (
                    prefix.startswith(other_prefix) or other_prefix.startswith(prefix)
                ):
                    continue
                if other.methods is not None and c.methods is not None and not (other.methods & c.methods):
                    continue
                both = sorted(g for g, keys in (grants or {}).items() if {c.key, other.key} <= keys)
                where = (
                    f"under grant(s) {', '.join(both)}, which name both"
                    if both
                    else "unless the step's grant names only one of them"
                )
                warnings.append(
                    f"connectors {other.key!r} and {c.key!r} have equally specific patterns for {p.text}: "
                    f"requests they both match are blocked as ambiguous {where}"
                )
            seen.setdefault(key, []).append((c, prefix))
    return warnings

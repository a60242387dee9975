"""``{{field}}`` templates: substitution only, never expressions or code."""

from __future__ import annotations

import re
from collections.abc import Mapping

from proxy.errors import ConfigError

SECRET_FIELD = "secret"  # the field of a one-value credential
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_FIELD = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]{0,63})\}\}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def template_fields(template: str) -> frozenset[str]:
    return frozenset(_FIELD.findall(template))


def check_template(template: object, where: str) -> str:
    """A template names at least one field and holds nothing that could break a header."""
    if not isinstance(template, str) or not template_fields(template):
        raise ConfigError(f"{where} must name a credential field, e.g. {{{{{SECRET_FIELD}}}}}")
    if CONTROL.search(template):
        raise ConfigError(f"{where} contains control characters")
    rest = _FIELD.sub("", template)
    if "{{" in rest or "}}" in rest:
        raise ConfigError(f"{where}: only {{{{FIELD}}}} placeholders are allowed (no spaces, no expressions)")
    return template


def render(template: str, fields: Mapping[str, str]) -> str:
    """Fill a checked template; every field it names must be present (the connector was checked)."""
    return _FIELD.sub(lambda m: fields[m.group(1)], template)


def template_field(template: str) -> str | None:
    """The field a template is exactly made of (``{{refresh_token}}``), else None."""
    m = _FIELD.fullmatch(template)
    return m.group(1) if m else None

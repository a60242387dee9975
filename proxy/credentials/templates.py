"""``{{field}}`` templates: substitution only, never expressions or code."""

from __future__ import annotations

import re
from collections.abc import Mapping

from proxy.errors import ConfigError

SECRET_FIELD = "secret"
_FIELD = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def template_fields(template: str) -> frozenset[str]:
    return frozenset(_FIELD.findall(template))


def check_template(template: object, where: str, allowed: frozenset[str] = frozenset({SECRET_FIELD})) -> str:
    if not isinstance(template, str) or SECRET_FIELD not in template_fields(template):
        raise ConfigError(f"{where} must contain {{{{{SECRET_FIELD}}}}}")
    if CONTROL.search(template):
        raise ConfigError(f"{where} contains control characters")
    unknown = template_fields(template) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    return template


def render(template: str, fields: Mapping[str, str]) -> str:
    return _FIELD.sub(lambda m: fields[m.group(1)], template)

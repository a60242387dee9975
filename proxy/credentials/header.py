"""A credential in one header, from a template: ``Authorization: Bearer {{secret}}``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from proxy.credentials.rendered import Rendered
from proxy.credentials.templates import SECRET_FIELD, check_template, render, template_fields
from proxy.errors import ConfigError

DEFAULT_TEMPLATE = "Bearer {{secret}}"
TOKEN_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z")
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


def check_header_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not TOKEN_RE.match(name):
        raise ConfigError(f"{where} {name!r} is not a valid header name")
    if name.lower() in FORBIDDEN_HEADERS:
        raise ConfigError(f"{where} {name!r} cannot carry a secret")
    return name


@dataclass(frozen=True, slots=True)
class HeaderPlacement:
    header: str
    template: str = DEFAULT_TEMPLATE
    KEYS: ClassVar[frozenset[str]] = frozenset({"header", "template"})

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str) -> HeaderPlacement:
        header = check_header_name(spec["header"], f"{where}: inject.header")
        template = spec.get("template")
        if template is None:
            template = DEFAULT_TEMPLATE
        return cls(header, check_template(template, f"{where}: inject.template"))

    @property
    def where(self) -> str:
        return f"header {self.header}"

    def describe(self) -> str:
        return f"header {self.header}: {self.template}"

    def to_spec(self) -> dict[str, Any]:
        return {"header": self.header, "template": self.template}

    def fields(self) -> frozenset[str]:
        return template_fields(self.template) or frozenset({SECRET_FIELD})

    def render(self, fields: Mapping[str, str]) -> Rendered:
        used = tuple(fields[f] for f in sorted(self.fields()))
        return Rendered(headers=((self.header, render(self.template, fields)),), secrets=used)

"""Credentials in headers: one templated header, several, or HTTP Basic."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from proxy.credentials.rendered import Rendered
from proxy.credentials.templates import SECRET_FIELD, check_template, render, template_fields
from proxy.errors import ConfigError

DEFAULT_TEMPLATE = "Bearer {{secret}}"
MAX_HEADERS = 10
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
    if name.lower().replace("_", "-") in FORBIDDEN_HEADERS:
        raise ConfigError(f"{where} {name!r} cannot carry a secret")
    return name


def _values(fields: Mapping[str, str], names: frozenset[str]) -> tuple[str, ...]:
    return tuple(fields[f] for f in sorted(names))


@dataclass(frozen=True, slots=True)
class HeaderPlacement:
    """``Authorization: Bearer {{secret}}``: one header from a template."""

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
        value = render(self.template, fields)
        return Rendered(headers=((self.header, value),), secrets=_values(fields, self.fields()))


@dataclass(frozen=True, slots=True)
class HeadersPlacement:
    """Several headers, each from its own template (an API key beside an account id)."""

    headers: tuple[tuple[str, str], ...]
    KEYS: ClassVar[frozenset[str]] = frozenset({"headers"})

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str) -> HeadersPlacement:
        given = spec["headers"]
        if not isinstance(given, Mapping) or not given:
            raise ConfigError(f"{where}: inject.headers must map header names to templates")
        if len(given) > MAX_HEADERS:
            raise ConfigError(f"{where}: inject.headers: {len(given)} headers, at most {MAX_HEADERS}")
        seen: set[str] = set()
        out: list[tuple[str, str]] = []
        for name, template in given.items():
            at = f"{where}: inject.headers.{name}"
            check_header_name(name, f"{where}: inject.headers:")
            key = name.lower().replace("_", "-")
            if key in seen:
                raise ConfigError(f"{at}: the same header is named twice")
            seen.add(key)
            out.append((name, check_template(template, at)))
        return cls(tuple(out))

    @property
    def where(self) -> str:
        return "headers " + ", ".join(name for name, _ in self.headers)

    def describe(self) -> str:
        return "; ".join(f"header {name}: {template}" for name, template in self.headers)

    def to_spec(self) -> dict[str, Any]:
        return {"headers": dict(self.headers)}

    def fields(self) -> frozenset[str]:
        return frozenset().union(*(template_fields(t) for _, t in self.headers))

    def render(self, fields: Mapping[str, str]) -> Rendered:
        headers = tuple((name, render(template, fields)) for name, template in self.headers)
        return Rendered(headers=headers, secrets=_values(fields, self.fields()))


@dataclass(frozen=True, slots=True)
class BasicPlacement:
    """``Authorization: Basic base64(username:password)`` (RFC 7617)."""

    username: str
    password: str
    KEYS: ClassVar[frozenset[str]] = frozenset({"basic"})

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str) -> BasicPlacement:
        given = spec["basic"]
        if not isinstance(given, Mapping) or set(given) != {"username", "password"}:
            raise ConfigError(f"{where}: inject.basic needs exactly 'username' and 'password' templates")
        return cls(
            check_template(given["username"], f"{where}: inject.basic.username"),
            check_template(given["password"], f"{where}: inject.basic.password"),
        )

    @property
    def where(self) -> str:
        return "header Authorization (Basic)"

    def describe(self) -> str:
        return f"basic: username {self.username}, password {self.password}"

    def to_spec(self) -> dict[str, Any]:
        return {"basic": {"username": self.username, "password": self.password}}

    def fields(self) -> frozenset[str]:
        return template_fields(self.username) | template_fields(self.password)

    def render(self, fields: Mapping[str, str]) -> Rendered:
        user, password = render(self.username, fields), render(self.password, fields)
        if ":" in user:
            raise ConfigError("inject.basic.username: the rendered username contains ':'")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        # The username is often public (an e-mail); the password and the encoded pair are not.
        secrets = (*_values(fields, template_fields(self.password)), token)
        return Rendered(headers=(("Authorization", f"Basic {token}"),), secrets=secrets)

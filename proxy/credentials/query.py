"""A credential as a query parameter: ``?appid={{secret}}`` (any client copy replaced)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, unquote_plus

from proxy.credentials.rendered import Rendered
from proxy.credentials.templates import SECRET_FIELD, check_template, render, template_fields
from proxy.errors import ConfigError

DEFAULT_TEMPLATE = "{{" + SECRET_FIELD + "}}"
PARAM_RE = re.compile(r"^[A-Za-z0-9._~\-\[\]]+\Z")


@dataclass(frozen=True, slots=True)
class QueryPlacement:
    query: str
    template: str = DEFAULT_TEMPLATE
    KEYS: ClassVar[frozenset[str]] = frozenset({"query", "template"})

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str) -> QueryPlacement:
        query = spec["query"]
        if not isinstance(query, str) or not PARAM_RE.match(query):
            raise ConfigError(f"{where}: inject.query {query!r} is not a valid parameter name")
        template = spec.get("template")
        if template is None:
            template = DEFAULT_TEMPLATE
        return cls(query, check_template(template, f"{where}: inject.template"))

    @property
    def where(self) -> str:
        return f"query parameter {self.query}"

    def describe(self) -> str:
        if self.template == DEFAULT_TEMPLATE:
            return f"query parameter {self.query}"
        return f"query parameter {self.query}: {self.template}"

    def to_spec(self) -> dict[str, Any]:
        if self.template == DEFAULT_TEMPLATE:
            return {"query": self.query}  # what earlier releases stored
        return {"query": self.query, "template": self.template}

    def fields(self) -> frozenset[str]:
        return template_fields(self.template)

    def render(self, fields: Mapping[str, str]) -> Rendered:
        value = render(self.template, fields)
        item = f"{quote(self.query, safe='')}={quote(value, safe='')}"
        return Rendered(query=((self.query, item),), secrets=tuple(fields[f] for f in sorted(self.fields())))


def with_query_item(path: str, name: str, item: str) -> str:
    """``path`` with every ``name`` parameter removed and ``item`` appended.

    Other parameters keep their exact bytes; names compare after decoding so
    ``%61pi_key`` cannot smuggle a second copy past us.
    """
    base, sep, query = path.partition("?")
    kept = [p for p in query.split("&") if p and unquote_plus(p.split("=", 1)[0]) != name] if sep else []
    kept.append(item)
    return f"{base}?{'&'.join(kept)}"

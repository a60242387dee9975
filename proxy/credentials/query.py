"""A credential as a query parameter: ``?appid=SECRET`` (any client copy replaced)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, unquote_plus

from proxy.credentials.rendered import Rendered
from proxy.credentials.templates import SECRET_FIELD
from proxy.errors import ConfigError

PARAM_RE = re.compile(r"^[A-Za-z0-9._~\-\[\]]+\Z")


@dataclass(frozen=True, slots=True)
class QueryPlacement:
    query: str
    KEYS: ClassVar[frozenset[str]] = frozenset({"query", "template"})

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str) -> QueryPlacement:
        if spec.get("template") is not None:
            raise ConfigError(f"{where}: inject.template applies to headers only")
        query = spec["query"]
        if not isinstance(query, str) or not PARAM_RE.match(query):
            raise ConfigError(f"{where}: inject.query {query!r} is not a valid parameter name")
        return cls(query)

    @property
    def where(self) -> str:
        return f"query parameter {self.query}"

    def describe(self) -> str:
        return f"query parameter {self.query}"

    def to_spec(self) -> dict[str, Any]:
        return {"query": self.query}

    def fields(self) -> frozenset[str]:
        return frozenset({SECRET_FIELD})

    def render(self, fields: Mapping[str, str]) -> Rendered:
        secret = fields[SECRET_FIELD]
        item = f"{quote(self.query, safe='')}={quote(secret, safe='')}"
        return Rendered(query=((self.query, item),), secrets=(secret,))


def with_query_item(path: str, name: str, item: str) -> str:
    """``path`` with every ``name`` parameter removed and ``item`` appended.

    Other parameters keep their exact bytes; names compare after decoding so
    ``%61pi_key`` cannot smuggle a second copy past us.
    """
    base, sep, query = path.partition("?")
    kept = [p for p in query.split("&") if p and unquote_plus(p.split("=", 1)[0]) != name] if sep else []
    kept.append(item)
    return f"{base}?{'&'.join(kept)}"

"""Credentials: where a connector's secret fields go on a request.

A placement is one credential kind (a templated header, a query parameter,
...): it validates its spec, says which fields it needs, and renders them once,
when the policy loads, into a ``Rendered`` that the proxy applies to each
request without recomputing anything. Add a kind by writing a module with a
class like ``HeaderPlacement`` and listing it in ``KINDS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from proxy.credentials.header import BasicPlacement, HeaderPlacement, HeadersPlacement
from proxy.credentials.oauth2 import OAuth2Placement
from proxy.credentials.query import QueryPlacement
from proxy.credentials.rendered import Rendered
from proxy.credentials.sigv4 import SigV4Placement
from proxy.errors import ConfigError

__all__ = ["KINDS", "Placement", "Rendered", "placement_from_spec"]


class Placement(Protocol):
    """One way of putting a credential on a request."""

    @property
    def where(self) -> str:
        """Where the credential goes, for operators: ``header Authorization``."""
        ...

    def describe(self) -> str: ...

    def to_spec(self) -> dict[str, Any]:
        """The JSON-able form kept in the store (never a secret)."""
        ...

    def fields(self) -> frozenset[str]:
        """Names of the credential fields this placement renders."""
        ...

    def render(self, fields: Mapping[str, str]) -> Rendered: ...


# The key that selects each kind in an `inject:` mapping.
KINDS: dict[str, Any] = {
    "header": HeaderPlacement,
    "query": QueryPlacement,
    "headers": HeadersPlacement,
    "basic": BasicPlacement,
    "oauth2": OAuth2Placement,
    "aws_sigv4": SigV4Placement,
}
_NAMES = ", ".join(f"'{k}'" for k in KINDS)


def placement_from_spec(spec: Any, where: str) -> Placement:
    """Validate an ``inject:`` mapping into its placement (ConfigError naming ``where``)."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: inject must be a mapping with one of {_NAMES}")
    unknown = set(spec) - {key for kind in KINDS.values() for key in kind.KEYS}
    if unknown:
        raise ConfigError(f"{where}: inject: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    kinds = [k for k in KINDS if spec.get(k) is not None]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: inject needs exactly one of {_NAMES}")
    kind = KINDS[kinds[0]]
    stray = {k for k, v in spec.items() if v is not None} - kind.KEYS
    if stray:
        raise ConfigError(f"{where}: inject.{sorted(stray)[0]} does not apply to '{kinds[0]}'")
    placement: Placement = kind.from_spec(spec, where)
    return placement

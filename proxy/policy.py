"""Decisions: may this tunnel open, may this request pass, what to inject.

Every decision is a pure function returning a value (an ``Allow`` or a
``Block``), never raising, so the mitmproxy adapters stay thin and the CLI's
``egress check URL`` answers with the very same code the proxy runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import quote, unquote_plus, urlsplit

from proxy.connectors import Connector
from proxy.patterns import Pattern, PatternIndex, normalize_host, path_problem, split_authority
from proxy.scrub import masks


class Reason(StrEnum):
    """Why a request was blocked: short fixed words for logs, headers and metrics."""

    NO_CONNECTOR = "no-connector"
    NOT_GRANTED = "not-granted"
    NO_GRANT = "no-grant"
    BAD_GRANT = "bad-grant"
    EXPIRED_GRANT = "expired-grant"
    REVOKED_GRANT = "revoked-grant"
    HOST_MISMATCH = "host-mismatch"
    SNI_MISMATCH = "sni-mismatch"
    BAD_HOST = "bad-host"
    BAD_PATH = "bad-path"
    PLAIN_HTTP = "plain-http"
    PRIVATE_ADDRESS = "private-address"
    UNRESOLVABLE = "unresolvable"
    AMBIGUOUS = "ambiguous"
    BAD_REQUEST = "bad-request"
    INTERNAL = "internal-error"


@dataclass(frozen=True, slots=True)
class Block:
    reason: Reason
    detail: str
    status: int = 403


@dataclass(frozen=True, slots=True)
class Allow:
    """A request may pass through ``connector``; the secret is pre-rendered."""

    connector: str
    header: str | None = None
    header_value: str | None = field(default=None, repr=False)
    query: str | None = None
    query_item: str | None = field(default=None, repr=False)
    # (secret, mask) pairs to scrub from responses: the raw and URL-encoded forms.
    scrub: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class Target:
    """A tunnel's destination as the client named it in CONNECT (normalised)."""

    host: str
    port: int
    is_ip: bool = field(init=False, compare=False)
    authority: str = field(init=False, compare=False)  # what Host must say, and will

    def __post_init__(self) -> None:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(self, "is_ip", is_ip_literal(self.host))
        object.__setattr__(self, "authority", shown if self.port == 443 else f"{shown}:{self.port}")


class Policy:
    """Connectors compiled for matching, with their secrets rendered once."""

    def __init__(self, connectors: Iterable[tuple[Connector, str | None]] = ()) -> None:
        self.routes: dict[str, Allow] = {}
        entries: list[tuple[Pattern, str]] = []
        for connector, secret in connectors:
            inj = connector.inject
            if secret is None:
                route = Allow(connector.name, header=inj.header, query=inj.query)
            else:
                pairs = masks([secret.encode(), quote(secret, safe="").encode()])
                if inj.header:
                    value = inj.header_value(secret)
                    route = Allow(connector.name, header=inj.header, header_value=value, scrub=pairs)
                else:
                    item = inj.query_item(secret)
                    route = Allow(connector.name, query=inj.query, query_item=item, scrub=pairs)
            self.routes[connector.name] = route
            entries.extend((p, connector.name) for p in connector.patterns)
        self.index: PatternIndex[str] = PatternIndex(entries)

    def __len__(self) -> int:
        return len(self.routes)

    def connect(self, target: Target, allowed: frozenset[str] | None = None) -> Block | None:
        """May a tunnel to ``target`` open? Some usable connector must cover it."""
        covered = False
        for hit in self.index.candidates(target.host, target.port):
            if allowed is None or hit.owner in allowed:
                return None
            covered = True
        if covered:
            return Block(Reason.NOT_GRANTED, f"{target.authority} is not among this grant's connectors")
        return Block(Reason.NO_CONNECTOR, f"no connector allows {target.authority}")

    def route(self, target: Target, path: str, allowed: frozenset[str] | None = None) -> Allow | Block:
        """Which connector serves ``path`` (query removed) on ``target``."""
        problem = path_problem(path)
        if problem:
            return Block(Reason.BAD_PATH, problem)
        hits = self.index.best(target.host, target.port, path)
        if allowed is not None:
            granted = [h for h in hits if h.owner in allowed]
            if hits and not granted:
                return Block(Reason.NOT_GRANTED, f"{hits[0].owner} is not granted")
            hits = granted
        if not hits:
            return Block(Reason.NO_CONNECTOR, f"no connector allows https://{target.authority}{path}")
        owners = sorted({h.owner for h in hits})
        if len(owners) > 1:
            return Block(Reason.AMBIGUOUS, f"equally specific connectors: {', '.join(owners)}")
        return self.routes[owners[0]]

    def explain(self, url: str, allowed: frozenset[str] | None = None) -> Allow | Block:
        """The decision for a URL, as the proxy would make it (for the CLI)."""
        try:
            parts = urlsplit(url)
        except ValueError as e:
            return Block(Reason.BAD_REQUEST, str(e))
        if parts.scheme != "https":
            return Block(Reason.PLAIN_HTTP, "only https:// URLs are proxied")
        try:
            host, port = split_authority(parts.netloc)
        except ValueError as e:
            return Block(Reason.BAD_HOST, str(e))
        target = Target(host, port)
        return self.connect(target, allowed) or self.route(target, parts.path or "/", allowed)


def parse_target(host: str, port: int) -> Target | Block:
    """Normalise a CONNECT target; odd spellings are refused, not interpreted."""
    try:
        return Target(normalize_host(host), port)
    except ValueError as e:
        return Block(Reason.BAD_HOST, str(e))


def check_tunnel_request(
    target: Target,
    *,
    tls: bool,
    sni: str | None,
    authority: str,
    host_headers: Sequence[str],
    port: int,
) -> Block | None:
    """A request inside a tunnel must name exactly the tunnel's target.

    The client SNI, the HTTP/2 ``:authority`` or absolute-form authority, and
    the single ``Host`` header must all equal the CONNECT target, so that what
    we matched is what the upstream sees.
    """
    if not tls:
        return Block(Reason.PLAIN_HTTP, "request inside the tunnel was not TLS")
    if port != target.port:
        return Block(Reason.HOST_MISMATCH, "request port differs from the tunnel's")
    if sni != target.host:  # fast path: clients normally send the name as given
        if target.is_ip:
            if sni and _norm(sni) != target.host:
                return Block(Reason.SNI_MISMATCH, "TLS server name differs from the tunnel's")
        elif sni is None or _norm(sni) != target.host:
            return Block(Reason.SNI_MISMATCH, "TLS server name differs from the tunnel's")
    if len(host_headers) > 1:
        return Block(Reason.HOST_MISMATCH, "more than one Host header")
    names = [authority] if authority else []
    names.extend(host_headers)
    if not names:
        return Block(Reason.HOST_MISMATCH, "no Host header")
    for name in names:
        if name == target.authority:
            continue
        try:
            if split_authority(name) != (target.host, target.port):
                return Block(Reason.HOST_MISMATCH, "Host differs from the tunnel's target")
        except ValueError:
            return Block(Reason.HOST_MISMATCH, "Host is not a valid authority")
    return None


def _norm(name: str) -> str | None:
    try:
        return normalize_host(name)
    except ValueError:
        return None


def with_query_item(path: str, name: str, item: str) -> str:
    """``path`` with every ``name`` parameter removed and ``item`` appended.

    Other parameters keep their exact bytes; names compare after decoding so
    ``%61pi_key`` cannot smuggle a second copy past us.
    """
    base, sep, query = path.partition("?")
    kept = [p for p in query.split("&") if p and unquote_plus(p.split("=", 1)[0]) != name] if sep else []
    kept.append(item)
    return f"{base}?{'&'.join(kept)}"


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

"""Routing decisions: may a tunnel open, which connector serves a URL.

Every decision is a value (an ``Allow`` or a ``Block``), never an exception,
so the mitmproxy adapters stay thin and ``egress check URL`` answers with the
very code the proxy runs. Credentials are rendered once, when the Policy is
built, never per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from proxy.connectors import Connector, split_key, workspace_of
from proxy.credentials import Rendered
from proxy.hosts import format_authority, is_ip_literal, normalize_host, split_authority
from proxy.nearmiss import NearMiss, Neighbours, Request, ambiguous
from proxy.patterns import ENCODED_SEPARATOR, Hit, Pattern, PatternIndex, path_problem
from proxy.reasons import REASONS, Reason
from proxy.scrub import Needles, SecretIndex, needles_for


@dataclass(frozen=True, slots=True)
class Block:
    reason: Reason
    detail: str
    override: int | None = None  # a status other than the reason table's (431 for a huge head)
    near_miss: NearMiss | None = None  # the connector that came closest, for routing blocks

    @property
    def status(self) -> int:
        return self.override or REASONS[self.reason].status


@dataclass(frozen=True, slots=True)
class Allow:
    """A request may pass through ``connector``; its credential is pre-rendered."""

    connector: str
    where: str  # "header Authorization", for operators
    rendered: Rendered = field(repr=False)
    scrub: Needles = field(default=Needles(), repr=False)  # the secrets' forms to mask in responses
    # Client headers to remove before injecting: the injected names, compared
    # lowercase with "_" as "-", so X_Api_Key cannot ride beside X-Api-Key.
    strip: frozenset[str] = frozenset()
    methods: frozenset[str] | None = None  # None: every method
    # OAuth2 connectors sharing a host with this one: their live tokens are masked in its
    # responses too (known only at request time, so the OAuth2 adapter adds them).
    oauth_peers: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Target:
    """A tunnel's destination as the client named it in CONNECT (normalised)."""

    host: str
    port: int
    is_ip: bool = field(init=False, compare=False)
    authority: str = field(init=False, compare=False)  # what Host must say, and will

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_ip", is_ip_literal(self.host))
        object.__setattr__(self, "authority", format_authority(self.host, self.port))


Fields = Mapping[str, str]


class Policy:
    """Connectors compiled for matching, with their credentials rendered once."""

    def __init__(self, connectors: Iterable[tuple[Connector, Fields | None]] = ()) -> None:
        self.routes: dict[str, Allow] = {}
        entries: list[tuple[Pattern, str]] = []
        rendered: dict[str, Rendered] = {}
        by_host: dict[tuple[str, int], set[str]] = {}  # secrets of every connector on a host
        oauth_on: dict[tuple[str, int], set[str]] = {}  # the OAuth2 connectors on a host
        items = list(connectors)
        for connector, fields in items:
            r = Rendered() if fields is None else connector.inject.render(fields)
            rendered[connector.key] = r
            for p in connector.patterns:
                by_host.setdefault((p.host, p.port), set()).update(r.secrets)
                if r.oauth2 is not None:
                    oauth_on.setdefault((p.host, p.port), set()).add(connector.key)
            entries.extend((p, connector.key) for p in connector.patterns)
        for connector, fields in items:
            r = rendered[connector.key]
            if fields is None:  # matching only (tests, benchmarks): nothing to inject
                route = Allow(connector.key, connector.inject.where, r)
            else:
                # Any secret used on this connector's hosts is masked in its responses: an
                # upstream shared by two connectors must not echo one's secret to the other.
                shared = set(r.secrets).union(*(by_host[(p.host, p.port)] for p in connector.patterns))
                names = frozenset(header_key(n) for n in (*r.header_names(), *connector.strip_headers))
                peers = set().union(*(oauth_on.get((p.host, p.port), ()) for p in connector.patterns))
                peers.discard(connector.key)
                route = Allow(
                    connector.key, connector.inject.where, r, needles_for(sorted(shared)), names,
                    oauth_peers=frozenset(peers),
                )  # fmt: skip
            self.routes[connector.key] = replace(route, methods=connector.methods)
        self.index: PatternIndex[str] = PatternIndex(entries)
        # Every secret the proxy holds, to refuse a request that carries one (the sandbox never
        # legitimately does): one index over all connectors, built once per load.
        self.guard = SecretIndex((name, s) for name, r in rendered.items() for s in r.secrets)
        self._entries = entries
        self._neighbours: Neighbours | None = None  # built on the first blocked request

    def __len__(self) -> int:
        return len(self.routes)

    def connect(self, target: Target, allowed: frozenset[str] | None = None) -> Block | None:
        """May a tunnel to ``target`` open? Some usable connector must cover it."""
        covered = False
        for hit in self.index.candidates(target.host, target.port):
            if allowed is None or hit.owner in allowed:
                return None
            covered = True
        near = self.near_miss(Request(target.host, target.port, allowed=allowed))
        if covered:
            return Block(
                Reason.NOT_GRANTED, f"{target.authority} is not among this grant's connectors", near_miss=near
            )
        return Block(Reason.NO_CONNECTOR, f"no connector allows {target.authority}", near_miss=near)

    def refused_request(
        self, block: Block, target: Target, path: str, method: str | None, allowed: frozenset[str] | None
    ) -> Block:
        """A refusal at CONNECT, told for one request inside it: the near miss weighs the path
        and method too (at CONNECT they were unknown), so its words say all that differs."""
        if block.reason not in (Reason.NO_CONNECTOR, Reason.NOT_GRANTED):
            return block
        return replace(
            block, near_miss=self.near_miss(Request(target.host, target.port, path, method, allowed))
        )

    def near_miss(self, request: Request) -> NearMiss | None:
        """The connector closest to a blocked request (only ever called on a block)."""
        if self._neighbours is None:
            methods = {name: route.methods for name, route in self.routes.items()}
            self._neighbours = Neighbours.build(self._entries, methods)
        return self._neighbours.nearest(request)

    def route(
        self, target: Target, path: str, allowed: frozenset[str] | None = None, method: str | None = None
    ) -> Allow | Block:
        """Which connector serves ``method path`` (query removed) on ``target``.

        The grant, then the method, narrow the candidates before ambiguity is
        judged: two connectors may cover one URL when grants (or methods) tell
        them apart.
        """
        problem = path_problem(path)
        encoded = problem is not None and ENCODED_SEPARATOR.search(path) is not None
        if encoded:
            problem = path_problem(path, encoded_ok=True)  # allowed inside a wildcard, checked below
        if problem:
            return Block(Reason.BAD_PATH, problem)
        hits = self.index.best(target.host, target.port, path)
        if encoded:
            at = [m.start() for m in ENCODED_SEPARATOR.finditer(path)]
            hits = [h for h in hits if h.pattern.wildcards_cover(path, at)]
            if not hits:
                return Block(Reason.BAD_PATH, "encoded / or % outside the part a wildcard allows")
        if allowed is not None:
            granted = [h for h in hits if h.owner in allowed]
            if hits and not granted:
                return self._blocked(
                    Reason.NOT_GRANTED, _not_granted(hits, allowed), target, path, allowed, method
                )
            hits = granted
        if method is not None and hits:
            permitted = [h for h in hits if self._permits(h.owner, method)]
            if not permitted:
                detail = f"{hits[0].owner} does not allow {method}"
                return self._blocked(Reason.METHOD_NOT_ALLOWED, detail, target, path, allowed, method)
            hits = permitted
        if not hits:
            detail = f"no connector allows https://{target.authority}{path}"
            return self._blocked(Reason.NO_CONNECTOR, detail, target, path, allowed, method)
        owners = sorted({h.owner for h in hits})
        if len(owners) > 1:
            return Block(
                Reason.AMBIGUOUS,
                f"equally specific connectors: {', '.join(owners)}",
                near_miss=ambiguous(owners, hits[0].pattern),
            )
        return self.routes[owners[0]]

    def _blocked(
        self,
        reason: Reason,
        detail: str,
        target: Target,
        path: str,
        allowed: frozenset[str] | None,
        method: str | None,
    ) -> Block:
        near = self.near_miss(Request(target.host, target.port, path, method, allowed))
        return Block(reason, detail, near_miss=near)

    def plain_http(
        self,
        host: str,
        port: int,
        path: str,
        allowed: frozenset[str] | None = None,
        method: str | None = None,
    ) -> Block:
        """A plain http:// request: blocked, with the connector its https:// twin would reach."""
        port = 443 if port == 80 else port  # the scheme's default port stands for https's
        near = self.near_miss(Request(host, port, path, method, allowed, scheme="http"))
        return Block(Reason.PLAIN_HTTP, "only https:// URLs are proxied", near_miss=near)

    def _permits(self, owner: str, method: str) -> bool:
        methods = self.routes[owner].methods
        return methods is None or method in methods

    def explain(
        self, url: str, allowed: frozenset[str] | None = None, method: str | None = None
    ) -> Allow | Block:
        """The decision for a URL, as the proxy would make it (for the CLI)."""
        try:
            parts = urlsplit(url)
        except ValueError as e:
            return Block(Reason.BAD_REQUEST, str(e))
        if parts.scheme not in ("https", "http"):
            return Block(Reason.PLAIN_HTTP, "only https:// URLs are proxied")
        try:
            host, port = split_authority(parts.netloc)
        except ValueError as e:
            return Block(Reason.BAD_HOST, str(e))
        if parts.scheme == "http":
            return self.plain_http(host, port, parts.path or "/", allowed, method)
        target = Target(host, port)
        path = parts.path or "/"
        refused = self.connect(target, allowed)
        if refused is not None:
            return self.refused_request(refused, target, path, method, allowed)
        return self.route(target, path, allowed, method)


def _not_granted(hits: Iterable[Hit[str]], allowed: frozenset[str]) -> str:
    """Which connector would serve it: one of the grant's workspace, never another's (a tenant
    learns no other tenant's connector names from a 403)."""
    workspace = workspace_of(allowed)
    own = next((h.owner for h in hits if split_key(h.owner)[0] == workspace), None)
    return f"{own} is not granted" if own else "only another workspace's connectors allow this URL"


def header_key(name: str) -> str:
    """How upstreams may fold a header name: case-insensitive, "_" read as "-"."""
    return name.lower().replace("_", "-")


def parse_target(host: str, port: int) -> Target | Block:
    """Normalise a CONNECT target; odd spellings are refused, not interpreted."""
    try:
        return Target(normalize_host(host), port)
    except ValueError as e:
        return Block(Reason.BAD_HOST, str(e))

"""Near miss: for a blocked request, the connector that came closest and what differed.

An operator staring at ``no-connector`` wants to know that ``stripe`` would
have matched but for ``/v2`` instead of ``/v1``. The answer is computed only
when a request is blocked, from the same patterns the proxy matches, and
touches only index buckets near the request's host (never every pattern), so
a flood of blocked requests stays cheap. What differed is one fixed word
(``Differs``); readers keep words they do not know, so a word can be added
without a schema change.

A connector of another workspace is a tenant boundary: the operator's views
(``egress check``, the blocked log) name it, the blocked client is told only
the word ``other-workspace`` (``NearMiss.body``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from proxy.connectors import split_key, workspace_of
from proxy.errors import ConfigError
from proxy.hosts import format_authority, is_ip_literal, split_authority
from proxy.patterns import Pattern, parse_pattern
from proxy.stats import printable


class Differs(StrEnum):
    """What kept the nearest connector from matching, in the order it should be fixed."""

    SCHEME = "scheme"
    HOST = "host"
    PORT = "port"
    PATH = "path"
    METHOD = "method"
    NOT_GRANTED = "not-granted"
    OTHER_WORKSPACE = "other-workspace"  # the connector is another workspace's than the grant's
    AMBIGUOUS_WITH = "ambiguous-with"


# Another workspace comes first: nothing else is worth fixing on a connector the grant can never reach.
ORDER = (
    Differs.OTHER_WORKSPACE, Differs.SCHEME, Differs.HOST, Differs.PORT, Differs.PATH, Differs.METHOD,
    Differs.NOT_GRANTED,
)  # fmt: skip
GRANT_WORDS = frozenset({Differs.NOT_GRANTED, Differs.OTHER_WORKSPACE})
BUCKET_CAP = 32  # host neighbours looked at per index bucket: bounded work per blocked request
DETAIL_LIMIT = 400
OTHER_WORKSPACE_BODY = {
    "differs": str(Differs.OTHER_WORKSPACE),
    "detail": "a connector of another workspace would match; a grant reaches only its own workspace's connectors",
}


@dataclass(frozen=True, slots=True)
class NearMiss:
    """The nearest connector and the first thing to change; never holds a secret."""

    connector: str
    differs: str  # a ``Differs`` word (kept as text: a newer proxy may write a word this one lacks)
    detail: str
    pattern: str = ""  # the nearest pattern, canonical
    also: tuple[str, ...] = ()  # further words that differ, in ``ORDER``
    depth: int = 0  # for ``host``: labels the pattern wants more (+1) or fewer (-1) than the request
    others: tuple[str, ...] = ()  # for ``ambiguous-with``: the connectors tied with ``connector``

    @property
    def foreign(self) -> bool:
        """Is the connector another workspace's than the blocked client's?"""
        return Differs.OTHER_WORKSPACE in (self.differs, *self.also)

    def body(self) -> dict[str, str]:
        """The small form a blocked client is told: for another workspace's connector only the
        word, never its name, pattern or what else differs (that workspace's business)."""
        if self.foreign:
            return dict(OTHER_WORKSPACE_BODY)
        return {"connector": self.connector, "differs": self.differs, "detail": self.detail}

    def concealed(self) -> NearMiss:
        """``body``'s form as a value, for views scoped to one workspace (the admin API)."""
        if not self.foreign:
            return self
        return NearMiss("", OTHER_WORKSPACE_BODY["differs"], OTHER_WORKSPACE_BODY["detail"])

    def to_dict(self) -> dict[str, Any]:
        """The full form, for log rows and ``--json``."""
        doc: dict[str, Any] = {"connector": self.connector, "differs": self.differs, "detail": self.detail}
        if not self.connector:
            del doc["connector"]
        if self.pattern:
            doc["pattern"] = self.pattern
        if self.also:
            doc["also"] = list(self.also)
        if self.depth:
            doc["depth"] = self.depth
        if self.others:
            doc["others"] = list(self.others)
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> NearMiss:
        return cls(
            str(doc.get("connector", "")),
            str(doc.get("differs", "")),
            str(doc.get("detail", "")),
            str(doc.get("pattern", "")),
            tuple(str(w) for w in doc.get("also", ())),
            int(doc.get("depth", 0)),
            tuple(str(o) for o in doc.get("others", ())),
        )


@dataclass(frozen=True, slots=True)
class Request:
    """What a blocked request asked for; ``path`` and ``method`` are None at CONNECT."""

    host: str
    port: int
    path: str | None = None
    method: str | None = None
    allowed: frozenset[str] | None = None  # the grant's connectors (None: every one)
    scheme: str = "https"
    workspace: str | None = field(init=False, compare=False)  # the grant's (None: no grant)

    def __post_init__(self) -> None:
        object.__setattr__(self, "workspace", workspace_of(self.allowed) if self.allowed else None)

    @property
    def authority(self) -> str:
        return format_authority(self.host, self.port)


def _parent(host: str) -> str | None:
    dot = host.find(".")
    return host[dot + 1 :] if dot >= 0 else None


@dataclass(slots=True)
class Neighbours:
    """Patterns indexed by host regardless of port, and by parent domain.

    Built once per policy, on its first blocked request, so loading and the
    allowed path pay nothing for it.
    """

    methods: Mapping[str, frozenset[str] | None]
    exact: dict[str, list[tuple[Pattern, str]]] = field(default_factory=dict)
    exact_by_parent: dict[str, list[tuple[Pattern, str]]] = field(default_factory=dict)
    wild: dict[str, list[tuple[Pattern, str]]] = field(default_factory=dict)  # by suffix
    wild_by_parent: dict[str, list[tuple[Pattern, str]]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, entries: Iterable[tuple[Pattern, str]], methods: Mapping[str, frozenset[str] | None]
    ) -> Neighbours:
        n = cls(methods)
        for pattern, owner in entries:
            by_host, by_parent = (
                (n.wild, n.wild_by_parent) if pattern.wildcard_host else (n.exact, n.exact_by_parent)
            )
            by_host.setdefault(pattern.host, []).append((pattern, owner))
            parent = _parent(pattern.host)
            if parent is not None and not is_ip_literal(pattern.host):
                by_parent.setdefault(parent, []).append((pattern, owner))
        for table in (n.exact, n.exact_by_parent, n.wild, n.wild_by_parent):
            for bucket in table.values():
                bucket.sort(key=lambda e: (e[0].specificity, e[1]), reverse=True)
        return n

    def _around(self, host: str) -> Iterator[tuple[Pattern, str, int | None]]:
        """Patterns on this host (depth None) and on hosts one label away (their depth)."""
        yield from ((p, o, None) for p, o in self.exact.get(host, ()))
        if is_ip_literal(host):
            return
        suffix = _parent(host)
        while suffix is not None:
            yield from ((p, o, None) for p, o in self.wild.get(suffix, ()))
            suffix = _parent(suffix)
        parent = _parent(host)
        near: list[tuple[list[tuple[Pattern, str]], int]] = [
            (self.wild.get(host, []), 1),  # *.example.com never matches example.com itself
            (self.exact_by_parent.get(host, []), 1),  # api.example.com, request example.com
        ]
        if parent is not None:
            near.append((self.exact.get(parent, []), -1))  # example.com, request api.example.com
        if parent is not None and "." in parent:  # siblings under a registrable name, not a TLD
            near += [
                (self.exact_by_parent.get(parent, []), 0),  # files.example.com, request api.example.com
                (self.wild_by_parent.get(parent, []), 0),  # *.eu.example.com, request api.example.com
            ]
        for bucket, depth in near:
            yield from ((p, o, depth) for p, o in bucket[:BUCKET_CAP] if depth or p.host != host)

    def nearest(self, request: Request) -> NearMiss | None:
        """The closest pattern: fewest differing words, then one only the grant kept out, then same
        host, then most specific."""
        best: tuple[tuple[Any, ...], Pattern, str, int | None, list[Differs]] | None = None
        for pattern, owner, depth in self._around(request.host):
            words = self._differences(request, pattern, owner, depth)
            if not words:
                continue  # it matches: the block is about something else (ambiguity)
            key = (
                len(words),
                # On a tie, one that matches the URL (only the grant kept it out) names what would
                # have served the request; of those, one in the grant's own workspace.
                not GRANT_WORDS.issuperset(words),
                Differs.OTHER_WORKSPACE in words,
                Differs.HOST in words,
                Differs.PORT in words,
                _negated(pattern.specificity),
                owner,
            )
            if best is None or key < best[0]:
                best = (key, pattern, owner, depth, words)
        if best is None:
            return None
        _, pattern, owner, depth, words = best
        first = words[0]
        detail = printable(
            _detail(first, request, pattern, owner, depth, self.methods.get(owner)), DETAIL_LIMIT
        )
        return NearMiss(owner, str(first), detail, pattern.text, tuple(str(w) for w in words[1:]), depth or 0)

    def _differences(
        self, request: Request, pattern: Pattern, owner: str, depth: int | None
    ) -> list[Differs]:
        words = []
        foreign = request.workspace is not None and split_key(owner)[0] != request.workspace
        if foreign:
            words.append(Differs.OTHER_WORKSPACE)
        if request.scheme != "https":
            words.append(Differs.SCHEME)
        if depth is not None:
            words.append(Differs.HOST)
        if pattern.port != request.port:
            words.append(Differs.PORT)
        if request.path is not None and not pattern.path_matches(request.path):
            words.append(Differs.PATH)
        methods = self.methods.get(owner)
        if request.method is not None and methods is not None and request.method not in methods:
            words.append(Differs.METHOD)
        if request.allowed is not None and owner not in request.allowed and not foreign:
            words.append(Differs.NOT_GRANTED)  # (another workspace's connector never is: implied)
        return words


def _negated(spec: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(-v for v in spec)


def ambiguous(owners: list[str], pattern: Pattern | None = None) -> NearMiss:
    """Two or more connectors tie; the first is named, the rest are ``others``."""
    names = ", ".join(owners)
    return NearMiss(
        owners[0],
        str(Differs.AMBIGUOUS_WITH),
        printable(f"{names} match equally well; a grant naming one of them tells them apart", DETAIL_LIMIT),
        pattern.text if pattern else "",
        others=tuple(owners[1:]),
    )


def _detail(
    word: Differs, r: Request, p: Pattern, owner: str, depth: int | None, methods: frozenset[str] | None
) -> str:
    if word is Differs.SCHEME:
        return f"connector {owner} allows {p.text}; the request used {r.scheme}://, not https://"
    if word is Differs.HOST:
        if p.wildcard_host and depth == 1:
            return f"pattern {p.text} wants one more label: *.{p.host} never matches {r.host} itself"
        if depth == 1:
            return f"pattern {p.text} wants one more label: {p.host}, request has {r.host}"
        if depth == -1:
            return f"pattern {p.text} wants one label fewer: {p.host}, request has {r.host}"
        return f"pattern {p.text} wants host {'*.' if p.wildcard_host else ''}{p.host}, request has {r.host}"
    if word is Differs.PORT:
        if p.port == 443:
            return f"pattern {p.text} has no port (443); the request used :{r.port}"
        return f"pattern {p.text} wants port {p.port}; the request used :{r.port}"
    if word is Differs.PATH:
        assert r.path is not None
        return path_gap(p, r.path)
    if word is Differs.METHOD:
        return f"{owner} allows {', '.join(sorted(methods or ()))}; the request used {r.method}"
    if word is Differs.OTHER_WORKSPACE:
        return f"connector {owner} is in workspace {split_key(owner)[0]}; the grant reaches only workspace {r.workspace}"
    return f"the grant does not name {owner}"


def missing_star(p: Pattern, path: str) -> bool:
    """An exact-path pattern that would match with ``/*`` added (a common slip)."""
    return "*" not in p.path and path.startswith(p.path.rstrip("/") + "/")


def first_difference(p: Pattern, path: str) -> int:
    """Index of the first request path segment the pattern does not accept."""
    wanted = p.path.split("/")
    got = path.split("/")
    for i, seg in enumerate(got):
        if i >= len(wanted) or "*" in wanted[i]:
            return min(i, len(got) - 1)
        if seg != wanted[i]:
            return i
    return len(got) - 1


def path_gap(p: Pattern, path: str) -> str:
    """``pattern wants /v1/*, request has /v2/...``: the first differing segment."""
    if missing_star(p, path):
        return f"pattern {p.text} matches {p.path} only (no /*); request has {path}"
    got = path.split("/")
    i = max(first_difference(p, path), 1)
    shown = "/".join(got[: i + 1]) + ("/..." if len(got) > i + 1 else "")
    return f"pattern wants {p.path}, request has {shown}"


def suggestion(miss: NearMiss | None, method: str, authority: str, path: str) -> str:
    """The smallest change that would allow this request, in words; never applied."""
    url = f"https://{authority}{path}"
    if miss is not None and miss.differs == Differs.OTHER_WORKSPACE:
        if not miss.connector:  # concealed: the connector is not this viewer's to know
            return "a connector of another workspace would match: add one to the grant's workspace"
        ws, name = split_key(miss.connector)
        return (
            f"connector {miss.connector} is in workspace {ws}: mint the grant there "
            f"(`egress grant --workspace {ws} --connector {name}`), or add a connector to the grant's workspace"
        )
    if miss is None or not miss.connector:
        first = next((s for s in path.split("/") if s), "")
        return f"no connector is near {url}: add one with pattern https://{authority}/{first + '/' if first else ''}*"
    c = miss.connector
    if miss.differs == Differs.AMBIGUOUS_WITH:
        tied = ", ".join((c, *miss.others))
        return f"connectors {tied} match equally: give the grant only one of them, or narrow one's pattern"
    if miss.differs == Differs.NOT_GRANTED:
        return f"the grant does not name connector {c}: mint one with `egress grant --connector {c}`"
    if miss.differs == Differs.METHOD:
        return f"add method {method} to connector {c} (`methods:`), if {c} should allow it"
    if miss.differs == Differs.SCHEME:
        return f"send it as https://: connector {c} allows it ({miss.pattern})"
    try:
        p = parse_pattern(miss.pattern)
    except ConfigError:
        return f"connector {c}: {miss.detail}"
    scheme_host = f"https://{'*.' if p.wildcard_host else ''}{format_authority(p.host, p.port)}"
    if miss.differs == Differs.PATH:
        if missing_star(p, path):
            return f"connector {c}: pattern {p.text} has no /*; add pattern {p.text.rstrip('/')}/* to connector {c}"
        segs = path.split("/")
        i = max(first_difference(p, path), 1)
        prefix = "/".join(segs[: i + 1])
        return f"add pattern {scheme_host}{prefix}/* to connector {c}"
    if miss.differs == Differs.PORT:
        try:
            port = split_authority(authority)[1]
        except ValueError:
            return f"connector {c}: {miss.detail}"
        wanted = "has no port" if p.port == 443 else f"wants port {p.port}"
        new = f"https://{'*.' if p.wildcard_host else ''}{format_authority(p.host, port)}{p.path}"
        return f"connector {c}: pattern {p.text} {wanted}; the request used :{port} (add pattern {new})"
    if miss.differs == Differs.HOST:
        if p.wildcard_host and miss.depth == 1:
            return (
                f"connector {c}: pattern {p.text} never matches the bare domain; "
                f"add pattern https://{authority}{p.path} to connector {c}"
            )
        return f"add pattern https://{authority}{p.path} to connector {c}"
    return f"connector {c}: {miss.detail}"

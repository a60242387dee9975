"""URL patterns: grammar, request-path vetting and an index for fast matching.

A pattern is ``https://HOST[:PORT]/PATH``. HOST may start with ``*.`` (one or
more labels); PATH may contain ``*`` (any run of characters, ``/`` included),
and a trailing ``/*`` also matches the path without it. The query string
never takes part in matching (docs/usage.md, "Patterns").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

from proxy.errors import ConfigError
from proxy.hosts import format_authority, split_authority

_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Characters a request path may carry as-is (RFC 3986 pchar plus "/" and "%").
_PATH_CHARS = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*\Z")
_ENCODED_DOTS = re.compile(r"%2e", re.IGNORECASE)
_ENCODED_CONTROL = re.compile(r"%[01][0-9a-f]|%7f")
# Overlong UTF-8 (%c0%ae is "." to a lenient decoder); never valid UTF-8.
_OVERLONG = re.compile(r"%c[01]|%e0%[89]|%f0%8")


ENCODED_SEPARATOR = re.compile(r"%2f|%25", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_DECODINGS = 4


def path_problem(path: str, *, encoded_ok: bool = False) -> str | None:
    """Why a request path (query already removed) is unsafe to match, or None.

    Paths are never normalised: anything an upstream might resolve differently
    from us (dot segments, encoded slashes or backslashes, double encoding,
    control characters) is refused outright. With ``encoded_ok``, ``%2F`` and
    ``%25`` pass here (the caller then requires them inside a wildcard), and
    the path is decoded repeatedly so no decoding uncovers a dot segment,
    backslash or control character.
    """
    if not path.startswith("/"):
        return "path must start with /"
    if not _PATH_CHARS.match(path):
        if "\\" in path:
            return "backslash in path"
        return "control or non-ASCII character in path"
    if "%" in path:
        if _PCT.search(path):
            return "malformed percent-encoding"
        low = path.lower()
        if "%5c" in low or (not encoded_ok and "%2f" in low):
            return "encoded slash in path"
        if not encoded_ok and "%25" in low:
            return "double percent-encoding"
        if "%3b" in low:
            return "encoded semicolon in path"
        if _OVERLONG.search(low):
            return "overlong UTF-8 encoding in path"
        if _ENCODED_CONTROL.search(low):
            return "encoded control character in path"
    for segment in path.split("/"):
        seg = _ENCODED_DOTS.sub(".", segment).split(";", 1)[0]
        if seg in (".", ".."):
            return "dot segment in path"
    return _decoded_problem(path) if encoded_ok and "%" in path else None


def _decoded_problem(path: str) -> str | None:
    """What any number of decodings of ``path`` could turn into."""
    current = path
    for _ in range(MAX_DECODINGS):
        decoded = unquote(current, errors="replace")
        if decoded == current:
            return None
        current = decoded
        low = current.lower()
        if "\\" in current or "%5c" in low:
            return "backslash after decoding"
        if _CONTROL.search(current) or _ENCODED_CONTROL.search(low) or _OVERLONG.search(low):
            return "control character or overlong encoding after decoding"
        for segment in current.split("/"):
            if segment.split(";", 1)[0] in (".", ".."):
                return "dot segment after decoding"
    return "percent-encoding nested too deep"


@dataclass(frozen=True, slots=True)
class Pattern:
    """One parsed pattern. ``text`` is the canonical form shown to operators."""

    text: str
    host: str  # exact host, or the suffix after "*." for wildcard hosts
    wildcard_host: bool
    port: int
    path: str
    # Higher wins: exact host, longer host, literal path, longer literal prefix.
    specificity: tuple[int, int, int, int]
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)
    _spans: re.Pattern[str] | None = field(default=None, compare=False, repr=False)  # * as groups

    def host_matches(self, host: str, port: int) -> bool:
        if port != self.port:
            return False
        if self.wildcard_host:
            return host.endswith("." + self.host)
        return host == self.host

    def path_matches(self, path: str) -> bool:
        if self._regex is None:
            return path == self.path
        return self._regex.match(path) is not None

    def wildcards_cover(self, path: str, at: Iterable[int], width: int = 3) -> bool:
        """Whether every ``path[i:i+width]`` for ``i`` in ``at`` lies where a ``*`` matched."""
        m = self._spans.match(path) if self._spans else None
        if m is None:
            return False
        spans = [m.span(g) for g in range(1, (m.lastindex or 0) + 1) if m.start(g) >= 0]
        return all(any(a <= i and i + width <= b for a, b in spans) for i in at)

    def matches(self, host: str, port: int, path: str) -> bool:
        return self.host_matches(host, port) and self.path_matches(path)


def parse_pattern(text: str) -> Pattern:
    """Parse a pattern; raise ConfigError with a message saying what is wrong."""
    if not isinstance(text, str) or not text:
        raise ConfigError("pattern must be a non-empty string")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ConfigError(f"{text!r}: not a URL (expected https://HOST/PATH)")
    if scheme.lower() != "https":
        raise ConfigError(f"{text!r}: scheme must be https, not {scheme!r}")
    if "?" in rest or "#" in rest:
        raise ConfigError(f"{text!r}: patterns match the path only; remove the query or fragment")
    slash = rest.find("/")
    if slash < 0:
        raise ConfigError(f"{text!r}: missing path (write {text.rstrip('/')}/* to allow every path)")
    authority, path = rest[:slash], rest[slash:]
    wildcard = authority.startswith("*.")
    if wildcard:
        authority = authority[2:]
    if "*" in authority:
        raise ConfigError(f"{text!r}: the only host wildcard allowed is a leading '*.'")
    try:
        host, port = split_authority(authority)
    except ValueError as e:
        raise ConfigError(f"{text!r}: {e}") from None
    if wildcard and (host.replace(".", "").isdigit() or ":" in host):
        raise ConfigError(f"{text!r}: a wildcard cannot precede an IP address")
    if wildcard and "." not in host:
        raise ConfigError(f"{text!r}: wildcard over a top-level domain is too broad")
    problem = path_problem(path.replace("*", "x"))
    if problem:
        raise ConfigError(f"{text!r}: {problem}")
    regex = spans = None
    if "*" in path:
        body = path[:-2] if path.endswith("/*") else path
        parts = [re.escape(part) for part in body.split("*")]
        expr, grouped = ".*".join(parts), "(.*)".join(parts)
        if path.endswith("/*"):
            expr += "(?:/.*)?"
            grouped += "(/.*)?"
        regex = re.compile(expr + r"\Z", re.DOTALL)
        spans = re.compile(grouped + r"\Z", re.DOTALL)
    canonical = f"https://{'*.' if wildcard else ''}{format_authority(host, port)}{path}"
    specificity = (
        0 if wildcard else 1,
        len(host),
        0 if "*" in path else 1,
        len(path.split("*", 1)[0]),
    )
    return Pattern(canonical, host, wildcard, port, path, specificity, regex, spans)


@dataclass(frozen=True, slots=True)
class Hit[T]:
    pattern: Pattern
    owner: T


class PatternIndex[T]:
    """Patterns indexed by (host, port) so a lookup touches only candidates.

    Exact hosts sit in one dict; wildcard patterns sit in another keyed by their
    suffix, and a lookup walks the request host's parent domains. Each bucket is
    kept sorted by specificity, most specific first.
    """

    def __init__(self, entries: Iterable[tuple[Pattern, T]] = ()) -> None:
        self._exact: dict[tuple[str, int], list[Hit[T]]] = {}
        self._wild: dict[tuple[str, int], list[Hit[T]]] = {}
        for pattern, owner in entries:
            table = self._wild if pattern.wildcard_host else self._exact
            table.setdefault((pattern.host, pattern.port), []).append(Hit(pattern, owner))
        for table in (self._exact, self._wild):
            for bucket in table.values():
                bucket.sort(key=lambda h: h.pattern.specificity, reverse=True)

    def __len__(self) -> int:
        return sum(len(b) for b in self._exact.values()) + sum(len(b) for b in self._wild.values())

    def candidates(self, host: str, port: int) -> Iterator[Hit[T]]:
        """Every entry whose host part matches, most specific host first."""
        bucket = self._exact.get((host, port))
        if bucket:
            yield from bucket
        if self._wild:
            dot = host.find(".")
            while dot >= 0:
                bucket = self._wild.get((host[dot + 1 :], port))
                if bucket:
                    yield from bucket
                dot = host.find(".", dot + 1)

    def best(self, host: str, port: int, path: str) -> list[Hit[T]]:
        """The matching entries of the highest specificity (empty if none)."""
        found: list[Hit[T]] = []
        top: tuple[int, int, int, int] | None = None
        for hit in self.candidates(host, port):
            spec = hit.pattern.specificity
            if top is not None and spec < top:
                break
            if hit.pattern.path_matches(path):
                if top is None or spec > top:
                    top, found = spec, [hit]
                else:
                    found.append(hit)
        return found

"""Host names, IP literals and ``host:port`` authorities: one parser, one formatter.

Everything that names a host (patterns, CONNECT targets, Host headers,
``--listen``/``--admin``/``--resolve`` flags) goes through here, so odd
spellings are refused the same way everywhere rather than interpreted.
"""

from __future__ import annotations

import ipaddress
import re

from proxy.errors import ConfigError

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)\Z")


def normalize_host(host: str) -> str:
    """Lowercase, drop one trailing dot, IDNA-encode; raise ValueError if invalid.

    IPv6 literals come back without brackets, compressed; IPv4 literals must be
    in dotted-quad form (odd spellings such as ``0x7f.1`` or ``2130706433`` are
    rejected rather than interpreted).
    """
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        return str(ipaddress.IPv6Address(h[1:-1]))
    if h.endswith("."):
        h = h[:-1]
    if not h:
        raise ValueError("empty host")
    try:
        return str(ipaddress.IPv4Address(h))
    except ValueError:
        pass
    if ":" in h:
        return str(ipaddress.IPv6Address(h))
    try:
        h = h.encode("idna").decode("ascii").lower()
    except UnicodeError as e:
        raise ValueError(f"invalid host name {host!r}") from e
    labels = h.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"invalid host name {host!r}")
    if _NUMERIC_LABEL.match(labels[-1]):
        # An odd IPv4 spelling (octal, hex, shortened, one integer): refuse it
        # rather than guess how a resolver would read it.
        raise ValueError(f"ambiguous numeric host {host!r}")
    return h


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def split_authority(authority: str, default_port: int = 443) -> tuple[str, int]:
    """Parse ``host[:port]`` (IPv6 in brackets) into a normalised (host, port)."""
    a = authority.strip()
    if "@" in a:
        raise ValueError("userinfo in authority")
    port = default_port
    if a.startswith("["):
        end = a.find("]")
        if end < 0:
            raise ValueError("unterminated IPv6 literal")
        host, rest = a[: end + 1], a[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("junk after IPv6 literal")
            port = parse_port(rest[1:])
    elif a.count(":") == 1:
        host, p = a.split(":")
        port = parse_port(p)
    elif ":" in a:
        raise ValueError("IPv6 literal must be in brackets")
    else:
        host = a
    return normalize_host(host), port


def parse_port(text: str, *, allow_zero: bool = False) -> int:
    """A port in ASCII digits (Unicode digits are refused), 1-65535 (or 0 if allowed)."""
    if not (text.isascii() and text.isdigit()) or not (0 if allow_zero else 1) <= int(text) < 65536:
        raise ValueError(f"invalid port {text!r}")
    return int(text)


def format_authority(host: str, port: int, default_port: int | None = 443) -> str:
    """``host:port`` with IPv6 in brackets; the port is left out when it is the default."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default_port else f"{shown}:{port}"


def parse_listen(text: str, flag: str) -> tuple[str, int]:
    """A ``HOST:PORT`` to listen on (port 0 picks a free one); ConfigError naming ``flag``."""
    host, sep, port = text.rpartition(":")
    try:
        if not sep:
            raise ValueError
        number = parse_port(port, allow_zero=True)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected HOST:PORT (port 0 picks a free one)") from None
    return host.strip("[]") or "127.0.0.1", number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

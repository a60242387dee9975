"""SSRF guard: which upstream addresses the proxy may connect to.

Only globally routable unicast addresses pass, unless an operator opens a
range with ``--allow-network``. IPv6 forms that embed an IPv4 address
(mapped, compatible, 6to4, NAT64, Teredo) are judged by the embedded address
too, so ``::ffff:127.0.0.1`` is as loopback as ``127.0.0.1``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from proxy.errors import ConfigError
from proxy.hosts import normalize_host

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if int(ip) >> 32 == 0xFFFF0000:  # IPv4-translated ::ffff:0:a.b.c.d (SIIT)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip))
    return None


def _public(ip: IPAddress) -> bool:
    if ip.is_multicast or not ip.is_global or ip in _CGNAT:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            return _public(inner)
    return True


class NetGuard:
    """Decides whether an address may be dialled; holds ``--resolve`` pins."""

    def __init__(self, allow: Iterable[str] = (), pins: Iterable[str] = ()) -> None:
        self.allowed: tuple[IPNetwork, ...] = tuple(parse_network(n) for n in allow)
        self.pins: Mapping[str, str] = dict(parse_pin(p) for p in pins)

    def permits(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return True
        return _public(ip)


def parse_network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"--allow-network {text!r}: not a CIDR range such as 127.0.0.0/8") from None


def parse_pin(text: str) -> tuple[str, str]:
    host, sep, addr = text.partition("=")
    if not sep:
        raise ConfigError(f"--resolve {text!r}: expected HOST=IP")
    try:
        return normalize_host(host), str(ipaddress.ip_address(addr.strip("[]")))
    except ValueError as e:
        raise ConfigError(f"--resolve {text!r}: {e}") from None

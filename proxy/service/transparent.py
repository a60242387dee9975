"""The firewall rules that make a transparent listener the sandbox's only way out.

Only the sandbox's uid is redirected (the proxy runs as a uid of its own, so
its upstream connections are not looped back, and no uid, root included, is
exempted by name). TCP 80/443 goes to the listener; direct connections to the
proxy's own ports, every other TCP connection, UDP (QUIC, DNS to the outside)
and ICMP are rejected; IPv6 leaves only to local addresses.
"""

from __future__ import annotations


def iptables_rules(uid: int, port: int, admin_port: int | None = None) -> list[str]:
    """iptables/ip6tables commands, in order, for a sandbox running as ``uid``."""
    me = f"-m owner --uid-owner {uid}"
    own = ",".join(str(p) for p in (port, admin_port) if p)
    v4 = [
        f"iptables -t nat -A OUTPUT {me} -m addrtype --dst-type LOCAL -j RETURN",
        f"iptables -t nat -A OUTPUT {me} -p tcp -m multiport --dports 80,443 -j REDIRECT --to-ports {port}",
        f"iptables -A OUTPUT {me} -p tcp -m conntrack --ctstate DNAT --ctorigdstport 443 -j ACCEPT",
        f"iptables -A OUTPUT {me} -p tcp -m conntrack --ctstate DNAT --ctorigdstport 80 -j ACCEPT",
        f"iptables -A OUTPUT {me} -p tcp -m multiport --dports {own} -j REJECT --reject-with tcp-reset",
        f"iptables -A OUTPUT {me} -m addrtype --dst-type LOCAL -j ACCEPT",
        f"iptables -A OUTPUT {me} -p tcp -j REJECT --reject-with tcp-reset",
        f"iptables -A OUTPUT {me} -j REJECT",
        f"iptables -A INPUT ! -i lo -p tcp -m multiport --dports {own} -j DROP",
    ]
    v6 = [
        f"ip6tables -A OUTPUT {me} -p tcp -m multiport --dports {own} -j REJECT --reject-with tcp-reset",
        f"ip6tables -A OUTPUT {me} -m addrtype --dst-type LOCAL -j ACCEPT",
        f"ip6tables -A OUTPUT {me} -p tcp -j REJECT --reject-with tcp-reset",
        f"ip6tables -A OUTPUT {me} -j REJECT",
    ]
    return v4 + v6

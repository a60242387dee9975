"""A network namespace for one code step whose only way out is a transparent proxy.

The step's namespace is joined to this one by a veth pair. Every TCP
connection it makes is redirected (nat PREROUTING on the host side of the
pair) to a transparent listener on the host side; the proxy decides on the TLS
SNI and dials its own vetted address, so the address the step dialled does not
matter. DNS is answered by a stub that gives every name one dummy address.
Everything else the namespace sends (UDP, ICMP, IPv6, the proxy's other
ports, forwarding) is dropped on the host side, where the step, even as root
inside its namespace, cannot change the rules.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from proxy.errors import ConfigError, EgressError

DUMMY_ADDRESS = "198.18.255.254"  # every name resolves here; the proxy ignores it
_PREFIX = "egx"


def check_privileges() -> None:
    """Namespaces and firewall rules need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        raise ConfigError(
            "egress exec needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) to create the step's "
            'network namespace; use `eval "$(egress env)"` where that is not possible'
        )
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            raise ConfigError(f"egress exec needs `{tool}` (Debian: apt-get install iproute2 iptables)")


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise EgressError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}")


def _addresses(slot: int) -> tuple[str, str]:
    """A /30 in 198.18.0.0/15 (benchmarking range, never routed) per slot: (host side, step side)."""
    base = 0xC6120000 + (slot % 32768) * 4  # 198.18.0.0
    return socket.inet_ntoa(struct.pack("!I", base + 1)), socket.inet_ntoa(struct.pack("!I", base + 2))


@dataclass
class StepNamespace:
    """Create with ``open()``, always ``close()``: rules, links and files are removed again."""

    port: int  # the transparent listener's port on the host side
    slot: int = field(default_factory=os.getpid)
    name: str = field(init=False)
    host_address: str = field(init=False)
    step_address: str = field(init=False)
    _rules: list[list[str]] = field(default_factory=list, init=False)
    _dns: DnsStub | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.name = f"{_PREFIX}{self.slot}"
        self.host_address, self.step_address = _addresses(self.slot)

    @property
    def etc(self) -> Path:
        return Path("/etc/netns") / self.name

    def open(self) -> StepNamespace:
        host_if, step_if = f"{self.name}h", f"{self.name}n"
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", step_if)
        _run("ip", "link", "set", step_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_address}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "-n", self.name, "link", "set", "lo", "up")
        _run("ip", "-n", self.name, "addr", "add", f"{self.step_address}/30", "dev", step_if)
        _run("ip", "-n", self.name, "link", "set", step_if, "up")
        _run("ip", "-n", self.name, "route", "add", "default", "via", self.host_address)
        lo_disable = "net.ipv6.conf.all.disable_ipv6=1"
        _run("ip", "netns", "exec", self.name, "sysctl", "-q", "-w", lo_disable)
        here = ["-i", host_if]
        # Inserted in reverse: the first rule listed ends up first in the chain.
        for table, chain, rule in (
            ("filter", "FORWARD", [*here, "-j", "DROP"]),
            ("filter", "INPUT", [*here, "-j", "DROP"]),
            ("filter", "INPUT", [*here, "-p", "udp", "-d", self.host_address, "--dport", "53", "-j", "ACCEPT"]),
            ("filter", "INPUT", [*here, "-p", "tcp", "--dport", str(self.port), "-m", "conntrack",
                                 "--ctstate", "DNAT", "-j", "ACCEPT"]),
            # The listener speaks for the step's grant: nobody else on this host may use it.
            ("filter", "INPUT", ["!", *here, "-p", "tcp", "-d", self.host_address, "--dport", str(self.port),
                                 "-j", "DROP"]),
            ("nat", "PREROUTING", [*here, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(self.port)]),
        ):  # fmt: skip
            _run("iptables", "-w", "-t", table, "-I", chain, "1", *rule)
            self._rules.append(["-t", table, "-D", chain, *rule])
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text(f"nameserver {self.host_address}\n")
        (self.etc / "hosts").write_text("127.0.0.1 localhost\n")
        self._dns = DnsStub(self.host_address).start()
        return self

    def close(self) -> None:
        """Undo everything ``open`` did, whatever failed; never raises."""
        if self._dns:
            self._dns.stop()
        for rule in reversed(self._rules):
            subprocess.run(["iptables", "-w", *rule], capture_output=True, timeout=30)
        self._rules.clear()
        subprocess.run(["ip", "link", "del", f"{self.name}h"], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        shutil.rmtree(self.etc, ignore_errors=True)

    def command(self, argv: list[str], uid: int, gid: int) -> list[str]:
        """``argv`` run inside the namespace as ``uid``/``gid`` (never as root: root could leave)."""
        return [
            "ip", "netns", "exec", self.name,
            "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv,
        ]  # fmt: skip


class DnsStub:
    """Answers every A query with one dummy address and AAAA with nothing (no IPv6 way out)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        self.sock.settimeout(0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="egress-exec-dns", daemon=True)

    def start(self) -> DnsStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            answer = dns_answer(query)
            if answer:
                self.sock.sendto(answer, peer)


def dns_answer(query: bytes) -> bytes | None:
    """The reply to one DNS query (RFC 1035): A -> DUMMY_ADDRESS, anything else -> no records."""
    if len(query) < 12:
        return None
    (qid, flags, qdcount) = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    end = 12
    while end < len(query) and query[end] != 0:
        end += query[end] + 1
    end += 5  # the root label, QTYPE, QCLASS
    if end > len(query):
        return None
    question = query[12:end]
    qtype = struct.unpack("!H", question[-4:-2])[0]
    answers = b""
    if qtype == 1:  # A
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(DUMMY_ADDRESS)
    header = struct.pack("!HHHHHH", qid, 0x8180 | (flags & 0x0100), 1, 1 if answers else 0, 0, 0)
    return header + question + answers

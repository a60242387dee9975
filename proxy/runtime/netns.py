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
from collections.abc import Callable
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


def _run_input(argv: list[str], text: str) -> None:
    done = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise EgressError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}")


def _restore_input(rules: list[tuple[str, str, list[str]]], *action: str) -> str:
    """``iptables-restore --noflush`` input applying ``action`` (-I 1, -D) to each rule, per table."""
    out: list[str] = []
    for table in dict.fromkeys(t for t, _, _ in rules):
        out.append(f"*{table}")
        out += [" ".join([action[0], chain, *action[1:], *rule]) for t, chain, rule in rules if t == table]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def _in_namespace(name: str, call: Callable[[], object]) -> None:
    """Run ``call`` in a thread that joined namespace ``name`` (only that thread moves)."""
    failed: list[BaseException] = []

    def enter() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                os.setns(fd, os.CLONE_NEWNET)
            finally:
                os.close(fd)
            call()
        except BaseException as e:
            failed.append(e)

    thread = threading.Thread(target=enter, name="egress-exec-setns")
    thread.start()
    thread.join()
    if failed:
        raise EgressError(f"namespace {name}: {failed[0]}")


def _addresses(slot: int) -> tuple[str, str]:
    """A /30 in 198.18.0.0/15 (benchmarking range, never routed) per slot: (host side, step side)."""
    base = 0xC6120000 + (slot % 32768) * 4  # 198.18.0.0
    return socket.inet_ntoa(struct.pack("!I", base + 1)), socket.inet_ntoa(struct.pack("!I", base + 2))


@dataclass
class StepNamespace:
    """Create with ``open()``, always ``close()``: rules, links and files are removed again."""

    port: int  # the transparent listener's port on the host side (may be set before ``open``)
    slot: int = field(default_factory=os.getpid)
    name: str = field(init=False)
    host_address: str = field(init=False)
    step_address: str = field(init=False)
    _rules: list[tuple[str, str, list[str]]] = field(default_factory=list, init=False)
    _dns: DnsStub | None = field(default=None, init=False)
    _opened: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.name = f"{_PREFIX}{self.slot}"
        self.host_address, self.step_address = _addresses(self.slot)

    @property
    def etc(self) -> Path:
        return Path("/etc/netns") / self.name

    def open(self) -> StepNamespace:
        """Three commands (``ip -batch`` twice, one ``iptables-restore``) and a sysctl written in-process."""
        host_if, step_if = f"{self.name}h", f"{self.name}n"
        self._opened = True
        _run_input(
            ["ip", "-batch", "-"],
            f"""netns add {self.name}
link add {host_if} type veth peer name {step_if}
link set {step_if} netns {self.name}
addr add {self.host_address}/30 dev {host_if}
link set {host_if} up
""",
        )
        _run_input(
            ["ip", "-n", self.name, "-batch", "-"],
            f"""link set lo up
addr add {self.step_address}/30 dev {step_if}
link set {step_if} up
route add default via {self.host_address}
""",
        )
        # No IPv6 inside: the host side's rules are IPv4 only. The step's user cannot turn it back on.
        _in_namespace(self.name, lambda: Path("/proc/sys/net/ipv6/conf/all/disable_ipv6").write_text("1\n"))
        here = ["-i", host_if]
        # Inserted in reverse: the first rule listed ends up first in the chain.
        rules = [
            ("filter", "FORWARD", [*here, "-j", "DROP"]),
            ("filter", "INPUT", [*here, "-j", "DROP"]),
            ("filter", "INPUT", [*here, "-p", "udp", "-d", self.host_address, "--dport", "53", "-j", "ACCEPT"]),
            ("filter", "INPUT", [*here, "-p", "tcp", "--dport", str(self.port), "-m", "conntrack",
                                 "--ctstate", "DNAT", "-j", "ACCEPT"]),
            # The listener speaks for the step's grant: nobody else on this host may use it.
            ("filter", "INPUT", ["!", *here, "-p", "tcp", "-d", self.host_address, "--dport", str(self.port),
                                 "-j", "DROP"]),
            ("nat", "PREROUTING", [*here, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(self.port)]),
        ]  # fmt: skip
        self._rules = [(table, chain, rule) for table, chain, rule in rules]
        _run_input(["iptables-restore", "-w", "--noflush"], _restore_input(self._rules, "-I", "1"))
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text(f"nameserver {self.host_address}\n")
        (self.etc / "hosts").write_text("127.0.0.1 localhost\n")
        self._dns = DnsStub(self.host_address).start()
        return self

    def close(self) -> None:
        """Undo everything ``open`` did, whatever failed; never raises."""
        if self._dns:
            self._dns.stop()
            self._dns = None
        if self._rules:
            text = _restore_input(self._rules, "-D")
            done = subprocess.run(["iptables-restore", "-w", "--noflush"], input=text, capture_output=True,
                                  text=True, timeout=30)  # fmt: skip
            if done.returncode != 0:  # one rule already gone: delete the others one by one
                for table, chain, rule in self._rules:
                    subprocess.run(
                        ["iptables", "-w", "-t", table, "-D", chain, *rule], capture_output=True, timeout=30
                    )
        self._rules = []
        if self._opened:
            subprocess.run(["ip", "-force", "-batch", "-"], input=f"link del {self.name}h\nnetns del {self.name}\n",
                           capture_output=True, text=True, timeout=30)  # fmt: skip
        shutil.rmtree(self.etc, ignore_errors=True)

    def command(self, argv: list[str], uid: int, gid: int) -> list[str]:
        """``argv`` run inside the namespace as ``uid``/``gid`` (never as root: root could leave)."""
        return [
            "ip", "netns", "exec", self.name,
            "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv,
        ]  # fmt: skip


class DnsStub:
    """Answers every A query with one dummy address and AAAA with nothing (no IPv6 way out)."""

    def __init__(self, address: str, port: int = 53, timeout: float = 0.5) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.settimeout(timeout)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="egress-exec-dns", daemon=True)

    def start(self) -> DnsStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            try:  # wake the blocked recvfrom now rather than at its timeout
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.sendto(b"", self.sock.getsockname())
            except OSError:
                pass
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

"""`egress exec`'s namespace pieces that need no root: rule batches, DNS answers, the stub's stop."""

from __future__ import annotations

import socket
import struct

from proxy.runtime import netns

RULES = [
    ("filter", "INPUT", ["-i", "egx1h", "-j", "DROP"]),
    ("filter", "INPUT", ["!", "-i", "egx1h", "-p", "tcp", "--dport", "9", "-j", "DROP"]),
    ("nat", "PREROUTING", ["-i", "egx1h", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "9"]),
]


def test_rules_go_to_iptables_restore_per_table_unquoted() -> None:
    assert netns._restore_input(RULES, "-I", "1") == (
        "*filter\n-I INPUT 1 -i egx1h -j DROP\n-I INPUT 1 ! -i egx1h -p tcp --dport 9 -j DROP\nCOMMIT\n"
        "*nat\n-I PREROUTING 1 -i egx1h -p tcp -j REDIRECT --to-ports 9\nCOMMIT\n"
    )
    assert netns._restore_input(RULES[2:], "-D") == (
        "*nat\n-D PREROUTING -i egx1h -p tcp -j REDIRECT --to-ports 9\nCOMMIT\n"
    )


def _query(qtype: int) -> bytes:
    name = b"".join(bytes([len(p)]) + p for p in b"api.example.test".split(b".")) + b"\0"
    return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)


def test_dns_stub_answers_a_with_the_dummy_address_and_aaaa_with_nothing() -> None:
    a = netns.dns_answer(_query(1))
    assert a is not None and a.endswith(socket.inet_aton(netns.DUMMY_ADDRESS))
    assert struct.unpack("!H", a[6:8])[0] == 1
    aaaa = netns.dns_answer(_query(28))
    assert aaaa is not None and struct.unpack("!H", aaaa[6:8])[0] == 0
    assert netns.dns_answer(b"short") is None


def test_dns_stub_stops_without_waiting_for_its_receive_timeout() -> None:
    stub = netns.DnsStub("127.0.0.1", port=0, timeout=60).start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(_query(1), stub.sock.getsockname())
        assert client.recv(512).endswith(socket.inet_aton(netns.DUMMY_ADDRESS))
    stub.stop()  # joins for at most 2 s: only the wake-up datagram can end a 60 s receive by then
    assert not stub._thread.is_alive()

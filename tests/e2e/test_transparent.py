"""Transparent mode in a network namespace the test creates: no proxy variables anywhere.

The namespace holds a recording upstream on 127.0.0.1:443, the proxy (root)
with a transparent listener, and the firewall rules `egress transparent
rules` prints for the sandbox uid (nobody). Clients run as nobody with no
proxy configuration: curl and Node's global fetch. The proxy must decide on
the SNI, ignore the address the sandbox dialled, and refuse everything else.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.service.transparent import iptables_rules
from tests.e2e.test_adversarial import tag
from tests.harness import Proxy, Upstream, egress, make_pki, start_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
SANDBOX_UID = 65534  # nobody
SECRET = "sk_transparent_e2e_77c1"
HOSTS_FILE = "203.0.113.5 api.stripe.test\n203.0.113.6 evil.test\n"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    for tool in ("ip", "iptables", "ip6tables", "setpriv", "curl"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return None


@dataclass
class Sandbox:
    ns: str
    proxy: Proxy
    upstream: Upstream
    ca: Path

    def run(self, *cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace as the sandbox uid, with no proxy variables."""
        base = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "NODE_EXTRA_CA_CERTS": str(self.ca)}
        uid = ["setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups"]
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *uid, *cmd],
            capture_output=True, text=True, timeout=30, env={**base, **(env or {})},
        )  # fmt: skip

    def curl(self, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("curl", "-sS", "--max-time", "10", "--cacert", str(self.ca), *extra, url)


def _in_namespace(ns: str, make: object) -> object:
    """Call ``make()`` in a thread that entered the namespace (its sockets stay there)."""
    out: list[object] = []

    def enter() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            os.setns(fd, os.CLONE_NEWNET)
        finally:
            os.close(fd)
        out.append(make())  # type: ignore[operator]

    t = threading.Thread(target=enter)
    t.start()
    t.join()
    return out[0]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    if reason := _missing():
        pytest.skip(reason)
    ns = f"egress-t{os.getpid()}"
    etc = Path("/etc/netns") / ns
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    proxy: Proxy | None = None
    upstream: Upstream | None = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        # A route for any destination, so connect() reaches NAT (the proxy ignores the address).
        subprocess.run(
            ["ip", "-n", ns, "route", "add", "default", "dev", "lo", "src", "127.0.0.1"], check=True
        )
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text("127.0.0.1 localhost\n" + HOSTS_FILE)
        pki = tmp_path_factory.mktemp("tpki")
        _, ca_path, ctx = make_pki(pki)
        upstream = _in_namespace(ns, lambda: Upstream(ctx, port=443))  # type: ignore[assignment]
        assert isinstance(upstream, Upstream)
        upstream.start()
        home = tmp_path_factory.mktemp("thome")
        assert egress(home, "init").returncode == 0
        added = egress(
            home, "connector", "add", "stripe", "--pattern", "https://api.stripe.test/v1/*",
            "--header", "Authorization", "--secret-stdin", stdin=SECRET,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        proxy = start_proxy(
            home, "--mode", "transparent", "--connector", "stripe", "--upstream-ca", str(ca_path),
            "--allow-network", "127.0.0.0/8", "--resolve", "api.stripe.test=127.0.0.1",
            prefix=("ip", "netns", "exec", ns),
        )  # fmt: skip
        for rule in iptables_rules(SANDBOX_UID, proxy.port):
            subprocess.run(["ip", "netns", "exec", ns, *shlex.split(rule)], check=True, timeout=10)
        ca = Path(f"/tmp/egress-t{os.getpid()}-ca.pem")  # readable by the sandbox uid
        shutil.copy(home / "ca" / "mitmproxy-ca-cert.pem", ca)
        ca.chmod(0o644)
        yield Sandbox(ns, proxy, upstream, ca)
        ca.unlink(missing_ok=True)
    finally:
        if proxy:
            proxy.stop()
        if upstream:
            upstream.shutdown()
            upstream.server_close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(etc, ignore_errors=True)


def test_curl_without_proxy_settings_gets_the_secret_injected(sandbox: Sandbox) -> None:
    t = tag()
    r = sandbox.curl(f"https://api.stripe.test/v1/ok?t={t}")
    assert r.returncode == 0, r.stderr
    (rec,) = sandbox.upstream.find(t)
    assert rec.header("Authorization") == [f"Bearer {SECRET}"]
    assert rec.sni == "api.stripe.test"
    assert rec.header("Host") == ["api.stripe.test"]


def test_the_address_the_sandbox_dialled_is_ignored(sandbox: Sandbox) -> None:
    """An attacker's address with a covered SNI: the proxy connects to its own pinned one."""
    t = tag()
    r = sandbox.curl(f"https://api.stripe.test/v1/ok?t={t}", "--resolve", "api.stripe.test:443:198.51.100.77")
    assert r.returncode == 0, r.stderr
    (rec,) = sandbox.upstream.find(t)  # arrived at the pinned upstream, not 198.51.100.77
    assert rec.header("Authorization") == [f"Bearer {SECRET}"]


def test_node_global_fetch_goes_through_unchanged(sandbox: Sandbox) -> None:
    if not shutil.which("node"):
        pytest.skip("node is not installed")
    t = tag()
    script = f"fetch('https://api.stripe.test/v1/node?t={t}').then(r => console.log(r.status))"
    r = sandbox.run("node", "-e", script)
    assert r.returncode == 0 and r.stdout.strip() == "200", (r.stdout, r.stderr)
    (rec,) = sandbox.upstream.find(t)
    assert rec.header("Authorization") == [f"Bearer {SECRET}"]


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("https://evil.test/v1/x?t={t}", ()),  # an SNI no connector covers
        ("https://203.0.113.5/v1/x?t={t}", ("-k",)),  # no SNI at all
        ("http://api.stripe.test/v1/x?t={t}", ()),  # plain HTTP on port 80
        ("https://api.stripe.test:8443/v1/x?t={t}", ()),  # another port: not redirected, rejected
    ],
    ids=["uncovered-sni", "no-sni", "plain-http", "other-port"],
)
def test_everything_else_is_refused(sandbox: Sandbox, url: str, extra: tuple[str, ...]) -> None:
    t = tag()
    r = sandbox.curl(url.format(t=t), *extra)
    assert r.returncode != 0, r.stdout
    assert sandbox.upstream.find(t) == []


def test_udp_and_direct_proxy_connections_are_rejected(sandbox: Sandbox) -> None:
    udp = sandbox.run("bash", "-c", "echo x > /dev/udp/203.0.113.5/443")
    assert udp.returncode != 0
    direct = sandbox.curl(f"https://127.0.0.1:{sandbox.proxy.port}/", "-k")
    assert direct.returncode != 0


def test_a_refused_sni_is_logged_blocked_with_its_near_miss(sandbox: Sandbox) -> None:
    """The blocked log of a transparent listener: a row per refused connection, with the
    connector that came closest (one label too many here), like a refused CONNECT's."""
    r = sandbox.curl(
        f"https://v2.api.stripe.test/v1/x?t={tag()}", "--resolve", "v2.api.stripe.test:443:203.0.113.5"
    )
    assert r.returncode != 0, r.stdout
    home = sandbox.proxy.home
    deadline = time.monotonic() + 10
    rows: list[dict[str, object]] = []
    while not rows and time.monotonic() < deadline:
        out = egress(home, "logs", "--blocked", "--json").stdout
        rows = [row for row in map(json.loads, out.splitlines()) if row["host"] == "v2.api.stripe.test"]
        time.sleep(0.2)
    assert rows, "no blocked row for the refused SNI"
    row = rows[0]
    assert (row["method"], row["path"], row["reason"]) == ("TLS", "", "no-connector")
    assert row["near_miss"] == {
        "connector": "stripe",
        "differs": "host",
        "detail": "pattern https://api.stripe.test/v1/* wants one label fewer: api.stripe.test, "
        "request has v2.api.stripe.test",
        "pattern": "https://api.stripe.test/v1/*",
        "depth": -1,
    }
    table = egress(home, "logs", "--blocked").stdout
    assert "stripe host: pattern https://api.stripe.test/v1/* wants one label fewer" in table

"""Scoped grants end to end: each step reaches only the connectors it lists."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.clients import curl, httpx_client, session
from tests.conftest import proxy_args
from tests.harness import Proxy, Upstream, egress, start_proxy

pytestmark = pytest.mark.e2e
SECRETS = {"stripe": "sk_grants_e2e_1111", "wild": "wild_grants_e2e_2222"}


def add_connectors(home: Path, upstream: Upstream) -> None:
    assert egress(home, "init").returncode == 0
    for name, pattern in (
        ("stripe", f"https://api.stripe.test:{upstream.port}/v1/*"),
        ("wild", f"https://*.wild.test:{upstream.port}/*"),
    ):
        res = egress(
            home, "connector", "add", name, "--pattern", pattern, "--header", "X-Key",
            "--template", "{{secret}}", "--secret-stdin", stdin=SECRETS[name],
        )  # fmt: skip
        assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def gproxy(
    tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, object], upstream: Upstream
) -> Iterator[Proxy]:
    home = tmp_path_factory.mktemp("grants-home")
    add_connectors(home, upstream)
    proxy = start_proxy(home, *proxy_args(pki[0]), "--require-grant")
    yield proxy
    proxy.stop()


def mint(proxy: Proxy, *args: str) -> dict[str, str]:
    res = egress(proxy.home, "grant", "--json", "--proxy", proxy.addr, *args)
    assert res.returncode == 0, res.stderr
    proxy.outputs.append(res.stdout)
    return dict(json.loads(res.stdout))


def connect_status(proxy: Proxy, target: str, token: str | None) -> tuple[int, dict[str, str]]:
    """Send a raw CONNECT and return the status and headers of the answer."""
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if token is not None:
        cred = base64.b64encode(f"grant:{token}".encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {cred}")
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
    return int(head[0].split()[1]), headers


def test_grant_reaches_its_connector_only(gproxy: Proxy, upstream: Upstream) -> None:
    g = mint(gproxy, "--connector", "stripe", "--label", "step-42")
    assert g["proxy_url"] == f"http://grant:{g['token']}@{gproxy.addr}"
    tag = f"g{time.monotonic_ns()}"
    s = session(g["proxy_url"], gproxy.ca)
    assert s.get(f"https://api.stripe.test:{upstream.port}/v1/a?t={tag}").status_code == 200
    with httpx_client(g["proxy_url"], gproxy.ca) as client:
        assert client.get(f"https://api.stripe.test:{upstream.port}/v1/b?t={tag}").status_code == 200
    res = curl(
        gproxy.home, g["proxy_url"], gproxy.ca, f"https://api.stripe.test:{upstream.port}/v1/c?t={tag}"
    )
    assert res.returncode == 0, res.stderr
    recs = upstream.find(tag)
    assert len(recs) == 3
    assert all(r.header("X-Key") == [SECRETS["stripe"]] and not r.header("Proxy-Authorization") for r in recs)

    status, headers = connect_status(gproxy, f"a.wild.test:{upstream.port}", g["token"])
    assert (status, headers["x-egress-blocked"]) == (403, "not-granted")
    with pytest.raises(requests.exceptions.ProxyError):
        s.get(f"https://a.wild.test:{upstream.port}/x?t={tag}")
    assert len(upstream.find(tag)) == 3


@pytest.mark.parametrize("case", ["missing", "tampered", "foreign", "garbage"])
def test_bad_credentials_get_407(case: str, gproxy: Proxy, upstream: Upstream, tmp_path: Path) -> None:
    token: str | None
    if case == "missing":
        token, reason = None, "no-grant"
    elif case == "tampered":
        good = mint(gproxy, "--connector", "stripe")["token"]
        head, payload, sig = good.split(".")
        forged = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        forged["c"] = ["stripe", "wild"]
        body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
        token, reason = f"{head}.{body}.{sig}", "bad-grant"
    elif case == "foreign":
        other = tmp_path / "other"
        add_connectors(other, upstream)
        res = egress(other, "grant", "--json", "--connector", "stripe", "--proxy", gproxy.addr)
        token, reason = json.loads(res.stdout)["token"], "bad-grant"
    else:
        token, reason = "not-a-token", "bad-grant"
    before = upstream.connections
    status, headers = connect_status(gproxy, f"api.stripe.test:{upstream.port}", token)
    assert status == 407
    assert headers["x-egress-blocked"] == reason
    assert headers["proxy-authenticate"].startswith("Basic")
    assert upstream.connections == before


def test_expired_and_revoked_grants_get_407(gproxy: Proxy, upstream: Upstream) -> None:
    target = f"api.stripe.test:{upstream.port}"
    short = mint(gproxy, "--connector", "stripe", "--ttl", "1s")
    assert connect_status(gproxy, target, short["token"])[0] == 200
    time.sleep(2.1)
    status, headers = connect_status(gproxy, target, short["token"])
    assert (status, headers["x-egress-blocked"]) == (407, "expired-grant")

    g = mint(gproxy, "--connector", "stripe", "--label", "to-revoke")
    assert connect_status(gproxy, target, g["token"])[0] == 200
    res = egress(gproxy.home, "grant", "revoke", g["token"])
    assert res.returncode == 0, res.stderr
    assert g["token"] not in res.stdout
    deadline = time.monotonic() + 5
    while connect_status(gproxy, target, g["token"])[0] == 200:
        assert time.monotonic() < deadline, "revocation not in force within 5 s"
        time.sleep(0.2)
    status, headers = connect_status(gproxy, target, g["token"])
    assert (status, headers["x-egress-blocked"]) == (407, "revoked-grant")
    listing = egress(gproxy.home, "grant", "list").stdout
    assert g["id"] in listing and "revoked" in listing and g["token"] not in listing


def test_grant_label_in_logs_and_token_never_logged(gproxy: Proxy, upstream: Upstream) -> None:
    g = mint(gproxy, "--connector", "stripe", "--label", "nightly-report")
    s = session(g["proxy_url"], gproxy.ca)
    assert s.get(f"https://api.stripe.test:{upstream.port}/v2/outside").status_code == 403
    assert s.get(f"https://api.stripe.test:{upstream.port}/v1/status?code=500").status_code == 500
    time.sleep(1.5)  # one flush
    rows = [
        json.loads(x)
        for x in egress(gproxy.home, "logs", "--json", "--grant", "nightly-report").stdout.splitlines()
    ]
    assert {r["kind"] for r in rows} == {"blocked", "error"}
    assert all(r["grant_label"] == "nightly-report" for r in rows)
    table = egress(gproxy.home, "logs", "--grant", "nightly-report").stdout
    assert "nightly-report" in table
    texts = [gproxy.log_text(), table]
    assert not any(g["token"] in t for t in texts)
    for f in gproxy.home.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert g["token"].encode() not in data
            assert g["token"].split(".")[2].encode() not in data


def test_env_with_grant_and_non_loopback_refusal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert egress(home, "env").returncode == 2  # egress env never creates the home
    assert not home.exists()
    assert egress(home, "init").returncode == 0
    res = egress(home, "env", "--proxy", "http://127.0.0.1:9999", "--grant", "eg1.x.y")
    assert "export HTTPS_PROXY=http://grant:eg1.x.y@127.0.0.1:9999" in res.stdout
    res = egress(home, "run", "--listen", "0.0.0.0:0")
    assert res.returncode == 2
    assert "--require-grant" in res.stderr and res.stderr.count("\n") == 1


def tunnel_client(proxy: Proxy, upstream: Upstream, token: str) -> http.client.HTTPSConnection:
    """One kept-alive CONNECT tunnel: every request below travels in the same one."""
    ctx = ssl.create_default_context(cafile=proxy.ca)
    conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=5, context=ctx)
    cred = base64.b64encode(f"grant:{token}".encode()).decode()
    conn.set_tunnel("api.stripe.test", upstream.port, headers={"Proxy-Authorization": f"Basic {cred}"})
    return conn


@pytest.mark.parametrize(("change", "reason"), [("revoke", "revoked-grant"), ("rotate-key", "bad-grant")])
def test_open_tunnel_is_cut_off_by_revocation_and_key_rotation(
    gproxy: Proxy, upstream: Upstream, change: str, reason: str
) -> None:
    g = mint(gproxy, "--connector", "stripe", "--label", f"mid-{change}")
    conn = tunnel_client(gproxy, upstream, g["token"])
    tag = f"mid{time.monotonic_ns()}"
    try:
        conn.request("GET", f"/v1/ok?t={tag}")
        first = conn.getresponse()
        first.read()
        assert first.status == 200
        sock = conn.sock
        res = egress(gproxy.home, "grant", *(["revoke", g["id"]] if change == "revoke" else ["rotate-key"]))
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 5
        while True:
            conn.request("GET", f"/v1/after?t={tag}")
            resp = conn.getresponse()
            body = resp.read()
            assert conn.sock is sock, "the tunnel was reopened; this test needs one kept-alive tunnel"
            if resp.status != 200:
                break
            assert time.monotonic() < deadline, f"{change} did not cut the open tunnel off within 5 s"
            time.sleep(0.2)
        assert (resp.status, resp.getheader("x-egress-blocked")) == (407, reason)
        assert json.loads(body)["reason"] == reason
        after = [r for r in upstream.find(tag) if r.path.startswith("/v1/after")]
        assert all(r.header("X-Key") == [SECRETS["stripe"]] for r in after)  # only before the change
    finally:
        conn.close()


def test_a_listener_grant_never_appears_on_a_command_line(gproxy: Proxy, tmp_path: Path) -> None:
    """Command lines are readable by every local user, the sandbox included."""
    from tests.e2e.test_e2e_workers import children

    token = mint(gproxy, "--connector", "stripe")["token"]
    proxy = start_proxy(gproxy.home, "--mode", "transparent", "--grant", token, log=tmp_path / "t.log")
    try:
        pids = {proxy.proc.pid} | children(proxy.proc.pid)
        assert len(pids) >= 2  # the supervisor and its worker
        for pid in pids:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert token.encode() not in cmdline and b"eg1." not in cmdline, cmdline
    finally:
        proxy.stop()


def _blocked_rows(proxy: Proxy, fragment: str) -> list[dict[str, object]]:
    out = egress(proxy.home, "logs", "--blocked", "--json").stdout
    return [json.loads(line) for line in out.splitlines() if fragment in line]


def test_libcurl_auth_probe_is_not_logged_as_a_block(gproxy: Proxy, upstream: Upstream) -> None:
    """curl --proxy-anyauth (what git does) asks without credentials first, then with the grant."""
    g = mint(gproxy, "--connector", "stripe", "--label", "probe-step")
    host = f"api.stripe.test:{upstream.port}"
    before = len(_blocked_rows(gproxy, '"no-grant"'))
    res = curl(gproxy.home, g["proxy_url"], gproxy.ca, "-v", "--proxy-anyauth", "-o", "/dev/null",
               f"https://{host}/v1/probe")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "407" in res.stderr, "curl probed without credentials first"
    time.sleep(2.5)  # longer than a stats flush
    assert len(_blocked_rows(gproxy, '"no-grant"')) == before, "the probe before a grant is not logged"
    # A client that never comes back with a grant is still logged, once it leaves.
    connect_status(gproxy, host, None)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(_blocked_rows(gproxy, '"no-grant"')) == before:
        time.sleep(0.3)
    assert len(_blocked_rows(gproxy, '"no-grant"')) == before + 1


def _read_head(s: socket.socket) -> int:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(v)
            for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])
            if k.lower() == b"content-length"
        ),
        0,
    )
    while len(rest) < length:
        rest += s.recv(4096)
    return int(head.split()[1])


def test_only_the_probe_right_before_a_grant_goes_unlogged(gproxy: Proxy, upstream: Upstream) -> None:
    """Credential-less CONNECTs to other hosts, kept on one connection until a granted
    CONNECT opens, are blocks: they must not vanish from the log as "auth probes"."""
    g = mint(gproxy, "--connector", "stripe", "--label", "hider")
    cred = base64.b64encode(f"grant:{g['token']}".encode()).decode()
    tag = f"{time.monotonic_ns()}"
    hidden = [f"hidden{i}-{tag}.evil.test:443" for i in range(3)]
    with socket.create_connection((gproxy.host, gproxy.port), timeout=5) as s:
        for target in hidden:
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            assert _read_head(s) == 407
        target = f"api.stripe.test:{upstream.port}"
        s.sendall(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {cred}\r\n\r\n".encode()
        )
        assert _read_head(s) == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(_blocked_rows(gproxy, tag)) < len(hidden):
        time.sleep(0.3)
    logged = {row["host"] for row in _blocked_rows(gproxy, tag)}
    assert logged == set(hidden), logged

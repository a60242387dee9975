"""Deployment: `eval "$(egress env)"` for real clients, and the sidecar entrypoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import requests

from tests.clients import session
from tests.conftest import SECRETS, proxy_args
from tests.harness import BIN, Proxy, Upstream, clean_env, egress

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def shell(proxy: Proxy, script: str) -> subprocess.CompletedProcess[str]:
    """Run a script after `eval "$(egress env)"` in a clean login-like shell."""
    return subprocess.run(
        ["bash", "-c", f'set -e; eval "$(egress env)"; {script}'],
        capture_output=True,
        text=True,
        env=clean_env(proxy.home, HOME=str(proxy.home)),
        timeout=120,
    )


def test_egress_env_exports_every_client_variable(proxy: Proxy) -> None:
    res = shell(proxy, "env")
    assert res.returncode == 0, res.stderr
    env = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    assert env["HTTPS_PROXY"] == env["https_proxy"] == proxy.url
    bundle = env["SSL_CERT_FILE"]
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT"):
        assert env[var] == bundle
    assert env["NODE_EXTRA_CA_CERTS"] == proxy.ca and env["NODE_USE_ENV_PROXY"] == "1"
    assert "127.0.0.1" in env["NO_PROXY"]
    text = Path(bundle).read_text()
    assert Path(proxy.ca).read_text().strip() in text
    assert text.count("BEGIN CERTIFICATE") > 10  # the system roots are still there


@pytest.mark.parametrize(
    "client",
    [
        "curl -sS --fail {url}",
        "python -c 'import requests,sys; r = requests.get(sys.argv[1]); r.raise_for_status()' {url}",
        "python -c 'import httpx,sys; httpx.get(sys.argv[1]).raise_for_status()' {url}",
    ],
    ids=["curl", "requests", "httpx"],
)
def test_clients_work_after_egress_env(client: str, proxy: Proxy, upstream: Upstream) -> None:
    tag = f"env{time.monotonic_ns()}"
    url = f"https://api.stripe.test:{upstream.port}/v1/env?t={tag}"
    res = shell(proxy, client.format(url=url))
    assert res.returncode == 0, res.stderr
    (rec,) = upstream.find(tag)
    assert rec.header("Authorization") == [f"Bearer {SECRETS['stripe']}"]


def test_git_ls_remote_through_proxy(proxy: Proxy, upstream: Upstream, tmp_path: Path) -> None:
    repo = tmp_path / "repo.git"
    work = tmp_path / "work"
    git_env = clean_env(proxy.home, HOME=str(tmp_path), GIT_CONFIG_NOSYSTEM="1")
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True, env=git_env)
    subprocess.run(["git", "init", "-q", str(work)], check=True, env=git_env)
    for args in (
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
        ["push", "-q", str(repo), "HEAD:refs/heads/main"],
    ):
        subprocess.run(["git", "-C", str(work), *args], check=True, env=git_env)
    head = subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True, env=git_env
    ).stdout.strip()
    upstream.git_repo = repo
    try:
        res = shell(
            proxy, f"GIT_CONFIG_NOSYSTEM=1 git ls-remote https://api.stripe.test:{upstream.port}/v1/repo.git"
        )
    finally:
        upstream.git_repo = None
    assert res.returncode == 0, res.stderr
    assert f"{head}\trefs/heads/main" in res.stdout
    (rec, *_) = upstream.find("/v1/repo.git/info/refs")
    assert rec.header("Authorization") == [f"Bearer {SECRETS['stripe']}"]


def test_node_fetch_through_proxy(proxy: Proxy, upstream: Upstream) -> None:
    """Node 20/22 ignore HTTPS_PROXY; `egress env --setup-node` adds the preload that fixes it."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node preload (not installed)")
    setup = egress(proxy.home, "env", "--setup-node")  # npm install, once per EGRESS_HOME
    assert setup.returncode == 0, setup.stderr
    tag = f"node{time.monotonic_ns()}"
    url = f"https://api.stripe.test:{upstream.port}/v1/node?t={tag}"
    res = shell(proxy, f"node -e 'fetch(process.argv[1]).then(r => process.exit(r.ok ? 0 : 1))' {url}")
    assert res.returncode == 0, res.stderr
    (rec,) = upstream.find(tag)
    assert rec.header("Authorization") == [f"Bearer {SECRETS['stripe']}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sidecar_entrypoint(tmp_path: Path, pki: tuple[Path, object], upstream: Upstream) -> None:
    """The image's entrypoint, outside a container: config applied, grants required."""
    home, export = tmp_path / "state", tmp_path / "export"
    config = tmp_path / "connectors.yaml"
    config.write_text(
        "connectors:\n"
        "  - name: stripe\n"
        f'    patterns: ["https://api.stripe.test:{upstream.port}/v1/*"]\n'
        "    secret: {file: %s}\n"
        "    inject: {header: Authorization}\n" % (tmp_path / "stripe.secret")
    )
    (tmp_path / "stripe.secret").write_text("sk_sidecar_e2e_4d4d\n")
    port = free_port()
    env = clean_env(
        home,
        EGRESS_CONFIG=str(config),
        EGRESS_LISTEN=f"127.0.0.1:{port}",
        EGRESS_ADMIN="127.0.0.1:0",
        EGRESS_EXPORT_DIR=str(export),
        EGRESS_GRANT_CONNECTORS="stripe",
    )
    log = tmp_path / "sidecar.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["sh", str(ROOT / "deploy" / "entrypoint.sh"), *proxy_args(pki[0]), "--workers", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while not (home / "run" / "admin.addr").exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        admin = (home / "run" / "admin.addr").read_text().strip()
        assert urllib.request.urlopen(f"http://{admin}/healthz", timeout=5).status == 200
        bundle = str(export / "ca-bundle.pem")
        with pytest.raises(requests.exceptions.ProxyError, match="407"):
            session(f"http://127.0.0.1:{port}", bundle).get(f"https://api.stripe.test:{upstream.port}/v1/x")
        proxy_url = (export / "proxy-url").read_text().strip()
        assert proxy_url.startswith("http://grant:") and proxy_url.endswith(f"@127.0.0.1:{port}")
        tag = f"side{time.monotonic_ns()}"
        r = session(proxy_url, bundle).get(f"https://api.stripe.test:{upstream.port}/v1/x?t={tag}")
        assert r.status_code == 200
        (rec,) = upstream.find(tag)
        assert rec.header("Authorization") == ["Bearer sk_sidecar_e2e_4d4d"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    stats = json.loads(egress(home, "stats", "--json").stdout)
    assert stats["connectors"][0]["requests_24h"] == 1
    assert "sk_sidecar_e2e_4d4d" not in log.read_text()
    assert os.access(BIN / "egress", os.X_OK)

"""The addons also load into a stock mitmdump (`mitmdump -s addons/egress.py`)."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
import requests

from tests.clients import session
from tests.harness import BIN, Upstream, clean_env, egress

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SECRET = "mitmdump-e2e-secret-77aa"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mitmdump_script_enforces_and_injects(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    home = tmp_path / "home"
    assert egress(home, "init").returncode == 0
    res = egress(
        home,
        "connector",
        "add",
        "stripe",
        "--pattern",
        f"https://api.stripe.test:{upstream.port}/v1/*",
        "--header",
        "Authorization",
        "--secret-stdin",
        stdin=SECRET,
    )
    assert res.returncode == 0, res.stderr
    bundle = tmp_path / "upstream.pem"
    bundle.write_bytes(Path(str(pki[0])).read_bytes())
    port = free_port()
    admin_port = free_port()
    token = egress(home, "admin", "token", "create", "--read-only").stdout.strip()
    log = tmp_path / "mitmdump.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "mitmdump"),
                "-s",
                str(ROOT / "addons" / "egress.py"),
                "--listen-host",
                "127.0.0.1",
                "-p",
                str(port),
                "--set",
                f"egress_home={home}",
                "--set",
                f"confdir={home / 'ca'}",
                "--set",
                "egress_allow_network=127.0.0.0/8",
                "--set",
                "egress_resolve=api.stripe.test=127.0.0.1",
                "--set",
                "egress_resolve=evil.test=127.0.0.1",
                "--set",
                f"ssl_verify_upstream_trusted_ca={bundle}",
                "--set",
                f"egress_admin=127.0.0.1:{admin_port}",  # the single-process admin listener
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(home),
        )
    try:
        s = session(f"http://127.0.0.1:{port}", str(home / "ca" / "mitmproxy-ca-cert.pem"))
        deadline = time.monotonic() + 20
        t = uuid.uuid4().hex
        while True:
            try:
                r = s.get(f"https://api.stripe.test:{upstream.port}/v1/x?t={t}")
                break
            except requests.exceptions.ConnectionError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert r.status_code == 200, log.read_text()
        (rec,) = upstream.find(t)
        assert rec.header("Authorization") == [f"Bearer {SECRET}"]
        with pytest.raises(requests.exceptions.ProxyError):
            s.get(f"https://evil.test:{upstream.port}/v1/x?t={t}")
        assert len(upstream.find(t)) == 1
        admin = f"http://127.0.0.1:{admin_port}"
        assert httpx.get(f"{admin}/healthz").text == "ok\n"
        assert "egress_requests_total" in httpx.get(f"{admin}/metrics").text
        who = httpx.get(f"{admin}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        assert who.json() == {"workspace": None, "read_only": True}
        assert httpx.get(f"{admin}/api/v1/whoami").status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)
    assert SECRET not in log.read_text()

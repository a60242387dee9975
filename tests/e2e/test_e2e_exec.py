"""``egress exec``: a step in its own network namespace reaches the world only
through its own transparent proxy, with no proxy settings at all."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import network_args
from tests.harness import Upstream, clean_env, egress

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
SECRET = "sk_exec_e2e_5e6f"
ADMIN_PROBE = "10.0.0.1:9090"  # any address: it lands on the step's proxy, which refuses plain HTTP


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    for tool in ("ip", "iptables", "setpriv", "curl"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return None


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Path:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    home = tmp_path_factory.mktemp("exec-home")
    assert egress(home, "init").returncode == 0
    res = egress(
        home, "connector", "add", "stripe", "--pattern", f"https://api.stripe.test:{upstream.port}/v1/*",
        "--header", "Authorization", "--secret-env", "S", S=SECRET,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return home


class Ran(subprocess.CompletedProcess[str]):
    pid: int  # of `egress exec`, which names its namespace and rules after it


def egress_exec(argv: list[str], env: dict[str, str], timeout: float = 90) -> Ran:
    """Run `egress exec ARGV` to the end (output captured), remembering its pid."""
    with subprocess.Popen(
        [str(Path(sys.executable).parent / "egress"), "exec", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    ran = Ran(proc.args, proc.returncode, out, err)
    ran.pid = proc.pid
    return ran


def run_exec(home: Path, pki: tuple[Path, object], *cmd: str) -> Ran:
    return egress_exec(
        [*network_args(pki[0]), "--connector", "stripe", "--timing", "--", *cmd], clean_env(home)
    )


def left_behind(ran: Ran) -> list[str]:
    """What the step's `egress exec` left: its namespace, links or firewall rules (other runs
    on this host may hold namespaces of their own meanwhile)."""
    name = f"egx{ran.pid}"
    found = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found += subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.split()
    found += subprocess.run(["iptables-save"], capture_output=True, text=True).stdout.split()
    return sorted({w for w in found if re.match(rf"{name}(\D|$)", w)})


def test_curl_without_proxy_settings_gets_the_secret(
    home: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    tag = f"x{time.monotonic_ns()}"
    res = run_exec(
        home, pki, "curl", "-sS", "--max-time", "20", f"https://api.stripe.test:{upstream.port}/v1/a?t={tag}"
    )
    assert res.returncode == 0, res.stderr
    (rec,) = upstream.find(tag)
    assert rec.header("authorization") == [f"Bearer {SECRET}"]
    assert SECRET not in res.stdout + res.stderr
    assert "ready" in res.stderr  # --timing
    assert left_behind(res) == []


def test_keep_alive_reuses_one_upstream_connection(
    home: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    """Each request on a kept-alive connection once dialled another upstream connection
    (the pinned address differed from the one each request asked for); the sixth stalled."""
    tag = f"k{time.monotonic_ns()}"
    urls = [f"https://api.stripe.test:{upstream.port}/v1/k?t={tag}-{i}" for i in range(8)]
    for version in ("--http1.1", "--http2"):
        before = upstream.connections
        res = run_exec(
            home, pki, "curl", "-sS", version, "--max-time", "20", *["-o", "/dev/null"] * 8,
            "-w", "%{http_code} %{num_connects}\n", *urls,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["200", "1"] + ["200", "0"] * 7, res.stdout
        if version == "--http1.1":  # (HTTP/2 streams get an HTTP/1.1 upstream each, as in regular mode)
            assert upstream.connections - before == 1
    assert len(upstream.find(tag)) == 16


def test_node_fetch_without_proxy_settings(home: Path, pki: tuple[Path, object], upstream: Upstream) -> None:
    if not shutil.which("node"):
        pytest.skip("node is not installed")
    tag = f"n{time.monotonic_ns()}"
    script = f"fetch('https://api.stripe.test:{upstream.port}/v1/n?t={tag}').then(r => process.exit(r.status === 200 ? 0 : 3))"
    res = run_exec(home, pki, "node", "-e", script)
    assert res.returncode == 0, res.stderr
    assert upstream.find(tag)[0].header("authorization") == [f"Bearer {SECRET}"]


def test_blocked_and_side_doors_are_closed(home: Path, pki: tuple[Path, object], upstream: Upstream) -> None:
    script = (
        # not covered: explained (a 403 inside TLS, nothing dialled)
        f"curl -sS --max-time 5 -D - -o /dev/null https://evil.test:{upstream.port}/ "
        "| grep -qi '^x-egress-blocked: no-connector' || exit 10; "
        f"curl -sS --max-time 5 http://api.stripe.test:{upstream.port}/v1/x && exit 11; "  # plain HTTP
        "exit 0"
    )
    before = len(upstream.records)
    res = run_exec(home, pki, "sh", "-c", script)
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert len(upstream.records) == before  # nothing reached the upstream
    assert left_behind(res) == []


def test_no_explain_blocks_closes_the_connection(
    home: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    argv = [*network_args(pki[0]), "--connector", "stripe", "--no-explain-blocks", "--"]
    res = egress_exec(
        [*argv, "curl", "-sS", "--max-time", "5", f"https://evil.test:{upstream.port}/"], clean_env(home)
    )
    assert res.returncode == 35, res.stderr  # curl: TLS connect error; the proxy closed it
    assert left_behind(res) == []


def test_exit_code_and_the_step_runs_unprivileged(home: Path, pki: tuple[Path, object]) -> None:
    recorded = home / "run" / "proxy.addr"  # the proxy `egress env` points at: not the step's
    recorded.parent.mkdir(exist_ok=True)
    recorded.write_text("127.0.0.1:18080\n")
    res = run_exec(home, pki, "sh", "-c", 'test "$(id -u)" != 0 && env | grep -q EGRESS_ && exit 9; exit 7')
    assert res.returncode == 7, res.stderr
    assert recorded.read_text() == "127.0.0.1:18080\n"
    recorded.unlink()
    assert list(recorded.parent.glob("upstream-ca-*")) == []  # the step's proxy left no files
    assert left_behind(res) == []


def test_a_step_killed_by_sigkill_still_cleans_up(
    home: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    # The host's own listeners are no way out either: any TCP goes to the step's proxy.
    res = run_exec(home, pki, "sh", "-c", f"curl -sS --max-time 5 http://{ADMIN_PROBE}/ ; kill -9 $$")
    assert res.returncode == 128 + 9, res.stderr
    assert left_behind(res) == []


def test_the_step_cannot_read_its_grant_from_any_command_line(
    home: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    """The step shares /proc: a token in `egress exec`'s (or its proxy's) argv is the step's."""
    res = egress(home, "grant", "--connector", "stripe", "--json")
    assert res.returncode == 0, res.stderr
    token = json.loads(res.stdout)["token"]
    body = token.split(".")[1]
    tag = f"g{time.monotonic_ns()}"
    scan = (
        "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done > /tmp/cmdlines-$$; "
        # The search string is assembled in the shell: spelled whole, this script would match.
        f"a='{body[:6]}'; b='{body[6:12]}'; grep -c -F -e \"$a$b\" /tmp/cmdlines-$$; rm -f /tmp/cmdlines-$$; "
        f"curl -sS -o /dev/null --max-time 20 https://api.stripe.test:{upstream.port}/v1/a?t={tag}"
    )
    res = egress_exec([*network_args(pki[0]), "--grant", token, "--", "sh", "-c", scan], clean_env(home))
    assert res.returncode == 0, res.stderr
    assert upstream.find(tag)[0].header("authorization") == [f"Bearer {SECRET}"]  # the grant still works
    assert res.stdout.split() == ["0"], res.stdout

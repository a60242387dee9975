"""Shared fixtures: one recording upstream and one running proxy per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import HOSTS, Proxy, Upstream, egress, make_pki, start_proxy
from tests.pg import Cluster, pg_bin

SECRETS = {
    "stripe": "sk_test_e2e_STRIPE_4f9a2c",
    "weather": "wx/KEY+e2e=&7d3b",
    "wild": "wild-e2e-secret-91be",
    "late": "late-e2e-secret-0c55",
}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    directory = tmp_path_factory.mktemp("pki")
    _, ca_path, ctx = make_pki(directory)
    return ca_path, ctx


@pytest.fixture(scope="session")
def upstream(pki: tuple[Path, object]) -> Iterator[Upstream]:
    server = Upstream(pki[1]).start()  # type: ignore[arg-type]
    yield server
    server.shutdown()
    server.server_close()


def network_args(upstream_ca: Path) -> list[str]:
    """Trust the test CA upstream and reach the loopback upstream under the test names."""
    args = ["--upstream-ca", str(upstream_ca), "--allow-network", "127.0.0.0/8"]
    for host in HOSTS:
        args += ["--resolve", f"{host}=127.0.0.1"]
    return args


def proxy_args(upstream_ca: Path) -> list[str]:
    """``egress run`` flags for the tests: refused hosts are refused at CONNECT, which most
    tests check (explained blocks, the loopback default, have tests of their own)."""
    return [*network_args(upstream_ca), "--no-explain-blocks"]


@pytest.fixture(scope="session")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, object], upstream: Upstream
) -> Iterator[Proxy]:
    home = tmp_path_factory.mktemp("egress-home")
    port = upstream.port
    outputs: list[str] = []

    def run(*args: str, **kw: str) -> None:
        result = egress(home, *args, **kw)
        outputs.extend([result.stdout, result.stderr])
        assert result.returncode == 0, result.stderr

    run("init")
    run(
        "connector", "add", "stripe",
        "--pattern", f"https://api.stripe.test:{port}/v1/*",
        "--header", "Authorization", "--template", "Bearer {{secret}}",
        "--secret-stdin", stdin=SECRETS["stripe"],
    )  # fmt: skip
    run(
        "connector", "add", "weather",
        "--pattern", f"https://api.weather.test:{port}/data/*",
        "--query", "appid", "--secret-env", "WEATHER_KEY", WEATHER_KEY=SECRETS["weather"],
    )  # fmt: skip
    secret_file = home / "wild.secret"
    secret_file.write_text(SECRETS["wild"] + "\n")
    run(
        "connector", "add", "wild",
        "--pattern", f"https://*.wild.test:{port}/*",
        "--header", "X-Api-Key", "--template", "{{secret}}",
        "--secret-file", str(secret_file),
    )  # fmt: skip
    secret_file.unlink()
    proc = start_proxy(home, *proxy_args(pki[0]))
    proc.outputs = outputs
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the session (tests marked ``postgres``)."""
    bindir = pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries not found (.ci/run installs the postgresql package)")
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    cluster = Cluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A fresh, empty database of the session cluster."""
    return pg_cluster.new_database()

"""The command line on a PostgreSQL store: init migrates, a newer schema exits 2, an outage exits 1."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.harness import egress
from tests.pg import free_port

pytestmark = pytest.mark.postgres


def test_init_creates_the_schema_and_commands_share_it(pg_url: str, tmp_path: Path) -> None:
    env = {"EGRESS_DATABASE_URL": pg_url, "EGRESS_MASTER_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}
    assert egress(tmp_path / "a", "init", **env).returncode == 0
    res = egress(
        tmp_path / "a", "connector", "add", "gh", "--pattern", "https://api.github.test/*",
        "--header", "Authorization", "--secret-stdin", stdin="ghp_cli", **env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    listed = egress(tmp_path / "b", "connector", "list", **env)  # another home, same database
    assert listed.returncode == 0 and "gh" in listed.stdout, listed.stderr
    with psycopg.connect(pg_url) as conn:
        (sealed,) = conn.execute("SELECT secret FROM connectors WHERE name = 'gh'").fetchone() or (b"",)
    assert b"ghp_cli" not in bytes(sealed)  # sealed before it reaches the database


def test_a_database_newer_than_the_code_is_refused_with_exit_2(pg_url: str, tmp_path: Path) -> None:
    assert egress(tmp_path, "init", EGRESS_DATABASE_URL=pg_url).returncode == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    res = egress(tmp_path, "init", EGRESS_DATABASE_URL=pg_url)
    assert res.returncode == 2
    assert "store schema 99 is newer" in res.stderr and "upgrade egress-proxy" in res.stderr


def test_an_unreachable_database_exits_1_without_showing_the_password(tmp_path: Path) -> None:
    url = f"postgresql://egress:hunter2@127.0.0.1:{free_port()}/egress"
    res = egress(tmp_path, "stats", EGRESS_DATABASE_URL=url)
    assert res.returncode == 1
    assert "cannot reach the store postgresql://egress:***@127.0.0.1" in res.stderr
    assert "hunter2" not in res.stderr + res.stdout

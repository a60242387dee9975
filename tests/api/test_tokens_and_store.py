"""Admin tokens (hash only, constant time, revocation, the CLI) and the store's new columns."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.errors import ConfigError, NotFound
from proxy.service import admin_tokens
from proxy.service.admin_tokens import AdminTokens, check_bootstrap
from proxy.service.connectors import Connectors
from proxy.service.home import Home
from proxy.stats import Batch
from proxy.store.schema import MIGRATIONS, VERSION
from proxy.store.sqlite import SqliteStore


def test_only_the_hash_is_stored(api_home: Home) -> None:
    with AdminTokens(api_home) as tokens:
        token, row = tokens.create("acme", True, "ci")
    assert token.startswith("egress_adm_") and len(token) == len("egress_adm_") + 12 + 1 + 43
    assert row == {**row, "workspace": "acme", "read_only": True, "label": "ci", "revoked_at": None}
    assert "token_hash" not in row
    raw = (api_home.root / "egress.db").read_bytes()
    assert token.encode() not in raw and token.split("_")[-1].encode() not in raw
    with sqlite3.connect(api_home.root / "egress.db") as db:
        (stored,) = db.execute("SELECT token_hash FROM admin_tokens").fetchone()
    assert stored == hashlib.sha256(token.encode()).hexdigest()


def test_authenticate_compares_in_constant_time(api_home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    with AdminTokens(api_home) as tokens:
        token, row = tokens.create(None, False, "")
        calls: list[tuple[str, str]] = []
        real = admin_tokens.hmac.compare_digest

        def spy(a: str, b: str) -> bool:
            calls.append((a, b))
            return real(a, b)

        monkeypatch.setattr(admin_tokens.hmac, "compare_digest", spy)
        principal = tokens.authenticate(token)
        assert principal is not None and principal.token_id == row["id"] and principal.workspace is None
        assert calls, "the hash must be compared with hmac.compare_digest"
        calls.clear()
        assert tokens.authenticate("egress_adm_000000000000_" + "A" * 43) is None
        assert calls, "an unknown id is compared too (against a dummy), so it takes as long"
        tokens.revoke(row["id"])
        assert tokens.authenticate(token) is None
        with pytest.raises(NotFound):
            tokens.revoke(row["id"])


def test_bootstrap_token_must_be_long(api_home: Home) -> None:
    check_bootstrap({})
    check_bootstrap({"EGRESS_ADMIN_TOKEN": "x" * 24})
    with pytest.raises(ConfigError, match="at least 24"):
        check_bootstrap({"EGRESS_ADMIN_TOKEN": "short"})


def test_cli_token_create_list_revoke(api_home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["admin", "token", "create", "--label", "ops"]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("egress_adm_") and "shown only now" in out.err
    assert main(["--workspace", "acme", "admin", "token", "create", "--read-only"]) == 0
    capsys.readouterr()
    assert main(["admin", "token", "list"]) == 0
    listing = capsys.readouterr().out
    assert token not in listing and token.split("_")[2] in listing
    assert "acme" in listing and "read-only" in listing and "ops" in listing
    with AdminTokens(api_home) as tokens:
        scoped = [r for r in tokens.list() if r["workspace"] == "acme"]
    assert len(scoped) == 1 and scoped[0]["read_only"] is True
    assert main(["admin", "token", "revoke", token.split("_")[2]]) == 0
    assert main(["admin", "token", "revoke", "nosuch"]) == 2


def test_run_refuses_a_short_bootstrap_token_and_a_lone_metrics_flag(
    api_home: Home, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EGRESS_ADMIN_TOKEN", "short")
    assert main(["run", "--admin", "127.0.0.1:0"]) == 2
    assert "EGRESS_ADMIN_TOKEN must be" in capsys.readouterr().err
    monkeypatch.delenv("EGRESS_ADMIN_TOKEN")
    assert main(["run", "--admin-metrics-token"]) == 2
    assert "needs --admin" in capsys.readouterr().err


def test_run_without_the_admin_packages_says_how_to_install(
    api_home: Home, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "uvicorn" else real(n, *a))
    assert main(["run", "--admin", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'egress-proxy[admin]'" in err and len(err.strip().splitlines()) == 1


def test_secret_updated_at_moves_only_when_the_credential_changes(api_home: Home) -> None:
    from proxy.connectors import make_connector

    c = make_connector("c", preset="stripe")
    with Connectors(api_home) as connectors:
        connectors.add(c, {"secret": "one"})
        first = connectors.get("c")[1]
        assert first.secret_updated_at == first.created_at
        time.sleep(0.01)
        connectors.update(make_connector("c", preset="stripe", methods=["GET"]), None)
        assert connectors.get("c")[1].secret_updated_at == first.secret_updated_at
        connectors.update(c, {"secret": "one"})
        assert connectors.get("c")[1].secret_updated_at == first.secret_updated_at
        connectors.apply([(c, {"secret": "one"})], prune=False)
        connectors.rotate_master_key()
        assert connectors.get("c")[1].secret_updated_at == first.secret_updated_at
        connectors.apply([(c, {"secret": "two"})], prune=False)
        second = connectors.get("c")[1].secret_updated_at
        assert second is not None and second > (first.secret_updated_at or 0)
        time.sleep(0.01)
        connectors.update(c, {"secret": "three"})
        assert (connectors.get("c")[1].secret_updated_at or 0) > second


def test_a_version_5_store_migrates_keeping_connectors(tmp_path: Path) -> None:
    path = tmp_path / "egress.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema', '5'), ('generation', '3')")
        for script in MIGRATIONS[:5]:
            db.executescript(script)
        db.execute("INSERT INTO connectors VALUES ('old', '{}', X'00', 1.0, 2.0)")
    store = SqliteStore(path)
    try:
        (old,) = store.connectors()
        assert (old.created_at, old.updated_at, old.secret_updated_at) == (1.0, 2.0, 2.0)
        assert store.admin_tokens() == []
        assert VERSION >= 6  # and every later step applied too
    finally:
        store.close()


def test_hourly_groups_minutes_by_clock_hour(tmp_path: Path) -> None:
    now = 1_000_000 * 3600 + 1800.0  # half past an hour
    store = SqliteStore(tmp_path / "egress.db", create=True, clock=lambda: now)
    try:
        minute = int(now // 60)
        batch = Batch()
        batch.requests[("c", minute)] = [2, 1, 0, 1, 0, 0]
        batch.requests[("c", minute - 29)] = [3, 0, 0, 0, 0, 0]  # the same hour's first minute
        batch.requests[("c", minute - 31)] = [4, 4, 0, 0, 4, 0]  # the hour before
        batch.requests[("c", minute - 24 * 60 + 20)] = [
            9,
            0,
            0,
            0,
            0,
            0,
        ]  # in the window, 24 clock hours ago: out
        batch.requests[("other", minute)] = [7, 0, 0, 0, 0, 0]
        store.monitoring.flush(batch)
        hour = int(now // 3600) * 3600
        assert store.monitoring.hourly("c") == [(hour - 3600, 4, 4), (hour, 5, 1)]
    finally:
        store.close()

"""The policy source: loads the store once, reloads on change, keeps the old rules on failure."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons.source import PolicySource
from proxy.connectors import make_connector
from proxy.errors import ConfigError, StoreUnavailable
from proxy.service import policycache
from proxy.service.connectors import Connectors
from proxy.service.grants import Grants
from proxy.service.home import Home
from tests.pg import free_port


def test_loads_reloads_on_change_and_only_then(home: Home) -> None:
    source = PolicySource()
    with taddons.context(source) as tctx:
        tctx.configure(source, egress_home=str(home.root))
        assert set(source.rules.policy.routes) == {"stripe"}
        assert source.reload() is False  # nothing changed
        with Connectors(home) as connectors:
            connectors.add(
                make_connector(
                    "gh", patterns=["https://api.github.test/*"], inject={"header": "Authorization"}
                ),
                {"secret": "ghp_x"},
            )
        assert source.reload() is True
        assert set(source.rules.policy.routes) == {"stripe", "gh"}


def test_revocation_and_key_rotation_reach_the_rules(home: Home) -> None:
    source = PolicySource()
    with taddons.context(source) as tctx:
        tctx.configure(source, egress_home=str(home.root))
        with Grants(home) as grants:
            _, grant = grants.mint(["stripe"], 60, "step")
            old_key = source.rules.grant_key
            grants.revoke(grant.id)
        assert source.reload()
        assert grant.id in source.rules.revoked
        with Grants(home) as grants:
            grants.rotate_key()
        assert source.reload()
        assert source.rules.grant_key is not None and old_key is not None
        assert source.rules.grant_key.key_id != old_key.key_id


def test_a_failing_reload_keeps_the_previous_rules(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    source = PolicySource()
    with taddons.context(source) as tctx:
        tctx.configure(source, egress_home=str(home.root))
        before = source.rules
        home.key_path.write_text("bm90IGEga2V5\n")  # a wrong master key
        with Grants(home) as grants:
            grants.rotate_key()  # bump the generation so a reload is attempted
        with pytest.raises(ConfigError):
            source.reload()
        assert source.rules is before


def test_an_unusable_store_stops_configuration(home: Home) -> None:
    (home.root / "egress.db").write_bytes(b"not a database")
    source = PolicySource()
    with taddons.context(source) as tctx, pytest.raises(exceptions.OptionsError, match=r"egress\.db"):
        tctx.configure(source, egress_home=str(home.root))


def unreachable(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the home at a PostgreSQL that is not there (nothing listens on that port)."""
    monkeypatch.setenv("EGRESS_DATABASE_URL", f"postgresql://egress:pw@127.0.0.1:{free_port()}/egress")


def test_a_proxy_whose_database_is_down_starts_from_the_policy_cache(
    home: Home, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with Connectors(home) as connectors, Grants(home) as grants:
        _, grant = grants.mint(["stripe"], 60, "step")
        grants.revoke(grant.id)
        stored = connectors.store.connectors()
        revoked = connectors.store.revoked_grants()
    policycache.save(home, policycache.snapshot(7, stored, revoked, "postgresql://egress:***@db/egress"))
    raw = policycache.path(home).read_text()
    assert "sk_test_store" not in raw and oct(policycache.path(home).stat().st_mode & 0o777) == "0o600"
    unreachable(home, monkeypatch)
    source = PolicySource()
    with taddons.context(source) as tctx:
        tctx.configure(source, egress_home=str(home.root))
        assert set(source.rules.policy.routes) == {"stripe"}
        assert grant.id in source.rules.revoked
        assert "serving the cached policy" in caplog.text and "pw@" not in caplog.text
        with pytest.raises(StoreUnavailable):
            source.reload()  # still down: the caller keeps the cached rules
        source.done()


def test_a_proxy_whose_database_is_down_without_a_cache_refuses_to_start(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    unreachable(home, monkeypatch)
    source = PolicySource()
    with (
        taddons.context(source) as tctx,
        pytest.raises(exceptions.OptionsError, match=r"no policy cache at .*policy-cache\.json"),
    ):
        tctx.configure(source, egress_home=str(home.root))

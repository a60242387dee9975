"""A real EGRESS_HOME with one connector, for addons that load from the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.connectors import make_connector
from proxy.service.connectors import Connectors
from proxy.service.home import Home


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    monkeypatch.setenv("EGRESS_HOME", str(tmp_path))
    for var in ("EGRESS_MASTER_KEY", "EGRESS_MASTER_KEY_FILE", "EGRESS_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    home = Home.from_env()
    home.init()
    with Connectors(home) as connectors:
        connectors.add(
            make_connector(
                "stripe", patterns=["https://api.stripe.test/v1/*"], inject={"header": "Authorization"}
            ),
            {"secret": "sk_test_store"},
        )
    return home

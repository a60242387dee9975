"""`egress run --audit-log`: one JSON line per decision, valid against the shipped schema, no secrets."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from proxy.audit import SCHEMA_PATH
from tests.clients import session
from tests.conftest import network_args
from tests.e2e.test_e2e_grants import connect_status
from tests.harness import Upstream, egress, start_proxy

pytestmark = pytest.mark.e2e
SECRET = "sk_audit_e2e_4d4d4d4d"
VALIDATOR = Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def audit_lines(path: Path, want: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= want or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.1)


def test_every_decision_is_one_valid_line_without_secrets(
    tmp_path: Path, pki: tuple[Path, object], upstream: Upstream
) -> None:
    home = tmp_path / "home"
    port = upstream.port
    res = egress(
        home, "connector", "add", "stripe", "--pattern", f"https://api.stripe.test:{port}/v1/*",
        "--header", "Authorization", "--template", "Bearer {{secret}}", "--secret-stdin", stdin=SECRET,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    token = json.loads(egress(home, "grant", "--json", "--connector", "stripe", "--label", "step-7").stdout)[
        "token"
    ]
    audit = tmp_path / "audit.jsonl"
    proxy = start_proxy(home, *network_args(pki[0]), "--audit-log", str(audit))
    try:
        s = session(proxy.url, proxy.ca)
        assert s.get(f"https://api.stripe.test:{port}/v1/charges?key=hidden-query").status_code == 200
        assert s.get(f"https://api.stripe.test:{port}/v1/status?code=503").status_code == 503
        assert s.get(f"https://api.stripe.test:{port}/v2/charges").status_code == 403  # near miss
        g = session(proxy.url.replace("://", f"://grant:{token}@"), proxy.ca)
        assert g.get(f"https://api.stripe.test:{port}/v1/granted").status_code == 200
        assert connect_status(proxy, f"api.stripe.test:{port}", "forged")[0] == 407
        lines = audit_lines(audit, 5)
    finally:
        proxy.stop()
    text = audit.read_text()
    for needle in (SECRET, token, "hidden-query", "forged"):
        assert needle not in text
    for doc in lines:
        VALIDATOR.validate(doc)
    by_path = {d["http_request"]["url"]["path"]: d for d in lines}
    ok = by_path["/v1/charges"]
    assert (ok["action"], ok["action_id"], ok["outcome"], ok["connector"]) == ("allowed", 1, "ok", "stripe")
    assert ok["http_response"] == {"code": 200} and ok["traffic"]["bytes_out"] > 0
    assert ok["http_request"] == {
        "method": "GET",
        "url": {"hostname": f"api.stripe.test:{port}", "path": "/v1/charges"},
    }
    assert ok["duration"] >= 0 and ok["workspace"] == "default" and ok["node"]
    failed = by_path["/v1/status"]
    assert (failed["action"], failed["outcome"], failed["http_response"]) == (
        "allowed",
        "error",
        {"code": 503},
    )
    near = by_path["/v2/charges"]
    assert (near["action"], near["action_id"], near["reason"]) == ("blocked", 2, "no-connector")
    assert near["near_miss"]["connector"] == "stripe" and near["near_miss"]["differs"] == "path"
    assert by_path["/v1/granted"]["grant_label"] == "step-7"
    refused = [d for d in lines if d["reason"] == "bad-grant"]
    assert len(refused) == 1 and refused[0]["http_request"]["method"] == "CONNECT"
    assert len(lines) == 5  # one line per decision, no more


def test_a_bad_audit_path_is_refused_before_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = egress(home, "run", "--listen", "127.0.0.1:0", "--audit-log", str(tmp_path / "nowhere" / "a.jsonl"))
    assert res.returncode == 2 and "--audit-log" in res.stderr and "existing directory" in res.stderr

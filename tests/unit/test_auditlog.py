"""The audit file: lines from several writers survive size rotation; records match the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from proxy.audit import SCHEMA_PATH, Decision
from proxy.nearmiss import NearMiss
from proxy.runtime import auditlog
from proxy.runtime.auditlog import AuditLog

VALIDATOR = Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def test_two_writers_rotating_lose_no_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auditlog, "CHECK_SECONDS", 0.0)  # look at the size after every line
    path = tmp_path / "audit.jsonl"
    a, b = AuditLog(str(path), max_bytes=2000, backups=50), AuditLog(str(path), max_bytes=2000, backups=50)
    for i in range(400):
        (a if i % 2 else b).write(json.dumps({"n": i, "pad": "x" * 40}))
    a.close()
    b.close()
    files = sorted(tmp_path.glob("audit.jsonl*"))
    assert len(files) > 5 and all(f.stat().st_mode & 0o777 == 0o600 for f in files if f.suffix != ".lock")
    seen = sorted(
        json.loads(line)["n"] for f in files if f.suffix != ".lock" for line in f.read_text().splitlines()
    )
    assert seen == list(range(400))


def test_rotation_keeps_at_most_the_backups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auditlog, "CHECK_SECONDS", 0.0)
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path), max_bytes=100, backups=3)
    for i in range(100):
        log.write(json.dumps({"n": i, "pad": "y" * 60}))
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    kept = [
        json.loads(line)["n"]
        for name in sorted(names, key=lambda n: -int(n.rpartition(".")[2]) if n[-1].isdigit() else 0)
        for line in (tmp_path / name).read_text().splitlines()
    ]
    assert kept == list(range(100 - len(kept), 100)) and 4 <= len(kept) < 100  # the newest, in order


def test_records_validate_against_the_shipped_schema() -> None:
    near = NearMiss("stripe", "path", "pattern wants /v1/*, request has /v2/...")
    for d in (
        Decision(1.5, "allowed", "ok", "r1", "GET", "api.test", "/v1/x", "default", connector="c",
                 status=200, bytes_out=12, duration_ms=3.2, node="pod-a"),
        Decision(2.0, "blocked", "blocked", "r2", "TLS", "evil.test", "", "acme", reason="no-connector",
                 near_miss=near),
        Decision(3.0, "allowed", "failed", "r3", "POST", "api.test", "/v1/y", "default", connector="c"),
    ):  # fmt: skip
        doc = json.loads(d.to_json())
        VALIDATOR.validate(doc)
        assert doc["time"] == int(d.time * 1000)


def test_a_line_holds_every_field_escaped_whatever_the_text() -> None:
    """The line is written from a template: awkward text (quotes, %, control and non-ASCII
    characters, lone surrogates from undecodable paths) must come back as it went in."""
    near = NearMiss("c%s", "host", 'a "quoted" %s detail\n', "https://*.a/*", ("path",), 1)
    d = Decision(1e9 + 0.25, "blocked", "blocked", "r%d", "TLS", 'h"%s', '/é\u2028\x00\\\udcff', "w",
                 connector=None, reason="no-connector", grant_label="g\t", status=403, bytes_out=0,
                 duration_ms=12.5, near_miss=near, node="n")  # fmt: skip
    line = d.to_json()
    doc = json.loads(line)
    assert line.isascii() and "\n" not in line
    assert doc == {
        "schema_version": "1", "class_uid": 4002, "time": 1_000_000_000_250, "action": "blocked",
        "action_id": 2, "outcome": "blocked", "request_id": "r%d", "workspace": "w", "connector": None,
        "reason": "no-connector", "grant_label": "g\t",
        "http_request": {"method": "TLS", "url": {"hostname": 'h"%s', "path": '/é\u2028\x00\\\udcff'}},
        "http_response": {"code": 403}, "traffic": {"bytes_out": 0}, "duration": 12.5,
        "near_miss": near.to_dict(), "node": "n",
    }  # fmt: skip
    VALIDATOR.validate(doc)
    bare = json.loads(Decision(2.0, "allowed", "failed", "r", "GET", "h", "/", "w").to_json())
    assert bare["http_response"] is bare["traffic"] is bare["duration"] is bare["near_miss"] is None

"""Multi-field credentials from the CLI and YAML: merge rule, bad input, migration."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.secrets import V1, V2
from proxy.service.connectors import Connectors
from proxy.service.home import Home
from tests.cli.test_cli import Result, assert_one_error_line

PW = "pw-cli-Secret-81f2"


def stored(name: str) -> tuple[dict[str, object], bytes]:
    with Connectors(Home.from_env()) as connectors:
        s = connectors.store.get(name)
        assert s is not None
        return s.spec, s.sealed


def route(name: str):  # type: ignore[no-untyped-def]
    with Connectors(Home.from_env()) as connectors:
        return connectors.policy().routes[name]


def test_basic_from_fields_and_merge_on_update(
    egress: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("U", "ops@example.com")
    monkeypatch.setenv("P", PW)
    r = egress(
        "connector", "add", "jira", "--pattern", "https://acme.atlassian.net/*", "--basic",
        "--field", "username=env:U", "--field", "password=env:P",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert route("jira").rendered.headers == (
        ("Authorization", "Basic " + base64.b64encode(f"ops@example.com:{PW}".encode()).decode()),
    )
    spec, sealed = stored("jira")
    assert spec["fields"] == ["password", "username"]
    assert sealed[:2] == V2 and PW.encode() not in sealed
    monkeypatch.setenv("P2", "pw-rotated-2")
    assert egress("connector", "update", "jira", "--field", "password=env:P2").code == 0
    header = route("jira").rendered.headers[0][1]
    assert base64.b64decode(header.split()[1]) == b"ops@example.com:pw-rotated-2"
    shown = egress("connector", "show", "jira", "--json")
    assert PW not in shown.out and "pw-rotated-2" not in shown.out


def test_properties_json_overrides_fields(
    egress: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("K", "from-field")
    props = tmp_path / "p.json"
    props.write_text(json.dumps({"key": "from-props", "org": 42}))
    r = egress(
        "connector", "add", "api", "--pattern", "https://api.example.com/*",
        "--header", "X-Key={{key}}", "--header", "X-Org=o-{{org}}",
        "--field", "key=env:K", "--properties-json", f"file:{props}",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert route("api").rendered.headers == (("X-Key", "from-props"), ("X-Org", "o-42"))


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--header", "X-Key", "--template", "{{nope}}", "--field", "key=env:K"], ["nope", "'api'"]),
        (["--header", "X-Key", "--field", "key"], ["--field", "NAME=env:VAR"]),
        (["--header", "X-Key", "--field", "key=vault:x"], ["--field key", "env:VAR"]),
        (["--header", "X-Key", "--field", "1bad=env:K"], ["field name"]),
        (["--header", "X-Key", "--field", "key=env:MISSING_VAR_X"], ["MISSING_VAR_X", "field key"]),
        (["--basic", "--field", "username=env:K"], ["password"]),
        (["--header", "A={{key}}", "--header", "B", "--field", "key=env:K"], ["NAME=TEMPLATE"]),
        (
            ["--header", "X-Key", "--template", "{{key}}", "--field", "key=env:K", "--method", "GE T"],
            ["method"],
        ),
        (
            ["--header", "X-Key", "--field", "key=env:K", "--properties-json", "env:BADJSON"],
            ["properties_json"],
        ),
    ],
)
def test_bad_credential_input_is_one_line_exit_2_and_stores_nothing(
    egress: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, argv: list[str], needles: list[str]
) -> None:
    monkeypatch.setenv("K", "value-k")
    monkeypatch.setenv("BADJSON", '{"key": ')
    r = egress("connector", "add", "api", "--pattern", "https://api.example.com/*", *argv)
    assert_one_error_line(r, *needles)
    assert egress("connector", "list", "--json").out.strip() in ("[]", "")


def test_rendered_control_characters_refused(
    egress: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("J", json.dumps({"key": "a\r\nX-Evil: 1"}))
    r = egress(
        "connector", "add", "api", "--pattern", "https://api.example.com/*",
        "--header", "X-Key", "--template", "{{key}}", "--properties-json", "env:J",
    )  # fmt: skip
    assert_one_error_line(r, "field key", "control characters")


def test_yaml_apply_is_all_or_nothing(
    egress: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("A", "value-a")
    good = tmp_path / "good.yaml"
    good.write_text(
        "connectors:\n"
        "  - name: one\n    patterns: ['https://one.example.com/*']\n"
        "    secret: {fields: {a: {env: A}}}\n    inject: {header: X-A, template: '{{a}}'}\n"
    )
    assert egress("apply", "-f", str(good)).code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "connectors:\n"
        "  - name: one\n    patterns: ['https://one.example.com/*']\n"
        "    secret: {fields: {a: {env: A}}}\n    inject: {header: X-A, template: 'new {{a}}'}\n"
        "  - name: two\n    patterns: ['https://two.example.com/*']\n"
        "    secret: {fields: {a: {env: A}}}\n    inject: {header: X-B, template: '{{b}}'}\n"
    )
    r = egress("apply", "-f", str(bad))
    assert_one_error_line(r, str(bad), "'two'", "b")
    assert route("one").rendered.headers == (("X-A", "value-a"),)
    with Connectors(Home.from_env()) as connectors:
        assert connectors.names() == ["one"]


def test_store_from_an_earlier_release_migrates_without_loss(
    egress: Callable[..., Result],
    home: Path,
) -> None:
    assert egress("init").code == 0
    h = Home.from_env()
    key = h.master_key()
    # What the previous release wrote: one string under the v1 envelope, no field names.
    nonce = os.urandom(12)
    sealed = (
        V1
        + key.key_id
        + nonce
        + key._aead.encrypt(nonce, b"legacy-secret-1", b"egress-proxy connector secret:old")
    )
    spec = {
        "patterns": ["https://old.example.com/*"],
        "inject": {"header": "X-Old", "template": "{{secret}}"},
        "preset": None,
    }
    with Connectors(h) as connectors, connectors.store.write() as tx:
        tx.put("old", spec, sealed)
    assert egress("connector", "list").code == 0  # listing needs no migration
    assert route("old").rendered.headers == (("X-Old", "legacy-secret-1"),)
    spec2, sealed2 = stored("old")
    assert sealed2[:2] == V2 and spec2["fields"] == ["secret"]
    assert route("old").rendered.headers == (("X-Old", "legacy-secret-1"),)


def test_keys_rotate_reseals_every_field(
    egress: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("U", "user")
    monkeypatch.setenv("P", PW)
    assert egress(
        "connector", "add", "jira", "--pattern", "https://acme.atlassian.net/*", "--basic",
        "--field", "username=env:U", "--field", "password=env:P",
    ).code == 0  # fmt: skip
    before = route("jira").rendered.headers
    assert egress("keys", "rotate").code == 0
    assert route("jira").rendered.headers == before


def test_yaml_workspaces_and_prune_stays_in_its_workspace(
    egress: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("A", "value-a")
    base = "    patterns: ['https://one.example.com/*']\n    secret: {env: A}\n    inject: {header: X-A}\n"
    default = tmp_path / "default.yaml"
    default.write_text(f"connectors:\n  - name: keep\n{base}")
    assert egress("apply", "-f", str(default)).code == 0
    acme = tmp_path / "acme.yaml"
    acme.write_text(
        f"workspace: acme\nconnectors:\n  - name: one\n{base}  - name: two\n    workspace: beta\n{base}"
    )
    r = egress("apply", "-f", str(acme), "--prune")
    assert r.code == 0, r.err
    assert "acme/one" in r.out and "beta/two" in r.out
    listed = {
        ws: [c["name"] for c in json.loads(egress("connector", "list", "--json", "--workspace", ws).out)]
        for ws in ("default", "acme", "beta")
    }
    assert listed == {"default": ["keep"], "acme": ["one"], "beta": ["two"]}
    acme.write_text("workspace: acme\nconnectors: []\n")
    assert egress("apply", "-f", str(acme), "--prune").code == 0
    assert json.loads(egress("connector", "list", "--json", "--workspace", "acme").out) == []
    assert [c["name"] for c in json.loads(egress("connector", "list", "--json").out)] == ["keep"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("workspace: Acme!\nconnectors: []\n")
    assert_one_error_line(egress("apply", "-f", str(bad)), str(bad), "workspace")


def test_env_exports_placeholders_for_a_grants_presets(
    egress: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("A", "sk-real-anthropic-1")
    monkeypatch.setenv("S", "sk-real-stripe-1")
    assert egress("connector", "add", "claude", "--preset", "anthropic", "--secret-env", "A").code == 0
    assert egress("connector", "add", "pay", "--preset", "stripe", "--secret-env", "S").code == 0
    minted = egress("grant", "--json", "--connector", "claude", "--proxy", "127.0.0.1:8080")
    token = json.loads(minted.out)["token"]
    out = egress("env", "--grant", token, "--proxy", "127.0.0.1:8080").out
    assert "ANTHROPIC_API_KEY=egress-placeholder" in out.replace("'", "")
    assert "STRIPE_API_KEY" not in out  # not this grant's connector
    assert "sk-real" not in out
    everything = egress("env", "--placeholders", "--proxy", "127.0.0.1:8080").out
    assert "STRIPE_API_KEY" in everything and "ANTHROPIC_API_KEY" in everything
    assert "ANTHROPIC_API_KEY" not in egress("env", "--proxy", "127.0.0.1:8080").out


def test_exec_refuses_clearly_without_root(
    egress: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert egress("init").code == 0
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert_one_error_line(egress("exec", "--connector", "x", "--", "true"), "root", "egress env")
    assert_one_error_line(egress("exec", "--connector", "x"), "usage")

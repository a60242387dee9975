"""The `egress` command line (docs/usage.md), driven in-process with a private EGRESS_HOME."""

from __future__ import annotations

import base64
import io
import json
import os
import sqlite3
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from proxy.cli import build_parser, main
from proxy.cli.run import settings_from_args
from proxy.service.connectors import Connectors
from proxy.service.home import Home
from proxy.store.sqlite import SqliteStore

SECRET = "sk_live_TOPSECRET-4f9a2c7e1b"
SECRET2 = "sk_live_OTHERSECRET-0d8e6a"
SECRET_ENV = "EGRESS_TEST_SECRET"
SECRET2_ENV = "EGRESS_TEST_SECRET2"
ALL_SECRETS = (SECRET, SECRET2)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "egress-home"
    monkeypatch.setenv("EGRESS_HOME", str(h))
    for var in ("EGRESS_MASTER_KEY", "EGRESS_MASTER_KEY_FILE", "EGRESS_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv(SECRET2_ENV, SECRET2)
    return h


@pytest.fixture
def egress(home: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        result = Result(code, captured.out, captured.err)
        for s in ALL_SECRETS:
            assert s not in result.out, f"secret printed on stdout by {argv}"
            assert s not in result.err, f"secret printed on stderr by {argv}"
            assert quote(s, safe="") not in result.out + result.err
        return result

    return run


def files_under(root: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(root):
        for n in names:
            yield Path(dirpath) / n


def assert_no_secret_in_files(root: Path) -> None:
    checked = 0
    for f in files_under(root):
        data = f.read_bytes()
        checked += 1
        for s in ALL_SECRETS:
            assert s.encode() not in data, f"secret found in {f}"
            assert base64.b64encode(s.encode()) not in data, f"base64 secret found in {f}"
    assert checked > 0


def assert_one_error_line(r: Result, *needles: str) -> None:
    assert r.code == 2, (r.code, r.out, r.err)
    lines = r.err.splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("egress: error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])


def stored_secret(name: str) -> str | None:
    """What the proxy would inject for ``name`` (opens the store like the proxy does)."""
    with Connectors(Home.from_env()) as connectors:
        route = connectors.policy().routes[name]
    rendered = route.rendered
    return rendered.headers[0][1] if rendered.headers else rendered.query[0][1]


def add_stripe(egress: Callable[..., Result], name: str = "stripe") -> None:
    r = egress("connector", "add", name, "--preset", "stripe", "--secret-env", SECRET_ENV)
    assert r.code == 0, r.err


def add_weather(egress: Callable[..., Result], secret_file: Path) -> None:
    """The weather connector (query ``appid``), its secret read from ``secret_file``."""
    r = egress(
        "connector", "add", "weather", "--pattern", "https://api.weather.example/v1/*",
        "--query", "appid", "--secret-file", str(secret_file),
    )  # fmt: skip
    assert r.code == 0, r.err


def other_key_text() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- init ----------------------------------------------------------------------


def test_init_creates_home_and_key_with_mode_0600(egress: Callable[..., Result], home: Path) -> None:
    r = egress("init")
    assert r.code == 0, r.err
    assert "created" in r.out
    key = home / "master.key"
    assert key.is_file()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(base64.b64decode(key.read_text().strip(), validate=True)) == 32
    assert (home / "egress.db").is_file()
    assert (home / "ca" / "mitmproxy-ca-cert.pem").is_file()
    assert stat.S_IMODE((home / "ca" / "mitmproxy-ca.pem").stat().st_mode) == 0o600


def test_init_is_idempotent(egress: Callable[..., Result], home: Path) -> None:
    assert egress("init").code == 0
    key_before = (home / "master.key").read_bytes()
    ca_before = (home / "ca" / "mitmproxy-ca-cert.pem").read_bytes()
    add_stripe(egress)
    r = egress("init")
    assert r.code == 0, r.err
    assert "nothing to do" in r.out
    assert "created" not in r.out
    assert (home / "master.key").read_bytes() == key_before
    assert (home / "ca" / "mitmproxy-ca-cert.pem").read_bytes() == ca_before
    assert stat.S_IMODE((home / "master.key").stat().st_mode) == 0o600
    assert stored_secret("stripe") == f"Bearer {SECRET}"


def test_init_with_master_key_env_writes_no_key_file(
    egress: Callable[..., Result], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EGRESS_MASTER_KEY", other_key_text())
    assert egress("init").code == 0
    assert not (home / "master.key").exists()
    add_stripe(egress)
    assert stored_secret("stripe") == f"Bearer {SECRET}"


def test_init_with_invalid_master_key_env(
    egress: Callable[..., Result], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EGRESS_MASTER_KEY", "not-a-key!")
    assert_one_error_line(egress("init"), "EGRESS_MASTER_KEY")
    monkeypatch.setenv("EGRESS_MASTER_KEY", base64.b64encode(b"short").decode())
    assert_one_error_line(egress("init"), "EGRESS_MASTER_KEY", "32 bytes")


def test_init_refuses_new_key_when_store_has_secrets(egress: Callable[..., Result], home: Path) -> None:
    add_stripe(egress)
    (home / "master.key").unlink()
    assert_one_error_line(egress("init"), "master key")
    assert not (home / "master.key").exists()


def test_missing_master_key_file_env(
    egress: Callable[..., Result], home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EGRESS_MASTER_KEY_FILE", str(tmp_path / "nope.key"))
    assert_one_error_line(egress("init"), "nope.key")


def test_commands_before_init(egress: Callable[..., Result], home: Path) -> None:
    assert_one_error_line(egress("connector", "list"), "egress init")
    assert_one_error_line(egress("check", "https://api.stripe.com/v1"), "egress init")


# -- connector add / list / show -------------------------------------------------------


def test_add_with_secret_env_list_show(egress: Callable[..., Result], home: Path) -> None:
    r = egress("connector", "add", "stripe", "--preset", "stripe", "--secret-env", SECRET_ENV)
    assert r.code == 0, r.err
    assert "added connector stripe" in r.out
    assert "https://api.stripe.com/*" in r.out

    listed = egress("connector", "list")
    assert listed.code == 0
    assert "stripe" in listed.out
    assert "Authorization" in listed.out

    shown = egress("connector", "show", "stripe")
    assert shown.code == 0
    assert "never shown" in shown.out
    assert "https://files.stripe.com/*" in shown.out

    as_json = json.loads(egress("connector", "show", "stripe", "--json").out)
    assert as_json["name"] == "stripe"
    assert as_json["preset"] == "stripe"
    assert as_json["inject"] == {"header": "Authorization", "template": "Bearer {{secret}}"}
    assert "https://api.stripe.com/*" in as_json["patterns"]
    assert "secret" not in as_json

    rows = json.loads(egress("connector", "list", "--json").out)
    assert [row["name"] for row in rows] == ["stripe"]

    assert stored_secret("stripe") == f"Bearer {SECRET}"
    assert_no_secret_in_files(home)


def test_add_with_secret_file(egress: Callable[..., Result], home: Path, tmp_path: Path) -> None:
    f = tmp_path / "weather.secret"
    f.write_text(SECRET + "\n")
    add_weather(egress, f)
    assert stored_secret("weather") == f"appid={quote(SECRET, safe='')}"
    show = json.loads(egress("connector", "show", "weather", "--json").out)
    assert show["inject"] == {"query": "appid"}
    assert_no_secret_in_files(home)


def test_add_with_secret_stdin(
    egress: Callable[..., Result], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(SECRET + "\n"))
    r = egress(
        "connector",
        "add",
        "custom",
        "--pattern",
        "https://api.custom.example/*",
        "--pattern",
        "https://*.custom.example/upload/*",
        "--header",
        "X-Api-Key",
        "--template",
        "Key {{secret}}",
        "--secret-stdin",
    )
    assert r.code == 0, r.err
    assert stored_secret("custom") == f"Key {SECRET}"
    show = json.loads(egress("connector", "show", "custom", "--json").out)
    assert show["patterns"] == ["https://api.custom.example/*", "https://*.custom.example/upload/*"]
    assert_no_secret_in_files(home)


def test_add_secret_with_line_break_refused(
    egress: Callable[..., Result], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(SECRET + "\nX-Evil: 1\n"))
    r = egress("connector", "add", "c", "--preset", "openai", "--secret-stdin")
    assert_one_error_line(r, "control")
    assert "X-Evil" not in r.err
    assert json.loads(egress("connector", "list", "--json").out) == []


def test_add_requires_a_secret(egress: Callable[..., Result], home: Path) -> None:
    assert_one_error_line(egress("connector", "add", "c", "--preset", "openai"), "secret")


def test_add_duplicate_refused(egress: Callable[..., Result], home: Path) -> None:
    add_stripe(egress)
    r = egress("connector", "add", "stripe", "--preset", "github", "--secret-env", SECRET2_ENV)
    assert_one_error_line(r, "'stripe'", "update")
    assert stored_secret("stripe") == f"Bearer {SECRET}"


def test_list_empty(egress: Callable[..., Result], home: Path) -> None:
    assert egress("init").code == 0
    assert "no connectors" in egress("connector", "list").out
    assert json.loads(egress("connector", "list", "--json").out) == []


def test_show_unknown(egress: Callable[..., Result], home: Path) -> None:
    assert egress("init").code == 0
    assert_one_error_line(egress("connector", "show", "ghost"), "ghost")


# -- update / remove ----------------------------------------------------------------------


def test_update_keeps_secret_without_secret_flag(egress: Callable[..., Result], home: Path) -> None:
    add_stripe(egress)
    r = egress("connector", "update", "stripe", "--pattern", "https://api.stripe.com/v2/*")
    assert r.code == 0, r.err
    assert stored_secret("stripe") == f"Bearer {SECRET}"
    assert json.loads(egress("connector", "show", "stripe", "--json").out)["patterns"] == [
        "https://api.stripe.com/v2/*"
    ]
    assert egress("check", "https://api.stripe.com/v2/charges").code == 0
    assert egress("check", "https://api.stripe.com/v1/charges").code == 1


def test_update_header_template_only(egress: Callable[..., Result], home: Path) -> None:
    add_stripe(egress)
    assert egress("connector", "update", "stripe", "--template", "Token {{secret}}").code == 0
    assert stored_secret("stripe") == f"Token {SECRET}"


def test_update_replaces_secret(egress: Callable[..., Result], home: Path) -> None:
    add_stripe(egress)
    assert egress("connector", "update", "stripe", "--secret-env", SECRET2_ENV).code == 0
    assert stored_secret("stripe") == f"Bearer {SECRET2}"
    assert_no_secret_in_files(home)


def test_update_unknown(egress: Callable[..., Result], home: Path) -> None:
    assert egress("init").code == 0
    assert_one_error_line(egress("connector", "update", "ghost", "--secret-env", SECRET_ENV), "ghost")


def test_update_bad_pattern_changes_nothing(egress: Callable[..., Result], home: Path) -> None:
    add_stripe(egress)
    before = egress("connector", "show", "stripe", "--json").out
    assert_one_error_line(
        egress("connector", "update", "stripe", "--pattern", "http://api.stripe.com/*"),
        "http://api.stripe.com/*",
    )
    assert egress("connector", "show", "stripe", "--json").out == before


def test_remove(egress: Callable[..., Result], home: Path) -> None:
    add_stripe(egress)
    add_stripe(egress, "stripe2")
    r = egress("connector", "remove", "stripe")
    assert r.code == 0
    assert "removed connector stripe" in r.out
    assert [row["name"] for row in json.loads(egress("connector", "list", "--json").out)] == ["stripe2"]
    assert_one_error_line(egress("connector", "remove", "stripe"), "stripe")


# -- apply ----------------------------------------------------------------------------------

APPLY_V1 = f"""\
connectors:
  - name: stripe
    preset: stripe
    secret: {{env: {SECRET_ENV}}}
  - name: weather
    patterns: ["https://api.weather.example/v1/*"]
    secret: {{file: SECRET_FILE}}
    inject: {{query: appid}}
"""


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    f = tmp_path / "weather.secret"
    f.write_text(SECRET2 + "\n")
    return f


def v1(tmp_path: Path, secret_file: Path) -> Path:
    return write_yaml(tmp_path / "connectors.yaml", APPLY_V1.replace("SECRET_FILE", str(secret_file)))


def names(egress: Callable[..., Result]) -> list[str]:
    return [row["name"] for row in json.loads(egress("connector", "list", "--json").out)]


def test_apply_created_unchanged_updated_removed(
    egress: Callable[..., Result],
    home: Path,
    tmp_path: Path,
    secret_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = v1(tmp_path, secret_file)
    r = egress("apply", "-f", str(cfg))
    assert r.code == 0, r.err
    assert "created: stripe, weather" in r.out
    assert names(egress) == ["stripe", "weather"]
    assert stored_secret("stripe") == f"Bearer {SECRET}"
    assert stored_secret("weather") == f"appid={quote(SECRET2, safe='')}"

    r = egress("apply", "-f", str(cfg))
    assert r.code == 0
    assert "unchanged: stripe, weather" in r.out
    assert "up to date" in r.out
    assert "created:" not in r.out

    # A new secret value is an update even if the spec is the same.
    monkeypatch.setenv(SECRET_ENV, "sk_live_ROTATED")
    r = egress("apply", "-f", str(cfg))
    assert "updated: stripe" in r.out
    assert "unchanged: weather" in r.out
    assert stored_secret("stripe") == "Bearer sk_live_ROTATED"
    monkeypatch.setenv(SECRET_ENV, SECRET)

    # A changed spec is an update; a connector missing from the file stays without --prune.
    add_stripe(egress, "extra")
    cfg.write_text(cfg.read_text().replace("/v1/*", "/v2/*"))
    r = egress("apply", "-f", str(cfg))
    assert "updated: stripe, weather" in r.out or "updated: weather" in r.out
    assert "removed" not in r.out
    assert names(egress) == ["extra", "stripe", "weather"]
    assert egress("check", "https://api.weather.example/v2/x").code == 0
    assert egress("check", "https://api.weather.example/v1/x").code == 1

    r = egress("apply", "-f", str(cfg), "--prune")
    assert r.code == 0
    assert "removed: extra" in r.out
    assert names(egress) == ["stripe", "weather"]
    assert_no_secret_in_files(home)


def test_apply_prune_with_empty_file(
    egress: Callable[..., Result], home: Path, tmp_path: Path, secret_file: Path
) -> None:
    assert egress("apply", "-f", str(v1(tmp_path, secret_file))).code == 0
    empty = write_yaml(tmp_path / "empty.yaml", "connectors: []\n")
    r = egress("apply", "-f", str(empty), "--prune")
    assert r.code == 0
    assert "removed: stripe, weather" in r.out
    assert names(egress) == []


def generation(home: Path) -> int:
    """The store's change counter: every committed write bumps it."""
    store = SqliteStore(home / "egress.db")
    try:
        return store.generation()
    finally:
        store.close()


def store_state(egress: Callable[..., Result], home: Path) -> tuple[int, str, dict[str, str | None]]:
    listing = egress("connector", "list", "--json").out
    return generation(home), listing, {n: stored_secret(n) for n in names(egress)}


@pytest.mark.parametrize(
    "bad_entry",
    [
        '  - name: broken\n    patterns: ["http://plain.example.com/*"]\n'
        "    secret: {env: X}\n    inject: {query: k}\n",
        "  - name: broken\n    preset: nope\n    secret: {env: X}\n",
        "  - name: broken\n    preset: openai\n    secret: {env: EGRESS_TEST_UNSET_VAR}\n",
        "  - name: broken\n    preset: openai\n    secret: {file: /nonexistent/egress/secret}\n",
        "  - name: broken\n    preset: openai\n    secret: {env: X}\n    extra: 1\n",
        "  - name: stripe\n    preset: openai\n    secret: {env: X}\n",
    ],
)
def test_apply_with_one_bad_connector_changes_nothing(
    egress: Callable[..., Result],
    home: Path,
    tmp_path: Path,
    secret_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    bad_entry: str,
) -> None:
    monkeypatch.setenv("X", "x-secret")
    monkeypatch.delenv("EGRESS_TEST_UNSET_VAR", raising=False)
    assert egress("apply", "-f", str(v1(tmp_path, secret_file))).code == 0
    add_stripe(egress, "keepme")
    before = store_state(egress, home)

    # Same names with changed specs and a new secret, plus one bad connector, with --prune.
    monkeypatch.setenv(SECRET_ENV, "sk_live_NEW_VALUE")
    text = v1(tmp_path, secret_file).read_text().replace("/v1/*", "/v9/*") + bad_entry
    cfg = write_yaml(tmp_path / "bad.yaml", text)
    r = egress("apply", "-f", str(cfg), "--prune")
    assert_one_error_line(r, str(cfg))
    assert r.out == ""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    assert store_state(egress, home) == before


def test_apply_warns_about_ambiguity(egress: Callable[..., Result], home: Path, tmp_path: Path) -> None:
    cfg = write_yaml(
        tmp_path / "amb.yaml",
        f"connectors:\n"
        f"  - name: a\n    patterns: ['https://dup.example.com/v1/*']\n    secret: {{env: {SECRET_ENV}}}\n"
        f"    inject: {{header: X-Key}}\n"
        f"  - name: b\n    patterns: ['https://dup.example.com/v1/*']\n    secret: {{env: {SECRET2_ENV}}}\n"
        f"    inject: {{header: X-Key}}\n",
    )
    r = egress("apply", "-f", str(cfg))
    assert r.code == 0
    assert "warning" in r.err
    assert "ambiguous" in r.err
    c = egress("check", "https://dup.example.com/v1/x")
    assert c.code == 1
    assert "ambiguous" in c.out


# -- errors: exit 2 and one clear line ------------------------------------------------------------


def test_error_bad_pattern(egress: Callable[..., Result], home: Path) -> None:
    r = egress(
        "connector", "add", "c", "--pattern", "https://*.com/*", "--header", "X", "--secret-env", SECRET_ENV
    )
    assert_one_error_line(r, "https://*.com/*", "'c'")
    assert names(egress) == []


def test_error_query_in_pattern(egress: Callable[..., Result], home: Path) -> None:
    r = egress(
        "connector",
        "add",
        "c",
        "--pattern",
        "https://a.example.com/x?k=1",
        "--query",
        "k",
        "--secret-env",
        SECRET_ENV,
    )
    assert_one_error_line(r, "query")


def test_error_unknown_preset(egress: Callable[..., Result], home: Path) -> None:
    assert_one_error_line(
        egress("connector", "add", "c", "--preset", "strype", "--secret-env", SECRET_ENV), "strype"
    )


def test_error_forbidden_header(egress: Callable[..., Result], home: Path) -> None:
    r = egress(
        "connector", "add", "c", "--preset", "openai", "--header", "Cookie", "--secret-env", SECRET_ENV
    )
    assert_one_error_line(r, "Cookie")


def test_error_template_without_placeholder(egress: Callable[..., Result], home: Path) -> None:
    r = egress(
        "connector",
        "add",
        "c",
        "--preset",
        "openai",
        "--header",
        "X",
        "--template",
        "Bearer",
        "--secret-env",
        SECRET_ENV,
    )
    assert_one_error_line(r, "{{secret}}")


def test_error_missing_secret_file(egress: Callable[..., Result], home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    r = egress("connector", "add", "c", "--preset", "openai", "--secret-file", str(missing))
    assert_one_error_line(r, str(missing))
    assert names(egress) == []


def test_error_unset_env_var(
    egress: Callable[..., Result], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EGRESS_TEST_UNSET", raising=False)
    r = egress("connector", "add", "c", "--preset", "openai", "--secret-env", "EGRESS_TEST_UNSET")
    assert_one_error_line(r, "EGRESS_TEST_UNSET")
    assert names(egress) == []


def test_error_apply_unset_env_names_file_and_connector(
    egress: Callable[..., Result], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EGRESS_TEST_UNSET", raising=False)
    cfg = write_yaml(
        tmp_path / "c.yaml",
        "connectors:\n  - name: gh\n    preset: github\n    secret: {env: EGRESS_TEST_UNSET}\n",
    )
    assert_one_error_line(egress("apply", "-f", str(cfg)), str(cfg), "'gh'", "EGRESS_TEST_UNSET")


def test_error_apply_missing_secret_file_names_file_and_connector(
    egress: Callable[..., Result], home: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "gone.secret"
    cfg = write_yaml(
        tmp_path / "c.yaml",
        f"connectors:\n  - name: gh\n    preset: github\n    secret: {{file: {missing}}}\n",
    )
    assert_one_error_line(egress("apply", "-f", str(cfg)), str(cfg), "'gh'", str(missing))


def test_error_broken_yaml(egress: Callable[..., Result], home: Path, tmp_path: Path) -> None:
    cfg = write_yaml(
        tmp_path / "broken.yaml", "connectors:\n  - name: a\n    preset: [stripe\n    secret: x\n"
    )
    assert_one_error_line(egress("apply", "-f", str(cfg)), str(cfg), "line ")


def test_error_apply_missing_file(egress: Callable[..., Result], home: Path, tmp_path: Path) -> None:
    assert_one_error_line(egress("apply", "-f", str(tmp_path / "nope.yaml")), "nope.yaml")


def test_error_inline_secret_not_echoed(egress: Callable[..., Result], home: Path, tmp_path: Path) -> None:
    cfg = write_yaml(
        tmp_path / "inline.yaml", f"connectors:\n  - name: s\n    preset: stripe\n    secret: {SECRET}\n"
    )
    assert_one_error_line(egress("apply", "-f", str(cfg)), str(cfg), "secret")


def test_wrong_master_key_update_fails_clearly(
    egress: Callable[..., Result], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_stripe(egress)
    monkeypatch.setenv("EGRESS_MASTER_KEY", other_key_text())
    before = generation(home), egress("connector", "show", "stripe", "--json").out
    r = egress("connector", "update", "stripe", "--pattern", "https://api.stripe.com/v2/*")
    assert_one_error_line(r, "stripe", "master key")
    assert (generation(home), egress("connector", "show", "stripe", "--json").out) == before
    monkeypatch.delenv("EGRESS_MASTER_KEY")
    assert stored_secret("stripe") == f"Bearer {SECRET}"


def test_wrong_master_key_check_fails_clearly(
    egress: Callable[..., Result], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The running proxy could not open this secret, so `egress check` (which answers
    # "as the proxy would") must not claim the URL is allowed.
    add_stripe(egress)
    monkeypatch.setenv("EGRESS_MASTER_KEY", other_key_text())
    r = egress("check", "https://api.stripe.com/v1/charges")
    assert_one_error_line(r, "master key")


@pytest.mark.parametrize(
    "argv",
    [
        ("connector", "list"),
        ("connector", "show", "stripe"),
        ("check", "https://api.stripe.com/v1"),
        ("connector", "add", "x", "--preset", "openai", "--secret-env", SECRET_ENV),
        ("connector", "update", "stripe", "--secret-env", SECRET_ENV),
        ("connector", "remove", "stripe"),
        ("apply", "-f", "CFG"),
        ("init",),
    ],
)
def test_corrupt_store_is_reported_and_left_untouched(
    egress: Callable[..., Result], home: Path, tmp_path: Path, argv: tuple[str, ...]
) -> None:
    assert egress("init").code == 0
    db = home / "egress.db"
    for extra in home.glob("egress.db-*"):
        extra.unlink()
    garbage = bytes((i * 151 + 7) % 256 for i in range(8192))
    db.write_bytes(garbage)
    cfg = write_yaml(
        tmp_path / "c.yaml",
        f"connectors:\n  - name: o\n    preset: openai\n    secret: {{env: {SECRET_ENV}}}\n",
    )
    r = egress(*(str(cfg) if a == "CFG" else a for a in argv))
    assert_one_error_line(r, str(db))
    assert db.read_bytes() == garbage
    assert sorted(p.name for p in home.glob("egress.db*")) == ["egress.db"]


def test_foreign_sqlite_database_is_not_adopted(egress: Callable[..., Result], home: Path) -> None:
    # "A file that is not a valid store is reported and left untouched, never replaced."
    assert egress("init").code == 0
    db = home / "egress.db"
    for f in home.glob("egress.db*"):
        f.unlink()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    con.execute("INSERT INTO users (email) VALUES ('a@example.com')")
    con.commit()
    con.close()
    before = db.read_bytes()
    r = egress("connector", "list")
    assert r.code == 2, (r.out, r.err)
    assert db.read_bytes() == before


# -- check --------------------------------------------------------------------------------------


def test_check_allowed_and_blocked(egress: Callable[..., Result], home: Path, tmp_path: Path) -> None:
    add_stripe(egress)
    f = tmp_path / "s"
    f.write_text(SECRET2)
    add_weather(egress, f)
    ok = egress("check", "https://api.stripe.com/v1/charges?limit=1")
    assert ok.code == 0
    assert "allowed" in ok.out
    assert "stripe" in ok.out
    assert "Authorization" in ok.out

    q = egress("check", "https://api.weather.example/v1")
    assert q.code == 0
    assert "appid" in q.out

    cases = {
        "https://api.github.com/x": "no-connector",
        "https://api.stripe.com/v1/../admin": "bad-path",
        "https://api.stripe.com/v1/%2e%2e/admin": "bad-path",
        "http://api.stripe.com/v1/charges": "plain-http",
        "https://api.stripe.com:8443/v1": "no-connector",
        "https://api.weather.example/v2/x": "no-connector",
    }
    for url, reason in cases.items():
        r = egress("check", url)
        assert r.code == 1, url
        assert r.out.startswith("blocked: " + reason), (url, r.out)


def test_check_ambiguous(egress: Callable[..., Result], home: Path) -> None:
    for name in ("a", "b"):
        r = egress(
            "connector",
            "add",
            name,
            "--pattern",
            "https://dup.example.com/*",
            "--header",
            "X",
            "--secret-env",
            SECRET_ENV,
        )
        assert r.code == 0
    assert "ambiguous" in r.err
    c = egress("check", "https://dup.example.com/x")
    assert c.code == 1
    assert c.out.startswith("blocked: ambiguous")


# -- secrets never leak ---------------------------------------------------------------------------


def test_secret_never_in_output_or_files(
    egress: Callable[..., Result], home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "s"
    f.write_text(SECRET2)
    monkeypatch.setattr(sys, "stdin", io.StringIO(SECRET))
    steps = [
        ("init",),
        ("connector", "add", "s1", "--preset", "stripe", "--secret-env", SECRET_ENV),
        (
            "connector",
            "add",
            "s2",
            "--pattern",
            "https://q.example.com/*",
            "--query",
            "k",
            "--secret-file",
            str(f),
        ),
        ("connector", "add", "s3", "--preset", "slack", "--secret-stdin"),
        ("connector", "list"),
        ("connector", "list", "--json"),
        ("connector", "show", "s1"),
        ("connector", "show", "s2", "--json"),
        ("connector", "update", "s1", "--pattern", "https://api.stripe.com/v1/*"),
        ("connector", "update", "s2", "--secret-env", SECRET_ENV),
        ("check", "https://api.stripe.com/v1/x"),
        ("check", "https://q.example.com/x?k=1"),
        ("check", "https://nothing.example.com/"),
        ("connector", "add", "s1", "--preset", "stripe", "--secret-env", SECRET2_ENV),
        ("connector", "remove", "s3"),
    ]
    for argv in steps:
        egress(*argv)  # the runner asserts no secret in stdout/stderr
    assert names(egress) == ["s1", "s2"]
    assert stored_secret("s2") == f"k={quote(SECRET, safe='')}"
    assert_no_secret_in_files(home)


def test_connector_without_action_is_usage_error(egress: Callable[..., Result], home: Path) -> None:
    r = egress("connector")
    assert r.code == 2
    assert "usage" in r.err.lower()


def test_flush_interval_is_checked_and_handed_to_the_workers(
    egress: Callable[..., Result], home: Path
) -> None:
    assert_one_error_line(egress("run", "--flush-interval", "0"), "--flush-interval")
    args = build_parser().parse_args(["run", "--flush-interval", "2.5"])
    assert settings_from_args(args, Home(home, {})).flush_interval == 2.5
    default = build_parser().parse_args(["run"])
    assert settings_from_args(default, Home(home, {})).flush_interval == 0.0  # the store's own

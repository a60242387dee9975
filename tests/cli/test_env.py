"""`egress env` and `egress grant` in-process: shell forms, the files written, never creating state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from proxy.cli.shells import render
from proxy.service import clientenv
from tests.cli.test_cli import Result, assert_one_error_line, egress, home

__all__ = ["egress", "home"]  # fixtures
pytestmark = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
)

TRICKY = '/tmp/a b/it\'s "q" $HOME `x` \\ \u2019 #c'
PROXY = "http://127.0.0.1:8099"


def env_vars(r: Result) -> dict[str, str]:
    assert r.code == 0, r.err
    return dict(json.loads(r.out))


@pytest.fixture
def ready(egress: Callable[..., Result], home: Path) -> Path:
    assert egress("init").code == 0
    return home


# -- never create state ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ("env",),
        ("env", "--shell", "json"),
        ("grant", "--connector", "x"),
        ("grant", "list"),
        ("grant", "revoke", "g"),
    ],
)
def test_before_init_refuses_and_creates_nothing(
    egress: Callable[..., Result], home: Path, argv: tuple[str, ...]
) -> None:
    r = egress(*argv)
    assert_one_error_line(r, str(home), "not initialised", "egress init")
    assert not home.exists()


def test_env_without_ca_refuses(egress: Callable[..., Result], ready: Path) -> None:
    for f in (ready / "ca").iterdir():
        f.unlink()
    assert_one_error_line(egress("env"), str(ready), "no CA certificate")
    assert not (ready / "ca" / "mitmproxy-ca.pem").exists()


def test_env_warns_when_no_proxy_is_recorded(egress: Callable[..., Result], ready: Path) -> None:
    r = egress("env")
    assert r.code == 0, r.err
    assert "export HTTPS_PROXY=http://127.0.0.1:8080\n" in r.out
    (warning,) = [line for line in r.err.splitlines() if line.startswith("warning:")]
    assert str(ready / "run" / "proxy.addr") in warning and "127.0.0.1:8080" in warning


def test_env_uses_the_recorded_proxy_quietly(egress: Callable[..., Result], ready: Path) -> None:
    (ready / "run" / "proxy.addr").write_text("127.0.0.1:9123\n")
    r = egress("env", "--shell", "json")
    assert env_vars(r)["HTTP_PROXY"] == "http://127.0.0.1:9123"
    assert "warning" not in r.err
    r = egress("env", "--proxy", "127.0.0.1:9124", "--shell", "json")
    assert env_vars(r)["HTTPS_PROXY"] == "http://127.0.0.1:9124" and "warning" not in r.err


def test_env_bad_proxy_is_one_line(egress: Callable[..., Result], ready: Path) -> None:
    assert_one_error_line(egress("env", "--proxy", "http://127.0.0.1"), "--proxy")


# -- what env exports and writes ------------------------------------------------------------


def test_env_variables_and_files(egress: Callable[..., Result], ready: Path) -> None:
    v = env_vars(egress("env", "--proxy", PROXY, "--shell", "json"))
    bundle = str(ready / "ca" / "bundle.pem")
    assert v["HTTPS_PROXY"] == v["https_proxy"] == v["HTTP_PROXY"] == v["http_proxy"] == PROXY
    assert v["NO_PROXY"] == v["no_proxy"] == "localhost,127.0.0.1,::1"
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT"):
        assert v[name] == bundle
    assert v["NPM_CONFIG_CAFILE"] == v["AWS_CA_BUNDLE"] == v["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] == bundle
    assert v["NODE_EXTRA_CA_CERTS"] == str(ready / "ca" / "mitmproxy-ca-cert.pem")
    assert v["NODE_USE_ENV_PROXY"] == "1" and v["GIT_HTTP_PROXY_AUTHMETHOD"] == "basic"
    assert "NODE_OPTIONS" not in v
    wgetrc = Path(v["WGETRC"])
    assert wgetrc.read_text().splitlines() == [
        f"ca_certificate = {bundle}", "use_proxy = on", f"https_proxy = {PROXY}", f"http_proxy = {PROXY}",
    ]  # fmt: skip
    assert (Path(v["PYTHONPATH"].split(os.pathsep)[0]) / "sitecustomize.py").is_file()
    store = ready / "ca" / "truststore.p12"
    assert v["JAVA_TOOL_OPTIONS"].split() == [
        "-Dhttps.proxyHost=127.0.0.1", "-Dhttps.proxyPort=8099",
        "-Dhttp.proxyHost=127.0.0.1", "-Dhttp.proxyPort=8099",
        f"-Djavax.net.ssl.trustStore={store}", "-Djavax.net.ssl.trustStorePassword=egress-proxy",
        "-Djavax.net.ssl.trustStoreType=PKCS12",
    ]  # fmt: skip
    loaded = pkcs12.load_pkcs12(store.read_bytes(), b"egress-proxy")
    ours = x509.load_pem_x509_certificate((ready / "ca" / "mitmproxy-ca-cert.pem").read_bytes())
    assert ours in [c.certificate for c in loaded.additional_certs]


def test_env_keeps_existing_paths_once(
    egress: Callable[..., Result], ready: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = str(ready / "client" / "python")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/opt/lib", ours]))
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Xmx1g -Dhttps.proxyHost=old.example -Dhttps.proxyPort=1")
    v = env_vars(egress("env", "--proxy", PROXY, "--shell", "json"))
    assert v["PYTHONPATH"] == os.pathsep.join([ours, "/opt/lib"])
    opts = v["JAVA_TOOL_OPTIONS"].split()
    assert opts[0] == "-Xmx1g" and "old.example" not in v["JAVA_TOOL_OPTIONS"]
    assert opts.count("-Dhttps.proxyPort=8099") == 1


def test_grant_token_is_never_written_to_a_file(egress: Callable[..., Result], ready: Path) -> None:
    plain = env_vars(egress("env", "--proxy", PROXY, "--shell", "json"))["WGETRC"]
    v = env_vars(egress("env", "--proxy", PROXY, "--grant", "eg1.tok.sig", "--shell", "json"))
    assert v["HTTPS_PROXY"] == "http://grant:eg1.tok.sig@127.0.0.1:8099"
    assert v["WGETRC"] != plain  # wget takes the proxy, token included, from the environment
    assert "proxy" not in Path(v["WGETRC"]).read_text().replace("use_proxy", "")
    assert f"https_proxy = {PROXY}" in Path(plain).read_text()
    for f in ready.rglob("*"):
        assert not f.is_file() or b"eg1.tok.sig" not in f.read_bytes(), f


def test_node_preload_only_after_setup(
    egress: Callable[..., Result], ready: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "node").write_text("#!/bin/sh\n")
    (bindir / "node").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    r = egress("env", "--proxy", PROXY)
    assert "NODE_OPTIONS" not in r.out and "egress env --setup-node" in r.err
    assert_one_error_line(egress("env", "--setup-node", "--proxy", PROXY), "npm")
    for package in ("undici", "global-agent"):  # what npm install would leave behind
        (ready / "node" / "node_modules" / package).mkdir(parents=True)
        (ready / "node" / "node_modules" / package / "package.json").write_text("{}")
    monkeypatch.setenv("NODE_OPTIONS", "--max-old-space-size=100")
    v = env_vars(egress("env", "--setup-node", "--proxy", PROXY, "--shell", "json"))
    preload = ready / "node" / "egress-preload.js"
    assert v["NODE_OPTIONS"] == f"--require {preload} --max-old-space-size=100"
    assert "setGlobalDispatcher(new EnvHttpProxyAgent())" in preload.read_text()
    monkeypatch.setenv("NODE_OPTIONS", v["NODE_OPTIONS"])  # a second eval does not stack
    assert env_vars(egress("env", "--proxy", PROXY, "--shell", "json"))["NODE_OPTIONS"] == v["NODE_OPTIONS"]


def test_ca_java_truststore(egress: Callable[..., Result], ready: Path, tmp_path: Path) -> None:
    r = egress("ca", "--java-truststore", str(tmp_path / "t.p12"))
    assert r.code == 0, r.err
    loaded = pkcs12.load_pkcs12((tmp_path / "t.p12").read_bytes(), b"egress-proxy")
    assert len(loaded.additional_certs) > 10
    assert loaded.additional_certs[0].friendly_name == b"egress-proxy-ca"


def test_truststore_is_rebuilt_only_when_the_roots_change(ready: Path) -> None:
    from proxy.service.home import Home

    home = Home(ready, {})
    roots = home.ca_cert.read_bytes()  # stands in for the system roots
    path = clientenv.cached_truststore(home, roots)
    loaded = pkcs12.load_pkcs12(path.read_bytes(), b"egress-proxy")
    assert [c.friendly_name for c in loaded.additional_certs] == [b"egress-proxy-ca"]
    os.utime(path, ns=(1, 1))  # a rebuild would show as a new modification time
    assert clientenv.cached_truststore(home, roots).stat().st_mtime_ns == 1
    assert clientenv.cached_truststore(home, roots + b"\n").stat().st_mtime_ns != 1


def test_java_trust_options_drop_proxy_and_trust_keys() -> None:
    mixed = "-Xmx1g -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=8080 -Djavax.net.ssl.trustStore=/old"
    out = clientenv.java_trust_options(mixed, Path("/w/t.p12")).split()
    assert out[0] == "-Xmx1g" and "-Djavax.net.ssl.trustStore=/w/t.p12" in out
    assert not [o for o in out if o.startswith(("-Dhttps.proxy", "-Djavax.net.ssl.trustStore=/old"))]


# -- shell forms ----------------------------------------------------------------------------


def test_render_forms_exactly() -> None:
    v = {"A": "plain/path", "B": "it's"}
    assert render(v, "sh") == "export A=plain/path\nexport B='it'\"'\"'s'\n"
    assert render(v, "fish") == "set -gx A 'plain/path'\nset -gx B 'it\\'s'\n"
    assert render(v, "powershell") == "$env:A = 'plain/path'\n$env:B = 'it''s'\n"
    assert render(v, "dotenv") == 'A=plain/path\nB="it\'s"\n'
    assert json.loads(render(v, "json")) == v
    assert render({"F": "a\\b"}, "fish") == "set -gx F 'a\\\\b'\n"
    assert render({"P": "a\u2019b"}, "powershell") == "$env:P = 'a\u2019\u2019b'\n"


@pytest.mark.parametrize("shell", ["sh", "dotenv"])
def test_render_round_trips_through_a_posix_shell(shell: str, tmp_path: Path) -> None:
    """sh is eval'd; the dotenv form is sourced (its double-quote escapes are the shell's)."""
    values = {"TRICKY": TRICKY, "SPACED": "-Da=1 -Db=2", "EMPTYISH": " lead"}
    (tmp_path / "env").write_text(render(values, shell))
    script = 'set -a; . ./env; printf \'%s\\0\' "$TRICKY" "$SPACED" "$EMPTYISH"'
    out = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == list(values.values())


@pytest.mark.parametrize("shell", ["fish", "pwsh"])
def test_render_round_trips_through_fish_and_powershell(shell: str, tmp_path: Path) -> None:
    import shutil

    exe = shutil.which(shell)
    if exe is None:
        pytest.skip(f"{shell} is not installed")
    form = "fish" if shell == "fish" else "powershell"
    (tmp_path / "env").write_text(render({"TRICKY": TRICKY}, form))
    cmd = (
        ["-c", "source env; printf '%s' $TRICKY"]
        if shell == "fish"
        else ["-NoProfile", "-Command", ". ./env; [Console]::Write($env:TRICKY)"]
    )
    out = subprocess.run([exe, *cmd], cwd=tmp_path, capture_output=True, check=True).stdout
    assert out.decode() == TRICKY


def test_render_refuses_nul() -> None:
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError, match="NUL"):
        render({"A": "a\0b"}, "sh")


# -- the Python sitecustomize ---------------------------------------------------------------


def run_python(tmp_path: Path, code: str, *path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HTTPS_PROXY", "https_proxy")}
    env["PYTHONPATH"] = os.pathsep.join(map(str, path))
    env.update(extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)


def sitecustomize_dir(tmp_path: Path) -> Path:
    d = tmp_path / "egress-site"
    d.mkdir()
    (d / "sitecustomize.py").write_bytes((clientenv._PACKAGE_DIR / "sitecustomize.py").read_bytes())
    return d


def test_sitecustomize_defaults_trust_env_and_chains(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    (fake / "aiohttp").mkdir(parents=True)
    (fake / "aiohttp" / "__init__.py").write_text(
        "class ClientSession:\n"
        "    def __init__(self, base_url=None, *, trust_env=False):\n"
        "        self.trust_env = trust_env\n"
    )
    (fake / "sitecustomize.py").write_text("import os\nos.environ['CHAINED'] = 'yes'\n")
    code = (
        "import os, aiohttp\n"
        "print(aiohttp.ClientSession().trust_env, aiohttp.ClientSession(trust_env=False).trust_env,"
        " aiohttp.ClientSession('http://x').trust_env, os.environ.get('CHAINED'))\n"
    )
    res = run_python(tmp_path, code, sitecustomize_dir(tmp_path), fake, HTTPS_PROXY="http://127.0.0.1:1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "False", "True", "yes"]
    res = run_python(tmp_path, code, tmp_path / "egress-site", fake)  # no proxy (egress exec): untouched
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False", "False", "yes"]


def test_sitecustomize_points_stripe_at_ssl_cert_file(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    (fake / "stripe").mkdir(parents=True)
    (fake / "stripe" / "__init__.py").write_text(
        "import os\nca_bundle_path = os.path.join(os.path.dirname(__file__), 'data', 'ca-certificates.crt')\n"
    )
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    ours = sitecustomize_dir(tmp_path)
    code = "import stripe; print(stripe.ca_bundle_path)"
    res = run_python(tmp_path, code, ours, fake, SSL_CERT_FILE=str(bundle))
    assert (res.returncode, res.stdout.strip(), res.stderr) == (0, str(bundle), "")
    res = run_python(tmp_path, code, ours, fake, SSL_CERT_FILE=str(tmp_path / "missing.pem"))
    assert res.stdout.strip() == str(fake / "stripe" / "data" / "ca-certificates.crt")


def test_sitecustomize_never_breaks_start(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    (fake / "aiohttp").mkdir(parents=True)
    (fake / "aiohttp" / "__init__.py").write_text("ClientSession = 42\n")  # not a class: left alone
    ours = sitecustomize_dir(tmp_path)
    res = run_python(tmp_path, "import aiohttp; print(aiohttp.ClientSession)", ours, fake)
    assert (res.returncode, res.stdout.strip(), res.stderr) == (0, "42", "")
    res = run_python(tmp_path, "import sys; print('aiohttp' in sys.modules)", ours)  # no aiohttp at all
    assert (res.returncode, res.stdout.strip(), res.stderr) == (0, "False", "")

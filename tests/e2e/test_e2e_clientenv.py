"""Real runtimes configured only by `eval "$(egress env)"`: wget, aiohttp, Java, Node, plain http://.

Each test asserts what the recording upstream received: the injected secret,
or (plain http://) nothing at all.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SECRETS, proxy_args
from tests.harness import Proxy, Upstream, clean_env, egress, start_proxy

pytestmark = pytest.mark.e2e
GRANT_SECRET = "sk_clientenv_grant_7a7a"

JAVA_GET = """
import java.net.URI;
import java.net.URL;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Get {
    public static void main(String[] args) throws Exception {
        HttpResponse<String> r = HttpClient.newHttpClient().send(
            HttpRequest.newBuilder(URI.create(args[0])).build(), HttpResponse.BodyHandlers.ofString());
        int legacy = ((java.net.HttpURLConnection) new URL(args[1]).openConnection()).getResponseCode();
        System.out.println(r.statusCode() + " " + legacy);
        System.exit(r.statusCode() == 200 && legacy == 200 ? 0 : 1);
    }
}
"""


def env_shell(proxy: Proxy, script: str, env_args: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``script`` after `eval "$(egress env ARGS)"` with no other proxy or CA configuration."""
    return subprocess.run(
        ["bash", "-c", f'set -e; eval "$(egress env {env_args})"; {script}'],
        capture_output=True,
        text=True,
        env=clean_env(proxy.home, HOME=str(proxy.home)),
        timeout=180,
    )


def url_for(upstream: Upstream, what: str) -> tuple[str, str]:
    tag = f"{what}{time.monotonic_ns()}"
    return tag, f"https://api.stripe.test:{upstream.port}/v1/{what}?t={tag}"


def assert_injected(upstream: Upstream, tag: str) -> None:
    (rec,) = upstream.find(tag)
    assert rec.header("Authorization") == [f"Bearer {SECRETS['stripe']}"]


@pytest.fixture(scope="module")
def node_ready(proxy: Proxy) -> str:
    """`egress env --setup-node` once (needs the npm registry); the node binary's path."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node preload (not installed)")
    res = egress(proxy.home, "env", "--setup-node")
    assert res.returncode == 0, res.stderr
    assert "NODE_OPTIONS" in res.stdout
    return node


def test_every_variable_is_exported(proxy: Proxy) -> None:
    res = env_shell(proxy, "env")
    assert res.returncode == 0, res.stderr
    env = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    assert env["HTTP_PROXY"] == env["http_proxy"] == env["HTTPS_PROXY"] == proxy.url
    assert env["NPM_CONFIG_CAFILE"] == env["SSL_CERT_FILE"]
    assert env["GIT_HTTP_PROXY_AUTHMETHOD"] == "basic"
    wgetrc = Path(env["WGETRC"]).read_text()
    assert f"ca_certificate = {env['SSL_CERT_FILE']}" in wgetrc
    assert f"https_proxy = {proxy.url}" in wgetrc
    assert env["PYTHONPATH"].split(":")[0] == str(proxy.home / "client" / "python")
    assert f"-Dhttps.proxyPort={proxy.port}" in env["JAVA_TOOL_OPTIONS"]


def test_plain_http_reaches_the_proxy_and_is_refused(proxy: Proxy, upstream: Upstream) -> None:
    tag = f"plain{time.monotonic_ns()}"
    res = env_shell(
        proxy, f"curl -sS -D - -o /dev/null http://api.stripe.test:{upstream.port}/v1/plain?t={tag}"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("HTTP/1.1 403"), res.stdout
    assert "x-egress-blocked: plain-http" in res.stdout.lower()
    assert upstream.find(tag) == []


def test_wget(proxy: Proxy, upstream: Upstream) -> None:
    if shutil.which("wget") is None:
        pytest.skip("wget is not installed")
    tag, url = url_for(upstream, "wget")
    res = env_shell(proxy, f"wget -q -O - '{url}'")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["method"] == "GET"
    assert_injected(upstream, tag)


def test_aiohttp_default_session(proxy: Proxy, upstream: Upstream) -> None:
    pytest.importorskip("aiohttp")
    tag, url = url_for(upstream, "aiohttp")
    script = (
        "import aiohttp, asyncio, sys\n"
        "async def main():\n"
        "    async with aiohttp.ClientSession() as s, s.get(sys.argv[1]) as r:\n"
        "        sys.exit(0 if r.status == 200 else r.status)\n"
        "asyncio.run(main())\n"
    )
    res = env_shell(proxy, f"python -c '{script}' '{url}'")
    assert res.returncode == 0, res.stderr
    assert_injected(upstream, tag)


def test_aiohttp_explicit_trust_env_false_is_respected(proxy: Proxy, upstream: Upstream) -> None:
    pytest.importorskip("aiohttp")
    res = env_shell(
        proxy,
        "python -c 'import aiohttp, asyncio\n"
        "async def main():\n"
        "    async with aiohttp.ClientSession(trust_env=False) as s: print(s.trust_env)\n"
        "asyncio.run(main())'",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_java_httpclient_and_urlconnection(proxy: Proxy, upstream: Upstream, tmp_path: Path) -> None:
    javac = shutil.which("javac")
    if javac is None or shutil.which("java") is None:
        pytest.skip("javac/java are not installed")
    (tmp_path / "Get.java").write_text(JAVA_GET)
    subprocess.run([javac, "-d", str(tmp_path), str(tmp_path / "Get.java")], check=True, timeout=120)
    tag, url = url_for(upstream, "java")
    tag2, url2 = url_for(upstream, "javalegacy")
    res = env_shell(proxy, f"java -cp '{tmp_path}' Get '{url}' '{url2}'")
    assert res.returncode == 0, res.stdout + res.stderr
    assert_injected(upstream, tag)
    assert_injected(upstream, tag2)


def test_java_truststore_from_egress_ca(proxy: Proxy, tmp_path: Path) -> None:
    if shutil.which("keytool") is None:
        pytest.skip("keytool is not installed")
    store = tmp_path / "trust.p12"
    res = egress(proxy.home, "ca", "--java-truststore", str(store))
    assert res.returncode == 0, res.stderr
    listing = subprocess.run(
        ["keytool", "-list", "-keystore", str(store), "-storetype", "PKCS12", "-storepass", "egress-proxy"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert "egress-proxy-ca, " in listing.stdout and "trustedCertEntry" in listing.stdout
    assert listing.stdout.count("trustedCertEntry") > 10  # the system roots too


def test_node_fetch_and_https_get(node_ready: str, proxy: Proxy, upstream: Upstream) -> None:
    tag, url = url_for(upstream, "nodefetch")
    tag2, url2 = url_for(upstream, "nodehttps")
    script = (
        "const [a, b] = process.argv.slice(1);"
        "fetch(a).then(r => { if (!r.ok) process.exit(2);"
        " require('https').get(b, res => process.exit(res.statusCode === 200 ? 0 : 3))"
        ".on('error', e => { console.error(e); process.exit(4); }); },"
        " e => { console.error(e); process.exit(1); });"
    )
    res = env_shell(proxy, f"node -e \"{script}\" '{url}' '{url2}'")
    assert res.returncode == 0, res.stderr
    assert_injected(upstream, tag)
    assert_injected(upstream, tag2)


def test_node_plain_http_is_refused(node_ready: str, proxy: Proxy, upstream: Upstream) -> None:
    tag = f"nodeplain{time.monotonic_ns()}"
    url = f"http://api.stripe.test:{upstream.port}/v1/plain?t={tag}"
    script = (
        "require('http').get(process.argv[1], r => "
        "{ console.log(r.statusCode, r.headers['x-egress-blocked']); process.exit(0); })"
    )
    res = env_shell(proxy, f"node -e \"{script}\" '{url}'")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["403", "plain-http"]
    assert upstream.find(tag) == []


# -- with a grant (the proxy requires one) -------------------------------------------


@pytest.fixture(scope="module")
def gproxy(
    tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, object], upstream: Upstream
) -> Iterator[Proxy]:
    home = tmp_path_factory.mktemp("clientenv-grants")
    assert egress(home, "init").returncode == 0
    res = egress(
        home, "connector", "add", "stripe", "--pattern", f"https://api.stripe.test:{upstream.port}/v1/*",
        "--header", "Authorization", "--template", "Bearer {{secret}}", "--secret-stdin", stdin=GRANT_SECRET,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    proxy = start_proxy(home, *proxy_args(pki[0]), "--require-grant")
    yield proxy
    proxy.stop()


def grant_shell(gproxy: Proxy, script: str) -> subprocess.CompletedProcess[str]:
    res = egress(gproxy.home, "grant", "--connector", "stripe", "--ttl", "5m")
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip().split("grant:", 1)[1].split("@", 1)[0]
    done = env_shell(gproxy, script, f"--grant {token}")
    for f in gproxy.home.rglob("*"):  # egress env wrote client files: never with the token
        if f.is_file() and "node_modules" not in f.parts:
            assert token.encode() not in f.read_bytes(), f
    return done


@pytest.mark.parametrize(
    "client",
    [
        "wget -q -O /dev/null '{url}'",
        "python -c 'import requests,sys; requests.get(sys.argv[1]).raise_for_status()' '{url}'",
        "python -c 'import aiohttp,asyncio,sys\n"
        "async def m():\n"
        "    async with aiohttp.ClientSession() as s, s.get(sys.argv[1]) as r: r.raise_for_status()\n"
        "asyncio.run(m())' '{url}'",
    ],
    ids=["wget", "requests", "aiohttp"],
)
def test_clients_send_the_grant(client: str, gproxy: Proxy, upstream: Upstream) -> None:
    tag, url = url_for(upstream, "grant")
    res = grant_shell(gproxy, client.format(url=url))
    assert res.returncode == 0, res.stderr
    (rec,) = upstream.find(tag)
    assert rec.header("Authorization") == [f"Bearer {GRANT_SECRET}"]


def test_git_sends_the_grant_at_once(gproxy: Proxy, upstream: Upstream) -> None:
    """GIT_HTTP_PROXY_AUTHMETHOD=basic: no credential-less probe, so no false no-grant 407 logged."""
    before = gproxy.log_text().count("blocked no-grant")
    tag = f"git{time.monotonic_ns()}"
    res = grant_shell(
        gproxy,
        f"GIT_CONFIG_NOSYSTEM=1 git ls-remote 'https://api.stripe.test:{upstream.port}/v1/{tag}.git' || true",
    )
    assert res.returncode == 0, res.stderr
    (rec,) = upstream.find(f"/v1/{tag}.git/info/refs")
    assert rec.header("Authorization") == [f"Bearer {GRANT_SECRET}"]
    assert gproxy.log_text().count("blocked no-grant") == before, gproxy.log_text()[-2000:]


def test_node_sends_the_grant(node_ready: str, proxy: Proxy, gproxy: Proxy, upstream: Upstream) -> None:
    (gproxy.home / "node").unlink(missing_ok=True)
    (gproxy.home / "node").symlink_to(proxy.home / "node")  # reuse the module's npm install
    tag, url = url_for(upstream, "gnodefetch")
    tag2, url2 = url_for(upstream, "gnodehttps")
    script = (
        "const [a, b] = process.argv.slice(1);"
        "fetch(a).then(r => { if (!r.ok) process.exit(2);"
        " require('https').get(b, res => process.exit(res.statusCode === 200 ? 0 : 3)); },"
        " e => { console.error(e); process.exit(1); });"
    )
    res = grant_shell(gproxy, f"node -e \"{script}\" '{url}' '{url2}'")
    assert res.returncode == 0, res.stderr
    for t in (tag, tag2):
        (rec,) = upstream.find(t)
        assert rec.header("Authorization") == [f"Bearer {GRANT_SECRET}"]

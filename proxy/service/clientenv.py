"""What ``egress env`` gives a step: the variables and the files they point at.

Without transparent interception every runtime needs its own nudge to use the
proxy and trust its CA: curl, requests and git read HTTPS_PROXY and a CA
bundle; wget (GnuTLS) needs a wgetrc; Java needs system properties and a
truststore; aiohttp ignores the environment unless ``trust_env``; Node < 24
ignores HTTPS_PROXY unless a preload installs proxy agents. Everything here is
derived from the CA and the proxy URL, written under EGRESS_HOME, and safe to
regenerate: nothing here creates keys, stores or CAs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from proxy.connectors import PRESETS, connector_from_spec
from proxy.errors import ConfigError, EgressError
from proxy.reasons import Reason
from proxy.service import ca
from proxy.service.connectors import Connectors
from proxy.service.files import write_atomic
from proxy.service.grants import Grants
from proxy.service.home import Home

LOOPBACK = "localhost,127.0.0.1,::1"
TRUSTSTORE_PASSWORD = "egress-proxy"  # a truststore holds no secret; Java insists on a password
NODE_PACKAGES = ("undici@^6.21", "global-agent@^3.0.0")  # undici 6: Node 18-22's own fetch speaks its API
JAVA_KEYS = (
    "-Dhttps.proxyHost=",
    "-Dhttps.proxyPort=",
    "-Dhttp.proxyHost=",
    "-Dhttp.proxyPort=",
    "-Djavax.net.ssl.trustStore=",
    "-Djavax.net.ssl.trustStorePassword=",
    "-Djavax.net.ssl.trustStoreType=",
)
_PACKAGE_DIR = Path(__file__).with_name("clientfiles")
SITECUSTOMIZE = _PACKAGE_DIR / "sitecustomize.py"  # aiohttp's trust_env, stripe's own CA bundle


@dataclass(frozen=True)
class ClientEnv:
    """The variables to export, in order, and notes for the operator (stderr)."""

    variables: dict[str, str]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """Where the client files live under EGRESS_HOME."""

    root: Path

    @property
    def bundle(self) -> Path:
        return self.root / "ca" / "bundle.pem"

    @property
    def truststore(self) -> Path:
        return self.root / "ca" / "truststore.p12"

    @property
    def python_dir(self) -> Path:
        return self.root / "client" / "python"

    @property
    def node_dir(self) -> Path:
        return self.root / "node"

    @property
    def node_preload(self) -> Path:
        return self.node_dir / "egress-preload.js"

    def wgetrc(self, proxy: str) -> Path:
        return self.root / "client" / ("wgetrc" if urlsplit(proxy).username is None else "wgetrc-grant")

    def node_ready(self) -> bool:
        modules = self.node_dir / "node_modules"
        return all((modules / p.rsplit("@", 1)[0] / "package.json").is_file() for p in NODE_PACKAGES)


def _write_if_changed(path: Path, data: bytes, *, private: bool = False) -> None:
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, private=private)


def write_truststore(path: Path, ca_cert: Path, base: bytes | None = None) -> int:
    """A PKCS12 truststore Java accepts: our CA plus the system roots; returns the count.

    ``serialize_java_truststore`` marks every entry as trusted (Java ignores
    certificate bags without Oracle's trusted-key-usage attribute). Roots the
    parser refuses (a few legacy ones have negative serials) are skipped.
    """
    import warnings

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

    ours = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    entries = [pkcs12.PKCS12Certificate(ours, b"egress-proxy-ca")]
    text = (base if base is not None else ca.system_bundle()).decode("ascii", "replace")
    end = "-----END CERTIFICATE-----"
    for i, block in enumerate(text.split(end)[:-1]):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cert = x509.load_pem_x509_certificate((block + end).encode())
        except ValueError:
            continue
        if cert != ours:
            entries.append(pkcs12.PKCS12Certificate(cert, f"system-{i}".encode()))
    data = pkcs12.serialize_java_truststore(entries, BestAvailableEncryption(TRUSTSTORE_PASSWORD.encode()))
    _write_if_changed(path, data)
    return len(entries)


def cached_truststore(home: Home, system: bytes) -> Path:
    """The home's Java truststore, rebuilt only when our CA or the system roots changed.

    Building one parses every root (~90 ms); `egress exec` needs one per step.
    """
    layout = Layout(home.root)
    digest = hashlib.sha256(home.ca_cert.read_bytes() + b"\0" + system).hexdigest()
    stamp = layout.truststore.with_name(layout.truststore.name + ".sha256")
    try:
        if stamp.read_text() == digest and layout.truststore.is_file():
            return layout.truststore
    except OSError:
        pass
    write_truststore(layout.truststore, home.ca_cert, system)
    write_atomic(stamp, digest.encode())
    return layout.truststore


def java_trust_options(existing: str, truststore: Path) -> str:
    """``JAVA_TOOL_OPTIONS`` trusting ``truststore``, with the caller's proxy and trust settings removed."""
    kept = [t for t in existing.split() if not t.startswith(JAVA_KEYS)]
    return " ".join([*kept, *_trust_properties(truststore)])


def _trust_properties(truststore: Path) -> list[str]:
    return [
        f"-Djavax.net.ssl.trustStore={_java_quote(str(truststore))}",
        f"-Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD}",
        "-Djavax.net.ssl.trustStoreType=PKCS12",
    ]


def python_path(existing: str, directory: Path) -> str:
    """``PYTHONPATH`` with ``directory`` (holding our sitecustomize.py) first, once."""
    return _prepend(existing, str(directory), os.pathsep)


def _prepend(existing: str, ours: str, sep: str) -> str:
    """``ours`` first, once: running ``egress env`` twice must not stack copies."""
    parts = [p for p in existing.split(sep) if p and p != ours]
    return sep.join([ours, *parts])


def _java_options(existing: str, proxy_host: str, proxy_port: int, truststore: Path) -> str:
    kept = [t for t in existing.split() if not t.startswith(JAVA_KEYS)]
    host = proxy_host if ":" not in proxy_host else f"[{proxy_host}]"
    ours = [
        f"-Dhttps.proxyHost={host}",
        f"-Dhttps.proxyPort={proxy_port}",
        f"-Dhttp.proxyHost={host}",
        f"-Dhttp.proxyPort={proxy_port}",
        *_trust_properties(truststore),
    ]
    return " ".join([*kept, *ours])


def _java_quote(value: str) -> str:
    return f'"{value}"' if any(c.isspace() for c in value) else value


def _node_require(preload: Path) -> str:
    text = str(preload)
    return f'--require "{text}"' if any(c.isspace() for c in text) else f"--require {text}"


def build(home: Home, proxy: str) -> ClientEnv:
    """Write the client files for ``proxy`` (``http://[grant:TOKEN@]HOST:PORT``) and list the variables."""
    layout = Layout(home.root)
    env: Mapping[str, str] = home.env
    parts = urlsplit(proxy)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ConfigError(f"--proxy {proxy}: expected http://HOST:PORT")
    notes: list[str] = []
    system = ca.system_bundle()
    ca.write_bundle(layout.bundle, home.ca_cert, system)
    cached_truststore(home, system)
    bundle = str(layout.bundle)
    wgetrc = layout.wgetrc(proxy)
    wget_text = f"ca_certificate = {bundle}\nuse_proxy = on\n"
    if parts.username is None:  # a grant's token is never stored: then wget reads https_proxy from the env
        wget_text += f"https_proxy = {proxy}\nhttp_proxy = {proxy}\n"
    _write_if_changed(wgetrc, wget_text.encode())
    _write_if_changed(layout.python_dir / "sitecustomize.py", SITECUSTOMIZE.read_bytes())
    variables = {
        "HTTPS_PROXY": proxy,
        "https_proxy": proxy,
        "HTTP_PROXY": proxy,
        "http_proxy": proxy,
        "NO_PROXY": LOOPBACK,
        "no_proxy": LOOPBACK,
        "SSL_CERT_FILE": bundle,
        "REQUESTS_CA_BUNDLE": bundle,
        "CURL_CA_BUNDLE": bundle,
        "GIT_SSL_CAINFO": bundle,
        "GIT_HTTP_PROXY_AUTHMETHOD": "basic",
        "PIP_CERT": bundle,
        "NPM_CONFIG_CAFILE": bundle,
        "AWS_CA_BUNDLE": bundle,  # botocore prefers it to REQUESTS_CA_BUNDLE: an inherited one would win
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": bundle,
        "WGETRC": str(wgetrc),
        "PYTHONPATH": python_path(env.get("PYTHONPATH", ""), layout.python_dir),
        "NODE_EXTRA_CA_CERTS": str(home.ca_cert),
        "NODE_USE_ENV_PROXY": "1",
        "JAVA_TOOL_OPTIONS": _java_options(
            env.get("JAVA_TOOL_OPTIONS", ""), parts.hostname, parts.port, layout.truststore
        ),
    }
    if parts.username is not None:
        notes.append(
            "Java clients cannot send the grant from system properties (JAVA_TOOL_OPTIONS): "
            "they need an Authenticator and -Djdk.http.auth.tunneling.disabledSchemes="
        )
    if layout.node_ready():
        _write_if_changed(layout.node_preload, (_PACKAGE_DIR / "egress-preload.js").read_bytes())
        require = _node_require(layout.node_preload)
        existing = env.get("NODE_OPTIONS", "").replace(require, "").strip()
        variables["NODE_OPTIONS"] = f"{require} {existing}".strip()
    elif shutil.which("node", path=env.get("PATH")):
        notes.append(
            "Node < 24 ignores HTTPS_PROXY: run `egress env --setup-node` once to install its "
            f"proxy preload into {layout.node_dir} (then NODE_OPTIONS is exported)"
        )
    return ClientEnv(variables, notes)


def setup_node(home: Home) -> bool:
    """Install the preload's packages with npm, once; True if it ran npm.

    Run at setup, never at request time: a step must not need the registry.
    npm's output goes to stderr so ``eval "$(egress env --setup-node)"`` stays clean.
    """
    layout = Layout(home.root)
    if layout.node_ready():
        return False
    npm = shutil.which("npm", path=home.env.get("PATH"))
    if npm is None:
        raise ConfigError("--setup-node needs npm on PATH (install Node.js and npm)")
    layout.node_dir.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--prefix", str(layout.node_dir), "--no-audit", "--no-fund", *NODE_PACKAGES]
    try:
        done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EgressError(f"--setup-node: {' '.join(cmd)} failed: {e}") from None
    if done.returncode != 0 or not layout.node_ready():
        raise EgressError(f"--setup-node: `{' '.join(cmd)}` failed (exit {done.returncode}, see above)")
    _write_if_changed(layout.node_preload, (_PACKAGE_DIR / "egress-preload.js").read_bytes())
    return True


def placeholders(home: Home, grant: str | None) -> dict[str, str]:
    """Placeholder API keys for the presets of a grant's connectors (else the workspace's).

    A grant the proxy would refuse gets none: the step will see the block.
    """
    with Connectors(home) as connectors:
        keys: set[str] | frozenset[str] = {c.key for c, _ in connectors.all()}
        if grant:
            checked = Grants(home, connectors.store).check(grant, time.time())
            keys = frozenset() if isinstance(checked, Reason) else checked.connectors
        found = [connector_from_spec(s.name, s.spec) for s in connectors.store.connectors() if s.name in keys]
    out: dict[str, str] = {}
    for c in sorted(found, key=lambda c: c.key):
        if c.preset in PRESETS:
            out.update(PRESETS[c.preset].placeholders)
    return out

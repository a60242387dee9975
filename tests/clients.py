"""Real clients configured only from arguments, never from the environment."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import requests

from tests.harness import clean_env


def session(proxy_url: str, ca: str) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"https": proxy_url, "http": proxy_url}
    s.verify = ca
    return s


def httpx_client(proxy_url: str, ca: str) -> httpx.Client:
    # Through a proxy httpx offers ALPN "http/1.1" first, so it speaks HTTP/1.1;
    # HTTP/2 is exercised with curl --http2.
    ctx = ssl.create_default_context(cafile=ca)
    return httpx.Client(proxy=proxy_url, verify=ctx, trust_env=False, timeout=30)


def curl(home: Path, proxy_url: str, ca: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "30", "-x", proxy_url, "--cacert", ca, *args],
        capture_output=True,
        text=True,
        env=clean_env(home),
        timeout=60,
    )

"""The Python clients of the matrix: each with its defaults, no proxy settings of its own.

Run inside the step by matrix.sh; prints the RESULT lines described there.
Every client fails on its own line: one broken client never hides the others, and
one that hangs is abandoned after HANG_AFTER seconds (its line says so).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

GUESS = {"Authorization": "Bearer sandbox-guess"}
Answer = tuple[int, Mapping[str, str], bytes, str]
HANG_AFTER = 45  # the clients give up after 20 s (websockets: 20 s to open, 20 s to the message)


def url(kind: str, client: str) -> str:
    return os.environ[f"MATRIX_{kind.upper()}"].replace("{client}", client)


def reason_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("reason") or "-")
    except (ValueError, AttributeError):
        found = re.search(rb'"reason": *"([^"]*)"', body)
        return found.group(1).decode() if found else "-"


def _bounded(get: Callable[[str], Answer], u: str) -> Answer | Exception | None:
    """get(u), or what it raised, or None when it has not returned after HANG_AFTER seconds."""
    out: list[Answer | Exception] = []

    def call() -> None:
        try:
            out.append(get(u))
        except Exception as e:
            out.append(e)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(HANG_AFTER)
    return out[0] if out else None


def report(
    client: str, get: Callable[[str], Answer], kinds: tuple[str, ...] = ("allow", "block", "host")
) -> None:
    for kind in kinds:
        answer = _bounded(get, url(kind, client))
        if answer is None:
            print(f"RESULT {client} {kind} error hung: no answer in {HANG_AFTER} s", flush=True)
            continue
        if isinstance(answer, Exception):
            print(f"RESULT {client} {kind} error {type(answer).__name__}: {str(answer)[:300]!r}", flush=True)
            continue
        status, headers, body, version = answer
        blocked = {k.lower(): v for k, v in headers.items()}.get("x-egress-blocked", "-")
        print(f"RESULT {client} {kind} {status} {blocked} {reason_of(body)} {version}", flush=True)


def requests_get(u: str) -> Answer:
    import requests

    r = requests.get(u, headers=GUESS, timeout=20)
    return r.status_code, r.headers, r.content, "1.1"


def httpx_get(http2: bool) -> Callable[[str], Answer]:
    def get(u: str) -> Answer:
        import httpx

        with httpx.Client(http2=http2, timeout=20) as client:  # http2=True still offers http/1.1
            r = client.get(u, headers=GUESS)
            return r.status_code, r.headers, r.content, r.http_version.removeprefix("HTTP/")

    return get


def urllib_get(u: str) -> Answer:
    try:
        with urllib.request.urlopen(urllib.request.Request(u, headers=GUESS), timeout=20) as r:
            return r.status, r.headers, r.read(), "1.1"
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read(), "1.1"


def aiohttp_get(u: str) -> Answer:
    import aiohttp

    async def get() -> Answer:
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(u, headers=GUESS) as r:
            return r.status, r.headers, await r.read(), f"{r.version.major}.{r.version.minor}"

    return asyncio.run(get())


def websockets_get(u: str) -> Answer:
    """A handshake that succeeds must deliver the upstream's one message ("hello").

    websockets' asyncio client, its main API. Its threaded client (websockets.sync,
    17.4) hangs about once in 2,000 connections to any TLS 1.3 server, direct or
    proxied: its reader thread blocks in a TLS read after the server's session
    ticket, and the handshake request never leaves."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async def get() -> Answer:
        ws_url = "wss://" + u.removeprefix("https://")
        try:
            async with connect(
                ws_url, additional_headers=GUESS, open_timeout=20, ssl=ssl.create_default_context()
            ) as ws:
                message = await asyncio.wait_for(ws.recv(), 20)
                return (101 if message == "hello" else 502), {}, b"", "1.1"
        except InvalidStatus as e:
            response = e.response
            return response.status_code, dict(response.headers.raw_items()), response.body or b"", "1.1"

    return asyncio.run(get())


def boto3_get(u: str) -> Answer:
    """put_object with placeholder keys: the proxy signs with the real ones (allow: s3.sig.test)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    scheme_host, _, path = u.removeprefix("https://").partition("/")
    endpoint = os.environ["MATRIX_S3"] if "/v1/" in u else f"https://{scheme_host}"
    key = path.rsplit("/", 1)[-1]
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="AKIADUMMYDUMMYDUMMY0", aws_secret_access_key="dummy-secret",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )  # fmt: skip
    try:
        out: Any = s3.put_object(Bucket="s3-bucket", Key=f"{key}/object.txt", Body=b"from the step")
    except ClientError as e:
        out = e.response
    meta = out["ResponseMetadata"]
    headers = meta.get("HTTPHeaders", {})
    reason = headers.get("x-egress-blocked", "-")
    return meta["HTTPStatusCode"], headers, json.dumps({"reason": reason}).encode(), "1.1"


def stripe_get(u: str) -> Answer:
    """A raw GET with the SDK's own HTTP client (requests, verifying with the CA bundle it ships)."""
    import stripe

    client = stripe.StripeClient("sandbox-guess", base_addresses={"api": u}, max_network_retries=0)
    try:
        r = client.raw_request("get", "/v1/customers")
        return r.code, r.headers, r.body.encode(), "1.1"
    except stripe.StripeError as e:
        if e.http_status is None:
            raise
        return e.http_status, dict(e.headers or {}), (e.http_body or "").encode(), "1.1"


CLIENTS: dict[str, Callable[[str], Answer]] = {
    "requests": requests_get,
    "httpx-h1": httpx_get(False),
    "httpx-h2": httpx_get(True),
    "urllib": urllib_get,
    "aiohttp": aiohttp_get,
    "websockets": websockets_get,
    "boto3": boto3_get,
    "stripe": stripe_get,
}

if __name__ == "__main__":
    for name, get in CLIENTS.items():
        report(name, get)
    sys.exit(0)

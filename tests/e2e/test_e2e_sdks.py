"""Real SDKs with placeholder keys: boto3 (SigV4 re-signed by the proxy), the
Anthropic and OpenAI Python SDKs. The upstream sees only the real credential;
the SigV4 signature it receives is recomputed with botocore from the real key."""

from __future__ import annotations

import contextlib
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import proxy_args
from tests.harness import Proxy, Record, Upstream, egress, start_proxy

pytestmark = pytest.mark.e2e

KEY_ID = "AKIAEGRESSE2EREAL001"
SECRET_KEY = "real/e2e+Secret-Access-Key-0123456789abc"
ANTHROPIC_KEY = "sk-ant-e2e-real-7f3a"
OPENAI_KEY = "sk-openai-e2e-real-1c9d"
DUMMY = "egress-placeholder"


@pytest.fixture(scope="module")
def sproxy(
    tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, object], upstream: Upstream
) -> Iterator[Proxy]:
    home = tmp_path_factory.mktemp("sdk-home")
    port = upstream.port
    assert egress(home, "init").returncode == 0
    for argv, env in (
        (
            ["s3", "--preset", "aws-s3", "--pattern", f"https://s3.sig.test:{port}/*",
             "--field", "access_key_id=env:K", "--field", "secret_access_key=env:S"],
            {"K": KEY_ID, "S": SECRET_KEY},
        ),
        (["claude", "--preset", "anthropic", "--pattern", f"https://api.late.test:{port}/anthropic/*",
          "--secret-env", "A"], {"A": ANTHROPIC_KEY}),
        (["gpt", "--preset", "openai", "--pattern", f"https://api.late.test:{port}/openai/*",
          "--secret-env", "O"], {"O": OPENAI_KEY}),
    ):  # fmt: skip
        res = egress(home, "connector", "add", *argv, **env)
        assert res.returncode == 0, res.stderr
    proxy = start_proxy(home, *proxy_args(pki[0]))
    yield proxy
    proxy.stop()


def botocore_signature(rec: Record, authority: str) -> str:
    """The signature botocore computes for the received request with the REAL key."""
    auth_header = rec.header("authorization")[0]
    signed = auth_header.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
    request = AWSRequest(method=rec.method, url=f"https://{authority}{rec.path}")
    for name in signed:
        values = rec.header(name) or ([authority] if name == "host" else [])
        request.headers[name] = ",".join(values)
    amz_date = rec.header("x-amz-date")[0]
    request.context["timestamp"] = amz_date
    signer = S3SigV4Auth(Credentials(KEY_ID, SECRET_KEY), "s3", "us-east-1")
    canonical = signer.canonical_request(request)
    return signer.signature(signer.string_to_sign(request, canonical), request)


def test_boto3_is_re_signed_with_the_real_key(sproxy: Proxy, upstream: Upstream) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=f"https://s3.sig.test:{upstream.port}",
        aws_access_key_id="AKIADUMMYDUMMYDUMMY0",
        aws_secret_access_key="dummy-secret",
        aws_session_token="dummy-session-token",
        region_name="us-east-1",
        verify=sproxy.ca,
        config=Config(
            proxies={"https": sproxy.url},
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )
    tag = f"k{time.monotonic_ns()}"
    s3.put_object(Bucket="s3-bucket", Key=f"{tag}/object.txt", Body=b"hello from the sandbox")
    s3.get_object(Bucket="s3-bucket", Key=f"{tag}/object.txt")
    records = upstream.find(tag)
    assert [r.method for r in records] == ["PUT", "GET"]
    for rec in records:
        (auth,) = rec.header("authorization")
        assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/")
        assert "AKIADUMMY" not in auth
        assert rec.header("x-amz-security-token") == []  # the SDK's dummy token never goes upstream
        assert auth.rsplit("Signature=", 1)[1] == botocore_signature(rec, f"s3.sig.test:{upstream.port}")
    put = records[0]
    assert put.header("x-amz-decoded-content-length") == [str(len(b"hello from the sandbox"))]
    assert put.body_len > 0  # the aws-chunked body was streamed through, untouched


@pytest.fixture(scope="module")
def scoped(
    tmp_path_factory: pytest.TempPathFactory, pki: tuple[Path, object], upstream: Upstream
) -> Iterator[Proxy]:
    """A proxy whose S3 connector allows one bucket only (path style)."""
    home = tmp_path_factory.mktemp("s3-scoped-home")
    assert egress(home, "init").returncode == 0
    res = egress(
        home, "connector", "add", "s3", "--preset", "aws-s3",
        "--pattern", f"https://s3.sig.test:{upstream.port}/s3-bucket/*",
        "--field", "access_key_id=env:K", "--field", "secret_access_key=env:S",
        K=KEY_ID, S=SECRET_KEY,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    proxy = start_proxy(home, *proxy_args(pki[0]))
    yield proxy
    proxy.stop()


def s3_client(proxy: Proxy, upstream: Upstream) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=f"https://s3.sig.test:{upstream.port}",
        aws_access_key_id="AKIADUMMYDUMMYDUMMY0",
        aws_secret_access_key="dummy-secret",
        region_name="us-east-1",
        verify=proxy.ca,
        config=Config(
            proxies={"https": proxy.url}, s3={"addressing_style": "path"}, retries={"max_attempts": 1}
        ),
    )


def test_s3_copy_source_must_be_within_the_connector(scoped: Proxy, upstream: Upstream) -> None:
    """CopyObject reads its source with the connector's key: a connector allowed one bucket
    could copy any object that key can read into it. The source must match the
    connector's patterns like the URL does, else 403 ``copy-source`` before any byte goes up."""
    s3 = s3_client(scoped, upstream)
    tag = f"c{time.monotonic_ns()}"
    s3.copy_object(
        Bucket="s3-bucket", Key=f"{tag}/copy.txt", CopySource={"Bucket": "s3-bucket", "Key": "src.txt"}
    )
    for source in ({"Bucket": "other-bucket", "Key": "secret.txt"}, "s3-bucket/../other-bucket/secret.txt"):
        with pytest.raises(ClientError) as e:
            s3.copy_object(Bucket="s3-bucket", Key=f"{tag}/stolen.txt", CopySource=source)
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert e.value.response["ResponseMetadata"]["HTTPHeaders"]["x-egress-blocked"] == "copy-source"
    (rec,) = upstream.find(tag)
    assert rec.path.endswith("/copy.txt") and rec.header("x-amz-copy-source") == ["s3-bucket/src.txt"]
    assert rec.header("authorization")[0].rsplit("Signature=", 1)[1] == botocore_signature(
        rec, f"s3.sig.test:{upstream.port}"
    )  # the copy source is signed as sent
    deadline = time.monotonic() + 10
    while True:
        out = egress(scoped.home, "logs", "--blocked", "--json").stdout
        rows = [json.loads(line) for line in out.splitlines()]
        if len([r for r in rows if r["reason"] == "copy-source"]) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert len([r for r in rows if r["reason"] == "copy-source"]) == 2


def _http_client(sdk: Any, proxy: Proxy) -> Any:
    """The SDK's own HTTP client class (each pins its httpx flavour), sent through the proxy."""
    ctx = ssl.create_default_context(cafile=proxy.ca)
    return sdk.DefaultHttpxClient(proxy=proxy.url, verify=ctx, trust_env=False)


def test_anthropic_sdk_placeholder_never_reaches_upstream(sproxy: Proxy, upstream: Upstream) -> None:
    import anthropic

    tag = f"a{time.monotonic_ns()}"
    client = anthropic.Anthropic(
        auth_token=DUMMY,  # the SDK sends Authorization: Bearer <placeholder>
        default_headers={"x-api-key": DUMMY},
        base_url=f"https://api.late.test:{upstream.port}/anthropic/{tag}",
        http_client=_http_client(anthropic, sproxy),
        max_retries=0,
    )
    # The recording upstream is not a model; the request it got is what matters.
    with contextlib.suppress(anthropic.APIError):
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
    (rec,) = upstream.find(tag)
    assert rec.header("x-api-key") == [ANTHROPIC_KEY]
    assert rec.header("authorization") == []
    assert DUMMY not in str(rec.headers)


def test_openai_sdk_gets_the_real_key(sproxy: Proxy, upstream: Upstream) -> None:
    import openai

    tag = f"o{time.monotonic_ns()}"
    client = openai.OpenAI(
        api_key=DUMMY,
        organization="org-sandbox",
        base_url=f"https://api.late.test:{upstream.port}/openai/{tag}",
        http_client=_http_client(openai, sproxy),
        max_retries=0,
    )
    with contextlib.suppress(openai.APIError):
        client.models.list()
    (rec,) = upstream.find(tag)
    assert rec.header("authorization") == [f"Bearer {OPENAI_KEY}"]
    assert rec.header("openai-organization") == []
    assert DUMMY not in str(rec.headers)

"""Microbenchmark: one SigV4 signature for a typical S3 PUT, ours beside botocore's.

The proxy signs every request to an ``aws_sigv4`` connector, so this is on the
request path (target: <= 150 us). Both sign the same headers with the same
credentials; botocore also builds its ``AWSRequest``, which it needs to sign.

Run alone: ``.venv/bin/python bench/sigv4.py``.
"""

from __future__ import annotations

import statistics
import time
import timeit
from collections.abc import Callable

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from proxy.credentials.signing import Signed
from proxy.credentials.sigv4 import SigV4Signer

KEY_ID, SECRET, TOKEN = (
    "AKIABENCH00000000000",
    "bench/secret+key/0123456789abcdefghijkl",
    "bench-session-token",
)
AUTHORITY = "my-bucket.s3.us-east-1.amazonaws.com"
TARGET = "/photos/2024/06/IMG_0001.jpg?x-id=PutObject"
DIGEST = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
# What boto3 sends for put_object, plus the dummy signature the proxy replaces.
HEADERS = [
    ("host", AUTHORITY),
    ("user-agent", "Boto3/1.34.0 md/Botocore#1.34.0 ua/2.0 os/linux lang/python#3.12.3"),
    ("content-type", "image/jpeg"),
    ("content-length", "1048576"),
    ("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
    ("expect", "100-continue"),
    ("x-amz-meta-camera", "pixel 8"),
    ("x-amz-storage-class", "STANDARD_IA"),
    ("x-amz-content-sha256", DIGEST),
    ("x-amz-date", "20240101T000000Z"),
    ("x-amz-security-token", "dummy"),
    ("authorization", "AWS4-HMAC-SHA256 Credential=AKIADUMMY/20240101/us-east-1/s3/aws4_request, ..."),
]
SIGNED = {"content-type", "content-md5", "x-amz-meta-camera", "x-amz-storage-class", "x-amz-content-sha256"}


def ours() -> Callable[[], object]:
    signer = SigV4Signer(KEY_ID, SECRET, "us-east-1", "s3", TOKEN)
    assert isinstance(signer.sign("PUT", AUTHORITY, TARGET, HEADERS, time.time()), Signed)
    return lambda: signer.sign("PUT", AUTHORITY, TARGET, HEADERS, time.time())


def botocore() -> Callable[[], object]:
    creds = Credentials(KEY_ID, SECRET, TOKEN)
    url = f"https://{AUTHORITY}{TARGET}"
    headers = {n: v for n, v in HEADERS if n in SIGNED}

    def sign() -> None:
        # S3SigV4Auth replaces x-amz-content-sha256 with its own hash of the body;
        # an empty body keeps that cheap, as it is for a streamed upload.
        request = AWSRequest(method="PUT", url=url, headers=headers)
        S3SigV4Auth(creds, "s3", "us-east-1").add_auth(request)

    return sign


def per_call_us(
    fn: Callable[[], object], number: int, timer: Callable[[], float], repeat: int = 7
) -> tuple[float, float]:
    """(median, best) microseconds per call over ``repeat`` runs of ``number`` calls."""
    runs = [t / number * 1e6 for t in timeit.Timer(fn, timer=timer).repeat(number=number, repeat=repeat)]
    return statistics.median(runs), min(runs)


def measure() -> dict[str, float]:
    """CPU microseconds per signature (median of 7 runs), ours and botocore's, for the report."""
    return {
        "ours_us": per_call_us(ours(), 20_000, time.process_time)[0],
        "botocore_us": per_call_us(botocore(), 2_000, time.process_time)[0],
    }


def main() -> None:
    # CPU time beside wall time: on a shared box the wall clock also counts other processes.
    print(f"{'us per sign':<22} {'wall median':>12} {'wall best':>10} {'cpu median':>11} {'cpu best':>9}")
    for name, fn, number in (
        ("proxy SigV4Signer", ours(), 20_000),
        ("botocore S3SigV4Auth", botocore(), 2_000),
    ):
        wall = per_call_us(fn, number, time.perf_counter)
        cpu = per_call_us(fn, number, time.process_time)
        print(f"{name:<22} {wall[0]:>12.1f} {wall[1]:>10.1f} {cpu[0]:>11.1f} {cpu[1]:>9.1f}")


if __name__ == "__main__":
    main()

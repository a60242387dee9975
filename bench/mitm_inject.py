"""The bare-mitmdump baseline: ``mitmdump -s bench/mitm_inject.py``.

Does the minimum egress-proxy does on the request path, with mitmdump's
default addons loaded: pin the tunnel to the upstream address while keeping
the name for SNI and certificate checks, inject the secret, and stream both
bodies (so the 200 MiB transfers compare against *streaming* mitmdump).
"""

from __future__ import annotations

import os

from mitmproxy import http

HOST = os.environ.get("BENCH_HOST", "api.bench.test")
ADDRESS = os.environ.get("BENCH_ADDRESS", "127.0.0.1")
AUTHORIZATION = "Bearer " + os.environ.get("BENCH_SECRET", "bench-secret")


def http_connect(flow: http.HTTPFlow) -> None:
    if flow.request.host == HOST:
        flow.server_conn.sni = HOST
        flow.request.host = ADDRESS


def requestheaders(flow: http.HTTPFlow) -> None:
    flow.request.headers["authorization"] = AUTHORIZATION
    flow.request.stream = True


def responseheaders(flow: http.HTTPFlow) -> None:
    if flow.response is not None:
        flow.response.stream = True

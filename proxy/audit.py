"""Audit records: one JSON line per decision, in a stable schema (``proxy/audit.schema.json``).

The fields follow OCSF's HTTP Activity class (4002): ``time`` in epoch
milliseconds, ``action`` allowed/blocked with its ``action_id``, the request
as ``http_request`` (method, url without query) and the answer as
``http_response``. Everything here is what the proxy decided or what the
sandbox sent, escaped by the caller; never a secret, a grant token or a
query string. ``SCHEMA_VERSION`` moves when a field changes meaning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path

from proxy.nearmiss import NearMiss

SCHEMA_VERSION = "1"
SCHEMA_PATH = Path(__file__).with_name("audit.schema.json")
_ACTION_IDS = {"allowed": 1, "blocked": 2}
# made once: json.dumps with any argument builds a new encoder per call
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision about one request (or a connection refused before any request)."""

    time: float  # when the request started, epoch seconds
    action: str  # "allowed" or "blocked"
    outcome: str  # "ok", "error" (upstream status >= 400), "failed" (no answer), "blocked"
    request_id: str
    method: str
    host: str  # the authority asked for, as logged (host or host:port)
    path: str  # no query string
    workspace: str
    connector: str | None = None
    reason: str | None = None
    grant_label: str | None = None
    status: int | None = None
    bytes_out: int | None = None  # response body bytes sent to the client
    duration_ms: float | None = None
    near_miss: NearMiss | None = None
    node: str | None = None

    def to_json(self) -> str:
        """One line, the fields in schema order: a fixed template with each value encoded (C
        string escaping), a third of the time of building and encoding a nested dict."""
        return _LINE % (
            int(self.time * 1000), _str(self.action), _ACTION_IDS[self.action], _str(self.outcome),
            _str(self.request_id), _str(self.workspace), _opt(self.connector), _opt(self.reason),
            _opt(self.grant_label), _str(self.method), _str(self.host), _str(self.path),
            "null" if self.status is None else f'{{"code":{self.status:d}}}',
            "null" if self.bytes_out is None else f'{{"bytes_out":{self.bytes_out:d}}}',
            "null" if self.duration_ms is None else repr(self.duration_ms),
            "null" if self.near_miss is None else _ENCODER.encode(self.near_miss.to_dict()),
            _opt(self.node),
        )  # fmt: skip


_str = encode_basestring_ascii  # a JSON string literal, as json.dumps(ensure_ascii=True) writes it


def _opt(value: str | None) -> str:
    return "null" if value is None else _str(value)


_LINE = (
    f'{{"schema_version":"{SCHEMA_VERSION}","class_uid":4002,"time":%d,"action":%s,"action_id":%d,'
    '"outcome":%s,"request_id":%s,"workspace":%s,"connector":%s,"reason":%s,"grant_label":%s,'
    '"http_request":{"method":%s,"url":{"hostname":%s,"path":%s}},"http_response":%s,"traffic":%s,'
    '"duration":%s,"near_miss":%s,"node":%s}'
)

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
from pathlib import Path
from typing import Any

from proxy.nearmiss import NearMiss

SCHEMA_VERSION = "1"
SCHEMA_PATH = Path(__file__).with_name("audit.schema.json")
_ACTION_IDS = {"allowed": 1, "blocked": 2}
# made once: json.dumps with any argument builds a new encoder per call, a third of to_json's time
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
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "class_uid": 4002,
            "time": int(self.time * 1000),
            "action": self.action,
            "action_id": _ACTION_IDS[self.action],
            "outcome": self.outcome,
            "request_id": self.request_id,
            "workspace": self.workspace,
            "connector": self.connector,
            "reason": self.reason,
            "grant_label": self.grant_label,
            "http_request": {"method": self.method, "url": {"hostname": self.host, "path": self.path}},
            "http_response": None if self.status is None else {"code": self.status},
            "traffic": None if self.bytes_out is None else {"bytes_out": self.bytes_out},
            "duration": self.duration_ms,
            "near_miss": None if self.near_miss is None else self.near_miss.to_dict(),
            "node": self.node,
        }
        return _ENCODER.encode(doc)

"""One run spec: built and validated once by ``egress run``, handed whole to every process.

The CLI turns flags into ``RunSettings``; the supervisor and each worker get
it as one JSON argument, so a new flag is one field here, one flag in the CLI
and one option in the worker.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from proxy.hosts import parse_listen

# Settings travel in the environment, not argv: /proc/PID/cmdline is readable by
# every local user (a sandbox included), the environment only by the proxy's uid,
# and a transparent listener's grant token is a credential.
SETTINGS_ENV = "EGRESS_RUN_SETTINGS"
# A listening socket a worker inherits instead of binding its own (`egress exec` makes it).
LISTEN_FD_ENV = "EGRESS_LISTEN_FD"
WORKER_MODULE = "addons.runner"  # the mitmproxy side; started by name, never imported by the CLI


def python_module(name: str) -> list[str]:
    """The argv that runs module ``name`` with this interpreter.

    ``-P``: the working directory is not put first on ``sys.path``, so a folder named
    ``addons`` or ``proxy`` where `egress` is started is never imported in place of ours.
    """
    return [sys.executable, "-P", "-m", name]


@dataclass(frozen=True)
class RunSettings:
    home: str  # EGRESS_HOME, absolute
    run_dir: str  # runtime files: addresses, readiness, metrics
    listen: str = "127.0.0.1:8080"
    mode: str = "regular"  # or "transparent": the listener takes redirected traffic
    transparent_grant: str = ""  # who intercepted traffic is: a grant token...
    transparent_connectors: tuple[str, ...] = ()  # ...or these connectors
    workers: int = 1
    admin: str | None = None
    admin_metrics_token: bool = False  # /metrics needs an all-workspace admin token
    config: str | None = None  # connectors file re-applied on SIGHUP
    upstream_ca: str | None = None
    allow_network: tuple[str, ...] = ()
    resolve: tuple[str, ...] = ()
    require_grant: bool = False
    explain_blocks: bool = False  # refused hosts: 403 inside an accepted tunnel, not a refused CONNECT
    log_format: str = "text"
    scrub_responses: bool = True
    scan_bodies: bool = True  # request bodies and WebSocket messages checked for secrets
    record: bool = True
    flush_interval: float = 0.0  # seconds between counter flushes; 0: the store's default
    idle_timeout: float = 600.0  # an idle connection is closed after this many seconds
    handshake_timeout: float = 10.0  # from connect until TLS inside the tunnel
    max_client_connections: int = 256  # per client address and worker
    max_connector_requests: int = 256  # in flight per connector and worker
    max_client_share: float = 0.5  # of those, what one client address may hold
    h2_max_resets: int = 100  # per HTTP/2 connection in 10 s, then GOAWAY
    audit_log: str = ""  # one JSON line per decision: a file, or "-" for stdout
    audit_max_mb: int = 100  # the audit file is rotated past this size
    request_body_timeout: float = 60.0  # from a request's head to the end of its body (+1 s per 64 KiB)
    upstream_timeout: float = 600.0  # from the end of a request to its response head
    max_websocket_message: int = 16 * 1024 * 1024  # bytes, then close 1009

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen, "--listen")

    def with_listen(self, listen: str) -> RunSettings:
        return replace(self, listen=listen)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSettings:
        data: dict[str, Any] = json.loads(text)
        for f in fields(cls):
            if str(f.type).startswith("tuple") and f.name in data:
                data[f.name] = tuple(data[f.name])
        return cls(**data)

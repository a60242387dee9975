"""The admin endpoint: ``GET /healthz`` and ``GET /metrics`` on a small thread server.

It runs off the proxy's event loop so a slow scrape never delays a request.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from proxy.errors import ConfigError
from proxy.hosts import format_authority, parse_listen


class AdminServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, metrics: Callable[[], bytes], healthy: Callable[[], bool]) -> None:
        host, port = parse_listen(address, "--admin")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.metrics = metrics
        self.healthy = healthy
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise ConfigError(f"--admin {address}: cannot listen ({e.strerror})") from None

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return format_authority(str(host), int(port), None)

    def start(self) -> AdminServer:
        threading.Thread(target=self.serve_forever, name="egress-admin", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: AdminServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/healthz":
            ok = self.server.healthy()
            self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"unhealthy\n")
        elif self.path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST  # only when scraped

            self._send(200, CONTENT_TYPE_LATEST, self.server.metrics())
        else:
            self._send(404, "text/plain", b"try /healthz or /metrics\n")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

"""The admin endpoint: ``GET /healthz`` and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader
from prometheus_client import CONTENT_TYPE_LATEST

from addons.record import Recorder

logger = logging.getLogger("egress")
MAX_HEAD = 8192


class Admin:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.server: asyncio.Server | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option("egress_admin", str, "", "Admin listen address HOST:PORT (empty: off).")

    async def running(self) -> None:
        spec = ctx.options.egress_admin
        if not spec:
            return
        host, _, port = spec.rpartition(":")
        try:
            self.server = await asyncio.start_server(self._serve, host.strip("[]"), int(port))
        except (OSError, ValueError) as e:
            raise exceptions.OptionsError(f"--admin {spec}: cannot listen ({e})") from None
        bound = self.server.sockets[0].getsockname()
        logger.info("admin endpoint on http://%s:%s (/healthz, /metrics)", bound[0], bound[1])

    def admin_address(self) -> tuple[str, int] | None:
        if not self.server:
            return None
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, _, rest = head[:MAX_HEAD].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0]
            if method != "GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path == "/healthz":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self.recorder.metrics.render()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /healthz or /metrics\n"
            writer.write(
                f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    def done(self) -> None:
        if self.server:
            self.server.close()

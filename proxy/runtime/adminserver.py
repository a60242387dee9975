"""The admin listener: the Starlette app (``proxy.runtime.api``) on uvicorn, in a thread of its own.

It runs off the proxy's event loop (its own loop, in its own thread) so a slow
scrape or API call never delays a request. The socket is bound here, before
the thread starts, so a taken port is a clear error at start, and port 0
becomes a concrete address to record.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from proxy.errors import ConfigError
from proxy.hosts import format_authority, parse_listen
from proxy.service.home import Home

logger = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'egress-proxy[admin]'"
START_TIMEOUT = 10.0


def check_available(flag: str = "--admin") -> None:
    """Exit 2 with the install line if the admin server's packages are missing."""
    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{flag} needs {' and '.join(missing)}: {INSTALL_HINT}")


LOGIN_LIMIT_ENV = "EGRESS_ADMIN_LOGIN_LIMIT"


def login_limit(env: Mapping[str, str]) -> int:
    """Failed logins allowed per client address and minute (EGRESS_ADMIN_LOGIN_LIMIT, default 10)."""
    from proxy.runtime.api.auth import MAX_FAILURES

    text = env.get(LOGIN_LIMIT_ENV, "").strip()
    if not text:
        return MAX_FAILURES
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{LOGIN_LIMIT_ENV}={text!r}: want a whole number of failed logins, 1 or more")
    return int(text)


class AdminServer:
    """Serve the admin app at ``address`` until ``stop``."""

    def __init__(
        self,
        address: str,
        metrics: Callable[[], bytes],
        healthy: Callable[[], bool],
        home: Home,
        *,
        metrics_token: bool = False,
        static_dir: Path | None = None,
    ) -> None:
        check_available()
        import uvicorn

        from proxy.runtime.api import AdminConfig, create_app
        from proxy.runtime.api.auth import FailureLimiter

        host, port = parse_listen(address, "--admin")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as e:
            self._sock.close()
            raise ConfigError(f"--admin {address}: cannot listen ({e.strerror})") from None
        self._sock.listen(128)
        kwargs: dict[str, Any] = {} if static_dir is None else {"static_dir": static_dir}
        limiter = FailureLimiter(limit=login_limit(home.env))
        app = create_app(AdminConfig(home, metrics, healthy, metrics_token, **kwargs), limiter)
        config = uvicorn.Config(
            app,
            log_config=None,  # the process's logging, not uvicorn's own handlers
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return format_authority(str(host), int(port), None)

    def start(self) -> AdminServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="egress-admin", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"--admin {self.address}: the admin server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)
        self._sock.close()

"""The supervisor: N worker processes sharing one port, restarted if they die.

Each worker is a full proxy (``python -m addons.runner SETTINGS``) listening with
``SO_REUSEPORT`` on the same address, so the kernel spreads connections over
cores. The supervisor holds the port reservation, serves the admin endpoint
with metrics summed over workers (prometheus multiprocess mode), forwards
SIGTERM/SIGINT, and turns SIGHUP into a config re-apply that workers pick up
from the store.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from proxy.errors import EgressError
from proxy.hosts import format_authority
from proxy.runtime.settings import SETTINGS_ENV, WORKER_MODULE, RunSettings, python_module
from proxy.service.files import write_atomic

if TYPE_CHECKING:
    from proxy.health import Health
    from proxy.runtime.metrics import HealthSource
    from proxy.service.home import Home

logger = logging.getLogger(__name__)
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
MAX_RESTARTS = 5  # within RESTART_WINDOW seconds, then give up
RESTART_WINDOW = 60.0


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes]
    started: float
    ready_file: Path


@dataclass
class Supervisor:
    command: Callable[[int], list[str]]  # argv for worker i
    count: int
    run_dir: Path
    host: str
    port: int
    env: dict[str, str]
    on_reload: Callable[[], None] | None = None
    admin: str | None = None
    admin_metrics_token: bool = False
    home: Home | None = None  # what the admin API acts on
    health: HealthSource | None = None  # connector states for /metrics, read from the store per scrape
    workers: list[Worker] = field(default_factory=list)
    _stop: bool = False
    _reload: bool = False
    _restarts: list[float] = field(default_factory=list)

    def run(self) -> int:
        metrics_dir = self.run_dir / f"metrics-{os.getpid()}"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        self.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        reservation = self._reserve()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        admin = None
        try:
            self.workers = [self._spawn(i) for i in range(self.count)]
            code = self._await_ready()
            if code is not None:
                return code
            if self.admin:
                from proxy.runtime.adminserver import AdminServer  # only when asked
                from proxy.runtime.metrics import multiprocess_metrics
                from proxy.service.home import Home

                admin = AdminServer(
                    self.admin,
                    lambda: multiprocess_metrics(metrics_dir, self.health),
                    self._healthy,
                    self.home or Home.from_env(self.env),
                    metrics_token=self.admin_metrics_token,
                ).start()
                write_atomic(self.run_dir / "admin.addr", f"{admin.address}\n".encode())
            write_atomic(self.run_dir / "proxy.addr", f"{self.address}\n".encode())
            self._banner(admin.address if admin else None)
            return self._watch()
        finally:
            self._terminate()
            if admin:
                admin.stop()
            reservation.close()
            for name in ("proxy.addr", "admin.addr"):
                (self.run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(metrics_dir, ignore_errors=True)

    @property
    def address(self) -> str:
        return format_authority(self.host, self.port, None)

    def _reserve(self) -> socket.socket:
        """Bind (without listening) so port 0 becomes one concrete port all workers share."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        if self.port:
            # Without SO_REUSEPORT first: joining another proxy's port group by
            # accident would silently split traffic between two configurations.
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
                try:
                    probe.bind((self.host, self.port))
                except OSError as e:
                    raise EgressError(f"--listen {self.address}: cannot bind ({e.strerror})") from None
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind((self.host, self.port))
        except OSError as e:
            s.close()
            raise EgressError(f"--listen {self.address}: cannot bind ({e.strerror})") from None
        self.port = s.getsockname()[1]
        return s

    def _spawn(self, index: int) -> Worker:
        ready = self.run_dir / f"worker-{os.getpid()}-{index}.ready"
        ready.unlink(missing_ok=True)
        argv = self.command(index)  # first: it may put the worker's settings in self.env
        env = {**self.env, "EGRESS_WORKER_READY_FILE": str(ready)}
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
        return Worker(index, proc, time.monotonic(), ready)

    def _await_ready(self) -> int | None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not all(w.ready_file.exists() for w in self.workers):
            for w in self.workers:
                if (code := w.proc.poll()) is not None:
                    logger.error("worker %d exited during startup with %d", w.index, code)
                    return code or 1
            if self._stop:
                return 0
            if time.monotonic() > deadline:
                logger.error("workers did not start within %d s", STARTUP_TIMEOUT)
                return 1
            time.sleep(0.05)
        return None

    def _watch(self) -> int:
        while not self._stop:
            if self._reload:
                self._reload = False
                self._apply_reload()
            for i, w in enumerate(self.workers):
                code = w.proc.poll()
                if code is None or self._stop:
                    continue
                now = time.monotonic()
                self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW] + [now]
                if len(self._restarts) > MAX_RESTARTS:
                    logger.error("workers keep dying (last exit %d); giving up", code)
                    return 1
                logger.warning("worker %d (pid %d) exited with %d; restarting", w.index, w.proc.pid, code)
                self.workers[i] = self._spawn(w.index)
            time.sleep(0.1)
        return 0

    def _apply_reload(self) -> None:
        if self.on_reload is None:
            logger.info("SIGHUP: no --config to re-read")
            return
        try:
            self.on_reload()
            logger.info("SIGHUP: configuration re-applied; workers reload it within a second")
        except EgressError as e:
            logger.error("SIGHUP: new configuration refused, the old one stays in force: %s", e)

    def _terminate(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for w in self.workers:
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("worker %d did not stop in time; killing it", w.index)
                w.proc.kill()
                w.proc.wait()
            w.ready_file.unlink(missing_ok=True)

    def _healthy(self) -> bool:
        return bool(self.workers) and all(w.proc.poll() is None for w in self.workers)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload = True

    def _banner(self, admin: str | None) -> None:
        lines = [
            f"egress-proxy listening on http://{self.address} ({self.count} worker(s))",
            '  point a sandboxed step at it:  eval "$(egress env)"',
        ]
        if admin:
            lines += [
                f"  dashboard and admin API:       http://{admin}/",
                "  get a token to log in with:    egress admin token create",
            ]
        print("\n".join(lines), file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    """``python -m proxy.runtime.supervisor`` (settings in the environment): what `egress run` execs into."""
    from proxy.runtime import logsetup

    settings = RunSettings.from_json(os.environ[SETTINGS_ENV])
    logsetup.configure(settings.log_format)
    host, port = settings.listen_address
    supervisor: Supervisor

    def command(index: int) -> list[str]:
        supervisor.env[SETTINGS_ENV] = settings.with_listen(supervisor.address).to_json()
        return python_module(WORKER_MODULE)

    def reload() -> None:
        from proxy.service.apply import apply_config  # imported only when needed: keeps us small
        from proxy.service.home import Home

        assert settings.config
        apply_config(Home.from_env(), Path(settings.config))

    def health() -> dict[str, Health]:
        from proxy.service.home import Home
        from proxy.service.monitoring import connector_health

        return connector_health(Home(Path(settings.home), os.environ))

    home = None
    if settings.admin:  # the admin API acts on the home; without it, cryptography is never loaded here
        from proxy.service.home import Home

        home = Home(Path(settings.home), os.environ)
    supervisor = Supervisor(
        command,
        settings.workers,
        Path(settings.run_dir),
        host,
        port,
        dict(os.environ),
        on_reload=reload if settings.config else None,
        admin=settings.admin,
        admin_metrics_token=settings.admin_metrics_token,
        home=home,
        health=health,
    )
    try:
        return supervisor.run()
    except EgressError as e:
        print(f"egress: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``egress exec``: run one code step whose only way out is the proxy.

The step gets a network namespace of its own (see ``proxy.runtime.netns``) and
a transparent proxy started for it alone, scoped to its grant or connectors:
every client, whether it honours proxy variables or not, goes through it. The
step runs as an unprivileged user (root inside could leave the namespace),
with the CA trusted and no proxy variables or egress secrets in its
environment. Its exit code is ours; everything is torn down however it ends.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.cli.run import (
    GRANT_ENV,
    add_upstream_flags,
    prepare,
    prepare_offline,
    settings_from_args,
    upstream_flags,
)
from proxy.errors import ConfigError, StoreUnavailable
from proxy.runtime.netns import StepNamespace, check_privileges
from proxy.runtime.settings import LISTEN_FD_ENV, SETTINGS_ENV, WORKER_MODULE, RunSettings, python_module
from proxy.service import ca, clientenv
from proxy.service.home import Home

# Never handed to the step: where the proxy is, its keys, its admin token.
_WITHHELD = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "https_proxy", "http_proxy",
             "all_proxy", "no_proxy", "NODE_USE_ENV_PROXY", "NODE_OPTIONS", "JAVA_TOOL_OPTIONS")  # fmt: skip
_CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT",
                 "NPM_CONFIG_CAFILE", "AWS_CA_BUNDLE", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")  # fmt: skip
STOP_TIMEOUT = 10.0
_IP_FREEBIND = 15  # linux/in.h; not in the socket module


def _user(spec: str | None) -> tuple[int, int]:
    """The uid/gid the step runs as: --user, else the sudo caller, else nobody (never root)."""
    if spec is None:
        if os.environ.get("SUDO_UID", "0") not in ("", "0"):
            return int(os.environ["SUDO_UID"]), int(os.environ.get("SUDO_GID") or os.environ["SUDO_UID"])
        spec = "nobody"
    try:
        entry = pwd.getpwuid(int(spec)) if spec.isdigit() else pwd.getpwnam(spec)
    except (KeyError, ValueError):
        raise ConfigError(f"--user {spec}: no such user") from None
    if entry.pw_uid == 0:
        raise ConfigError("--user: the step never runs as root (root could leave its namespace)")
    return entry.pw_uid, entry.pw_gid


def _trust_files(home: Home, work: Path) -> dict[str, str]:
    """The CA where every runtime looks, as files the step's user can read, and the variables naming them.

    Most read a PEM bundle from a variable; Node adds NODE_EXTRA_CA_CERTS to its
    own roots; Debian's wget (GnuTLS) reads only a wgetrc; Java only a truststore;
    stripe-python only the bundle it ships, which egress env's sitecustomize.py
    (first on PYTHONPATH) replaces with SSL_CERT_FILE.
    """
    system = ca.system_bundle()
    bundle, ca_cert, wgetrc, truststore = (
        work / n for n in ("ca-bundle.pem", "egress-ca.pem", "wgetrc", "truststore.p12")
    )
    ca.write_bundle(bundle, home.ca_cert, system)
    ca_cert.write_bytes(home.ca_cert.read_bytes())
    wgetrc.write_text(f"ca_certificate = {bundle}\n")
    truststore.write_bytes(clientenv.cached_truststore(home, system).read_bytes())
    site = work / "python"
    site.mkdir()
    site.chmod(0o755)
    (site / "sitecustomize.py").write_bytes(clientenv.SITECUSTOMIZE.read_bytes())
    for f in (bundle, ca_cert, wgetrc, truststore, site / "sitecustomize.py"):
        f.chmod(0o644)
    variables = dict.fromkeys(_CA_VARIABLES, str(bundle))
    variables["NODE_EXTRA_CA_CERTS"] = str(ca_cert)
    variables["WGETRC"] = str(wgetrc)
    variables["JAVA_TOOL_OPTIONS"] = clientenv.java_trust_options(
        os.environ.get("JAVA_TOOL_OPTIONS", ""), truststore
    )
    variables["PYTHONPATH"] = clientenv.python_path(os.environ.get("PYTHONPATH", ""), site)
    return variables


def _step_env(trust: dict[str, str]) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in _WITHHELD and not k.startswith(("EGRESS_", "SUDO_"))
    }
    env.update(trust)
    return env


def _settings(args: argparse.Namespace, home: Home, listen: str) -> RunSettings:
    """The step's proxy, its flags checked as `egress run` checks them (exit 2)."""
    from proxy.cli import build_parser

    argv = ["run", "--mode", "transparent", "--listen", listen, "--workers", "1", "--insecure-no-auth",
            "--explain-blocks" if args.explain_blocks else "--no-explain-blocks", *upstream_flags(args)]  # fmt: skip
    if not args.grant:
        argv += [a for n in args.connector for a in ("--connector", n)]
    run_args = build_parser().parse_args(argv)
    run_args.grant = args.grant  # never on a command line: the step can read every one on this host
    return settings_from_args(run_args, home)


def _check(home: Home, settings: RunSettings) -> None:
    """The policy opens, the connectors exist, the grant is valid: before the step starts."""
    try:
        prepare(home, settings)
    except StoreUnavailable as down:
        prepare_offline(home, settings, down)


def _listener(host: str) -> socket.socket:
    """The step's listening socket, made before its address exists (IP_FREEBIND).

    The worker inherits it, so connections made before the worker has started
    wait in the backlog: the step need not wait for the proxy to be ready.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
    sock.bind((host, 0))
    sock.listen(socket.SOMAXCONN)
    return sock


def _start_proxy(
    settings: RunSettings, home: Home, sock: socket.socket, work: Path
) -> subprocess.Popen[bytes]:
    """One worker and no supervisor: nothing to restart, no admin, and the home's
    recorded proxy address stays that of the proxy `egress env` points at."""
    env = {**os.environ, "EGRESS_HOME": str(home.root), "EGRESS_WORKSPACE": home.workspace,
           SETTINGS_ENV: settings.to_json(), "EGRESS_WORKER_READY_FILE": str(work / "ready"),
           LISTEN_FD_ENV: str(sock.fileno())}  # fmt: skip
    # Private: the step shares this host's file system, and the log is no business of its.
    with open(os.open(work / "proxy.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        return subprocess.Popen(
            python_module(WORKER_MODULE), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, env=env, pass_fds=(sock.fileno(),),
        )  # fmt: skip


def _stop_proxy(proxy: subprocess.Popen[bytes], ready: bool) -> None:
    """A proxy that never got ready has served nothing: kill it. Else let it flush its counts."""
    if proxy.poll() is not None:
        return
    if not ready:
        proxy.kill()
    else:
        proxy.terminate()
    try:
        proxy.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proxy.kill()
        proxy.wait()


def _last_line(log: Path, code: int | None) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit {code}"


def _reexec_without_grant(token: str) -> None:
    """Run again with the token moved from our command line to the environment.

    The step shares the host's /proc: ``/proc/PID/cmdline`` of this process is
    readable by it (and by every local user) for as long as the step runs, while
    the environment of a root process is not. ``exec`` keeps the pid.
    """
    argv = sys.argv[1:]
    end = argv.index("--") if "--" in argv else len(argv)
    for i, arg in enumerate(argv[:end]):
        if arg == "--grant" and i + 1 < end and argv[i + 1] == token:
            rest = argv[:i] + argv[i + 2 :]
            break
        if arg == f"--grant={token}":
            rest = argv[:i] + argv[i + 1 :]
            break
    else:
        return  # not spelled on our command line (abbreviated, or already moved)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [*python_module("proxy.cli"), *rest], {**os.environ, GRANT_ENV: token})


def cmd_exec(args: argparse.Namespace, home: Home) -> int:
    timing = Timing(time.perf_counter())
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.grant:
        _reexec_without_grant(args.grant)
    elif not args.connector:
        args.grant = os.environ.get(GRANT_ENV) or None
    if not command:
        raise ConfigError("usage: egress exec [--grant TOKEN | --connector NAME ...] -- CMD [ARGS...]")
    if bool(args.grant) == bool(args.connector):
        raise ConfigError("egress exec needs --grant TOKEN or --connector NAME (what the step may use)")
    home.require_initialised(need_ca=True)
    check_privileges()
    uid, gid = _user(args.user)
    ns = StepNamespace(0)
    sock = _listener(ns.host_address)
    ns.port = sock.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="egress-exec-"))
    proxy: subprocess.Popen[bytes] | None = None
    step: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: Any) -> None:
        if step is not None and step.poll() is None:
            step.send_signal(signum)
        else:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        work.chmod(0o755)
        settings = _settings(args, home, f"{ns.host_address}:{ns.port}")
        # The proxy starts (imports, loads the policy) while we check and build the namespace.
        proxy = _start_proxy(settings, home, sock, work)
        sock.close()  # the worker's now: if it dies, waiting connections are reset, not left hanging
        timing.mark("proxy spawned")
        _check(home, settings)
        timing.mark("checks")
        trust = _trust_files(home, work)
        timing.mark("trust files")
        ns.open()
        timing.mark("namespace")
        step = subprocess.Popen(ns.command(command, uid, gid), env=_step_env(trust))
        timing.mark("step started")
        code = step.wait()
        timing.mark("step")
        return code if code >= 0 else 128 - code
    except KeyboardInterrupt:
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()
        if step is not None and step.poll() is None:
            step.kill()
            step.wait()
        ready = (work / "ready").exists()
        if ready:
            timing.at("proxy ready", (work / "ready").stat().st_mtime)
        if proxy is not None:
            if proxy.poll() is not None:
                print(f"egress exec: the step's proxy exited: {_last_line(work / 'proxy.log', proxy.returncode)}",
                      file=sys.stderr)  # fmt: skip
            _stop_proxy(proxy, ready)
            # What a worker killed before it served may leave (its own stop removes it).
            (home.run_dir / f"upstream-ca-{proxy.pid}.pem").unlink(missing_ok=True)
            timing.mark("proxy stopped")
        ns.close()
        shutil.rmtree(work, ignore_errors=True)
        timing.mark("cleaned up")
        if args.timing:
            print(f"egress exec: {timing}", file=sys.stderr)


@dataclass
class Timing:
    """Milliseconds since the command started, per stage (``--timing``; bench/exec_startup.py reads them)."""

    start: float
    marks: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, name: str) -> None:
        self.marks.append((name, (time.perf_counter() - self.start) * 1000))

    def at(self, name: str, wall: float) -> None:
        """A stage another process reached at ``wall`` (time.time())."""
        self.marks.append((name, (time.perf_counter() - self.start - (time.time() - wall)) * 1000))

    def __str__(self) -> str:
        return ", ".join(f"{name} {ms:.0f} ms" for name, ms in sorted(self.marks, key=lambda m: m[1]))


def register(sub: Any, command: Any) -> None:
    sp = command("exec", cmd_exec, "run one step whose only way out is the proxy (root)")
    scope = sp.add_mutually_exclusive_group()
    scope.add_argument("--grant", metavar="TOKEN", help=f"the step's grant (or set {GRANT_ENV})")
    scope.add_argument(
        "--connector", action="append", default=[], metavar="NAME", help="connectors it may use"
    )
    sp.add_argument(
        "--user", metavar="USER", help="run the step as USER (default: the sudo caller, else nobody)"
    )
    add_upstream_flags(sp)
    sp.add_argument(
        "--explain-blocks", action=argparse.BooleanOptionalAction, default=True,
        help="answer a request to a host no connector covers with the 403 JSON inside TLS, instead of "
        "closing the connection (default: on)",
    )  # fmt: skip
    sp.add_argument("--timing", action="store_true", help="print the start-up time on stderr")
    sp.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")

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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from proxy.cli.run import GRANT_ENV, add_upstream_flags, upstream_flags
from proxy.errors import ConfigError, EgressError
from proxy.runtime.netns import StepNamespace, check_privileges
from proxy.service import ca, clientenv
from proxy.service.home import Home

# Never handed to the step: where the proxy is, its keys, its admin token.
_WITHHELD = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "https_proxy", "http_proxy",
             "all_proxy", "no_proxy", "NODE_USE_ENV_PROXY", "NODE_OPTIONS", "JAVA_TOOL_OPTIONS")  # fmt: skip
_CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT",
                 "NPM_CONFIG_CAFILE", "AWS_CA_BUNDLE", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")  # fmt: skip
READY_TIMEOUT = 60.0


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _trust_files(home: Home, work: Path) -> dict[str, str]:
    """The CA where every runtime looks, as files the step's user can read, and the variables naming them.

    Most read a PEM bundle from a variable; Node adds NODE_EXTRA_CA_CERTS to its
    own roots; Debian's wget (GnuTLS) reads only a wgetrc; Java only a truststore.
    """
    system = ca.system_bundle()
    bundle, ca_cert, wgetrc, truststore = (
        work / n for n in ("ca-bundle.pem", "egress-ca.pem", "wgetrc", "truststore.p12")
    )
    ca.write_bundle(bundle, home.ca_cert, system)
    ca_cert.write_bytes(home.ca_cert.read_bytes())
    wgetrc.write_text(f"ca_certificate = {bundle}\n")
    truststore.write_bytes(clientenv.cached_truststore(home, system).read_bytes())
    for f in (bundle, ca_cert, wgetrc, truststore):
        f.chmod(0o644)
    variables = dict.fromkeys(_CA_VARIABLES, str(bundle))
    variables["NODE_EXTRA_CA_CERTS"] = str(ca_cert)
    variables["WGETRC"] = str(wgetrc)
    variables["JAVA_TOOL_OPTIONS"] = clientenv.java_trust_options(
        os.environ.get("JAVA_TOOL_OPTIONS", ""), truststore
    )
    return variables


def _step_env(trust: dict[str, str]) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in _WITHHELD and not k.startswith(("EGRESS_", "SUDO_"))
    }
    env.update(trust)
    return env


def _start_proxy(args: argparse.Namespace, home: Home, listen: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "proxy.cli", "run", "--mode", "transparent", "--listen", listen,
            "--workers", "1", "--insecure-no-auth",
            "--explain-blocks" if args.explain_blocks else "--no-explain-blocks"]  # fmt: skip
    env = {**os.environ, "EGRESS_HOME": str(home.root), "EGRESS_WORKSPACE": home.workspace}
    if args.grant:  # in the environment: the step can read every command line on the host
        env[GRANT_ENV] = args.grant
    else:
        argv += [a for n in args.connector for a in ("--connector", n)]
    argv += upstream_flags(args)
    # Private: the step shares this host's file system, and the log is no business of its.
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)


def _wait_ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "listening on" in text:
            return
        if proc.poll() is not None:
            last = text.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            raise EgressError(f"the step's proxy did not start: {last[0]}")
        time.sleep(0.02)
    raise EgressError(f"the step's proxy did not start within {READY_TIMEOUT:.0f} s")


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
    os.execve(sys.executable, [sys.executable, "-m", "proxy.cli", *rest], {**os.environ, GRANT_ENV: token})


def cmd_exec(args: argparse.Namespace, home: Home) -> int:
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
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="egress-exec-"))
    work.chmod(0o755)
    trust = _trust_files(home, work)
    ns = StepNamespace(_free_port())
    proxy: subprocess.Popen[bytes] | None = None
    step: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: Any) -> None:
        if step is not None and step.poll() is None:
            step.send_signal(signum)
        else:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        ns.open()
        namespace_ms = (time.monotonic() - started) * 1000
        proxy = _start_proxy(args, home, f"{ns.host_address}:{ns.port}", work / "proxy.log")
        _wait_ready(proxy, work / "proxy.log")
        if args.timing:
            total_ms = (time.monotonic() - started) * 1000
            print(f"egress exec: namespace {namespace_ms:.0f} ms, ready {total_ms:.0f} ms", file=sys.stderr)
        step = subprocess.Popen(ns.command(command, uid, gid), env=_step_env(trust))
        code = step.wait()
        return code if code >= 0 else 128 - code
    except KeyboardInterrupt:
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if step is not None and step.poll() is None:
            step.kill()
            step.wait()
        if proxy is not None and proxy.poll() is None:
            proxy.terminate()
            try:
                proxy.wait(10)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()
        ns.close()
        for f in work.iterdir():
            f.unlink()
        work.rmdir()


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

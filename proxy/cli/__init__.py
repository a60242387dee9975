"""The ``egress`` command line. Errors are one line on stderr; exit 2 for bad input."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from proxy import __version__
from proxy.cli import admin, connectors, grants, monitoring, run, sandbox, setup, transparent
from proxy.errors import EgressError
from proxy.service.home import Home

Command = Callable[[argparse.Namespace, Home], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        home = Home.from_env().in_workspace(getattr(args, "workspace", None))
        home.workspace  # noqa: B018 (validates --workspace / EGRESS_WORKSPACE, exit 2)
        return int(args.func(args, home) or 0)
    except EgressError as e:
        print(f"egress: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="egress",
        description="HTTPS egress proxy that injects API secrets sandboxed code never sees.",
    )
    p.add_argument("--version", action="version", version=f"egress-proxy {__version__}")
    p.add_argument(
        "--workspace", metavar="W", help="act on this workspace (default: $EGRESS_WORKSPACE or 'default')"
    )
    sub = p.add_subparsers(metavar="COMMAND")

    def command(name: str, func: Command, help: str, parent: Any = sub) -> Any:
        sp = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        sp.add_argument(
            "--workspace",
            metavar="W",
            default=argparse.SUPPRESS,
            help="act on this workspace (default: $EGRESS_WORKSPACE or 'default')",
        )
        return sp

    for group in (setup, connectors, run, monitoring, grants, transparent, sandbox, admin):
        group.register(sub, command)
    return p

"""``egress env --shell``: one set of variables, quoted for each consumer.

Every form must round-trip any value exactly (paths with spaces or quotes, a
grant token), so each uses its shell's literal quoting rather than escapes
that would be interpreted.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping

from proxy.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DOTENV_PLAIN = re.compile(r"[^\s'\"\\$#`]+\Z")


def _sh(name: str, value: str) -> str:
    return f"export {name}={shlex.quote(value)}"


def _fish(name: str, value: str) -> str:
    # In fish's single quotes only \\ and \' are special.
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"set -gx {name} '{quoted}'"


def _powershell(name: str, value: str) -> str:
    # In PowerShell's single quotes only the quote itself (and its typographic forms) is special.
    quoted = re.sub("(['\u2018\u2019\u201a\u201b])", r"\1\1", value)
    return f"$env:{name} = '{quoted}'"


def _dotenv(name: str, value: str) -> str:
    """Unquoted when every reader agrees (docker --env-file takes quotes literally), else double
    quotes with the escapes compose, python-dotenv, systemd and a POSIX shell all read alike."""
    if _DOTENV_PLAIN.match(value):
        return f"{name}={value}"
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("$", "\\$")
        .replace("`", "\\`")
        .replace("\n", "\\n")
    )
    return f'{name}="{escaped}"'


LINE: dict[str, Callable[[str, str], str]] = {
    "sh": _sh,
    "fish": _fish,
    "powershell": _powershell,
    "dotenv": _dotenv,
}
SHELLS = (*LINE, "json")


def render(variables: Mapping[str, str], shell: str) -> str:
    """The text to print (ends with a newline)."""
    for name, value in variables.items():
        if not _NAME.match(name):
            raise ConfigError(f"not a variable name: {name!r}")
        if "\0" in value:
            raise ConfigError(f"{name}: a NUL byte cannot be exported")
    if shell == "json":
        return json.dumps(dict(variables), indent=2) + "\n"
    try:
        line = LINE[shell]
    except KeyError:
        raise ConfigError(f"--shell {shell}: expected one of {', '.join(SHELLS)}") from None
    return "".join(line(name, value) + "\n" for name, value in variables.items())

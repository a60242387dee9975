"""Where an operator keeps a secret (env, file, stdin): the one reader of secret values.

The CLI flags (``--secret-env``), YAML (``secret: {env: VAR}``) and the
entrypoint all read secrets here, so every source refuses the same mistakes
(empty, oversized, control characters) with the same words.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from proxy.errors import ConfigError

MAX_SECRET_BYTES = 16 * 1024
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
Kind = Literal["env", "file", "stdin"]


def check_secret(value: str, where: str) -> str:
    """Refuse secrets that could break out of a header or be mistaken for none."""
    if not value:
        raise ConfigError(f"{where}: secret is empty")
    if len(value.encode("utf-8")) > MAX_SECRET_BYTES:
        raise ConfigError(f"{where}: secret is longer than {MAX_SECRET_BYTES} bytes")
    if _CONTROL_RE.search(value):
        raise ConfigError(f"{where}: secret contains control characters (line breaks, NUL, ...)")
    return value


@dataclass(frozen=True, slots=True)
class SecretSource:
    kind: Kind
    name: str = ""  # the variable or path; empty for stdin

    def read(self, where: str, env: Mapping[str, str] | None = None) -> str:
        """The secret, with one trailing line break removed; ConfigError naming ``where``."""
        if self.kind == "env":
            value = (os.environ if env is None else env).get(self.name)
            if value is None:
                raise ConfigError(f"{where}: environment variable {self.name} is not set")
        elif self.kind == "file":
            try:
                value = Path(self.name).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                reason = getattr(e, "strerror", None) or "not UTF-8 text"
                raise ConfigError(f"{where}: cannot read secret file {self.name}: {reason}") from None
        elif sys.stdin.isatty():
            import getpass

            print("secret (input hidden, end with Enter): ", end="", file=sys.stderr, flush=True)
            value = getpass.getpass(prompt="")
        else:
            value = sys.stdin.read()
        return check_secret(value.rstrip("\r\n"), where)


def source_from_yaml(spec: Any, where: str) -> SecretSource:
    """``{env: VAR}`` or ``{file: PATH}``: a secret's value never sits in the file itself."""
    if not isinstance(spec, dict) or len(spec) != 1 or not (set(spec) <= {"env", "file"}):
        raise ConfigError(f"{where}: secret must be {{env: VAR}} or {{file: PATH}} (never the value itself)")
    ((kind, value),) = spec.items()
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: secret.{kind} must be a non-empty string")
    return SecretSource(kind, value)

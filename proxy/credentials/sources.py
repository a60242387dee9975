"""Where an operator keeps credential values (env, file, stdin): the one reader of secrets.

The CLI flags (``--secret-env``, ``--field NAME=env:VAR``), YAML (``secret:
{env: VAR}`` or ``secret: {fields: ..., properties_json: ...}``) and the
entrypoint all read values here, so every source refuses the same mistakes
(empty, oversized, control characters) with the same words. A credential is a
set of named fields; ``properties_json`` (a JSON object, as credential stores
hand out "dynamic properties") overrides same-named fields and may add more.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from proxy.credentials.templates import FIELD_NAME, SECRET_FIELD
from proxy.errors import ConfigError

MAX_SECRET_BYTES = 16 * 1024
MAX_FIELDS = 32
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
Kind = Literal["env", "file", "stdin"]


def check_secret(value: str, where: str) -> str:
    """Refuse secrets that could break out of a header or be mistaken for none."""
    if not value:
        raise ConfigError(f"{where}: secret is empty", field="secret")
    if len(value.encode("utf-8")) > MAX_SECRET_BYTES:
        raise ConfigError(f"{where}: secret is longer than {MAX_SECRET_BYTES} bytes", field="secret")
    if _CONTROL_RE.search(value):
        raise ConfigError(
            f"{where}: secret contains control characters (line breaks, NUL, ...)", field="secret"
        )
    return value


def check_field_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not FIELD_NAME.match(name):
        raise ConfigError(
            f"{where}: field name {name!r} is invalid (letters, digits and '_', at most 64)", field="secret"
        )
    return name


@dataclass(frozen=True, slots=True)
class SecretSource:
    kind: Kind
    name: str = ""  # the variable or path; empty for stdin

    def read_text(self, where: str, env: Mapping[str, str] | None = None) -> str:
        """The raw value, with one trailing line break removed (not yet checked)."""
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

            print(f"{where} (input hidden, end with Enter): ", end="", file=sys.stderr, flush=True)
            value = getpass.getpass(prompt="")
        else:
            value = sys.stdin.read()
        return value.rstrip("\r\n")

    def read(self, where: str, env: Mapping[str, str] | None = None) -> str:
        """The secret, checked; ConfigError naming ``where``."""
        return check_secret(self.read_text(where, env), where)


def parse_source(text: str, where: str) -> SecretSource:
    """``env:VAR``, ``file:PATH`` or ``stdin`` (the CLI's spelling of a source)."""
    if text == "stdin":
        return SecretSource("stdin")
    kind, sep, name = text.partition(":")
    if not sep or kind not in ("env", "file") or not name:
        raise ConfigError(f"{where}: source {text!r} must be env:VAR, file:PATH or stdin")
    return SecretSource(kind, name)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class CredentialSource:
    """Where each field of a credential comes from, and an optional JSON of properties."""

    fields: Mapping[str, SecretSource] = field(default_factory=dict)
    properties_json: SecretSource | None = None

    @classmethod
    def single(cls, source: SecretSource) -> CredentialSource:
        return cls({SECRET_FIELD: source})

    def __post_init__(self) -> None:
        if sum(s.kind == "stdin" for s in self.sources()) > 1:
            raise ConfigError("only one value can come from stdin")

    def sources(self) -> list[SecretSource]:
        extra = [self.properties_json] if self.properties_json else []
        return [*self.fields.values(), *extra]

    def read(self, where: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """Every field's value; properties override same-named fields (the rest are kept)."""
        values = {name: src.read(f"{where}: field {name}", env) for name, src in self.fields.items()}
        if self.properties_json is not None:
            at = f"{where}: properties_json"
            values.update(parse_properties(self.properties_json.read_text(at, env), at))
        if not values:
            raise ConfigError(f"{where}: the credential has no fields", field="secret")
        if len(values) > MAX_FIELDS:
            raise ConfigError(f"{where}: {len(values)} fields, at most {MAX_FIELDS}", field="secret")
        return values


def parse_properties(text: str, where: str) -> dict[str, str]:
    """A JSON object of string (or number) values; never echoes the text back."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{where}: not valid JSON (line {getattr(e, 'lineno', '?')})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: must be a JSON object of field names to values")
    out: dict[str, str] = {}
    for name, value in doc.items():
        check_field_name(name, where)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: field {name}: value must be a string or a number")
        out[name] = check_secret(str(value), f"{where}: field {name}")
    return out


def _one_source(spec: Any, where: str) -> SecretSource:
    if not isinstance(spec, dict) or len(spec) != 1 or not (set(spec) <= {"env", "file"}):
        raise ConfigError(f"{where} must be {{env: VAR}} or {{file: PATH}} (never the value itself)")
    ((kind, value),) = spec.items()
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{kind} must be a non-empty string")
    return SecretSource(kind, value)


def source_from_yaml(spec: Any, where: str) -> CredentialSource:
    """``{env: VAR}``, ``{file: PATH}``, or ``{fields: {NAME: SOURCE}, properties_json: SOURCE}``."""
    if isinstance(spec, dict) and ({"fields", "properties_json"} & set(spec)):
        unknown = set(spec) - {"fields", "properties_json"}
        if unknown:
            raise ConfigError(f"{where}: secret: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        given = spec.get("fields") or {}
        if not isinstance(given, dict):
            raise ConfigError(
                f"{where}: secret.fields must map field names to {{env: VAR}} or {{file: PATH}}"
            )
        fields = {
            check_field_name(n, f"{where}: secret.fields"): _one_source(s, f"{where}: secret.fields.{n}")
            for n, s in given.items()
        }
        props = spec.get("properties_json")
        properties = None if props is None else _one_source(props, f"{where}: secret.properties_json")
        if not fields and properties is None:
            raise ConfigError(f"{where}: secret.fields is empty")
        return CredentialSource(fields, properties)
    return CredentialSource.single(_one_source(spec, f"{where}: secret"))


def fields_from_values(spec: Any, where: str = "secret") -> dict[str, str]:
    """A credential sent by value (the admin API): ``{"value": V}`` or ``{"fields": {NAME: V}}``.

    The same checks as every other source; messages name fields, never values.
    """
    if not isinstance(spec, Mapping) or len(spec) != 1 or not set(spec) <= {"value", "fields"}:
        raise ConfigError(
            f'{where} must be {{"value": "..."}} or {{"fields": {{"NAME": "..."}}}}', field="secret"
        )
    if "value" in spec:
        if not isinstance(spec["value"], str):
            raise ConfigError(f"{where}.value must be a string", field="secret")
        return {SECRET_FIELD: check_secret(spec["value"], where)}
    given = spec["fields"]
    if not isinstance(given, Mapping) or not given:
        raise ConfigError(f"{where}.fields must map field names to values", field="secret")
    if len(given) > MAX_FIELDS:
        raise ConfigError(f"{where}: {len(given)} fields, at most {MAX_FIELDS}", field="secret")
    out: dict[str, str] = {}
    for name, value in given.items():
        check_field_name(name, f"{where}.fields")
        if not isinstance(value, str):
            raise ConfigError(f"{where}.fields.{name} must be a string", field="secret")
        out[name] = check_secret(value, f"{where}.fields.{name}")
    return out

"""Declarative connectors: a YAML file, validated whole, then synced in one transaction."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from proxy.connectors import Connector, check_credential, check_workspace, make_connector
from proxy.credentials.sources import CredentialSource, source_from_yaml
from proxy.errors import ConfigError
from proxy.secrets import DEFAULT_WORKSPACE
from proxy.service.connectors import ApplyReport, Connectors
from proxy.service.home import Home

logger = logging.getLogger(__name__)

_TOP_KEYS = {"connectors", "workspace"}
_CONNECTOR_KEYS = {"name", "preset", "patterns", "secret", "inject", "methods", "strip_headers", "workspace"}


@dataclass(frozen=True, slots=True)
class Declared:
    """A connector as declared in YAML, with where its credential's fields come from."""

    connector: Connector
    secret: CredentialSource


def load_yaml(path: str | Path, workspace: str = DEFAULT_WORKSPACE) -> list[Declared]:
    """Read a connectors file; every error names the file, connector and field.

    Connectors land in the file's ``workspace:`` (else ``workspace``), or their own.
    """
    return _load(Path(path), workspace)[0]


def _load(path: Path, workspace: str) -> tuple[list[Declared], str]:
    """The declared connectors and the file's workspace."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{at}: {problem}") from None
    if doc is None or (isinstance(doc, dict) and doc.get("connectors", []) is None):
        # An empty file is more often a mistake (a bad mount) than an intent; with
        # --prune it would remove every connector. Say `connectors: []` to mean none.
        raise ConfigError(f"{path}: declares nothing (write `connectors: []` to mean no connectors)")
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping with a 'connectors' list")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))}")
    file_workspace = check_workspace(doc.get("workspace", workspace), f"{path}: workspace")
    items = doc.get("connectors") or []
    if not isinstance(items, list):
        raise ConfigError(f"{path}: 'connectors' must be a list")
    out: list[Declared] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{path}: connectors[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be a mapping")
        if isinstance(item.get("name"), str):
            where += f" ({item['name']})"
        unknown = set(item) - _CONNECTOR_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        connector = make_connector(
            item.get("name"),
            patterns=item.get("patterns"),
            inject=item.get("inject"),
            preset=item.get("preset"),
            methods=item.get("methods"),
            strip_headers=item.get("strip_headers"),
            workspace=item.get("workspace", file_workspace),
            where=where,
        )
        if connector.key in seen:
            raise ConfigError(f"{where}: duplicate connector name {connector.name!r}")
        seen.add(connector.key)
        out.append(Declared(connector, source_from_yaml(item.get("secret"), where)))
    return out, file_workspace


def apply_file(home: Home, path: Path, *, prune: bool) -> ApplyReport:
    """Validate the whole file and read every secret before touching the store."""
    declared, workspace = _load(path, home.workspace)
    with_secrets = []
    for d in declared:
        where = f"{path}: connector {d.connector.name!r}"
        fields = d.secret.read(f"{where}: secret")
        check_credential(d.connector, fields, where)
        with_secrets.append((d.connector, fields))
    with Connectors(home) as connectors:
        return connectors.apply(with_secrets, prune, workspaces={workspace})


def apply_config(home: Home, path: Path) -> None:
    """``egress run --config`` at start and on SIGHUP: the file is the whole truth (prune)."""
    report = apply_file(home, path, prune=True)
    changed = report.created + report.updated + report.removed
    logger.info("%s: %s", path, f"{len(changed)} connector(s) changed" if changed else "no changes")
    for w in report.warnings:
        logger.warning("%s", w)

"""Connector use cases over the store: add, update, remove, apply, open the policy.

Secrets are sealed before they touch the store and opened only to build a
Policy in memory. Every change is one transaction: a failed apply leaves the
store exactly as it was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from proxy.connectors import (
    PRESETS,
    Connector,
    ambiguities,
    check_credential,
    connector_from_spec,
    connector_key,
    make_connector,
    split_key,
    workspace_of,
)
from proxy.credentials import placement_from_spec
from proxy.credentials.sources import fields_from_values
from proxy.errors import ConfigError, Conflict, NotFound
from proxy.policy import Policy
from proxy.secrets import DEFAULT_WORKSPACE, Fields, MasterKey, is_legacy
from proxy.service.files import write_atomic
from proxy.service.home import Home
from proxy.store import Store, StoredConnector

# The keys of a connector document (the admin API's ConnectorIn).
DOC_KEYS = ("name", "preset", "patterns", "inject", "methods", "strip_headers", "secret")


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Connectors:
    """The connectors of one workspace (the home's), opened with the home's master key.

    Reads and writes stay inside the workspace; ``policy()`` is the proxy's
    view and holds every workspace (grants keep them apart).
    """

    def __init__(self, home: Home, store: Store | None = None) -> None:
        self.home = home
        self.workspace = home.workspace
        self.store: Store = store or home.store()
        self._key: MasterKey | None = None

    def __enter__(self) -> Connectors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def key(self) -> MasterKey:
        if self._key is None:
            self._key = self.home.master_key()
        return self._key

    def close(self) -> None:
        self.store.close()

    def _mine(self, stored: StoredConnector) -> bool:
        return split_key(stored.name)[0] == self.workspace

    def _key_of(self, name: str) -> str:
        return connector_key(self.workspace, name)

    def all(self) -> list[tuple[Connector, StoredConnector]]:
        return [(connector_from_spec(s.name, s.spec), s) for s in self.store.connectors() if self._mine(s)]

    def names(self) -> list[str]:
        return [split_key(s.name)[1] for s in self.store.connectors() if self._mine(s)]

    def get(self, name: str) -> tuple[Connector, StoredConnector]:
        stored = self.store.get(self._key_of(name))
        if stored is None:
            raise NotFound(f"no connector named {name!r}{self._in()}")
        return connector_from_spec(stored.name, stored.spec), stored

    def _in(self) -> str:
        return "" if self.workspace == DEFAULT_WORKSPACE else f" in workspace {self.workspace!r}"

    def _seal(self, connector: Connector, fields: Fields) -> bytes:
        return self.key.seal(connector.name, fields, connector.workspace)

    def _open(self, stored: StoredConnector, key: MasterKey | None = None) -> dict[str, str]:
        workspace, name = split_key(stored.name)
        return (key or self.key).open(name, stored.sealed, workspace)

    def add(self, connector: Connector, fields: Fields) -> None:
        connector = self._checked(self._here(connector), fields)
        with self.store.write() as tx:
            if tx.get(connector.key):
                raise Conflict(
                    f"connector {connector.name!r} exists{self._in()}: use `egress connector update`",
                    field="name",
                )
            tx.put(connector.key, connector.to_spec(), self._seal(connector, fields))

    def update(self, connector: Connector, fields: Fields | None, *, merge: bool = False) -> None:
        """Change a connector; ``fields=None`` keeps the stored credential (which must still fit).

        With ``merge``, the given fields replace same-named stored ones and the
        rest are kept (replacing a password keeps the username). The credential
        counts as changed (``secret_updated_at``) only if its values differ.
        """
        connector = self._here(connector)
        with self.store.write() as tx:
            stored = tx.get(connector.key)
            if stored is None:
                raise NotFound(
                    f"no connector named {connector.name!r}{self._in()}: use `egress connector add`"
                )
            if fields is not None and merge:
                fields = {**self._open(stored), **fields}
            if fields is None:
                kept = self._open(stored)  # refuse to keep what we cannot open
                connector = self._checked(connector, kept)
                sealed = self._seal(connector, kept) if is_legacy(stored.sealed) else stored.sealed
                changed = False
            else:
                connector = self._checked(connector, fields)
                sealed = self._seal(connector, fields)
                changed = not self._opens_to(stored, fields)
            tx.put(connector.key, connector.to_spec(), sealed, secret_changed=changed)

    def create(self, doc: Any) -> tuple[Connector, StoredConnector]:
        """Add a connector from a document (``secret`` required); what was stored."""
        connector, fields = connector_from_doc(doc, self.workspace)
        if fields is None:
            raise ConfigError(
                'a secret is required: {"value": "..."} or {"fields": {"NAME": "..."}}', field="secret"
            )
        self.add(connector, fields)
        return self.get(connector.name)

    def patch(self, name: str, doc: Any) -> tuple[Connector, StoredConnector]:
        """Change the keys a document gives (a given secret's fields merge into the stored ones)."""
        current, _ = self.get(name)
        connector, fields = connector_from_doc(doc, self.workspace, current)
        self.update(connector, fields, merge=True)
        return self.get(name)

    def replace_secret(self, name: str, spec: Any) -> tuple[Connector, StoredConnector]:
        """Replace the whole credential (``{"value": V}`` or ``{"fields": {...}}``); proxies pick it
        up at their next reload, within about a second."""
        current, _ = self.get(name)
        self.update(current, fields_from_values(spec), merge=False)
        return self.get(name)

    def remove(self, name: str) -> None:
        with self.store.write() as tx:
            if not tx.delete(self._key_of(name)):
                raise NotFound(f"no connector named {name!r}{self._in()}")

    def _here(self, connector: Connector) -> Connector:
        """The connector placed in this workspace (the CLI builds them without one)."""
        return (
            connector
            if connector.workspace == self.workspace
            else replace(connector, workspace=self.workspace)
        )

    def apply(
        self, declared: Iterable[tuple[Connector, Fields]], prune: bool, workspaces: Iterable[str] = ()
    ) -> ApplyReport:
        """Make the store hold these connectors (credentials already read), in one transaction.

        Each connector keeps the workspace it was declared in; ``prune`` removes
        what is not declared, only in the workspaces given (and those declared).
        """
        report = ApplyReport()
        items = [(self._checked(c, f), f) for c, f in declared]
        wanted = {c.key for c, _ in items}
        scope = {*workspaces, *(c.workspace for c, _ in items)}
        with self.store.write() as tx:
            current = {s.name: s for s in tx.connectors()}
            for c, fields in items:
                old = current.get(c.key)
                same_secret = old is not None and self._opens_to(old, fields)
                if old is None:
                    report.created.append(c.key)
                elif old.spec == c.to_spec() and not is_legacy(old.sealed) and same_secret:
                    report.unchanged.append(c.key)
                    continue
                else:
                    report.updated.append(c.key)
                tx.put(c.key, c.to_spec(), self._seal(c, fields), secret_changed=not same_secret)
            if prune:
                for key in sorted(k for k in set(current) - wanted if split_key(k)[0] in scope):
                    tx.delete(key)
                    report.removed.append(key)
        report.warnings = self.warnings()
        return report

    def warnings(self) -> list[str]:
        connectors = [connector_from_spec(s.name, s.spec) for s in self.store.connectors()]
        now = time.time()
        grants = {
            g["label"] or g["id"]: frozenset(g["connectors"])
            for g in self.store.grants()
            if g["revoked_at"] is None and g["expires_at"] > now
        }
        unused = [
            f"connector {c.name!r}: stored field(s) {', '.join(c.unused_fields())} are not used by its placement"
            for c in connectors
            if c.unused_fields()
        ]
        return ambiguities(connectors, grants) + unused

    @staticmethod
    def _checked(connector: Connector, fields: Fields) -> Connector:
        """The connector with its credential's field names, refused if the credential cannot be placed."""
        named = replace(connector, fields=tuple(sorted(fields)))
        check_credential(named, fields, f"connector {connector.name!r}")
        return named

    def _opens_to(self, stored: StoredConnector, fields: Fields) -> bool:
        try:
            return self._open(stored) == dict(fields)
        except ConfigError:
            return False

    def upgrade_payloads(self) -> int:
        """Re-seal credentials written by earlier releases (one string) as fields, in one transaction."""
        if not any(is_legacy(s.sealed) for s in self.store.connectors()):
            return 0
        count = 0
        with self.store.write() as tx:
            for stored in tx.connectors():
                if is_legacy(stored.sealed):
                    fields = self._open(stored)
                    workspace, name = split_key(stored.name)
                    spec = {**stored.spec, "fields": sorted(fields)}
                    tx.put(stored.name, spec, self.key.seal(name, fields, workspace), secret_changed=False)
                    count += 1
        return count

    def rotate_master_key(self) -> tuple[str, str]:
        """Re-seal every secret under a new master key; return (old id, new id).

        Order keeps every step recoverable: the new key is written beside the
        old one first, secrets are re-sealed in one transaction, and only then
        does the new key take the old one's place (the old is kept as .old).
        """
        if "EGRESS_MASTER_KEY" in self.home.env:
            raise ConfigError(
                "the master key comes from EGRESS_MASTER_KEY: rotate it in your secret store "
                "(point EGRESS_MASTER_KEY_FILE at a file to let `egress keys rotate` manage it)"
            )
        path = Path(self.home.env.get("EGRESS_MASTER_KEY_FILE") or self.home.key_path)
        old = self.key
        new, text = MasterKey.generate()
        staged = path.with_name(path.name + ".new")
        write_atomic(staged, (text + "\n").encode(), private=True)
        with self.store.write() as tx:
            for stored in tx.connectors():
                fields = self._open(stored, old)
                workspace, name = split_key(stored.name)
                spec = {**stored.spec, "fields": sorted(fields)}
                tx.put(stored.name, spec, new.seal(name, fields, workspace), secret_changed=False)
        os.replace(path, path.with_name(path.name + ".old"))
        os.replace(staged, path)
        self._key = new
        return old.key_id.hex(), new.key_id.hex()

    def policy(self) -> Policy:
        """All connectors with their secrets opened: what the proxy enforces."""
        return self.load()[0]

    def load(self) -> tuple[Policy, list[StoredConnector]]:
        """The policy and the stored rows it was opened from (what a policy cache keeps)."""
        self._key = None  # re-read: `egress keys rotate` may have replaced it
        self.upgrade_payloads()
        stored = self.store.connectors()
        return self.policy_of(stored), stored

    def policy_of(self, stored: Iterable[StoredConnector]) -> Policy:
        """A policy from stored rows (the store's, or a cached copy of them)."""
        return Policy((connector_from_spec(s.name, s.spec), self._open(s)) for s in stored)


def connector_from_doc(
    doc: Any, workspace: str, current: Connector | None = None
) -> tuple[Connector, dict[str, str] | None]:
    """A connector document into a Connector and its credential (None: not given).

    The checks are make_connector's and the credential sources', the ones the
    CLI and YAML files go through. With ``current`` (a partial update) absent
    keys keep its values and the name cannot change.
    """
    if not isinstance(doc, Mapping):
        raise ConfigError("the body must be a JSON object", field="body")
    unknown = sorted(str(k) for k in doc if k not in DOC_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}", field=unknown[0])
    secret = doc.get("secret")
    fields = None if secret is None else fields_from_values(secret)
    values = {k: doc.get(k) for k in DOC_KEYS if k not in ("name", "secret")}
    name = doc.get("name")
    if current is not None:
        if "name" in doc and name != current.name:
            raise ConfigError(f"connector {current.name!r} cannot be renamed", field="name")
        name = current.name
        kept = {
            "preset": current.preset,
            "patterns": [p.text for p in current.patterns],
            "inject": current.inject.to_spec(),
            "methods": sorted(current.methods) if current.methods is not None else None,
            "strip_headers": list(current.strip_headers),
        }
        values = {k: doc[k] if k in doc else kept[k] for k in kept}
    connector = make_connector(
        name,
        workspace=workspace,
        preset=values["preset"],
        patterns=values["patterns"],
        inject=values["inject"],
        methods=values["methods"],
        strip_headers=values["strip_headers"],
    )
    return connector, fields


def describe(c: Connector, stored: StoredConnector) -> dict[str, Any]:
    """A connector as operators see it (CLI ``--json``, admin API): field names, never values."""
    return {
        "name": c.name,
        "workspace": c.workspace,
        "preset": c.preset,
        "patterns": [p.text for p in c.patterns],
        "methods": sorted(c.methods) if c.methods is not None else None,
        "inject": c.inject.to_spec(),
        "inject_summary": c.inject.describe(),
        "strip_headers": list(c.strip_headers),
        "fields": list(c.fields or ()),
        "secret_set": True,
        "secret_updated_at": stored.secret_updated_at or stored.updated_at,
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
    }


def presets() -> list[dict[str, Any]]:
    """The known APIs a connector can start from, with the fields their credential needs."""
    return [
        {
            "name": name,
            "patterns": list(p.patterns),
            "inject": dict(p.inject),
            "inject_summary": placement_from_spec(p.inject, f"preset {name}").describe(),
            "fields": list(p.fields),
            "strip_headers": list(p.strip_headers),
            "placeholders": dict(p.placeholders),
        }
        for name, p in sorted(PRESETS.items())
    ]


def known_workspaces(store: Store) -> list[str]:
    """Workspaces something lives in (connectors, grants, admin tokens), ``default`` always."""
    names = {DEFAULT_WORKSPACE}
    names.update(split_key(s.name)[0] for s in store.connectors())
    names.update(workspace_of(g["connectors"]) for g in store.grants())
    names.update(t["workspace"] for t in store.admin_tokens() if t["workspace"])
    return sorted(names)

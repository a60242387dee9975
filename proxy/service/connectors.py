"""Connector use cases over the store: add, update, remove, apply, open the policy.

Secrets are sealed before they touch the store and opened only to build a
Policy in memory. Every change is one transaction: a failed apply leaves the
store exactly as it was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from proxy.connectors import (
    Connector,
    ambiguities,
    check_credential,
    connector_from_spec,
    connector_key,
    split_key,
)
from proxy.errors import ConfigError
from proxy.policy import Policy
from proxy.secrets import DEFAULT_WORKSPACE, Fields, MasterKey, is_legacy
from proxy.service.files import write_atomic
from proxy.service.home import Home
from proxy.store import Store, StoredConnector


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
            raise ConfigError(f"no connector named {name!r}{self._in()}")
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
                raise ConfigError(
                    f"connector {connector.name!r} exists{self._in()}: use `egress connector update`"
                )
            tx.put(connector.key, connector.to_spec(), self._seal(connector, fields))

    def update(self, connector: Connector, fields: Fields | None, *, merge: bool = False) -> None:
        """Change a connector; ``fields=None`` keeps the stored credential (which must still fit).

        With ``merge``, the given fields replace same-named stored ones and the
        rest are kept (replacing a password keeps the username).
        """
        connector = self._here(connector)
        with self.store.write() as tx:
            stored = tx.get(connector.key)
            if stored is None:
                raise ConfigError(
                    f"no connector named {connector.name!r}{self._in()}: use `egress connector add`"
                )
            if fields is not None and merge:
                fields = {**self._open(stored), **fields}
            if fields is None:
                kept = self._open(stored)  # refuse to keep what we cannot open
                connector = self._checked(connector, kept)
                sealed = self._seal(connector, kept) if is_legacy(stored.sealed) else stored.sealed
            else:
                connector = self._checked(connector, fields)
                sealed = self._seal(connector, fields)
            tx.put(connector.key, connector.to_spec(), sealed)

    def remove(self, name: str) -> None:
        with self.store.write() as tx:
            if not tx.delete(self._key_of(name)):
                raise ConfigError(f"no connector named {name!r}{self._in()}")

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
                if old is None:
                    report.created.append(c.key)
                elif old.spec == c.to_spec() and not is_legacy(old.sealed) and self._opens_to(old, fields):
                    report.unchanged.append(c.key)
                    continue
                else:
                    report.updated.append(c.key)
                tx.put(c.key, c.to_spec(), self._seal(c, fields))
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
                    tx.put(stored.name, spec, self.key.seal(name, fields, workspace))
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
                tx.put(stored.name, spec, new.seal(name, fields, workspace))
        os.replace(path, path.with_name(path.name + ".old"))
        os.replace(staged, path)
        self._key = new
        return old.key_id.hex(), new.key_id.hex()

    def policy(self) -> Policy:
        """All connectors with their secrets opened: what the proxy enforces."""
        self._key = None  # re-read: `egress keys rotate` may have replaced it
        self.upgrade_payloads()
        stored = self.store.connectors()
        return Policy((connector_from_spec(s.name, s.spec), self._open(s)) for s in stored)

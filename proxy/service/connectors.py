"""Connector use cases over the store: add, update, remove, apply, open the policy.

Secrets are sealed before they touch the store and opened only to build a
Policy in memory. Every change is one transaction: a failed apply leaves the
store exactly as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from proxy.connectors import Connector, ambiguities, check_credential, connector_from_spec
from proxy.errors import ConfigError
from proxy.policy import Policy
from proxy.secrets import Fields, MasterKey, is_legacy
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
    """The connectors of one store, opened with the home's master key."""

    def __init__(self, home: Home, store: Store | None = None) -> None:
        self.home = home
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

    def all(self) -> list[tuple[Connector, StoredConnector]]:
        return [(connector_from_spec(s.name, s.spec), s) for s in self.store.connectors()]

    def names(self) -> list[str]:
        return [s.name for s in self.store.connectors()]

    def get(self, name: str) -> tuple[Connector, StoredConnector]:
        stored = self.store.get(name)
        if stored is None:
            raise ConfigError(f"no connector named {name!r}")
        return connector_from_spec(name, stored.spec), stored

    def add(self, connector: Connector, fields: Fields) -> None:
        connector = self._checked(connector, fields)
        with self.store.write() as tx:
            if tx.get(connector.name):
                raise ConfigError(f"connector {connector.name!r} exists: use `egress connector update`")
            tx.put(connector.name, connector.to_spec(), self.key.seal(connector.name, fields))

    def update(self, connector: Connector, fields: Fields | None, *, merge: bool = False) -> None:
        """Change a connector; ``fields=None`` keeps the stored credential (which must still fit).

        With ``merge``, the given fields replace same-named stored ones and the
        rest are kept (replacing a password keeps the username).
        """
        with self.store.write() as tx:
            stored = tx.get(connector.name)
            if stored is None:
                raise ConfigError(f"no connector named {connector.name!r}: use `egress connector add`")
            if fields is not None and merge:
                fields = {**self.key.open(connector.name, stored.sealed), **fields}
            if fields is None:
                kept = self.key.open(connector.name, stored.sealed)  # refuse to keep what we cannot open
                connector = self._checked(connector, kept)
                sealed = self.key.seal(connector.name, kept) if is_legacy(stored.sealed) else stored.sealed
            else:
                connector = self._checked(connector, fields)
                sealed = self.key.seal(connector.name, fields)
            tx.put(connector.name, connector.to_spec(), sealed)

    def remove(self, name: str) -> None:
        with self.store.write() as tx:
            if not tx.delete(name):
                raise ConfigError(f"no connector named {name!r}")

    def apply(self, declared: Iterable[tuple[Connector, Fields]], prune: bool) -> ApplyReport:
        """Make the store hold these connectors (credentials already read), in one transaction."""
        report = ApplyReport()
        items = [(self._checked(c, f), f) for c, f in declared]
        wanted = {c.name for c, _ in items}
        with self.store.write() as tx:
            current = {s.name: s for s in tx.connectors()}
            for c, fields in items:
                old = current.get(c.name)
                if old is None:
                    report.created.append(c.name)
                elif old.spec == c.to_spec() and not is_legacy(old.sealed) and self._opens_to(old, fields):
                    report.unchanged.append(c.name)
                    continue
                else:
                    report.updated.append(c.name)
                tx.put(c.name, c.to_spec(), self.key.seal(c.name, fields))
            if prune:
                for name in sorted(set(current) - wanted):
                    tx.delete(name)
                    report.removed.append(name)
        report.warnings = self.warnings()
        return report

    def warnings(self) -> list[str]:
        connectors = [c for c, _ in self.all()]
        unused = [
            f"connector {c.name!r}: stored field(s) {', '.join(c.unused_fields())} are not used by its placement"
            for c in connectors
            if c.unused_fields()
        ]
        return ambiguities(connectors) + unused

    @staticmethod
    def _checked(connector: Connector, fields: Fields) -> Connector:
        """The connector with its credential's field names, refused if the credential cannot be placed."""
        named = replace(connector, fields=tuple(sorted(fields)))
        check_credential(named, fields, f"connector {connector.name!r}")
        return named

    def _opens_to(self, stored: StoredConnector, fields: Fields) -> bool:
        try:
            return self.key.open(stored.name, stored.sealed) == dict(fields)
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
                    fields = self.key.open(stored.name, stored.sealed)
                    spec = {**stored.spec, "fields": sorted(fields)}
                    tx.put(stored.name, spec, self.key.seal(stored.name, fields))
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
                fields = old.open(stored.name, stored.sealed)
                spec = {**stored.spec, "fields": sorted(fields)}
                tx.put(stored.name, spec, new.seal(stored.name, fields))
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
        return Policy((connector_from_spec(s.name, s.spec), self.key.open(s.name, s.sealed)) for s in stored)

"""Connector use cases over the store: add, update, remove, apply, open the policy.

Secrets are sealed before they touch the store and opened only to build a
Policy in memory. Every change is one transaction: a failed apply leaves the
store exactly as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from proxy.connectors import Connector, ambiguities, connector_from_spec
from proxy.credentials.templates import SECRET_FIELD
from proxy.errors import ConfigError
from proxy.policy import Policy
from proxy.secrets import MasterKey
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

    def add(self, connector: Connector, secret: str) -> None:
        with self.store.write() as tx:
            if tx.get(connector.name):
                raise ConfigError(f"connector {connector.name!r} exists: use `egress connector update`")
            tx.put(connector.name, connector.to_spec(), self.key.seal(connector.name, secret))

    def update(self, connector: Connector, secret: str | None) -> None:
        with self.store.write() as tx:
            stored = tx.get(connector.name)
            if stored is None:
                raise ConfigError(f"no connector named {connector.name!r}: use `egress connector add`")
            sealed = self.key.seal(connector.name, secret) if secret is not None else stored.sealed
            if secret is None:
                self.key.open(connector.name, sealed)  # refuse to keep a secret we cannot open
            tx.put(connector.name, connector.to_spec(), sealed)

    def remove(self, name: str) -> None:
        with self.store.write() as tx:
            if not tx.delete(name):
                raise ConfigError(f"no connector named {name!r}")

    def apply(self, declared: Iterable[tuple[Connector, str]], prune: bool) -> ApplyReport:
        """Make the store hold these connectors (secrets already read), in one transaction."""
        report = ApplyReport()
        items = list(declared)
        wanted = {c.name for c, _ in items}
        with self.store.write() as tx:
            current = {s.name: s for s in tx.connectors()}
            for c, secret in items:
                old = current.get(c.name)
                if old is None:
                    report.created.append(c.name)
                elif old.spec == c.to_spec() and self._opens_to(old, secret):
                    report.unchanged.append(c.name)
                    continue
                else:
                    report.updated.append(c.name)
                tx.put(c.name, c.to_spec(), self.key.seal(c.name, secret))
            if prune:
                for name in sorted(set(current) - wanted):
                    tx.delete(name)
                    report.removed.append(name)
        report.warnings = self.warnings()
        return report

    def warnings(self) -> list[str]:
        return ambiguities(c for c, _ in self.all())

    def _opens_to(self, stored: StoredConnector, secret: str) -> bool:
        try:
            return self.key.open(stored.name, stored.sealed) == secret
        except ConfigError:
            return False

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
                secret = old.open(stored.name, stored.sealed)
                tx.put(stored.name, stored.spec, new.seal(stored.name, secret))
        os.replace(path, path.with_name(path.name + ".old"))
        os.replace(staged, path)
        self._key = new
        return old.key_id.hex(), new.key_id.hex()

    def policy(self) -> Policy:
        """All connectors with their secrets opened: what the proxy enforces."""
        self._key = None  # re-read: `egress keys rotate` may have replaced it
        return Policy((c, {SECRET_FIELD: self.key.open(c.name, s.sealed)}) for c, s in self.all())

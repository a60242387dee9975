"""Connector operations over the store: add, update, remove, apply, load.

Secrets are sealed before they touch the store and opened only to build a
Policy in memory. Every change is one transaction: a failed apply leaves the
store exactly as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from proxy.ca import write_private
from proxy.connectors import Connector, Declared, connector_from_spec
from proxy.errors import ConfigError
from proxy.grants import Grant, GrantKey, grant_id_of
from proxy.home import Home
from proxy.policy import Policy
from proxy.secrets import MasterKey
from proxy.store import Store, StoredConnector


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Registry:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.store: Store = home.store()
        self._key: MasterKey | None = None

    @property
    def key(self) -> MasterKey:
        if self._key is None:
            self._key = self.home.master_key()
        return self._key

    def close(self) -> None:
        self.store.close()

    def connectors(self) -> list[tuple[Connector, StoredConnector]]:
        return [(connector_from_spec(s.name, s.spec), s) for s in self.store.connectors()]

    def get(self, name: str) -> tuple[Connector, StoredConnector]:
        stored = self.store.get(name)
        if stored is None:
            raise ConfigError(f"no connector named {name!r}")
        return connector_from_spec(name, stored.spec), stored

    def add(self, connector: Connector, secret: str) -> None:
        with self.store.write() as db:
            if self.store.get(connector.name):
                raise ConfigError(f"connector {connector.name!r} exists: use `egress connector update`")
            Store.put(db, connector.name, connector.to_spec(), self.key.seal(connector.name, secret))

    def update(self, connector: Connector, secret: str | None) -> None:
        with self.store.write() as db:
            stored = self.store.get(connector.name)
            if stored is None:
                raise ConfigError(f"no connector named {connector.name!r}: use `egress connector add`")
            sealed = self.key.seal(connector.name, secret) if secret is not None else stored.sealed
            if secret is None:
                self.key.open(connector.name, sealed)  # refuse to keep a secret we cannot open
            Store.put(db, connector.name, connector.to_spec(), sealed)

    def remove(self, name: str) -> None:
        with self.store.write() as db:
            if not Store.delete(db, name):
                raise ConfigError(f"no connector named {name!r}")

    def apply(self, declared: Iterable[tuple[Declared, str]], prune: bool) -> ApplyReport:
        """Make the store hold these connectors (secrets already read)."""
        report = ApplyReport()
        items = list(declared)
        wanted = {d.connector.name for d, _ in items}
        with self.store.write() as db:
            current = {s.name: s for s in self.store.connectors()}
            for decl, secret in items:
                c = decl.connector
                old = current.get(c.name)
                if old is None:
                    report.created.append(c.name)
                elif old.spec == c.to_spec() and self._opens_to(old, secret):
                    report.unchanged.append(c.name)
                    continue
                else:
                    report.updated.append(c.name)
                Store.put(db, c.name, c.to_spec(), self.key.seal(c.name, secret))
            if prune:
                for name in sorted(set(current) - wanted):
                    Store.delete(db, name)
                    report.removed.append(name)
        report.warnings = ambiguities(c for c, _ in self.connectors())
        return report

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
        write_private(staged, (text + "\n").encode())
        with self.store.write() as db:
            for stored in self.store.connectors():
                secret = old.open(stored.name, stored.sealed)
                Store.put(db, stored.name, stored.spec, new.seal(stored.name, secret))
        os.replace(path, path.with_name(path.name + ".old"))
        os.replace(staged, path)
        self._key = new
        return old.key_id.hex(), new.key_id.hex()

    def mint_grant(self, connectors: list[str], ttl: int, label: str) -> tuple[str, Grant]:
        known = {c.name for c, _ in self.connectors()}
        unknown = sorted(set(connectors) - known)
        if unknown:
            raise ConfigError(f"--connector: no connector named {', '.join(map(repr, unknown))}")
        if ttl <= 0:
            raise ConfigError("--ttl must be positive")
        token, grant = GrantKey.load(self.home.grant_key_path).mint(connectors, ttl, label)
        with self.store.write() as db:
            Store.add_grant(db, grant.id, label, sorted(connectors), grant.expires_at)
        return token, grant

    def revoke_grant(self, token_or_id: str) -> str:
        gid = grant_id_of(token_or_id) or token_or_id
        with self.store.write() as db:
            if not Store.revoke_grant(db, gid):
                raise ConfigError(f"no active grant with id {gid!r} (see `egress grant list`)")
        return gid

    def rotate_grant_key(self) -> None:
        """New grant key: every outstanding token stops working at the next reload."""
        GrantKey.create(self.home.grant_key_path)
        with self.store.write():
            pass  # bump the generation so running proxies reload the key

    def grant_key(self) -> GrantKey | None:
        try:
            return GrantKey.load(self.home.grant_key_path)
        except ConfigError:
            return None

    def policy(self) -> Policy:
        """All connectors with their secrets opened: what the proxy enforces."""
        self._key = None  # re-read: `egress keys rotate` may have replaced it
        return Policy((c, self.key.open(c.name, s.sealed)) for c, s in self.connectors())


def ambiguities(connectors: Iterable[Connector]) -> list[str]:
    """Pairs of connectors with equally specific patterns that can overlap."""
    seen: dict[tuple[str, bool, int, tuple[int, int, int, int]], list[tuple[str, str]]] = {}
    warnings: list[str] = []
    for c in connectors:
        for p in c.patterns:
            key = (p.host, p.wildcard_host, p.port, p.specificity)
            prefix = p.path.split("*", 1)[0]
            for other_name, other_prefix in seen.get(key, []):
                if other_name != c.name and (
                    prefix.startswith(other_prefix) or other_prefix.startswith(prefix)
                ):
                    warnings.append(
                        f"connectors {other_name!r} and {c.name!r} have equally specific patterns "
                        f"for {p.text}: requests they both match are blocked as ambiguous"
                    )
            seen.setdefault(key, []).append((c.name, prefix))
    return warnings

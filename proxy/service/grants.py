"""Grant use cases: mint, list, revoke, rotate the signing key."""

from __future__ import annotations

from typing import Any

from proxy.connectors import connector_key, split_key, workspace_of
from proxy.errors import ConfigError, NotFound
from proxy.grants import Grant, grant_id_of, grant_problem
from proxy.reasons import Reason
from proxy.secrets import DEFAULT_WORKSPACE
from proxy.service.home import Home
from proxy.store import Store


class Grants:
    """The grants of one workspace (the home's)."""

    def __init__(self, home: Home, store: Store | None = None) -> None:
        self.home = home
        self.workspace = home.workspace
        self.store: Store = store or home.store()

    def __enter__(self) -> Grants:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()

    def mint(self, connectors: list[str], ttl: int, label: str) -> tuple[str, Grant]:
        """A grant for connectors of this workspace (by name): it can reach no other's."""
        keys = [connector_key(self.workspace, name) for name in connectors]
        known = {s.name for s in self.store.connectors()}
        unknown = sorted(n for n, k in zip(connectors, keys, strict=True) if k not in known)
        if unknown:
            where = "" if self.workspace == DEFAULT_WORKSPACE else f" in workspace {self.workspace!r}"
            raise ConfigError(
                f"--connector: no connector named {', '.join(map(repr, unknown))}{where}", field="connectors"
            )
        connectors = keys
        if ttl <= 0:
            raise ConfigError("--ttl must be positive", field="ttl")
        token, grant = self.home.grant_key().mint(connectors, ttl, label)
        with self.store.write() as tx:
            tx.add_grant(grant.id, label, sorted(connectors), grant.expires_at)
        return token, grant

    def check(self, token: str, now: float) -> Grant | Reason:
        """The grant a token carries, or why the proxy would refuse it (as at CONNECT)."""
        try:
            key = self.home.grant_key()
        except ConfigError:
            return Reason.BAD_GRANT
        grant = key.verify(token)
        if isinstance(grant, Reason):
            return grant
        return grant_problem(grant, key, self.store.revoked_grants(), now) or grant

    def list(self) -> list[dict[str, Any]]:
        """This workspace's grants, connectors by name."""
        out = []
        for g in self.store.grants():
            if workspace_of(g["connectors"]) == self.workspace:
                out.append(
                    {
                        **g,
                        "connectors": [split_key(k)[1] for k in g["connectors"]],
                        "workspace": self.workspace,
                    }
                )
        return out

    def revoke(self, token_or_id: str) -> str:
        gid = grant_id_of(token_or_id) or token_or_id
        if not any(g["id"] == gid for g in self.list()):
            raise NotFound(f"no active grant with id {gid!r} (see `egress grant list`)")
        with self.store.write() as tx:
            if not tx.revoke_grant(gid):
                raise NotFound(f"no active grant with id {gid!r} (see `egress grant list`)")
        return gid

    def rotate_key(self) -> None:
        """New grant key: every outstanding token stops working at the next reload, open tunnels too."""
        self.home.new_grant_key()
        with self.store.write() as tx:
            tx.touch()  # running proxies reload the key

"""Admin tokens: who may use the admin API, and over which workspace.

A token is ``egress_adm_<id>_<32 random bytes, urlsafe>``. It is printed once;
the store keeps its id (public: listing, revoking) and a SHA-256 of the whole
token. A plain hash is enough because the token is 256 random bits: nothing
can be guessed from the hash faster than the token itself, so a slow password
hash (bcrypt, scrypt) would only add latency to every API request. A request
is matched by the id in the token, then the hashes are compared in constant
time (``hmac.compare_digest``); an unknown id is compared against a dummy so it
takes as long as a wrong secret.

``EGRESS_ADMIN_TOKEN`` (the environment of the serving process) bootstraps an
all-workspace token that is never stored: the first operator needs one before
any CLI has been run against the store.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.connectors import check_workspace
from proxy.errors import ConfigError, NotFound
from proxy.service.home import Home
from proxy.store import Store

PREFIX = "egress_adm_"
BOOTSTRAP_ENV = "EGRESS_ADMIN_TOKEN"
BOOTSTRAP_ID = "env"
MIN_BOOTSTRAP_CHARS = 24
MAX_LABEL_CHARS = 200
_TOKEN_RE = re.compile(r"^egress_adm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})\Z")
_DUMMY_HASH = hashlib.sha256(b"egress-proxy: no such admin token").hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: the token's id, its workspace (None: every one), and whether it may write."""

    token_id: str
    workspace: str | None
    read_only: bool

    def sees(self, workspace: str) -> bool:
        return self.workspace is None or self.workspace == workspace


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_bootstrap(env: Mapping[str, str]) -> None:
    """Refuse a guessable bootstrap token at start (exit 2), not at the first request."""
    value = env.get(BOOTSTRAP_ENV)
    if value is not None and (len(value) < MIN_BOOTSTRAP_CHARS or not value.isprintable() or " " in value):
        raise ConfigError(
            f"{BOOTSTRAP_ENV} must be at least {MIN_BOOTSTRAP_CHARS} printable characters without spaces "
            f"(e.g. the output of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )


class AdminTokens:
    """Create, list, revoke and check admin tokens (the CLI manages them; the API checks them)."""

    def __init__(self, home: Home, store: Store | None = None) -> None:
        self.home = home
        self.store: Store = store or home.store()

    def __enter__(self) -> AdminTokens:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()

    def create(self, workspace: str | None, read_only: bool, label: str) -> tuple[str, dict[str, Any]]:
        """A new token (shown once: only its hash is stored) and its listed row."""
        if workspace is not None:
            check_workspace(workspace, "--workspace")
        if len(label) > MAX_LABEL_CHARS or not label.isprintable():
            raise ConfigError(f"--label must be at most {MAX_LABEL_CHARS} printable characters")
        tid = secrets.token_hex(6)
        token = f"{PREFIX}{tid}_{secrets.token_urlsafe(32)}"
        with self.store.write() as tx:
            tx.add_admin_token(tid, token_hash(token), workspace, read_only, label)
        row = self.store.admin_token(tid)
        assert row is not None
        return token, _public(row)

    def list(self) -> list[dict[str, Any]]:
        """Every token, revoked ones included (never a hash)."""
        return [_public(r) for r in self.store.admin_tokens()]

    def revoke(self, tid: str) -> None:
        with self.store.write() as tx:
            if not tx.revoke_admin_token(tid):
                raise NotFound(f"no active admin token with id {tid!r} (see `egress admin token list`)")

    def authenticate(self, token: str) -> Principal | None:
        """The principal a presented token stands for, or None (unknown, wrong or revoked)."""
        bootstrap = self.home.env.get(BOOTSTRAP_ENV)
        if bootstrap and hmac.compare_digest(token_hash(token), token_hash(bootstrap)):
            return Principal(BOOTSTRAP_ID, None, False)
        m = _TOKEN_RE.match(token)
        row = self.store.admin_token(m.group(1)) if m else None
        ok = hmac.compare_digest(token_hash(token), row["token_hash"] if row else _DUMMY_HASH)
        if not ok or row is None or row["revoked_at"] is not None:
            return None
        return Principal(row["id"], row["workspace"], row["read_only"])

    def active(self, token_id: str) -> Principal | None:
        """The principal of a token known by its id while it is still valid (unrevoked), or None:
        a dashboard session, opened with a token, asks again on every request."""
        if token_id == BOOTSTRAP_ID:
            return Principal(BOOTSTRAP_ID, None, False) if self.home.env.get(BOOTSTRAP_ENV) else None
        row = self.store.admin_token(token_id)
        if row is None or row["revoked_at"] is not None:
            return None
        return Principal(row["id"], row["workspace"], row["read_only"])


def _public(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "token_hash"}

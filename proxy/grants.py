"""Grants: signed, expiring proxy credentials that scope a step to its connectors.

A token is ``eg1.<payload>.<signature>`` (base64url): the payload names the
grant id, connectors, expiry and label; the signature is HMAC-SHA256 under the
grant key in EGRESS_HOME. Tokens are never stored, only their ids (for
``grant list`` and revocation). Verification is constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from proxy.errors import ConfigError

PREFIX = "eg1"
KEY_BYTES = 32
GRANT_USER = "grant"


class GrantProblem(StrEnum):
    MISSING = "no-grant"
    BAD = "bad-grant"
    EXPIRED = "expired-grant"
    REVOKED = "revoked-grant"


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    connectors: frozenset[str]
    expires_at: int
    label: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class GrantKey:
    """The HMAC key; rotating it invalidates every outstanding token."""

    __slots__ = ("_key",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise ConfigError(f"grant key must be {KEY_BYTES} bytes")
        self._key = raw

    def __repr__(self) -> str:
        return "GrantKey(...)"

    @classmethod
    def load(cls, path: Path) -> GrantKey:
        try:
            return cls(base64.b64decode(path.read_text().strip(), validate=True))
        except FileNotFoundError:
            raise ConfigError(f"no grant key at {path}: run `egress init`") from None
        except (OSError, binascii.Error, ValueError) as e:
            raise ConfigError(f"{path}: unusable grant key ({e})") from None

    @staticmethod
    def create(path: Path) -> None:
        """Write a fresh random key (0600), replacing any previous one."""
        text = base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n"
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    def _sign(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest()

    def mint(
        self, connectors: Iterable[str], ttl: int, label: str, now: float | None = None
    ) -> tuple[str, Grant]:
        now = time.time() if now is None else now
        grant = Grant(secrets.token_hex(8), frozenset(connectors), int(now) + ttl, label)
        payload = {"id": grant.id, "c": sorted(grant.connectors), "exp": grant.expires_at, "l": label}
        body = f"{PREFIX}.{_b64(json.dumps(payload, separators=(',', ':')).encode())}"
        return f"{body}.{_b64(self._sign(body))}", grant

    def verify(self, token: str, now: float) -> Grant | GrantProblem:
        """The grant a token carries, or why it is refused (revocation is checked elsewhere)."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != PREFIX or len(token) > 4096:
            return GrantProblem.BAD
        body = f"{parts[0]}.{parts[1]}"
        try:
            signature = _unb64(parts[2])
        except (binascii.Error, ValueError):
            return GrantProblem.BAD
        if not hmac.compare_digest(signature, self._sign(body)):
            return GrantProblem.BAD
        try:
            payload = json.loads(_unb64(parts[1]))
            grant = Grant(
                str(payload["id"]),
                frozenset(str(c) for c in payload["c"]),
                int(payload["exp"]),
                str(payload.get("l", "")),
            )
        except (binascii.Error, ValueError, KeyError, TypeError):
            return GrantProblem.BAD
        if grant.expires_at <= now:
            return GrantProblem.EXPIRED
        return grant


def token_from_proxy_authorization(value: str | None) -> str | GrantProblem:
    """The token in ``Proxy-Authorization: Basic base64(grant:TOKEN)``, or the problem."""
    if not value:
        return GrantProblem.MISSING
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return GrantProblem.BAD
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return GrantProblem.BAD
    if not sep or user != GRANT_USER or not password:
        return GrantProblem.BAD
    return password


def grant_id_of(token: str) -> str | None:
    """The id inside a token, signature unchecked (for revoking a leaked token)."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        return None
    try:
        return str(json.loads(_unb64(parts[1]))["id"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None


def proxy_url(token: str, address: str) -> str:
    return f"http://{GRANT_USER}:{token}@{address}"

"""Grants: signed, expiring proxy credentials that scope a step to its connectors.

A token is ``eg1.<payload>.<signature>`` (base64url): the payload names the
grant id, connectors, expiry and label; the signature is HMAC-SHA256 under the
grant key. Tokens are never stored, only their ids (for ``grant list`` and
revocation). Verification is constant time. ``grant_problem`` is the one
validity check, run at CONNECT and again on every request of an open tunnel.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from proxy.errors import ConfigError
from proxy.reasons import Reason

PREFIX = "eg1"
KEY_BYTES = 32
GRANT_USER = "grant"


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    connectors: frozenset[str]
    expires_at: int
    label: str
    key_id: bytes = b""  # the key that verified it: a rotated key cuts open tunnels off


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class GrantKey:
    """The HMAC key; rotating it invalidates every outstanding token."""

    __slots__ = ("_key", "key_id")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise ConfigError(f"grant key must be {KEY_BYTES} bytes")
        self._key = raw
        self.key_id = hashlib.sha256(b"egress-proxy grant key id:" + raw).digest()[:8]

    def __repr__(self) -> str:
        return f"GrantKey(id={self.key_id.hex()})"

    @classmethod
    def from_text(cls, text: str, where: str) -> GrantKey:
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except (binascii.Error, ValueError) as e:
            raise ConfigError(f"{where}: unusable grant key ({e})") from None

    @staticmethod
    def generate_text() -> str:
        return base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n"

    def _sign(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest()

    def mint(
        self, connectors: Iterable[str], ttl: int, label: str, now: float | None = None
    ) -> tuple[str, Grant]:
        now = time.time() if now is None else now
        grant = Grant(secrets.token_hex(8), frozenset(connectors), math.ceil(now + ttl), label, self.key_id)
        payload = {"id": grant.id, "c": sorted(grant.connectors), "exp": grant.expires_at, "l": label}
        body = f"{PREFIX}.{_b64(json.dumps(payload, separators=(',', ':')).encode())}"
        return f"{body}.{_b64(self._sign(body))}", grant

    def verify(self, token: str) -> Grant | Reason:
        """The grant a signed token carries, or BAD_GRANT (validity is ``grant_problem``'s)."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != PREFIX or len(token) > 4096:
            return Reason.BAD_GRANT
        body = f"{parts[0]}.{parts[1]}"
        try:
            signature = _unb64(parts[2])
        except (binascii.Error, ValueError):
            return Reason.BAD_GRANT
        if not hmac.compare_digest(signature, self._sign(body)):
            return Reason.BAD_GRANT
        try:
            payload = json.loads(_unb64(parts[1]))
            return Grant(
                str(payload["id"]),
                frozenset(str(c) for c in payload["c"]),
                int(payload["exp"]),
                str(payload.get("l", "")),
                self.key_id,
            )
        except (binascii.Error, ValueError, KeyError, TypeError):
            return Reason.BAD_GRANT


def grant_problem(grant: Grant, key: GrantKey | None, revoked: frozenset[str], now: float) -> Reason | None:
    """Why a verified grant may no longer be used: key rotated, revoked, expired."""
    if key is None or grant.key_id != key.key_id:
        return Reason.BAD_GRANT
    if grant.id in revoked:
        return Reason.REVOKED_GRANT
    if grant.expires_at <= now:
        return Reason.EXPIRED_GRANT
    return None


def token_from_proxy_authorization(value: str | None) -> str | Reason:
    """The token in ``Proxy-Authorization: Basic base64(grant:TOKEN)``, or why there is none."""
    if not value:
        return Reason.NO_GRANT
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return Reason.BAD_GRANT
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return Reason.BAD_GRANT
    if not sep or user != GRANT_USER or not password:
        return Reason.BAD_GRANT
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

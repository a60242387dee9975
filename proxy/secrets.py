"""Connector credentials encrypted at rest with AES-256-GCM.

A sealed credential is ``version(2) + key_id(8) + nonce(12) + ciphertext+tag``.
Version ``v2`` seals every named field of a credential together as one JSON
object, with the connector's identity (workspace and name) as associated data,
so a ciphertext copied onto another connector fails to open. Version ``v1``
(one string, the connector name as associated data) is what earlier releases
wrote: it still opens, as the field ``secret``, and is re-sealed as ``v2`` on
the next write. The key id (first 8 bytes of SHA-256 of the key) lets a store
hold credentials sealed under an older key while keys rotate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.errors import ConfigError

V1, V2 = b"v1", b"v2"
KEY_BYTES = 32
DEFAULT_WORKSPACE = "default"
_AAD_V1 = b"egress-proxy connector secret:"
_AAD_V2 = b"egress-proxy connector credential v2:"
_SECRET_FIELD = "secret"  # the one field of a v1 payload

Fields = Mapping[str, str]


class SecretError(ConfigError):
    """A credential cannot be opened: wrong master key or tampered data."""


def _aad_v2(connector: str, workspace: str) -> bytes:
    return _AAD_V2 + f"{workspace}/{connector}".encode()


class MasterKey:
    """The AES-256 key that seals every connector credential."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise ConfigError(f"master key must be {KEY_BYTES} bytes, got {len(raw)}")
        self._aead = AESGCM(raw)
        self.key_id = hashlib.sha256(raw).digest()[:8]

    def __repr__(self) -> str:
        return f"MasterKey(id={self.key_id.hex()})"

    @classmethod
    def generate(cls) -> tuple[MasterKey, str]:
        """A new random key and its base64 text form (for the key file)."""
        raw = AESGCM.generate_key(bit_length=256)
        return cls(raw), base64.b64encode(raw).decode("ascii")

    @classmethod
    def from_text(cls, text: str, where: str) -> MasterKey:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{where}: master key is not valid base64") from None
        if len(raw) != KEY_BYTES:
            raise ConfigError(f"{where}: master key must decode to {KEY_BYTES} bytes, got {len(raw)}")
        return cls(raw)

    @classmethod
    def from_file(cls, path: Path) -> MasterKey:
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read master key file {path}: {e.strerror}") from None
        return cls.from_text(text, str(path))

    def seal(self, connector: str, fields: Fields, workspace: str = DEFAULT_WORKSPACE) -> bytes:
        """Seal all of a credential's fields as one payload."""
        nonce = os.urandom(12)
        plain = json.dumps({"fields": dict(fields)}, sort_keys=True, separators=(",", ":")).encode()
        return V2 + self.key_id + nonce + self._aead.encrypt(nonce, plain, _aad_v2(connector, workspace))

    def open(self, connector: str, sealed: bytes, workspace: str = DEFAULT_WORKSPACE) -> dict[str, str]:
        """The credential's fields; SecretError naming the connector if it cannot be opened."""
        version = sealed[:2]
        if len(sealed) < 2 + 8 + 12 + 16 or version not in (V1, V2):
            raise SecretError(f"connector {connector!r}: stored credential is malformed")
        key_id, nonce, ct = sealed[2:10], sealed[10:22], sealed[22:]
        if key_id != self.key_id:
            raise SecretError(
                f"connector {connector!r}: credential was sealed with master key {key_id.hex()}, "
                f"but the current master key is {self.key_id.hex()} (wrong EGRESS_MASTER_KEY?)"
            )
        aad = _AAD_V1 + connector.encode() if version == V1 else _aad_v2(connector, workspace)
        try:
            plain = self._aead.decrypt(nonce, ct, aad).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise SecretError(
                f"connector {connector!r}: stored credential failed authentication (tampered data)"
            ) from None
        if version == V1:
            return {_SECRET_FIELD: plain}
        fields = json.loads(plain).get("fields")
        if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
            raise SecretError(f"connector {connector!r}: stored credential is malformed")
        return fields


def is_legacy(sealed: bytes) -> bool:
    """Sealed by an earlier release (one string): re-seal it as fields."""
    return sealed[:2] == V1

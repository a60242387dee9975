"""Connector secrets encrypted at rest with AES-256-GCM.

A sealed secret is ``b"v1" + key_id(8) + nonce(12) + ciphertext+tag``. The key
id (first 8 bytes of SHA-256 of the key) lets a store hold secrets sealed under
an older key while keys rotate; the connector name is bound as associated data
so a ciphertext copied onto another connector fails to open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.errors import ConfigError

VERSION = b"v1"
KEY_BYTES = 32
_AAD_PREFIX = b"egress-proxy connector secret:"


class SecretError(ConfigError):
    """A secret cannot be opened: wrong master key or tampered data."""


class MasterKey:
    """The AES-256 key that seals every connector secret."""

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

    def seal(self, connector: str, secret: str) -> bytes:
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, secret.encode("utf-8"), _AAD_PREFIX + connector.encode())
        return VERSION + self.key_id + nonce + ct

    def open(self, connector: str, sealed: bytes) -> str:
        if len(sealed) < 2 + 8 + 12 + 16 or sealed[:2] != VERSION:
            raise SecretError(f"connector {connector!r}: stored secret is malformed")
        key_id, nonce, ct = sealed[2:10], sealed[10:22], sealed[22:]
        if key_id != self.key_id:
            raise SecretError(
                f"connector {connector!r}: secret was sealed with master key {key_id.hex()}, "
                f"but the current master key is {self.key_id.hex()} (wrong EGRESS_MASTER_KEY?)"
            )
        try:
            return self._aead.decrypt(nonce, ct, _AAD_PREFIX + connector.encode()).decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise SecretError(
                f"connector {connector!r}: stored secret failed authentication (tampered data)"
            ) from None

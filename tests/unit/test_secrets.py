"""Sealed connector credentials: AES-256-GCM with the connector identity as associated data."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import ConfigError
from proxy.secrets import KEY_BYTES, V1, V2, MasterKey, SecretError, is_legacy

SECRET = "sk_live_51Hxyz-SECRET-VALUE-\u00e9\u20ac"
FIELDS = {"secret": SECRET}


@pytest.fixture
def key() -> MasterKey:
    return MasterKey.generate()[0]


def test_round_trip(key: MasterKey) -> None:
    sealed = key.seal("stripe", FIELDS)
    assert isinstance(sealed, bytes)
    assert sealed.startswith(V2 + key.key_id)
    assert key.open("stripe", sealed) == FIELDS


def test_sealed_blob_does_not_contain_plaintext(key: MasterKey) -> None:
    sealed = key.seal("stripe", FIELDS)
    assert SECRET.encode() not in sealed
    assert b"sk_live" not in sealed
    assert base64.b64encode(SECRET.encode()) not in sealed


def test_ciphertext_differs_each_time(key: MasterKey) -> None:
    blobs = {key.seal("stripe", FIELDS) for _ in range(50)}
    assert len(blobs) == 50
    nonces = {b[10:22] for b in blobs}
    assert len(nonces) == 50
    assert all(key.open("stripe", b) == FIELDS for b in blobs)


def test_same_key_text_opens(key: MasterKey) -> None:
    k1, text = MasterKey.generate()
    k2 = MasterKey.from_text(text, "t")
    assert k1.key_id == k2.key_id
    assert k2.open("c", k1.seal("c", FIELDS)) == FIELDS
    assert len(base64.b64decode(text)) == KEY_BYTES


def test_every_bit_flip_is_detected(key: MasterKey) -> None:
    sealed = key.seal("stripe", {"secret": "short-secret"})
    for i in range(len(sealed)):
        for bit in range(8):
            tampered = bytearray(sealed)
            tampered[i] ^= 1 << bit
            with pytest.raises(SecretError):
                key.open("stripe", bytes(tampered))


@pytest.mark.parametrize("cut", [1, 5, 16, 17])
def test_truncated_ciphertext(key: MasterKey, cut: int) -> None:
    sealed = key.seal("stripe", FIELDS)
    with pytest.raises(SecretError):
        key.open("stripe", sealed[:-cut])


def test_appended_bytes_detected(key: MasterKey) -> None:
    sealed = key.seal("stripe", FIELDS)
    with pytest.raises(SecretError):
        key.open("stripe", sealed + b"\x00")


def test_tamper_message(key: MasterKey) -> None:
    sealed = bytearray(key.seal("stripe", FIELDS))
    sealed[-1] ^= 1
    with pytest.raises(SecretError) as e:
        key.open("stripe", bytes(sealed))
    assert "'stripe'" in str(e.value)
    assert "tamper" in str(e.value)
    assert SECRET not in str(e.value)


def test_wrong_key_names_both_key_ids(key: MasterKey) -> None:
    other = MasterKey.generate()[0]
    sealed = key.seal("stripe", FIELDS)
    with pytest.raises(SecretError) as e:
        other.open("stripe", sealed)
    msg = str(e.value)
    assert key.key_id.hex() in msg
    assert other.key_id.hex() in msg
    assert "'stripe'" in msg
    assert SECRET not in msg


def test_wrong_key_with_forged_key_id_fails(key: MasterKey) -> None:
    other = MasterKey.generate()[0]
    sealed = key.seal("stripe", FIELDS)
    forged = V2 + other.key_id + sealed[10:]
    with pytest.raises(SecretError):
        other.open("stripe", forged)


@pytest.mark.parametrize("other", ["github", "Stripe", "stripe ", "", "stripe\x00"])
def test_ciphertext_bound_to_connector_name(key: MasterKey, other: str) -> None:
    sealed = key.seal("stripe", FIELDS)
    with pytest.raises(SecretError):
        key.open(other, sealed)
    assert key.open("stripe", sealed) == FIELDS


@pytest.mark.parametrize(
    "blob",
    [b"", b"v1", b"v2" + b"\x00" * 60, b"\x00" * 100, b"v1" + b"\x00" * 35, b"garbage"],
)
def test_malformed_blob(key: MasterKey, blob: bytes) -> None:
    with pytest.raises(SecretError) as e:
        key.open("c", blob)
    assert "'c'" in str(e.value)


def test_wrong_version_is_malformed(key: MasterKey) -> None:
    sealed = key.seal("c", FIELDS)
    with pytest.raises(SecretError) as e:
        key.open("c", b"v3" + sealed[2:])
    assert "malformed" in str(e.value)


def test_secret_error_is_a_config_error() -> None:
    assert issubclass(SecretError, ConfigError)
    assert SecretError("x").exit_code == 2


@pytest.mark.parametrize(
    "text",
    ["not base64!!", "****", "YWJj\x00", "\u00e9\u00e9\u00e9\u00e9", "QUFB=QUFB"],
)
def test_bad_base64_key_text(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        MasterKey.from_text(text, "EGRESS_MASTER_KEY")
    msg = str(e.value)
    assert msg.startswith("EGRESS_MASTER_KEY:")
    assert "base64" in msg


@pytest.mark.parametrize("size", [0, 1, 16, 24, 31, 33, 64])
def test_wrong_length_key_text(size: int) -> None:
    text = base64.b64encode(os.urandom(size)).decode()
    with pytest.raises(ConfigError) as e:
        MasterKey.from_text(text, "somewhere")
    msg = str(e.value)
    assert msg.startswith("somewhere:")
    assert "32 bytes" in msg
    if text:
        assert text not in msg


def test_key_text_whitespace_is_tolerated() -> None:
    raw = os.urandom(32)
    text = base64.b64encode(raw).decode()
    assert MasterKey.from_text(f"  {text}\n", "t").key_id == MasterKey(raw).key_id


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_raw_key_wrong_length(size: int) -> None:
    with pytest.raises(ConfigError):
        MasterKey(b"\x01" * size)


def test_key_file(tmp_path: Path) -> None:
    k, text = MasterKey.generate()
    f = tmp_path / "master.key"
    f.write_text(text + "\n")
    assert MasterKey.from_file(f).key_id == k.key_id
    missing = tmp_path / "missing.key"
    with pytest.raises(ConfigError) as e:
        MasterKey.from_file(missing)
    assert str(missing) in str(e.value)
    f.write_text("garbage!")
    with pytest.raises(ConfigError) as e:
        MasterKey.from_file(f)
    assert str(f) in str(e.value)


def test_key_never_in_repr_or_errors() -> None:
    raw = os.urandom(32)
    text = base64.b64encode(raw).decode()
    k = MasterKey.from_text(text, "t")
    shown = repr(k) + str(k)
    assert text not in shown
    assert raw.hex() not in shown
    assert k.key_id.hex() in repr(k)
    # Near-miss key texts must not be echoed back in the error.
    for near in (text[:-4], text + "AAAA", text[:-1] + "!"):
        with pytest.raises(ConfigError) as e:
            MasterKey.from_text(near, "EGRESS_MASTER_KEY")
        assert near not in str(e.value)
        assert text[:20] not in str(e.value)


def test_plaintext_never_in_error_messages(key: MasterKey) -> None:
    sealed = key.seal("stripe", FIELDS)
    other = MasterKey.generate()[0]
    messages = []
    for k, name, blob in (
        (other, "stripe", sealed),
        (key, "github", sealed),
        (key, "stripe", sealed[:-1]),
        (key, "stripe", sealed[:20]),
    ):
        with pytest.raises(SecretError) as e:
            k.open(name, blob)
        messages.append(str(e.value) + repr(e.value))
    for m in messages:
        assert SECRET not in m
        assert "sk_live" not in m


def test_key_has_no_instance_dict(key: MasterKey) -> None:
    # __slots__: nothing (such as the raw key) can be stashed as an attribute.
    assert not hasattr(key, "__dict__")
    assert not any(isinstance(getattr(key, a, None), bytes) and len(getattr(key, a)) == 32 for a in dir(key))


@settings(max_examples=100, deadline=None, database=None)
@given(name=st.text(max_size=30), fields=st.dictionaries(st.text(max_size=10), st.text(max_size=200)))
def test_property_round_trip(name: str, fields: dict[str, str]) -> None:
    k = MasterKey(b"\x07" * 32)
    sealed = k.seal(name, fields)
    assert k.open(name, sealed) == fields
    with pytest.raises(SecretError):
        k.open(name + "x", sealed)


def _seal_v1(key: MasterKey, connector: str, secret: str) -> bytes:
    """What earlier releases wrote: one string, the bare name as associated data."""
    nonce = os.urandom(12)
    ct = key._aead.encrypt(nonce, secret.encode(), b"egress-proxy connector secret:" + connector.encode())
    return V1 + key.key_id + nonce + ct


def test_legacy_payload_opens_as_the_secret_field(key: MasterKey) -> None:
    sealed = _seal_v1(key, "stripe", SECRET)
    assert is_legacy(sealed)
    assert key.open("stripe", sealed) == {"secret": SECRET}
    with pytest.raises(SecretError):
        key.open("github", sealed)
    assert not is_legacy(key.seal("stripe", FIELDS))


def test_fields_sealed_together(key: MasterKey) -> None:
    fields = {"username": "ops@example.com", "password": "hunter2-\u00e9", "extra": "{}"}
    sealed = key.seal("jira", fields)
    assert key.open("jira", sealed) == fields
    for value in fields.values():
        assert value.encode() not in sealed


def test_bound_to_workspace(key: MasterKey) -> None:
    sealed = key.seal("stripe", FIELDS, "acme")
    assert key.open("stripe", sealed, "acme") == FIELDS
    with pytest.raises(SecretError):
        key.open("stripe", sealed)  # the default workspace
    with pytest.raises(SecretError):
        key.open("stripe", sealed, "other")

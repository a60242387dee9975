"""The proxy's certificate authority, in the file layout mitmproxy loads.

``mitmproxy-ca.pem`` (key + certificate, mode 0600) is what the proxy signs
with; ``mitmproxy-ca-cert.pem`` is the public certificate clients trust.

The key is ECDSA P-256: mitmproxy gives every leaf certificate the CA's own
key pair, so the CA key is also the one each client TLS handshake signs with,
and a P-256 signature costs a fraction of an RSA-2048 one.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.errors import ConfigError
from proxy.service.files import write_atomic

KEY_FILE = "mitmproxy-ca.pem"
CERT_FILE = "mitmproxy-ca-cert.pem"


def ensure_ca(directory: Path, common_name: str = "egress-proxy CA") -> bool:
    """Create the CA in ``directory`` unless it exists; True if created."""
    if (directory / KEY_FILE).exists():
        return False
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "egress-proxy"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    write_atomic(directory / KEY_FILE, key_pem + cert_pem, private=True)
    (directory / CERT_FILE).write_bytes(cert_pem)
    return True


SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, BSD
)


def system_bundle() -> bytes:
    """The platform's trusted roots, falling back to certifi's."""
    for candidate in SYSTEM_BUNDLES:
        try:
            return Path(candidate).read_bytes()
        except OSError:
            continue
    import certifi

    return Path(certifi.where()).read_bytes()


def write_bundle(path: Path, ca_cert: Path, base: bytes | None = None) -> None:
    """System roots plus our CA: SSL_CERT_FILE replaces the default set, so both."""
    data = base if base is not None else system_bundle()
    if not data.endswith(b"\n"):
        data += b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data + b"# egress-proxy CA\n" + ca_cert.read_bytes())


def import_ca(directory: Path, pem: bytes, where: str) -> Path | None:
    """Install an operator's CA (key + certificate in one PEM file).

    The existing CA is kept as a timestamped backup, never overwritten. Returns
    the backup's path, if there was a CA before.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
        certs = x509.load_pem_x509_certificates(pem)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"{where}: needs an unencrypted private key and a certificate in PEM ({e})"
        ) from None
    cert = certs[0]
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise ConfigError(f"{where}: the certificate does not belong to the private key")
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise ConfigError(f"{where}: the certificate is not a CA (BasicConstraints CA:TRUE missing)")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    backup = None
    if (directory / KEY_FILE).exists():
        backup = directory / f"{KEY_FILE}.bak-{int(datetime.datetime.now().timestamp())}"
        os.replace(directory / KEY_FILE, backup)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    write_atomic(directory / KEY_FILE, key_pem + cert_pem, private=True)
    (directory / CERT_FILE).write_bytes(cert_pem)
    for stale in directory.glob("mitmproxy-ca*.p12"):
        stale.unlink()
    return backup

"""AWS Signature Version 4: the sandbox signs with a dummy key, the proxy re-signs.

The client's ``authorization``, ``x-amz-security-token`` and ``x-amz-date`` are
dropped and the final request (Host rewritten, headers stripped) is signed with
the real key, so the real secret never enters the sandbox. The signer is
written out here rather than calling botocore: botocore derives the signing key
and re-parses the URL on every call (130-300 us a request on a busy two-core
box), while this caches the key per day and signs in 20-40 us there
(bench/sigv4.py). Tests check every signature against botocore's.

Bodies are never read: the client's ``x-amz-content-sha256`` is signed as it is
(a hex digest, ``UNSIGNED-PAYLOAD``, ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``), or
``UNSIGNED-PAYLOAD`` when there is none. Signed streaming bodies are refused:
each chunk's signature chains from the client's dummy seed signature.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, unquote_to_bytes

from proxy.credentials.rendered import Rendered
from proxy.credentials.signing import Signed, Unsignable
from proxy.credentials.templates import CONTROL, check_template, render, template_fields
from proxy.errors import ConfigError

TEMPLATE_KEYS = ("access_key_id", "secret_access_key", "session_token")
SPEC_KEYS = (*TEMPLATE_KEYS, "region", "service")
REQUIRED_KEYS = ("access_key_id", "secret_access_key", "region", "service")
# Region and service go into the credential scope (``DATE/REGION/SERVICE/aws4_request``).
SCOPE_NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*\Z")
MAX_SCOPE_NAME = 64
# The key id goes into ``Credential=KEY/scope, ...``: "/", "," and spaces would break it.
KEY_ID_RE = re.compile(r"^[A-Za-z0-9._~+=-]{1,256}\Z")

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# The one streaming mode with no chunk signatures: only the seed signature changes.
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
HEX_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
# Replaced on every request (names as the proxy folds them: lowercase, "_" as "-").
REPLACED = frozenset({"authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"})
# Signed when present besides every x-amz-* header (S3 refuses unsigned x-amz-* ones).
# Nothing else is signed: content-length and accept-encoding may still change after signing.
SIGNED_ALSO = frozenset({"content-type", "content-md5"})
# Query parameters of a presigned URL: a second signature the proxy cannot replace.
PRESIGN_PARAMS = frozenset({"x-amz-algorithm", "x-amz-credential", "x-amz-signature", "x-amz-security-token"})

# Already canonical: S3 signs the path as sent; query items are signed re-encoded.
_S3_PATH_OK = re.compile(r"^(?:[A-Za-z0-9\-._~/!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})*\Z")
_S3_PATH_UNSAFE = re.compile(r"%(?![0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~/!$&'()*+,;=:@%]")
_QUERY_OK = re.compile(r"^(?:[A-Za-z0-9\-._~]|%[0-9A-F]{2})*\Z")


def _check_scope_name(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_SCOPE_NAME or not SCOPE_NAME_RE.match(value):
        raise ConfigError(f"{where} must be lowercase letters, digits and '-' (like us-east-1 or s3)")
    return value


@dataclass(frozen=True, slots=True)
class SigV4Placement:
    """``{aws_sigv4: {access_key_id: T, secret_access_key: T, session_token: T, region: R, service: S}}``."""

    access_key_id: str  # templates, rendered from the connector's fields
    secret_access_key: str
    region: str
    service: str
    session_token: str | None = None
    KEYS: ClassVar[frozenset[str]] = frozenset({"aws_sigv4"})

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str) -> SigV4Placement:
        """Validate an ``inject:`` mapping (the connector checks that its fields exist)."""
        others = sorted(str(k) for k, v in spec.items() if k != "aws_sigv4" and v is not None)
        if others:
            raise ConfigError(f"{where}: inject.{others[0]} does not apply to aws_sigv4")
        body = spec.get("aws_sigv4")
        w = f"{where}: inject.aws_sigv4"
        if not isinstance(body, Mapping):
            raise ConfigError(f"{w} must be a mapping with {', '.join(SPEC_KEYS)}")
        unknown = sorted(str(k) for k in body if k not in SPEC_KEYS)
        if unknown:
            raise ConfigError(f"{w}: unknown key(s) {', '.join(unknown)}")
        missing = [k for k in REQUIRED_KEYS if body.get(k) is None]
        if missing:
            raise ConfigError(f"{w}: {', '.join(missing)} is required")
        token = body.get("session_token")
        return cls(
            access_key_id=check_template(body["access_key_id"], f"{w}.access_key_id"),
            secret_access_key=check_template(body["secret_access_key"], f"{w}.secret_access_key"),
            region=_check_scope_name(body["region"], f"{w}.region"),
            service=_check_scope_name(body["service"], f"{w}.service"),
            session_token=None if token is None else check_template(token, f"{w}.session_token"),
        )

    @property
    def where(self) -> str:
        return f"aws_sigv4 {self.region}/{self.service}"

    def describe(self) -> str:
        token = f", session_token {self.session_token}" if self.session_token else ""
        return (
            f"aws_sigv4 {self.region}/{self.service}: access_key_id {self.access_key_id}, "
            f"secret_access_key {self.secret_access_key}{token}"
        )

    def to_spec(self) -> dict[str, Any]:
        body = {
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "region": self.region,
            "service": self.service,
        }
        if self.session_token is not None:
            body["session_token"] = self.session_token
        return {"aws_sigv4": body}

    def fields(self) -> frozenset[str]:
        templates = (self.access_key_id, self.secret_access_key, self.session_token or "")
        return frozenset().union(*(template_fields(t) for t in templates))

    def render(self, fields: Mapping[str, str]) -> Rendered:
        """A signer holding the real key; every value it holds is scrubbed from responses."""
        key_id = render(self.access_key_id, fields)
        secret = render(self.secret_access_key, fields)
        token = None if self.session_token is None else render(self.session_token, fields)
        if not KEY_ID_RE.match(key_id):
            raise ConfigError(f"{self.where}: access_key_id has characters a key id cannot have")
        for name, value in (("secret_access_key", secret), ("session_token", token)):
            if value is not None and (not value or CONTROL.search(value)):
                raise ConfigError(f"{self.where}: {name} is empty or contains control characters")
        signer = SigV4Signer(key_id, secret, self.region, self.service, token)
        # The key id is no secret, but the sandbox has no need to learn it either.
        secrets = tuple(v for v in (secret, token, key_id) if v)
        return Rendered(secrets=secrets, signer=signer)


class SigV4Signer:
    """Signs final requests with one key for one region and service (see ``Signer``)."""

    __slots__ = ("_date", "_key", "_key_id", "_secret", "_token", "region", "s3", "service")

    def __init__(
        self, access_key_id: str, secret_access_key: str, region: str, service: str, session_token: str | None
    ) -> None:
        self._key_id = access_key_id
        self._secret = secret_access_key
        self._token = session_token
        self.region = region
        self.service = service
        self.s3 = service == "s3"
        self._key: tuple[str, bytes] = ("", b"")  # (YYYYMMDD, signing key): one HMAC chain a day
        self._date: tuple[int, str] = (-1, "")  # (second, x-amz-date)

    def __repr__(self) -> str:
        return f"SigV4Signer({self.region}/{self.service})"

    def signing_key(self, day: str) -> bytes:
        """The key derived for ``day`` (YYYYMMDD); region and service are fixed per signer."""
        cached = self._key
        if cached[0] == day:
            return cached[1]
        key = ("AWS4" + self._secret).encode()
        for part in (day, self.region, self.service, "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        self._key = (day, key)  # one tuple store: threads see the old pair or the new
        return key

    def _amz_date(self, now: float) -> str:
        second = int(now)
        cached = self._date
        if cached[0] == second:
            return cached[1]
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
        self._date = (second, stamp)
        return stamp

    def sign(
        self,
        method: str,
        authority: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        now: float,
        *,
        payload_sha256: str | None = None,
    ) -> Signed | Unsignable:
        """Sign ``method``, ``target`` and the signable ``headers`` as they will be sent."""
        path, _, query = target.partition("?")
        if not path.startswith("/"):
            return Unsignable("aws_sigv4 signs origin-form request targets only")
        signed: dict[str, list[str]] = {}
        client_payload: list[str] = []
        for name, value in headers:
            key = name.lower()
            folded = key.replace("_", "-")
            if folded in REPLACED:
                if folded == "x-amz-content-sha256":
                    client_payload.append(value.strip())
            elif key.startswith("x-amz-") or key in SIGNED_ALSO:
                signed.setdefault(key, []).append(value)
        payload = payload_sha256
        if payload is None:
            if len(client_payload) > 1:
                return Unsignable("several x-amz-content-sha256 headers")
            payload = client_payload[0] if client_payload else UNSIGNED_PAYLOAD
            if payload.startswith("STREAMING-") and payload != STREAMING_UNSIGNED_TRAILER:
                return Unsignable(
                    "x-amz-content-sha256 STREAMING-*-PAYLOAD: its chunk signatures chain from the "
                    "client's signature and cannot be re-signed; have the SDK send unsigned payloads"
                )
            if payload not in (UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_TRAILER) and not HEX_SHA256_RE.match(
                payload
            ):
                return Unsignable(
                    "x-amz-content-sha256 is not a lowercase hex SHA-256, UNSIGNED-PAYLOAD "
                    "or STREAMING-UNSIGNED-PAYLOAD-TRAILER"
                )
        elif not HEX_SHA256_RE.match(payload):
            raise ValueError("payload_sha256 must be a lowercase hex SHA-256")
        canonical_query = ""
        if query:
            items = []
            for piece in query.split("&"):
                if piece:
                    name, _, value = piece.partition("=")
                    items.append((_query_encode(name), _query_encode(value)))
            if any(_param_name(n) in PRESIGN_PARAMS for n, _ in items):
                return Unsignable("a presigned URL (X-Amz-Signature in the query) cannot be re-signed")
            items.sort()
            canonical_query = "&".join(f"{n}={v}" for n, v in items)

        stamp = self._amz_date(now)
        day = stamp[:8]
        add = [("x-amz-date", stamp), ("x-amz-content-sha256", payload)]
        if self._token is not None:
            add.append(("x-amz-security-token", self._token))
        signed["host"] = [authority]
        for name, value in add:
            signed[name] = [value]
        names = sorted(signed)
        lines = [method, _s3_path(path) if self.s3 else _service_path(path), canonical_query]
        for name in names:
            values = signed[name]
            # Trimall: outer spaces gone, inner runs of whitespace read as one space.
            joined = (
                " ".join(values[0].split())
                if len(values) == 1
                else ",".join(" ".join(v.split()) for v in values)
            )
            lines.append(f"{name}:{joined}")
        signed_names = ";".join(names)
        lines += ("", signed_names, payload)
        canonical = "\n".join(lines)
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{digest}"
        signature = hmac.digest(self.signing_key(day), to_sign.encode(), "sha256").hex()
        auth = f"{ALGORITHM} Credential={self._key_id}/{scope}, SignedHeaders={signed_names}, Signature={signature}"
        add.append(("authorization", auth))
        return Signed(REPLACED, tuple(add))


def _param_name(encoded: str) -> str:
    """A query name as the server reads it, lowercase (``X-Amz-%53ignature`` is x-amz-signature)."""
    name = unquote_to_bytes(encoded) if "%" in encoded else encoded.encode()
    return name.lower().decode("latin-1")


def _query_encode(part: str) -> str:
    """RFC 3986 form of a query name or value, as AWS canonicalises it ("+" is a literal plus)."""
    if _QUERY_OK.match(part):
        return part
    return quote(unquote_to_bytes(part), safe="-_.~")


def _s3_path(path: str) -> str:
    """S3 signs the path as sent, not normalised and encoded once: only what may not
    appear raw in a URL (a stray "%", non-ASCII, spaces) is encoded, as the server reads it."""
    if _S3_PATH_OK.match(path):
        return path
    return _S3_PATH_UNSAFE.sub(
        lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogateescape")), path
    )


def _service_path(path: str) -> str:
    """Other services sign the path with dot segments and empty segments removed, encoded
    once more (so ``%2F`` is signed as ``%252F``), the way they recompute it on receipt."""
    return quote(_remove_dot_segments(path), safe="/~", errors="surrogateescape")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, and repeated slashes collapsed as AWS services expect."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment and segment != ".":
            out.append(segment)
    last = "/" if path.endswith("/") and out else ""
    return "/" + "/".join(out) + last


# S3's CopyObject and UploadPartCopy read the object named by this header with the
# connector's key: the source must be within the connector's patterns like the URL.
COPY_SOURCE = "x-amz-copy-source"
# An AWS virtual-hosted-style host names its bucket: BUCKET.s3[.region|-accelerate|...].amazonaws.com
_VIRTUAL_HOSTED = re.compile(
    r"^(?P<bucket>[a-z0-9][a-z0-9.-]*)\.s3(?:[.-][a-z0-9-]+)*\.amazonaws\.com(?:\.cn)?\Z"
)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_VERSION_QUERY = re.compile(r"^versionId=[A-Za-z0-9._~%+=-]*\Z")
_PCHAR_SAFE = "/-._~!$&'()*+,;=:@"


def copy_source_location(value: str, host: str) -> tuple[str, str] | None:
    """The host and percent-encoded path ``x-amz-copy-source`` reads; None if it names none.

    S3 takes ``[/]BUCKET/KEY[?versionId=V]``, decoded once. Seen from a
    path-style host that is ``/BUCKET/KEY`` on the same host; from a
    virtual-hosted one (``B.s3...amazonaws.com``) it is ``/KEY`` on
    ``BUCKET.s3...amazonaws.com``. Access point ARNs, other query parameters
    and undecodable values name nothing a pattern can vouch for.
    """
    source, _, query = value.strip().partition("?")
    if query and not _VERSION_QUERY.match(query):
        return None
    try:
        decoded = unquote_to_bytes(source).decode("utf-8")
    except UnicodeDecodeError:
        return None
    bucket, slash, key = decoded.removeprefix("/").partition("/")
    if not bucket or not slash or not key or bucket.startswith("arn:") or CONTROL.search(decoded):
        return None
    virtual = _VIRTUAL_HOSTED.match(host)
    if virtual is None:
        return host, quote(f"/{bucket}/{key}", safe=_PCHAR_SAFE)
    if not _BUCKET.match(bucket):
        return None
    return bucket + host[virtual.end("bucket") :], quote("/" + key, safe=_PCHAR_SAFE)

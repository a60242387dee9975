"""Why a request was blocked: one table owning each reason's status and meaning.

Every blocked answer the proxy sends (403 JSON bodies, 407 grant refusals, the
431/400 from the HTTP/1 head guard) is built by ``blocked_answer`` from this
table, and docs/usage.md's reason table is generated from it (a test checks).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Short fixed words for logs, headers and metrics."""

    NO_CONNECTOR = "no-connector"
    NOT_GRANTED = "not-granted"
    NO_GRANT = "no-grant"
    BAD_GRANT = "bad-grant"
    EXPIRED_GRANT = "expired-grant"
    REVOKED_GRANT = "revoked-grant"
    HOST_MISMATCH = "host-mismatch"
    SNI_MISMATCH = "sni-mismatch"
    BAD_HOST = "bad-host"
    BAD_PATH = "bad-path"
    PLAIN_HTTP = "plain-http"
    PRIVATE_ADDRESS = "private-address"
    UNRESOLVABLE = "unresolvable"
    AMBIGUOUS = "ambiguous"
    METHOD_NOT_ALLOWED = "method-not-allowed"
    SECRET_EXFILTRATION = "secret-exfiltration"
    COPY_SOURCE = "copy-source"
    CREDENTIAL_UNAVAILABLE = "credential-unavailable"
    BAD_REQUEST = "bad-request"
    OVER_CAPACITY = "over-capacity"
    CLIENT_TLS = "client-tls"
    INTERNAL = "internal-error"


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    status: int
    meaning: str  # one line for the docs
    help: str = ""  # what the client is told when the check has nothing more specific


REASONS: dict[Reason, ReasonInfo] = {
    Reason.NO_CONNECTOR: ReasonInfo(403, "no connector allows this host:port or URL"),
    Reason.NOT_GRANTED: ReasonInfo(403, "a connector allows it, but not one the client's grant names"),
    Reason.NO_GRANT: ReasonInfo(
        407,
        "the proxy requires a grant and the client presented none",
        "this proxy requires a grant: HTTPS_PROXY=http://grant:TOKEN@HOST:PORT",
    ),
    Reason.BAD_GRANT: ReasonInfo(
        407,
        "the grant is malformed, forged, or signed by a grant key since rotated",
        "the grant token is malformed or not signed by this proxy's current grant key",
    ),
    Reason.EXPIRED_GRANT: ReasonInfo(
        407, "the grant has expired (checked on every request)", "the grant has expired"
    ),
    Reason.REVOKED_GRANT: ReasonInfo(
        407, "the grant was revoked (checked on every request)", "the grant was revoked"
    ),
    Reason.HOST_MISMATCH: ReasonInfo(
        403, "Host / `:authority` / port differs from the CONNECT target, or several Host headers"
    ),
    Reason.SNI_MISMATCH: ReasonInfo(403, "the TLS server name differs from the CONNECT target"),
    Reason.BAD_HOST: ReasonInfo(403, "the CONNECT host is not a valid name or a plain IP literal"),
    Reason.BAD_PATH: ReasonInfo(403, "a path trick (see Patterns)"),
    Reason.PLAIN_HTTP: ReasonInfo(403, "plain `http://`, or a request not sent through CONNECT"),
    Reason.PRIVATE_ADDRESS: ReasonInfo(
        403, "the host resolves to a loopback, private, link-local, CGNAT, multicast or metadata address"
    ),
    Reason.UNRESOLVABLE: ReasonInfo(502, "DNS lookup failed"),
    Reason.AMBIGUOUS: ReasonInfo(
        403, "two connectors match equally well and the grant (if any) does not tell them apart"
    ),
    Reason.METHOD_NOT_ALLOWED: ReasonInfo(
        403, "a connector allows the URL, but not this method (`methods:`)"
    ),
    Reason.SECRET_EXFILTRATION: ReasonInfo(
        403,
        "the request line, a header, the body (decoded if compressed) or a client's WebSocket message "
        "carries a secret the proxy holds, an OAuth2 token it fetched included (raw, base64, base64url, "
        "percent-encoded, hex, any case); a streamed body is cut off where it appears, a WebSocket closed",
        "the request carries a credential value this proxy holds; it was not forwarded",
    ),
    Reason.CREDENTIAL_UNAVAILABLE: ReasonInfo(
        502, "the connector's credential could not be obtained (an OAuth2 token endpoint failed)"
    ),
    Reason.BAD_REQUEST: ReasonInfo(
        400,
        "malformed or unsupported request (request trailers, a second tunnel; 431 for a head over 64 KiB; "
        "415 for a compressed body over 64 KiB or not announced, or that cannot be decoded to be checked)",
    ),
    Reason.COPY_SOURCE: ReasonInfo(
        403,
        "an S3 copy's source (`x-amz-copy-source`) is not a bucket and key the same connector allows",
    ),
    Reason.OVER_CAPACITY: ReasonInfo(
        503,
        "the connector already has `--max-connector-requests` requests in flight, or this client address "
        "its `--max-client-share` of them (per worker)",
    ),
    Reason.CLIENT_TLS: ReasonInfo(
        0, "the client gave up the TLS handshake with the proxy: most often it does not trust the proxy CA"
    ),
    Reason.INTERNAL: ReasonInfo(502, "a proxy check failed; the request was refused"),
}


def help_of(reason: Reason) -> str:
    return REASONS[reason].help or REASONS[reason].meaning


def blocked_answer(
    reason: Reason,
    detail: str,
    request_id: str,
    status: int | None = None,
    near_miss: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and JSON body of a blocked answer (``status`` overrides the table's).

    ``near_miss`` (connector, differs, detail) lets the client correct its URL itself.
    """
    code = status or REASONS[reason].status
    doc: dict[str, object] = {
        "error": "blocked",
        "reason": str(reason),
        "detail": detail,
        "request_id": request_id,
    }
    if near_miss:
        doc["near_miss"] = dict(near_miss)
    body = json.dumps(doc)
    headers = {"content-type": "application/json", "x-egress-blocked": str(reason)}
    if code == 407:
        headers["proxy-authenticate"] = 'Basic realm="egress-proxy"'
    return code, headers, body.encode()


def markdown_table() -> str:
    """The reason table of docs/usage.md."""
    lines = ["| reason | status | meaning |", "|---|---|---|"]
    lines += [f"| `{r}` | {info.status or 'none (closed)'} | {info.meaning} |" for r, info in REASONS.items()]
    return "\n".join(lines) + "\n"

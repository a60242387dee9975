"""Admission: may this request pass, and as which connector? One function decides.

``identify`` answers at CONNECT (who is asking); ``admit`` answers for every
request inside a tunnel: the request must name exactly the tunnel's target
(SNI, ``:authority``, Host, port), its grant must still be valid (signing
key, revocation, expiry: the same check and the same 407 as at CONNECT), and
some granted connector must allow the path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from proxy.context import Tunnel
from proxy.credentials.sigv4 import COPY_SOURCE, SigV4Signer, copy_source_location
from proxy.grants import Grant, GrantKey, grant_problem, token_from_proxy_authorization
from proxy.hosts import normalize_host, split_authority
from proxy.policy import Allow, Block, Policy, Target, header_key
from proxy.reasons import Reason, help_of


@dataclass(frozen=True, slots=True)
class Rules:
    """One consistent snapshot of what the proxy enforces, swapped whole on reload."""

    policy: Policy
    grant_key: GrantKey | None = None
    revoked: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What a request inside a tunnel claims, as read off the wire."""

    tls: bool  # client TLS established and the request scheme is https
    sni: str | None
    host: str  # the address the request is bound for (the tunnel's pinned IP)
    port: int
    authority: str  # HTTP/2 :authority or absolute-form authority, else ""
    host_headers: Sequence[str]
    path: str  # without the query
    method: bytes = b"GET"
    target: bytes = b"/"  # the request-target as sent, query included
    fields: Sequence[tuple[bytes, bytes]] = ()  # every header, as sent


# RFC 9110 token; a request-target of visible ASCII; field values without CTLs
# (HTAB allowed), so no obs-fold, bare CR, LF or NUL reaches a lenient upstream.
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_TARGET_BAD = re.compile(rb"[^\x21-\x7e]")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

OUTSIDE_TUNNEL = Block(Reason.HOST_MISMATCH, "request is not inside the CONNECT tunnel")
NOT_TUNNELLED = Block(
    Reason.PLAIN_HTTP, "only https:// through CONNECT is proxied (set HTTPS_PROXY, use https)"
)


def grant_block(reason: Reason) -> Block:
    return Block(reason, help_of(reason))


def identify(
    proxy_authorization: str | None, rules: Rules, *, required: bool, now: float
) -> Grant | Block | None:
    """The grant a client presents at CONNECT; None if it presents none and none is required."""
    token = token_from_proxy_authorization(proxy_authorization)
    if token is Reason.NO_GRANT and not required:
        return None
    if isinstance(token, Reason):
        return grant_block(token)
    if rules.grant_key is None:
        return grant_block(Reason.BAD_GRANT)
    grant = rules.grant_key.verify(token)
    if isinstance(grant, Reason):
        return grant_block(grant)
    problem = grant_problem(grant, rules.grant_key, rules.revoked, now)
    return grant_block(problem) if problem else grant


def admit(tunnel: Tunnel | None, request: RequestFacts, rules: Rules, now: float) -> Allow | Block:
    """The decision for one request inside a tunnel."""
    if tunnel is None:
        return _not_tunnelled(request, rules)
    if tunnel.refused is not None:  # explained: told with this request's path and method
        method = request.method.decode("ascii", "replace")
        return rules.policy.refused_request(
            tunnel.refused, tunnel.target, request.path, method, tunnel.allowed
        )
    if request.port != tunnel.target.port or (not tunnel.transparent and request.host != tunnel.address):
        return OUTSIDE_TUNNEL  # e.g. an HTTP/2 stream beside a CONNECT stream
    problem = check_request_line(request) or check_tunnel_request(tunnel.target, request)
    if problem:
        return problem
    if tunnel.grant is not None:
        reason = grant_problem(tunnel.grant, rules.grant_key, rules.revoked, now)
        if reason:
            return grant_block(reason)
    decision = rules.policy.route(tunnel.target, request.path, tunnel.allowed, request.method.decode("ascii"))
    if isinstance(decision, Allow) and isinstance(decision.rendered.signer, SigV4Signer):
        return check_copy_source(tunnel, request, rules.policy, decision) or decision
    return decision


def check_copy_source(tunnel: Tunnel, request: RequestFacts, policy: Policy, decision: Allow) -> Block | None:
    """An S3 copy reads its source with the connector's key: the source must be the connector's too.

    ``x-amz-copy-source`` (names folded, so ``X_Amz_Copy_Source`` counts) names
    a bucket and key; read as a URL on the tunnel's port, it must route to the
    same connector, as a request for it would (grant included; methods aside:
    the copy is the request the connector allowed).
    """
    values = [v for k, v in request.fields if header_key(k.decode("latin-1")) == COPY_SOURCE]
    if not values:
        return None
    if len(values) > 1:
        return Block(Reason.COPY_SOURCE, "more than one x-amz-copy-source header")
    where = copy_source_location(values[0].decode("latin-1"), tunnel.target.host)
    if where is None:
        return Block(Reason.COPY_SOURCE, "x-amz-copy-source is not BUCKET/KEY[?versionId=V]")
    host, path = where
    source = policy.route(Target(host, tunnel.target.port), path, tunnel.allowed)
    if isinstance(source, Allow) and source.connector == decision.connector:
        return None
    shown = f"{host}{path}"
    shown = shown if len(shown) <= 200 else shown[:200] + "..."
    return Block(Reason.COPY_SOURCE, f"x-amz-copy-source {shown} is outside connector {decision.connector}")


def _not_tunnelled(request: RequestFacts, rules: Rules) -> Block:
    """A plain http:// request: say which connector its https:// twin would reach."""
    host = _norm(request.host)
    if request.tls or host is None or not _TOKEN.match(request.method):
        return NOT_TUNNELLED
    near = rules.policy.plain_http(host, request.port, request.path, None, request.method.decode()).near_miss
    return replace(NOT_TUNNELLED, near_miss=near)


def check_request_line(request: RequestFacts) -> Block | None:
    """Refuse what a lenient upstream could read as a different request (400)."""
    if not _TOKEN.match(request.method):
        return Block(Reason.BAD_REQUEST, "the method is not an HTTP token")
    if _TARGET_BAD.search(request.target):
        return Block(Reason.BAD_REQUEST, "space, control or non-ASCII character in the request target")
    for _, value in request.fields:
        if _VALUE_BAD.search(value):
            return Block(Reason.BAD_REQUEST, "control character, line break or obs-fold in a header value")
    return None


def check_tunnel_request(target: Target, request: RequestFacts) -> Block | None:
    """A request inside a tunnel must name exactly the tunnel's target.

    The client SNI, the HTTP/2 ``:authority`` or absolute-form authority, and
    the single ``Host`` header must all equal the CONNECT target, so that what
    we matched is what the upstream sees.
    """
    if not request.tls:
        return Block(Reason.PLAIN_HTTP, "request inside the tunnel was not TLS")
    if request.port != target.port:
        return Block(Reason.HOST_MISMATCH, "request port differs from the tunnel's")
    sni = request.sni
    if sni != target.host:  # fast path: clients normally send the name as given
        if target.is_ip:
            if sni and _norm(sni) != target.host:
                return Block(Reason.SNI_MISMATCH, "TLS server name differs from the tunnel's")
        elif sni is None or _norm(sni) != target.host:
            return Block(Reason.SNI_MISMATCH, "TLS server name differs from the tunnel's")
    host_headers = request.host_headers
    if len(host_headers) > 1:
        return Block(Reason.HOST_MISMATCH, "more than one Host header")
    names = [request.authority] if request.authority else []
    names.extend(host_headers)
    if not names:
        return Block(Reason.HOST_MISMATCH, "no Host header")
    for name in names:
        if name == target.authority:
            continue
        try:
            if split_authority(name) != (target.host, target.port):
                return Block(Reason.HOST_MISMATCH, "Host differs from the tunnel's target")
        except ValueError:
            return Block(Reason.HOST_MISMATCH, "Host is not a valid authority")
    return None


def _norm(name: str) -> str | None:
    try:
        return normalize_host(name)
    except ValueError:
        return None

"""An OAuth 2.0 access token the proxy obtains itself: ``Authorization: Bearer <token>``.

The placement renders the client credentials once per policy load into a
``TokenRequest``; fetching, caching and refreshing the token is the broker's
job (``addons/oauth.py``). Everything here is pure: building the token request
and reading its answer are values, so they are tested without a socket, and
every failure is a short reason that never carries a secret or a token (the
server's ``error_description`` may echo either, so it is never repeated).
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal
from urllib.parse import quote_plus, urlencode, urlsplit

from proxy.credentials.rendered import Rendered
from proxy.credentials.templates import CONTROL, render, template_fields
from proxy.errors import ConfigError
from proxy.hosts import format_authority, split_authority

Grant = Literal["client_credentials", "refresh_token"]
ClientAuth = Literal["basic", "body"]
GRANTS: tuple[Grant, ...] = ("client_credentials", "refresh_token")
CLIENT_AUTHS: tuple[ClientAuth, ...] = ("basic", "body")

# When the server omits ``expires_in`` (RFC 6749 5.1 leaves the default to it):
# one hour, the most common default; an early 401 still refreshes via invalidate.
DEFAULT_LIFETIME = 3600.0
# Longer lifetimes are cut to a day, so a nonsense ``expires_in`` cannot pin a token forever.
MAX_LIFETIME = 86400.0
MAX_MARGIN = 60.0
MARGIN_FRACTION = 0.1

SPEC_KEYS = frozenset(
    {"token_url", "grant", "client_id", "client_secret", "refresh_token", "scope", "client_auth"}
)
# RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), separated by one space.
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+\Z")
# What may go into an Authorization header or a form field we send later: visible
# ASCII only (RFC 6750 b64token is stricter; real servers are not always).
_TOKEN_VALUE = re.compile(r"^[\x21-\x7e]+\Z")
_PLACEHOLDER_DEBRIS = re.compile(r"\{\{|\}\}")
# RFC 6749 5.2 error codes (plus two from 4.1.2.1): the only server words we repeat.
KNOWN_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
    }
)


def parse_token_url(url: object, where: str) -> tuple[str, int, str]:
    """(host, port, path with query) of an https token URL; ConfigError naming ``where``."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where} must be an https:// URL")
    if CONTROL.search(url) or " " in url or "\\" in url:
        raise ConfigError(f"{where} contains spaces, backslashes or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise ConfigError(f"{where} must be https:// (a token request carries the client secret)")
    if parts.fragment or url.endswith("#"):
        raise ConfigError(f"{where} must not have a #fragment")
    try:
        host, port = split_authority(parts.netloc)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    path = parts.path or "/"
    if not path.startswith("/"):
        raise ConfigError(f"{where} has no valid path")
    return host, port, f"{path}?{parts.query}" if parts.query else path


def _template(spec: Mapping[str, Any], key: str, where: str, *, secret: bool) -> str:
    """A template; whether its fields exist is the connector's check (it knows the credential)."""
    value = spec.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key} must be a non-empty string")
    if CONTROL.search(value):
        raise ConfigError(f"{where}.{key} contains control characters")
    names = template_fields(value)
    if _PLACEHOLDER_DEBRIS.search(_strip_fields(value)):
        raise ConfigError(f"{where}.{key}: malformed {{{{field}}}} placeholder")
    if secret and not names:
        # A secret's value never sits in the configuration itself.
        raise ConfigError(f"{where}.{key} must come from a field, such as {{{{{key}}}}}")
    return value


def _strip_fields(template: str) -> str:
    for name in template_fields(template):
        template = template.replace("{{" + name + "}}", "")
    return template


def _scope(value: object, where: str) -> str | None:
    if value is None:
        return None
    items = value.split(" ") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(isinstance(s, str) for s in items):
        raise ConfigError(f"{where}.scope must be a string or a list of strings")
    if not all(_SCOPE_TOKEN.match(s) for s in items):
        raise ConfigError(f"{where}.scope: scopes are visible ASCII without quotes, backslashes or spaces")
    return " ".join(items)


@dataclass(frozen=True, slots=True)
class OAuth2Placement:
    """``{oauth2: {token_url, grant, client_id, client_secret, refresh_token, scope, client_auth}}``."""

    token_url: str
    grant: Grant
    client_id: str
    client_secret: str
    refresh_token: str | None = None
    scope: str | None = None
    client_auth: ClientAuth = "basic"
    KEYS: ClassVar[frozenset[str]] = frozenset({"oauth2"})

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], where: str) -> OAuth2Placement:
        inner = spec.get("oauth2")
        at = f"{where}: inject.oauth2"
        if not isinstance(inner, Mapping):
            raise ConfigError(f"{at} must be a mapping with token_url, grant, client_id, client_secret")
        unknown = set(inner) - SPEC_KEYS
        if unknown:
            raise ConfigError(f"{at}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        host, port, path = parse_token_url(inner.get("token_url"), f"{at}.token_url")
        grant = inner.get("grant")
        if grant not in GRANTS:
            raise ConfigError(f"{at}.grant {grant!r} is not one of {', '.join(GRANTS)}")
        client_auth = inner.get("client_auth", "basic")
        if client_auth not in CLIENT_AUTHS:
            raise ConfigError(f"{at}.client_auth {client_auth!r} is not one of {', '.join(CLIENT_AUTHS)}")
        refresh_token = None
        if grant == "refresh_token":
            if inner.get("refresh_token") is None:
                raise ConfigError(f"{at}.refresh_token is required for the refresh_token grant")
            refresh_token = _template(inner, "refresh_token", at, secret=True)
        elif inner.get("refresh_token") is not None:
            raise ConfigError(f"{at}.refresh_token applies to the refresh_token grant only")
        return cls(
            token_url=f"https://{format_authority(host, port)}{path}",
            grant=grant,
            client_id=_template(inner, "client_id", at, secret=False),
            client_secret=_template(inner, "client_secret", at, secret=True),
            refresh_token=refresh_token,
            scope=_scope(inner.get("scope"), at),
            client_auth=client_auth,
        )

    @property
    def where(self) -> str:
        return "header Authorization"

    def describe(self) -> str:
        return f"header Authorization: Bearer <oauth2 {self.grant} token from {self.token_url}>"

    def to_spec(self) -> dict[str, Any]:
        inner: dict[str, Any] = {
            "token_url": self.token_url,
            "grant": self.grant,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "client_auth": self.client_auth,
        }
        if self.refresh_token is not None:
            inner["refresh_token"] = self.refresh_token
        if self.scope is not None:
            inner["scope"] = self.scope
        return {"oauth2": inner}

    def fields(self) -> frozenset[str]:
        templates = [self.client_id, self.client_secret, self.refresh_token or ""]
        return frozenset().union(*(template_fields(t) for t in templates))

    def render(self, fields: Mapping[str, str]) -> Rendered:
        missing = self.fields() - set(fields)
        if missing:
            raise ConfigError(f"oauth2: credential field(s) {', '.join(sorted(missing))} not set")
        host, port, path = parse_token_url(self.token_url, "oauth2 token_url")
        request = TokenRequest(
            url=self.token_url,
            host=host,
            port=port,
            path=path,
            grant=self.grant,
            client_id=render(self.client_id, fields),
            client_secret=render(self.client_secret, fields),
            refresh_token=None if self.refresh_token is None else render(self.refresh_token, fields),
            scope=self.scope,
            client_auth=self.client_auth,
        )
        return Rendered(oauth2=request, secrets=request.secrets)


@dataclass(frozen=True, slots=True)
class TokenCall:
    """One HTTP/1.1 request to the token endpoint, ready for any client to send."""

    method: str
    host: str
    port: int
    path: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Token:
    """An access token; times are on the caller's clock (the one ``now`` came from)."""

    access_token: str = field(repr=False)
    expires_at: float
    refresh_token: str | None = field(default=None, repr=False)  # a rotated one, if the server sent it
    issued_at: float = 0.0  # when the request was sent: the lifetime counts from there


@dataclass(frozen=True, slots=True)
class TokenFailure:
    """Why no token came back, in words that never include a secret or a token."""

    reason: str


def refresh_at(token: Token) -> float:
    """When to fetch the next token: min(60 s, 10 % of the lifetime) before expiry.

    A fixed 60 s margin would refetch a 3-second token on every request; a
    fraction alone would leave an hour-long token only seconds of slack.
    """
    lifetime = max(0.0, token.expires_at - token.issued_at)
    return token.expires_at - min(MAX_MARGIN, MARGIN_FRACTION * lifetime)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """The rendered client credentials of one connector: what the broker asks with.

    Equality is the broker's change signal: a replaced secret makes a different
    request, and the cached token for the old one is dropped.
    """

    url: str
    host: str
    port: int
    path: str
    grant: Grant
    client_id: str = field(repr=False)
    client_secret: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    scope: str | None = None
    client_auth: ClientAuth = "basic"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values to scrub from responses (the access token is the broker's to add)."""
        return (self.client_secret,) + ((self.refresh_token,) if self.refresh_token else ())

    def with_refresh_token(self, refresh_token: str) -> TokenRequest:
        """The same request with a refresh token the server rotated."""
        return replace(self, refresh_token=refresh_token)

    def build(self) -> TokenCall:
        """The POST of RFC 6749 4.4 (client credentials) or 6 (refresh), form-encoded."""
        form: list[tuple[str, str]] = [("grant_type", self.grant)]
        if self.grant == "refresh_token":
            assert self.refresh_token is not None
            form.append(("refresh_token", self.refresh_token))
        if self.scope:
            form.append(("scope", self.scope))
        headers = [
            ("Host", format_authority(self.host, self.port)),
            ("Accept", "application/json"),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("User-Agent", "egress-proxy"),
            ("Connection", "close"),
        ]
        if self.client_auth == "basic":
            headers.append(("Authorization", basic_credentials(self.client_id, self.client_secret)))
        else:
            form += [("client_id", self.client_id), ("client_secret", self.client_secret)]
        body = urlencode(form, quote_via=quote_plus, safe="").encode("ascii")
        headers.append(("Content-Length", str(len(body))))
        return TokenCall("POST", self.host, self.port, self.path, tuple(headers), body)

    def parse(self, status: int, body: bytes, now: float) -> Token | TokenFailure:
        """Read the token endpoint's answer (RFC 6749 5.1 / 5.2); ``now`` is when it was asked."""
        data = _json_object(body)
        if status != 200:
            code = data.get("error") if isinstance(data, dict) else None
            said = f" ({code})" if isinstance(code, str) and code in KNOWN_ERRORS else ""
            return TokenFailure(f"token endpoint answered {status}{said}")
        if not isinstance(data, dict):
            return TokenFailure(data)
        access = data.get("access_token")
        if not isinstance(access, str) or not access:
            return TokenFailure("response has no access_token")
        if not _TOKEN_VALUE.match(access):
            return TokenFailure("access_token has characters a header cannot carry")
        kind = data.get("token_type")
        if kind is not None and (not isinstance(kind, str) or kind.lower() != "bearer"):
            return TokenFailure("token_type is not Bearer")
        lifetime = _lifetime(data.get("expires_in"))
        if lifetime is None:
            return TokenFailure("expires_in is not a positive number")
        rotated = data.get("refresh_token")
        if rotated is not None and (not isinstance(rotated, str) or not _TOKEN_VALUE.match(rotated)):
            return TokenFailure("refresh_token in the response is not a token")
        return Token(access, now + lifetime, rotated or None, issued_at=now)


def basic_credentials(client_id: str, client_secret: str) -> str:
    """RFC 6749 2.3.1: id and secret are form-urlencoded first, then Basic-encoded."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def _json_object(body: bytes) -> dict[str, Any] | str:
    """The response's JSON object, or why it is not one (NaN and Infinity refused)."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "response is not JSON"
    return data if isinstance(data, dict) else "response is not a JSON object"


def _lifetime(value: object) -> float | None:
    """Seconds from ``expires_in``: a number or a numeric string (some servers quote it)."""
    if value is None:
        return DEFAULT_LIFETIME
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return min(float(value), MAX_LIFETIME)

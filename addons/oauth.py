"""OAuth 2.0 access tokens, fetched by the proxy and cached per connector.

The sandbox never sees a client secret, a refresh token or an access token:
the proxy asks ``token_url`` itself, through the same SSRF-vetted resolver as
every tunnel (``--resolve`` pins, ``--allow-network``), verifies TLS against
the upstream CA bundle, and hands the token to the injector. One request to
the token endpoint serves every caller waiting at that moment (single flight),
so a burst of requests or of upstream 401s cannot stampede the endpoint.

The HTTP client is deliberately small (HTTP/1.1 over h11, one request per
connection, no redirects, bounded in time and size): it talks to one kind of
endpoint and must never be talked into anything else.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import certifi
import h11
from mitmproxy import ctx, http

from addons.respond import block, fail_closed
from addons.source import PolicySource
from addons.state import peek
from proxy.credentials.oauth2 import Token, TokenCall, TokenFailure, TokenRequest, refresh_at
from proxy.hosts import format_authority, is_ip_literal
from proxy.policy import Block, parse_target
from proxy.reasons import Reason
from proxy.scrub import Needles

if TYPE_CHECKING:
    from addons.gate import Gate

logger = logging.getLogger(__name__)

Resolve = Callable[[str, int], Awaitable[str]]
OnRotated = Callable[[str, str], None]

TIMEOUT = 10.0  # the whole exchange: resolve, connect, TLS, request, response
MAX_RESPONSE = 64 * 1024
# After a failed fetch, callers with no usable token are refused for this long
# without asking again, so a down endpoint is not hammered once per request.
RETRY_AFTER = 2.0
# Refetches an upstream 401 may cause: a burst, then one per interval. The sandbox
# chooses which URLs it calls, so it can make the upstream answer 401 at will; without
# a budget every such request would cost a call to the token endpoint.
REFUSALS_BURST = 3
REFUSAL_INTERVAL = 10.0
_SEEN_REFRESH_TOKENS = 8  # rotated refresh tokens remembered to recognise a lagging policy


class CredentialUnavailable(Exception):
    """No valid access token for a connector; ``detail`` is safe to log and to show."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AddressRefused(Exception):
    """A resolver's refusal to let the token host be dialled; its text is logged."""


class _Failed(Exception):
    """An exchange that went wrong, with a reason that carries no secret."""


@dataclass(slots=True, eq=False)
class _Entry:
    request: TokenRequest  # as the policy rendered it
    current: TokenRequest  # with the latest refresh token the server rotated to
    seen: list[str] = field(default_factory=list)  # refresh tokens this entry used or rotated to
    token: Token | None = None
    stale: bool = False  # the upstream refused this token: never hand it out again
    flight: asyncio.Task[None] | None = None
    failure: str = ""
    failed_until: float = 0.0
    refusals: float = REFUSALS_BURST  # 401-driven refetches left (refilled over time)
    refusals_at: float = 0.0  # when ``refusals`` was last refilled


def client_context(cafile: str | None = None) -> ssl.SSLContext:
    """TLS for the token endpoint: verified against ``cafile`` (the upstream bundle) or certifi."""
    context = ssl.create_default_context(cafile=cafile or certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


def vetted_resolver(gate: Gate) -> Resolve:
    """Resolve the token host exactly as a tunnel's host: pins, the SSRF guard, one address."""

    async def resolve(host: str, port: int) -> str:
        target = parse_target(host, port)
        if isinstance(target, Block):
            raise AddressRefused(target.detail)
        address = await gate.resolve(target)  # reads gate.guard now: options may have changed
        if isinstance(address, Block):
            raise AddressRefused(address.detail)
        return address

    return resolve


class TokenBroker:
    """Per-connector access tokens: cached, refreshed once before expiry, dropped on 401.

    Runs on the proxy's event loop. ``resolve`` must return a vetted IP address
    (see ``vetted_resolver``); ``on_rotated(connector, refresh_token)`` is told of
    every refresh token the server rotated to, so it can be kept across restarts.
    """

    def __init__(
        self,
        resolve: Resolve,
        ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext],
        *,
        on_rotated: OnRotated | None = None,
        timeout: float = TIMEOUT,
        max_response: int = MAX_RESPONSE,
        retry_after: float = RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolve = resolve
        # A context, or how to make one at the first token fetch: loading the roots costs
        # ~0.1 s of every worker's start, and most proxies have no oauth2 connector.
        self.ssl_context = ssl_context
        self._on_rotated = on_rotated
        self._timeout = timeout
        self._max_response = max_response
        self._retry_after = retry_after
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    async def token(self, connector: str, request: TokenRequest) -> str:
        """A valid access token for ``connector``, or CredentialUnavailable."""
        entry = self._entry(connector, request)
        now = self._clock()
        token = self._usable(entry, now)
        if token is not None and now < refresh_at(token):
            return token.access_token
        if entry.flight is None:
            if now < entry.failed_until:
                if token is not None:
                    return token.access_token
                raise CredentialUnavailable(_detail(connector, entry.failure))
            entry.flight = asyncio.create_task(self._refresh(connector, entry))
        # Shielded: a caller that gives up must not cancel the fetch others wait for.
        await asyncio.shield(entry.flight)
        token = self._usable(entry, self._clock())
        if token is None:
            raise CredentialUnavailable(_detail(connector, entry.failure or "the token expired"))
        return token.access_token

    def invalidate(self, connector: str, token: str) -> None:
        """The upstream answered 401 to ``token``: the next request fetches a new one.

        Only the cached token is marked, so twenty 401s for one token cause one
        refresh, and a late 401 for a token already replaced causes none. Past a
        small budget (``REFUSALS_BURST``, then one per ``REFUSAL_INTERVAL``) a 401
        keeps the token: the sandbox can make an upstream answer 401 at will.
        """
        entry = self._entries.get(connector)
        if entry is None or entry.token is None or entry.token.access_token != token or entry.stale:
            return
        now = self._clock()
        if entry.refusals_at:
            entry.refusals = min(
                REFUSALS_BURST, entry.refusals + (now - entry.refusals_at) / REFUSAL_INTERVAL
            )
        entry.refusals_at = now
        if entry.refusals < 1:
            logger.debug(
                "connector %s: upstream refused the access token again; keeping it for now", connector
            )
            return
        entry.refusals -= 1
        logger.info("connector %s: upstream refused the access token; fetching a new one", connector)
        entry.stale = True

    def secrets(self, connector: str) -> tuple[str, ...]:
        """The connector's live access and refresh tokens, to scrub from responses."""
        entry = self._entries.get(connector)
        if entry is None:
            return ()
        values = [entry.token.access_token] if entry.token else []
        if entry.current.refresh_token:
            values.append(entry.current.refresh_token)
        return tuple(values)

    def retain(self, connectors: Iterable[str]) -> None:
        """Forget the tokens of connectors no longer in the policy."""
        keep = set(connectors)
        for name in [n for n in self._entries if n not in keep]:
            del self._entries[name]

    def close(self) -> None:
        """Cancel fetches in flight (shutdown)."""
        for entry in self._entries.values():
            if entry.flight is not None:
                entry.flight.cancel()
        self._entries.clear()

    def _entry(self, connector: str, request: TokenRequest) -> _Entry:
        entry = self._entries.get(connector)
        if entry is not None and entry.request != request:
            if _caught_up(entry, request):
                entry.request = request
            else:  # the operator replaced a secret or the placement: start over
                entry = None
        if entry is None:
            entry = self._entries[connector] = _Entry(request, request)
            if request.refresh_token:
                entry.seen.append(request.refresh_token)
        return entry

    @staticmethod
    def _usable(entry: _Entry, now: float) -> Token | None:
        token = entry.token
        return token if token is not None and not entry.stale and now < token.expires_at else None

    async def _refresh(self, connector: str, entry: _Entry) -> None:
        """One fetch; its outcome lands on the entry for every waiter to read."""
        request = entry.current
        try:
            try:
                result = await self._fetch(request)
            except Exception as e:  # a bug here must refuse the request, not leak its text
                result = TokenFailure(f"unexpected {type(e).__name__}")
            now = self._clock()
            if isinstance(result, Token) and now >= result.expires_at:
                result = TokenFailure("the token expired before it arrived")
            if isinstance(result, TokenFailure):
                entry.failure = result.reason
                entry.failed_until = now + self._retry_after
                logger.warning(
                    "connector %s: oauth2 token request to %s failed: %s",
                    connector,
                    request.url,
                    result.reason,
                )
                return
            entry.token, entry.stale, entry.failure, entry.failed_until = result, False, "", 0.0
            rotated = result.refresh_token
            if request.grant == "refresh_token" and rotated and rotated != request.refresh_token:
                entry.current = request.with_refresh_token(rotated)
                entry.seen = [*entry.seen, rotated][-_SEEN_REFRESH_TOKENS:]
                logger.info("connector %s: the token endpoint rotated the refresh token", connector)
                if self._on_rotated is not None and self._entries.get(connector) is entry:
                    try:
                        self._on_rotated(connector, rotated)
                    except Exception as e:  # the token is still good in memory
                        logger.error(
                            "connector %s: keeping the rotated refresh token failed (%s)",
                            connector,
                            type(e).__name__,
                        )
        finally:
            entry.flight = None

    async def _fetch(self, request: TokenRequest) -> Token | TokenFailure:
        call = request.build()
        started = self._clock()
        try:
            async with asyncio.timeout(self._timeout):
                status, body = await self._exchange(call)
        except TimeoutError:
            return TokenFailure(f"no answer within {self._timeout:g} s")
        except _Failed as e:
            return TokenFailure(str(e))
        except ssl.SSLCertVerificationError as e:
            return TokenFailure(f"TLS certificate of {call.host} not accepted ({e.verify_message})")
        except ssl.SSLError as e:
            return TokenFailure(f"TLS with {call.host} failed ({e.reason or type(e).__name__})")
        except OSError as e:
            where = format_authority(call.host, call.port, None)
            return TokenFailure(f"cannot connect to {where} ({e.strerror or type(e).__name__})")
        except h11.ProtocolError:
            return TokenFailure("malformed or truncated HTTP response")
        return request.parse(status, body, started)

    async def _address(self, host: str, port: int) -> str:
        try:
            address = await self._resolve(host, port)
        except AddressRefused as e:
            raise _Failed(f"cannot use {host}: {e}") from None
        except (OSError, ValueError) as e:
            raise _Failed(f"cannot resolve {host} ({type(e).__name__})") from None
        if not isinstance(address, str) or not is_ip_literal(address):
            raise _Failed(f"the resolver gave no IP address for {host}")  # never a second, unvetted lookup
        return address

    def _context(self) -> ssl.SSLContext:
        if not isinstance(self.ssl_context, ssl.SSLContext):
            self.ssl_context = self.ssl_context()
        return self.ssl_context

    async def _exchange(self, call: TokenCall) -> tuple[int, bytes]:
        """POST ``call`` on a fresh TLS connection; (status, body) of the final response."""
        address = await self._address(call.host, call.port)
        reader, writer = await asyncio.open_connection(
            address,
            call.port,
            ssl=self._context(),
            server_hostname=call.host,
            ssl_handshake_timeout=self._timeout,
        )
        done = False
        try:
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=self._max_response)
            writer.write(
                conn.send(h11.Request(method=call.method, target=call.path, headers=list(call.headers)))
                + conn.send(h11.Data(data=call.body))
                + conn.send(h11.EndOfMessage())
            )
            await writer.drain()
            status, body = 0, bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(16384))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self._max_response:
                        raise _Failed(f"response larger than {self._max_response // 1024} KiB")
                elif isinstance(event, h11.EndOfMessage):
                    done = True
                    return status, bytes(body)
                elif isinstance(event, h11.ConnectionClosed):
                    raise _Failed("connection closed before the response ended")
                # InformationalResponse (1xx): wait for the final one
        finally:
            if done:
                writer.close()
            else:  # no polite TLS shutdown with a peer that may never answer
                writer.transport.abort()


def _caught_up(entry: _Entry, request: TokenRequest) -> bool:
    """``request`` only carries a refresh token this entry already used or rotated away from.

    The policy reloads with the sealed copy of a rotated token after
    ``on_rotated`` stored it, possibly lagging one rotation behind; neither
    is a new secret, and dropping the cache would spend a refresh token the
    server has already invalidated.
    """
    current = entry.current
    return (
        request.grant == "refresh_token"
        and current.refresh_token is not None
        and request.refresh_token in entry.seen
        and request.with_refresh_token(current.refresh_token) == current
    )


def _detail(connector: str, reason: str) -> str:
    return f"connector {connector}: no OAuth2 access token ({reason})"


class OAuth:
    """The adapter: an oauth2 route's request gets ``Authorization: Bearer <token>``.

    Runs after ``Inject`` (which admitted the request and removed the client's
    own Authorization). A token endpoint failure blocks the request with
    ``credential-unavailable``; an upstream 401 marks the token stale so the
    next request fetches one. Rotated refresh tokens are stored sealed.
    """

    def __init__(self, source: PolicySource, gate: Gate) -> None:
        self.source = source
        self.broker = TokenBroker(vetted_resolver(gate), client_context, on_rotated=self._rotated)
        self._needles: dict[str, tuple[Needles, tuple[str, ...], Needles]] = {}  # by connector

    def configure(self, updated: set[str]) -> None:
        if "ssl_verify_upstream_trusted_ca" in updated:
            cafile = ctx.options.ssl_verify_upstream_trusted_ca
            self.broker.ssl_context = functools.partial(client_context, cafile)

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        s = peek(flow)
        if s is None or s.route is None or flow.response is not None:
            return
        route = s.route
        request = route.rendered.oauth2
        if request is None and not route.oauth_peers:
            return
        name = route.connector
        if request is not None:
            try:
                token = await self.broker.token(name, request)
            except CredentialUnavailable as e:
                block(flow, Block(Reason.CREDENTIAL_UNAVAILABLE, e.detail))
                return
            flow.request.headers["Authorization"] = f"Bearer {token}"
            s.access_token = token
            # A client's request carrying a live token is refused like one carrying a secret
            # (the check ran before this injection, so the proxy's own header never counts).
            self.source.live.update(name, self.broker.secrets(name))
        # Echoes of the live tokens (this connector's, and those of OAuth2 connectors on its
        # hosts: one upstream) are masked like any other secret of the route.
        live = tuple(v for c in (name, *sorted(route.oauth_peers)) for v in self.broker.secrets(c))
        if not live:
            return
        cached = self._needles.get(name)
        if cached is None or cached[0] is not route.scrub or cached[1] != live:
            # (the route's own needles are part of the key: a reload may have changed them)
            cached = self._needles[name] = (route.scrub, live, route.scrub.extended(live))
        s.route = replace(route, scrub=cached[2])

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        s = peek(flow)
        if (
            s is not None
            and s.access_token
            and flow.response is not None
            and flow.response.status_code == 401
        ):
            assert s.route is not None
            self.broker.invalidate(s.route.connector, s.access_token)

    def done(self) -> None:
        self.broker.close()

    def _rotated(self, connector: str, refresh_token: str) -> None:
        """Keep a rotated refresh token sealed in the store (off the event loop)."""
        asyncio.get_running_loop().run_in_executor(
            None, self.source.store_refresh_token, connector, refresh_token
        )

"""The token broker against a real TLS token endpoint on loopback.

The endpoint counts its calls and can be told to fail, hang, redirect, answer
too much, hand out short-lived tokens or rotate refresh tokens, so single
flight, expiry, 401 handling and rotation are checked by what reaches it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import h11
import pytest
import trustme

from addons.gate import Gate
from addons.oauth import CredentialUnavailable, TokenBroker, client_context, vetted_resolver
from addons.source import PolicySource
from addons.state import Tunnels
from proxy.credentials.oauth2 import OAuth2Placement, TokenRequest
from proxy.netguard import NetGuard

HOST = "auth.test"
CLIENT_SECRET = "cs-Sup3rSecret"
REFRESH = "rt-initial-S3cret"


@dataclass
class Endpoint:
    """A token endpoint: ``mode`` is ok, 500, 400-echo, hang, redirect, big or close."""

    mode: str = "ok"
    lifetime: float | None = 3600
    rotate: bool = False
    delay: float = 0.05
    forms: list[dict[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    snis: list[str | None] = field(default_factory=list)
    issued: dict[str, float] = field(default_factory=dict)  # access token -> expiry (monotonic)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.forms)

    async def start(self, ca: trustme.CA) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(HOST).configure_cert(context)

        def record_sni(_obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            self.snis.append(name)

        context.sni_callback = record_sni
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        conn = h11.Connection(h11.SERVER)
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                self.headers.append({k.decode(): v.decode() for k, v in event.headers})
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        form = dict(parse_qsl(body.decode()))
        self.forms.append(form)
        n = self.calls
        if self.mode == "hang":
            await asyncio.sleep(3600)
        await asyncio.sleep(self.delay)
        status, extra, payload = 200, [], b""
        if self.mode == "500":
            status, payload = 500, b"upstream exploded"
        elif self.mode == "400-echo":  # a server that quotes what it was sent
            status = 400
            payload = json.dumps(
                {"error": "invalid_client", "error_description": f"bad {form} {CLIENT_SECRET}"}
            ).encode()
        elif self.mode == "redirect":
            status, extra = 302, [("Location", f"https://{HOST}:{self.port}/elsewhere")]
        elif self.mode == "big":
            payload = json.dumps({"access_token": "at-big", "pad": "x" * 100_000}).encode()
        else:
            token = f"at-{n}"
            answer: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
            if self.lifetime is not None:
                answer["expires_in"] = self.lifetime
            if self.rotate:
                answer["refresh_token"] = f"rt-rotated-{n}"
            self.issued[token] = time.monotonic() + (self.lifetime or 3600)
            payload = json.dumps(answer).encode()
        if self.mode == "close":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
            writer.transport.abort()
            return
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload))), *extra]
        writer.write(
            conn.send(h11.Response(status_code=status, headers=headers)) + conn.send(h11.Data(data=payload))
        )
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        writer.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cafile(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def loopback(host: str, port: int) -> str:
    assert host == HOST
    return "127.0.0.1"


def token_request(
    port: int, grant: str = "client_credentials", secret: str = CLIENT_SECRET, **extra: Any
) -> TokenRequest:
    spec: dict[str, Any] = {
        "token_url": f"https://{HOST}:{port}/oauth/token",
        "grant": grant,
        "client_id": "the-client",
        "client_secret": "{{client_secret}}",
        **extra,
    }
    fields = {"client_secret": secret}
    if grant == "refresh_token":
        spec["refresh_token"] = "{{refresh_token}}"
        fields["refresh_token"] = REFRESH
    rendered = OAuth2Placement.from_spec({"oauth2": spec}, "conn").render(fields)
    assert rendered.oauth2 is not None
    return rendered.oauth2


Scenario = Callable[[Endpoint, TokenBroker], Awaitable[None]]


def run(
    scenario: Scenario, cafile: str, ca: trustme.CA, endpoint: Endpoint | None = None, **broker: Any
) -> Endpoint:
    """Start the endpoint and a broker on one event loop and play ``scenario``."""
    endpoint = endpoint or Endpoint()

    async def main() -> None:
        await endpoint.start(ca)
        broker.setdefault("resolve", loopback)
        b = TokenBroker(ssl_context=client_context(cafile), **broker)
        try:
            await asyncio.wait_for(scenario(endpoint, b), 30)
        finally:
            b.close()
            endpoint.stop()

    asyncio.run(main())
    return endpoint


def refused(detail: str) -> None:
    for secret in (CLIENT_SECRET, REFRESH, "the-client", "at-", "rt-rotated"):
        assert secret not in detail


# -- caching and single flight -----------------------------------------------


def test_concurrent_callers_share_one_fetch(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        req = token_request(ep.port)
        tokens = await asyncio.gather(*(broker.token("conn", req) for _ in range(20)))
        assert set(tokens) == {"at-1"}
        assert await broker.token("conn", req) == "at-1"
        assert broker.secrets("conn") == ("at-1",)

    ep = run(scenario, cafile, ca)
    assert ep.calls == 1
    assert ep.forms[0] == {"grant_type": "client_credentials"}
    headers = ep.headers[0]
    assert headers["host"] == f"{HOST}:{ep.port}"
    assert headers["connection"] == "close"
    user, _, password = (
        base64.b64decode(headers["authorization"].removeprefix("Basic ")).decode().partition(":")
    )
    assert (user, password) == ("the-client", CLIENT_SECRET)
    assert ep.snis == [HOST]


def test_connectors_are_cached_apart(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        req = token_request(ep.port)
        a, b = await asyncio.gather(broker.token("a", req), broker.token("b", req))
        assert {a, b} == {"at-1", "at-2"}
        broker.retain(["a"])
        assert broker.secrets("b") == ()
        assert await broker.token("a", req) == a

    assert run(scenario, cafile, ca).calls == 2


def test_a_short_lived_token_is_fetched_once_per_lifetime(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        req = token_request(ep.port)
        start = time.monotonic()
        calls_at: dict[float, int] = {}
        while (elapsed := time.monotonic() - start) < 2.3:
            tokens = await asyncio.gather(*(broker.token("conn", req) for _ in range(5)))
            for token in tokens:  # never one that has expired
                assert time.monotonic() < ep.issued[token]
            calls_at[round(elapsed, 2)] = ep.calls
            await asyncio.sleep(0.02)
        # 2 s lifetime, 0.2 s margin: one fetch until ~1.8 s, then exactly one more.
        assert max(c for t, c in calls_at.items() if t < 1.7) == 1
        assert ep.calls == 2

    run(scenario, cafile, ca, Endpoint(lifetime=2))


def test_a_token_that_expires_on_the_way_is_not_used(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        with pytest.raises(CredentialUnavailable, match="expired before it arrived"):
            await broker.token("conn", token_request(ep.port))

    run(scenario, cafile, ca, Endpoint(lifetime=0.1, delay=0.3))


def test_a_cancelled_caller_does_not_cancel_the_fetch(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        req = token_request(ep.port)
        first = asyncio.create_task(broker.token("conn", req))
        second = asyncio.create_task(broker.token("conn", req))
        await asyncio.sleep(0.02)
        first.cancel()
        assert await second == "at-1"

    assert run(scenario, cafile, ca, Endpoint(delay=0.2)).calls == 1


def test_a_replaced_secret_drops_the_cached_token(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        assert await broker.token("conn", token_request(ep.port)) == "at-1"
        assert await broker.token("conn", token_request(ep.port)) == "at-1"  # equal, not the same object
        assert await broker.token("conn", token_request(ep.port, secret="cs-new")) == "at-2"

    ep = run(scenario, cafile, ca)
    assert ep.calls == 2
    assert base64.b64decode(ep.headers[1]["authorization"][6:]).decode() == "the-client:cs-new"


def test_body_client_auth(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        await broker.token("conn", token_request(ep.port, client_auth="body", scope="read write"))

    ep = run(scenario, cafile, ca)
    assert "authorization" not in ep.headers[0]
    assert ep.forms[0] == {
        "grant_type": "client_credentials",
        "scope": "read write",
        "client_id": "the-client",
        "client_secret": CLIENT_SECRET,
    }


# -- 401 from the upstream -----------------------------------------------------


def test_twenty_401s_cause_one_refresh(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        req = token_request(ep.port)
        old = await broker.token("conn", req)

        async def after_401() -> str:
            broker.invalidate("conn", old)
            await asyncio.sleep(0)
            return await broker.token("conn", req)

        assert set(await asyncio.gather(*(after_401() for _ in range(20)))) == {"at-2"}
        broker.invalidate("conn", old)  # a late 401 for the replaced token
        broker.invalidate("conn", "not-ours")
        broker.invalidate("other", "at-2")
        assert await broker.token("conn", req) == "at-2"

    assert run(scenario, cafile, ca).calls == 2


def test_a_refused_token_is_never_handed_out_again(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        req = token_request(ep.port)
        old = await broker.token("conn", req)
        ep.mode = "500"
        broker.invalidate("conn", old)
        with pytest.raises(CredentialUnavailable, match="answered 500"):
            await broker.token("conn", req)

    run(scenario, cafile, ca)


# -- failures ------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_endpoint_down(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        start = time.monotonic()
        with pytest.raises(CredentialUnavailable, match=r"cannot connect to auth\.test") as e:
            await broker.token("conn", token_request(closed_port()))
        assert time.monotonic() - start < 2
        refused(str(e.value))

    run(scenario, cafile, ca)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("500", "token endpoint answered 500"),
        ("400-echo", "token endpoint answered 400 (invalid_client)"),
        ("redirect", "token endpoint answered 302"),
        ("big", "response larger than 64 KiB"),
        ("close", "malformed or truncated HTTP response"),
    ],
)
def test_failed_fetches(
    cafile: str, ca: trustme.CA, mode: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        with pytest.raises(CredentialUnavailable) as e:
            await broker.token("conn", token_request(ep.port, "refresh_token"))
        assert e.value.detail == f"connector conn: no OAuth2 access token ({reason})"
        assert str(e.value) == e.value.detail

    ep = run(scenario, cafile, ca, Endpoint(mode=mode))
    assert ep.calls == 1  # a redirect is not followed
    assert reason in caplog.text
    refused(caplog.text)


def test_a_hanging_endpoint_times_out(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        start = time.monotonic()
        results = await asyncio.gather(
            *(broker.token("conn", token_request(ep.port)) for _ in range(5)), return_exceptions=True
        )
        assert 0.4 < time.monotonic() - start < 2
        assert all(
            isinstance(r, CredentialUnavailable) and "no answer within 0.5 s" in str(r) for r in results
        )

    assert run(scenario, cafile, ca, Endpoint(mode="hang"), timeout=0.5).calls == 1


def test_a_silent_tcp_peer_times_out(cafile: str, ca: trustme.CA) -> None:
    """A peer that accepts and never speaks TLS is bounded by the same deadline."""

    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        held: list[asyncio.StreamWriter] = []  # a collected writer would close the socket

        async def say_nothing(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)
            await asyncio.sleep(3600)

        silent = await asyncio.start_server(say_nothing, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        start = time.monotonic()
        with pytest.raises(CredentialUnavailable, match="no answer within"):
            await broker.token("conn", token_request(port))
        assert time.monotonic() - start < 2
        silent.close()
        for w in held:
            w.transport.abort()

    run(scenario, cafile, ca, timeout=0.5)


def test_after_a_failure_callers_wait_a_moment_then_ask_again(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        req = token_request(ep.port)
        for _ in range(3):
            with pytest.raises(CredentialUnavailable, match="answered 500"):
                await broker.token("conn", req)
        assert ep.calls == 1  # not once per request
        ep.mode = "ok"
        await asyncio.sleep(0.35)
        assert await broker.token("conn", req) == "at-2"

    assert run(scenario, cafile, ca, Endpoint(mode="500"), retry_after=0.3).calls == 2


def test_refresh_failure_keeps_a_still_valid_token(cafile: str, ca: trustme.CA) -> None:
    """Inside the margin a failed refresh is not an outage: the token is still good."""

    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        req = token_request(ep.port)
        assert await broker.token("conn", req) == "at-1"
        ep.mode = "500"
        await asyncio.sleep(0.75)  # 1 s lifetime: refresh from 0.9 s
        assert await broker.token("conn", req) == "at-1"
        await asyncio.sleep(0.3)  # now expired, and the refresh still fails
        with pytest.raises(CredentialUnavailable):
            await broker.token("conn", req)

    run(scenario, cafile, ca, Endpoint(lifetime=1), retry_after=0.01)


def test_an_untrusted_certificate_is_refused(cafile: str, ca: trustme.CA, tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))

    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        with pytest.raises(CredentialUnavailable, match=r"TLS certificate of auth\.test not accepted"):
            await broker.token("conn", token_request(ep.port))

    assert run(scenario, str(other), ca).calls == 0


def test_the_certificate_must_name_the_token_host(cafile: str, ca: trustme.CA) -> None:
    """The address comes from the resolver; the name checked is still the token URL's."""

    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        req = (
            OAuth2Placement.from_spec(
                {
                    "oauth2": {
                        "token_url": f"https://other.test:{ep.port}/t",
                        "grant": "client_credentials",
                        "client_id": "c",
                        "client_secret": "{{secret}}",
                    }
                },
                "conn",
            )
            .render({"secret": CLIENT_SECRET})
            .oauth2
        )
        assert req is not None
        with pytest.raises(CredentialUnavailable, match=r"TLS certificate of other\.test not accepted"):
            await broker.token("conn", req)

    async def anywhere(host: str, port: int) -> str:
        return "127.0.0.1"

    run(scenario, cafile, ca, resolve=anywhere)


# -- the resolver --------------------------------------------------------------


def gate(*, allow: list[str]) -> Gate:
    g = Gate(PolicySource(), Tunnels())
    g.guard = NetGuard(allow, [f"{HOST}=127.0.0.1"])
    return g


def test_the_gate_resolver_refuses_a_private_address(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        with pytest.raises(CredentialUnavailable, match=r"auth\.test resolves to a non-public address"):
            await broker.token("conn", token_request(ep.port))

    assert run(scenario, cafile, ca, resolve=vetted_resolver(gate(allow=[]))).calls == 0


def test_the_gate_resolver_honours_pins_and_allowed_networks(cafile: str, ca: trustme.CA) -> None:
    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        assert await broker.token("conn", token_request(ep.port)) == "at-1"

    assert run(scenario, cafile, ca, resolve=vetted_resolver(gate(allow=["127.0.0.0/8"]))).calls == 1


@pytest.mark.parametrize("answer", ["auth.test", "localhost", ""])
def test_a_resolver_must_give_an_address(cafile: str, ca: trustme.CA, answer: str) -> None:
    async def resolve(host: str, port: int) -> str:
        return answer

    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        with pytest.raises(CredentialUnavailable, match="gave no IP address"):
            await broker.token("conn", token_request(ep.port))

    assert run(scenario, cafile, ca, resolve=resolve).calls == 0


def test_a_failing_resolver(cafile: str, ca: trustme.CA) -> None:
    async def resolve(host: str, port: int) -> str:
        raise socket.gaierror(-2, f"Name or service not known {CLIENT_SECRET}")

    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        with pytest.raises(CredentialUnavailable, match=r"cannot resolve auth\.test \(gaierror\)") as e:
            await broker.token("conn", token_request(ep.port))
        refused(str(e.value))

    run(scenario, cafile, ca, resolve=resolve)


# -- refresh token rotation ----------------------------------------------------


def test_a_rotated_refresh_token_is_used_and_handed_on(
    cafile: str, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rotated: list[tuple[str, str]] = []

    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        req = token_request(ep.port, "refresh_token")
        assert await broker.token("conn", req) == "at-1"
        assert broker.secrets("conn") == ("at-1", "rt-rotated-1")
        broker.invalidate("conn", "at-1")
        assert await broker.token("conn", req) == "at-2"
        # The policy reloads with the stored copy, possibly one rotation behind: no refetch.
        assert await broker.token("conn", req.with_refresh_token("rt-rotated-1")) == "at-2"
        assert await broker.token("conn", req.with_refresh_token("rt-rotated-2")) == "at-2"
        broker.invalidate("conn", "at-2")
        assert await broker.token("conn", req.with_refresh_token("rt-rotated-1")) == "at-3"
        # An operator's new refresh token is a new secret: start over with it.
        assert await broker.token("conn", req.with_refresh_token("rt-operator")) == "at-4"

    ep = run(scenario, cafile, ca, Endpoint(rotate=True), on_rotated=lambda c, t: rotated.append((c, t)))
    assert [f["refresh_token"] for f in ep.forms] == [REFRESH, "rt-rotated-1", "rt-rotated-2", "rt-operator"]
    assert all(f["grant_type"] == "refresh_token" for f in ep.forms)
    assert rotated == [("conn", f"rt-rotated-{n}") for n in (1, 2, 3, 4)]
    refused(caplog.text)
    assert "rotated the refresh token" in caplog.text


def test_a_failing_rotation_callback_keeps_the_token(
    cafile: str, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(connector: str, token: str) -> None:
        raise RuntimeError(f"disk full while writing {token}")

    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        req = token_request(ep.port, "refresh_token")
        assert await broker.token("conn", req) == "at-1"
        broker.invalidate("conn", "at-1")
        assert await broker.token("conn", req) == "at-2"

    ep = run(scenario, cafile, ca, Endpoint(rotate=True), on_rotated=broken)
    assert ep.forms[1]["refresh_token"] == "rt-rotated-1"
    assert "keeping the rotated refresh token failed (RuntimeError)" in caplog.text
    refused(caplog.text)


def test_client_credentials_ignores_a_refresh_token(cafile: str, ca: trustme.CA) -> None:
    rotated: list[tuple[str, str]] = []

    async def scenario(ep: Endpoint, broker: TokenBroker) -> None:
        await broker.token("conn", token_request(ep.port))
        assert broker.secrets("conn") == ("at-1",)

    run(scenario, cafile, ca, Endpoint(rotate=True), on_rotated=lambda c, t: rotated.append((c, t)))
    assert rotated == []


def test_the_token_endpoint_context_is_made_at_first_use_only() -> None:
    made: list[ssl.SSLContext] = []

    def factory() -> ssl.SSLContext:
        made.append(client_context())
        return made[-1]

    async def resolve(host: str, port: int) -> str:
        return "127.0.0.1"

    broker = TokenBroker(resolve, factory)
    assert made == []  # a proxy with no oauth2 connector never loads the roots
    assert broker._context() is broker._context() is made[0]

"""The mitmproxy patches: refused on unverified versions, raw answers from the reason table."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
from mitmproxy import addonmanager, exceptions, hooks

from addons import patches
from proxy.reasons import Reason


@pytest.mark.parametrize("version", ["13.0.0", "12.4.0", "11.1.3", "12"])
def test_unverified_mitmproxy_is_refused_loudly(version: str) -> None:
    with pytest.raises(patches.UnsupportedMitmproxy, match=version):
        patches.check_version(version)


def test_installed_mitmproxy_is_verified() -> None:
    patches.check_version()
    patches.install_guards()
    patches.install_guards()  # idempotent


def test_raw_answer_is_a_complete_blocked_response() -> None:
    raw = patches.raw_answer(Reason.BAD_REQUEST, "request head over 64 KiB", 431)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 431 Request Header Fields Too Large"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields["x-egress-blocked"] == "bad-request"
    assert fields["connection"] == "close"
    assert int(fields["content-length"]) == len(body)
    doc = json.loads(body)
    assert doc["reason"] == "bad-request" and doc["request_id"]


class _Conn:
    def __init__(self, **app: object) -> None:
        self.app = {"client_alpn": None, "server_alpn": None, "http2": True, **app}

    def get_app_data(self) -> dict[str, object]:
        return self.app


@pytest.mark.parametrize(
    ("offers", "app", "chosen"),
    [
        ([b"http/1.1", b"h2"], {}, b"h2"),  # httpx's order: h2 whenever offered, as servers do
        ([b"h2"], {}, b"h2"),
        ([b"http/1.1"], {}, b"http/1.1"),
        ([b"http/1.1", b"h2"], {"http2": False}, b"http/1.1"),  # --no-http2 still wins
        ([b"http/1.1", b"h2"], {"server_alpn": b"http/1.1"}, b"http/1.1"),  # mirror a known upstream
        ([b"http/1.1", b"h2"], {"client_alpn": b"http/1.1"}, b"http/1.1"),  # forced (secure web proxy)
    ],
)
def test_alpn_prefers_h2_while_the_upstream_is_unknown(
    offers: list[bytes], app: dict[str, object], chosen: bytes
) -> None:
    assert patches._alpn_prefer_h2(_Conn(**app), offers) == chosen


def test_an_inherited_listener_is_adopted_once() -> None:
    """`egress exec` hands its worker a listening socket: connections made before are served."""
    import asyncio
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    host, port = sock.getsockname()
    early = socket.create_connection((host, port))  # waits in the backlog

    class Instance:
        def __init__(self) -> None:
            self.accepted: list[object] = []

        async def handle_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted.append(writer)
            writer.close()

    async def main() -> int:
        inst = Instance()
        patches.LISTENER.append(sock)
        (server,) = await patches._listen_reuse_port(inst, host, port)  # type: ignore[arg-type]
        assert patches.LISTENER == []  # a second listener binds its own
        for _ in range(100):
            if inst.accepted:
                break
            await asyncio.sleep(0.02)
        server.close()
        await server.wait_closed()
        return len(inst.accepted)

    try:
        assert asyncio.run(main()) == 1
    finally:
        early.close()


def test_an_inherited_listener_for_another_address_is_refused() -> None:
    import asyncio
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    patches.LISTENER.append(sock)
    try:
        with pytest.raises(OSError, match="inherited listener"):
            asyncio.run(patches._listen_reuse_port(None, "127.0.0.1", 1))  # type: ignore[arg-type]
    finally:
        patches.LISTENER.clear()
        sock.close()


def test_the_worker_imports_only_the_default_addons_it_loads() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, addons.runner\n"
        "from mitmproxy.addons import core, proxyserver, tlsconfig\n"
        "assert core.Core and proxyserver.Proxyserver and tlsconfig.TlsConfig\n"
        "print(sorted(m for m in sys.modules if m.startswith(('flask', 'ldap3', 'mitmproxy.addons.onboarding'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


class _Recorder:
    def __init__(self, name: str, calls: list[str], fail: bool = False, halt: bool = False) -> None:
        self.name, self.calls, self.fail, self.halt = name, calls, fail, halt

    def request(self, flow: object) -> None:
        self.calls.append(self.name)
        if self.fail:
            raise RuntimeError("boom")
        if self.halt:
            raise exceptions.AddonHalt()


class _AsyncChild:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def request(self, flow: object) -> None:
        await asyncio.sleep(0)
        self.calls.append("child")


class _Parent:
    def __init__(self, calls: list[str]) -> None:
        self.addons = [_AsyncChild(calls)]


class _Quiet:
    """Implements no request hook: the index skips it."""


_ORIGINAL = addonmanager.AddonManager.trigger_event


async def _dispatch(calls: list[str], *extra: object, trigger: Any = patches._trigger_indexed) -> None:
    from mitmproxy.test import taddons, tflow

    with taddons.context() as tctx:
        manager = tctx.master.addons
        manager.add(_Recorder("a", calls), _Quiet(), _Parent(calls), _Recorder("b", calls, fail=True))
        manager.add(_Recorder("c", calls), *extra)
        flow = tflow.tflow()
        await trigger(manager, hooks.all_hooks["request"](flow))
        manager.add(_Recorder("late", calls))  # the chain changed: the index is rebuilt
        await trigger(manager, hooks.all_hooks["request"](flow))
        manager.remove(manager.get("a"))  # one out, one in: the same length, rebuilt too
        manager.add(_Recorder("new", calls))
        await trigger(manager, hooks.all_hooks["request"](flow))


async def _both(calls: list[str], halted: list[str], trigger: Any) -> None:
    await _dispatch(calls, trigger=trigger)
    await _dispatch(halted, _Recorder("halt", halted, halt=True), _Recorder("after", halted), trigger=trigger)


@pytest.mark.parametrize("trigger", [_ORIGINAL, patches._trigger_indexed], ids=["mitmproxy", "indexed"])
def test_indexed_dispatch_keeps_order_errors_children_and_halt(trigger: Any) -> None:
    """The same calls as mitmproxy's own dispatch, which the first parameter runs."""
    calls: list[str] = []
    halted: list[str] = []
    asyncio.run(_both(calls, halted, trigger))
    # b raised: logged by safecall, the next addon still runs (as in mitmproxy's own dispatch)
    assert calls == ["a", "child", "b", "c", "a", "child", "b", "c", "late", "child", "b", "c", "late", "new"]
    assert halted == ["a", "child", "b", "c", "halt"] * 2 + ["child", "b", "c", "halt"]


def _http1_commands(
    cls: type, head: bytes, body: bytes, cuts: list[int], fast: bool
) -> tuple[list[str], bytes]:
    """What an HTTP/1 layer of ``cls`` emits for ``head + body`` arriving in pieces cut at
    ``cuts``, and the body bytes it passed on."""
    import types

    from mitmproxy.options import Options
    from mitmproxy.proxy import events
    from mitmproxy.proxy.context import Context
    from mitmproxy.proxy.layers.http import _http1
    from mitmproxy.test import tflow

    patches.install_guards()
    client = tflow.tclient_conn()
    context = Context(client, Options())
    context.server = tflow.tserver_conn()
    layer = cls(context)
    if fast:
        layer._handle_event = types.MethodType(patches._body_straight_through, layer)
    out = list(layer.handle_event(events.Start()))
    if cls is _http1.Http1Client:  # a request sent first, so the response has a flow to answer
        from mitmproxy.proxy.layers.http import RequestHeaders

        out += layer.handle_event(RequestHeaders(1, tflow.treq(), end_stream=True))
        out += layer.handle_event(_http1.RequestEndOfMessage(1))
        conn = context.server
    else:
        conn = client
    data = head + body
    edges = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    for a, b in itertools.pairwise(edges):
        if b > a:
            out += layer.handle_event(events.DataReceived(conn, data[a:b]))
    if cls is _http1.Http1Client and b"content-length" not in head.lower():
        out += layer.handle_event(events.ConnectionClosed(conn))
    received = b"".join(
        c.event.data for c in out if type(getattr(c, "event", None)).__name__.endswith("Data")
    )
    return [_summary(c) for c in out], received


def _summary(command: Any) -> str:
    """A command without the connections' random ids: its kind and the bytes it carries."""
    event = getattr(command, "event", None)
    what = event if event is not None else command
    return f"{type(command).__name__}/{type(what).__name__}:{getattr(what, 'data', b'')!r}"


@pytest.mark.parametrize(
    "kind, head",
    [
        ("request", b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"),
        ("response", b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"),
        ("response", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"),  # read until close
        ("request", b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ],
    ids=["request-length", "response-length", "response-until-close", "request-chunked"],
)
def test_a_body_passed_straight_through_yields_what_h11_yields(kind: str, head: bytes) -> None:
    """Same commands, same bytes, for any way the head and body are cut (and bytes past the end)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from mitmproxy.proxy.layers.http import _http1

    cls = _http1.Http1Server if kind == "request" else _http1.Http1Client
    chunked = b"chunked" in head

    @settings(max_examples=150, deadline=None)
    @given(
        st.binary(min_size=0, max_size=300),
        st.lists(st.integers(0, 1 << 20), max_size=8),
        st.binary(max_size=20),
    )
    def check(body: bytes, cuts: list[int], extra: bytes) -> None:
        framed = (
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            if chunked and body
            else b"0\r\n\r\n" * chunked or body
        )
        start = head % len(body) if b"%d" in head else head
        after = b"" if b"content-length" not in start.lower() else extra  # past the end: the next message
        want = _http1_commands(cls, start, framed + after, cuts, fast=False)
        got = _http1_commands(cls, start, framed + after, cuts, fast=True)
        assert got == want
        assert got[1] == body  # what the layer passed on is the body, and only it

    check()

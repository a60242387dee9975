"""The hot-path replacements yield what mitmproxy's own code yields (run side by side)."""

from __future__ import annotations

import asyncio
import collections.abc
import itertools
import os
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import addonmanager, connection, exceptions, hooks, http, optmanager
from mitmproxy.proxy import context, events, server
from mitmproxy.utils import asyncio_utils

from addons import hotpath, patches
from tests.harness import handshake_in_memory

# mitmproxy's own, taken before anything in this process could install the replacements
ORIGINAL_GET_ALL = http.Headers.get_all
ORIGINAL_POP = http.Headers.pop
assert ORIGINAL_GET_ALL is not hotpath._headers_get_all
ORIGINAL_CURRENT = optmanager._Option.current
ORIGINAL_ARGS = hooks.Hook.args
ORIGINAL_FORK = context.Context.fork
ORIGINAL_EQ = connection.Connection.__eq__
ORIGINAL_DEBUG_INFO = asyncio_utils.set_task_debug_info
assert ORIGINAL_FORK is not hotpath._fork


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


async def _dispatch(calls: list[str], *extra: object, trigger: Any = hotpath._trigger_indexed) -> None:
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


@pytest.mark.parametrize("trigger", [_ORIGINAL, hotpath._trigger_indexed], ids=["mitmproxy", "indexed"])
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
        layer._handle_event = types.MethodType(hotpath._body_straight_through, layer)
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


_names = st.sampled_from(["Host", "host", "HOST", "Content-Length", "transfer-encoding", "X-Égal", "x-égal"])
_fields = st.lists(
    st.tuples(
        st.one_of(
            _names.map(lambda n: n.encode("utf-8", "surrogateescape")), st.binary(min_size=1, max_size=8)
        ),
        st.binary(max_size=12),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(_fields, st.one_of(_names, _names.map(str.encode), st.binary(max_size=8)))
def test_header_lookups_answer_as_mitmproxy_does(
    fields: list[tuple[bytes, bytes]], name: str | bytes
) -> None:
    headers = http.Headers(tuple(fields))
    want_all = ORIGINAL_GET_ALL(headers, name)
    assert hotpath._headers_get_all(headers, name) == want_all
    # Mapping's generic get and in, on top of mitmproxy's get_all, as Headers inherits them
    assert hotpath._headers_get(headers, name, "absent") == (", ".join(want_all) if want_all else "absent")
    assert hotpath._headers_contain(headers, name) == bool(want_all)
    assert collections.abc.Mapping.__contains__(headers, name) == bool(want_all)


@settings(max_examples=300, deadline=None)
@given(_fields, st.one_of(_names, _names.map(str.encode), st.binary(max_size=8)))
def test_a_header_pop_answers_and_removes_as_mitmproxy_does(
    fields: list[tuple[bytes, bytes]], name: str | bytes
) -> None:
    ours, theirs = http.Headers(tuple(fields)), http.Headers(tuple(fields))
    assert ORIGINAL_POP is collections.abc.MutableMapping.pop
    assert hotpath._headers_pop(ours, name, "absent") == ORIGINAL_POP(theirs, name, "absent")
    assert ours.fields == theirs.fields
    ours, theirs = http.Headers(tuple(fields)), http.Headers(tuple(fields))
    try:
        want: object = ORIGINAL_POP(theirs, name)
    except KeyError as e:
        want = e
    if isinstance(want, KeyError):
        with pytest.raises(KeyError):
            hotpath._headers_pop(ours, name)
    else:
        assert hotpath._headers_pop(ours, name) == want
    assert ours.fields == theirs.fields


def test_a_header_name_of_the_wrong_type_still_raises() -> None:
    with pytest.raises(TypeError):
        hotpath._headers_get_all(http.Headers(host="a"), 3)  # type: ignore[arg-type]


def test_hook_arguments_are_the_dataclass_fields_in_order() -> None:
    from mitmproxy.test import tflow

    flow = tflow.tflow()
    for cls in {hooks.all_hooks["request"], hooks.all_hooks["responseheaders"], hooks.all_hooks["error"]}:
        event = cls(flow)
        assert hotpath._hook_args(event) == ORIGINAL_ARGS(event)
        assert hotpath._hook_args(event)[0] is flow


def test_options_read_as_before_and_mutable_values_stay_copies() -> None:
    from mitmproxy.options import Options

    options = Options()
    options.update(listen_port=9, allow_hosts=["a"])
    for name, option in options._options.items():
        assert hotpath._option_current(option) == ORIGINAL_CURRENT(option), name
    option = options._options["allow_hosts"]
    hotpath._option_current(option).append("b")  # the caller's copy, not the option's value
    assert ORIGINAL_CURRENT(option) == ["a"]


def test_a_disarmed_watchdog_rearms_after_the_last_hook_even_when_it_raises() -> None:
    async def check() -> None:
        async def callback() -> None: ...

        dog = server.TimeoutWatchdog(10, callback)
        with hotpath._disarm(dog):
            with pytest.raises(RuntimeError), hotpath._disarm(dog):
                assert dog.blocker == 2 and not dog.can_timeout.is_set()
                raise RuntimeError
            assert dog.blocker == 1 and not dog.can_timeout.is_set()
        assert dog.blocker == 0 and dog.can_timeout.is_set()

    asyncio.run(check())


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL")
def test_a_connection_gets_the_certificate_and_key_it_was_handed_converted_once() -> None:
    import trustme
    from cryptography.hazmat.primitives import serialization
    from OpenSSL import SSL, crypto

    ca = trustme.CA()
    issued = [ca.issue_cert(f"h{i}.test") for i in range(2)]
    certs = [c.cert_chain_pems[0].bytes() for c in issued]
    from cryptography import x509

    loaded = [x509.load_pem_x509_certificate(pem) for pem in certs]
    key = serialization.load_pem_private_key(issued[0].private_key_pem.bytes(), None)
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    seen = []
    for cert in (loaded[0], loaded[1], loaded[0]):
        conn = SSL.Connection(context)
        hotpath._use_certificate(conn, cert)
        presented = conn.get_certificate()
        assert presented is not None and presented.to_cryptography() == cert
        seen.append(hotpath._x509_copies(cert))
    assert seen[0] is seen[2] and seen[0] is not seen[1]  # one copy per certificate, reused
    for _ in range(2):  # a real handshake (memory BIOs) proves the key loaded is the certificate's
        server = SSL.Connection(context)
        hotpath._use_certificate(server, loaded[0])
        hotpath._use_privatekey(server, key)
        server.set_accept_state()
        client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        client_context.set_verify(SSL.VERIFY_PEER)
        client_context.get_cert_store().add_cert(crypto.X509.from_cryptography(ca._certificate))
        client = SSL.Connection(client_context)
        client.set_tlsext_host_name(b"h0.test")
        client.set_connect_state()
        handshake_in_memory(client, server)
        client.sendall(b"hello")
        server.bio_write(client.bio_read(65536))
        assert server.recv(5) == b"hello"
    assert hotpath._key_copies(key) is hotpath._key_copies(key)


def test_the_certificate_cache_keeps_at_most_its_cap_and_drops_the_oldest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Store:
        STORE_CAP = 2

        def __init__(self) -> None:
            self.certs: dict[str, object] = {}
            self.expire_queue: list[object] = []

    store, entries = Store(), [object() for _ in range(4)]
    for i, entry in enumerate(entries):
        store.certs[f"cn{i}"] = store.certs[f"san{i}"] = entry
        hotpath._expire(store, entry)  # type: ignore[arg-type]
    assert set(store.certs) == {"cn2", "san2", "cn3", "san3"}
    copies = hotpath._Copies(lambda o: [o])
    monkeypatch.setattr(hotpath, "CERT_CAP", 0)
    held = [object() for _ in range(40)]
    for obj in held:
        assert copies(obj) == [obj]
    assert len(copies._kept) <= 16


class _Handler:
    """What mitmproxy's ``handle_connection`` uses of its ``ConnectionHandler``."""

    def __init__(self) -> None:
        self.transports: dict[connection.Connection, server.ConnectionIO] = {}
        self.events: list[events.Event] = []

    async def server_event(self, event: events.Event) -> None:
        self.events.append(event)

    async def drain_writers(self) -> None:
        pass


class _Writer:
    def close(self) -> None:
        pass


@pytest.mark.parametrize("size", [hotpath.MITMPROXY_READ_SIZE, hotpath.READ_SIZE])
def test_a_connection_takes_up_to_read_size_off_its_stream_per_event(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(patches, "TUNE_IO", hotpath._tune_io)
    monkeypatch.setattr(hotpath, "READ_SIZE", size)
    data = os.urandom(3 * hotpath.READ_SIZE + 123)

    async def run() -> _Handler:
        reader = asyncio.StreamReader(limit=len(data))  # all of it buffered before the first read
        reader.feed_data(data)
        reader.feed_eof()
        conn = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0)
        conn.state = connection.ConnectionState.CAN_READ  # nothing left to write once read out
        handler = _Handler()
        handler.transports[conn] = server.ConnectionIO(reader=reader, writer=_Writer())  # type: ignore[arg-type]
        await patches._handle_connection_closing(handler, conn)  # type: ignore[arg-type]
        assert handler.transports == {}
        return handler

    handler = asyncio.run(run())
    received = [e.data for e in handler.events if isinstance(e, events.DataReceived)]
    assert b"".join(received) == data
    assert max(map(len, received)) == size
    assert len(received) == -(-len(data) // size)
    assert isinstance(handler.events[-1], events.ConnectionClosed)


async def _socket_pair() -> tuple[asyncio.StreamWriter, socket.socket, list[bytes]]:
    """A real asyncio writer joined to a plain socket, and what its transport is asked to write."""
    ours, theirs = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=ours)
    sent: list[bytes] = []
    write = writer.transport.write

    def spy(data: bytes | bytearray | memoryview) -> None:
        sent.append(bytes(data))
        write(data)

    writer.transport.write = spy  # type: ignore[method-assign]
    hotpath._tune_io(server.ConnectionIO(writer=writer))
    theirs.settimeout(5)
    return writer, theirs, sent


def _read_to_eof(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(1 << 16):
        out += chunk
    return out


def test_the_writes_of_one_step_leave_as_one_in_order() -> None:
    async def run() -> tuple[list[bytes], bytes]:
        writer, theirs, sent = await _socket_pair()
        writer.write(b"head ")
        writer.write(b"body ")
        writer.write(b"end")
        assert sent == []  # nothing leaves before the step that wrote is over
        await asyncio.sleep(0)
        writer.write(b" next")  # a later step: a write of its own
        await asyncio.sleep(0)
        writer.close()
        await writer.wait_closed()
        return sent, _read_to_eof(theirs)

    sent, received = asyncio.run(run())
    assert sent == [b"head body end", b" next"]
    assert received == b"head body end next"


@pytest.mark.parametrize("end", ["close", "write_eof"])
def test_a_close_or_half_close_hands_over_what_waits_first(end: str) -> None:
    async def run() -> tuple[list[bytes], bytes]:
        writer, theirs, sent = await _socket_pair()
        writer.write(b"last ")
        writer.write(b"words")
        getattr(writer, end)()
        assert sent == [b"last words"]
        if end == "close":
            await writer.wait_closed()
        received = _read_to_eof(theirs)  # the data, then the end of the stream
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0)  # the scheduled hand-over finds nothing left
        theirs.close()
        return sent, received

    sent, received = asyncio.run(run())
    assert sent == [b"last words"]
    assert received == b"last words"


def test_writes_to_a_closed_transport_are_dropped_as_mitmproxy_drops_them() -> None:
    async def run() -> list[bytes]:
        writer, theirs, sent = await _socket_pair()
        writer.write(b"too late")
        writer.transport.abort()  # the peer went away before the step ended
        await asyncio.sleep(0)
        theirs.close()
        return sent

    assert asyncio.run(run()) == []


def _client(**kw: Any) -> connection.Client:
    return connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0, **kw)


def test_a_forked_context_is_mitmproxys_without_a_throwaway_server() -> None:
    from mitmproxy.options import Options

    parent = context.Context(_client(), Options())
    parent.server = connection.Server(address=("api.test", 443))
    parent.layers = [object(), object()]
    ours, theirs = hotpath._fork(parent), ORIGINAL_FORK(parent)
    assert type(ours) is type(theirs) is context.Context
    assert vars(ours).keys() == vars(theirs).keys()
    for forked in (ours, theirs):
        assert forked.client is parent.client and forked.options is parent.options
        assert forked.server is parent.server
        assert forked.layers == parent.layers and forked.layers is not parent.layers


def test_connections_compare_as_mitmproxy_compares_them() -> None:
    class Custom(connection.Client):
        pass

    a = _client()
    same_id = [
        _client(id=a.id),
        connection.Server(address=None, id=a.id),
        Custom(peername=("h", 1), sockname=("h", 2), timestamp_start=0, id=a.id),
    ]
    others = [_client(), connection.Server(address=None), None, a.id, object()]
    for other in [a, *same_id, *others]:
        assert hotpath._connection_eq(a, other) is ORIGINAL_EQ(a, other), other
    assert [hotpath._connection_eq(a, o) for o in same_id] == [True] * 3
    assert not any(hotpath._connection_eq(a, o) for o in others)


@pytest.mark.parametrize("test_name", [None, "tests/x.py::test_y (call)"])
def test_a_task_gets_the_debug_info_mitmproxy_gives_it(
    monkeypatch: pytest.MonkeyPatch, test_name: str | None
) -> None:
    if test_name is None:
        monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    else:
        monkeypatch.setenv("PYTEST_CURRENT_TEST", test_name)
    monkeypatch.setattr(hotpath, "_TEST_NAME", test_name)  # as read by a worker started now

    async def run() -> list[tuple[str, object, bool]]:
        seen = []
        for set_info in (hotpath._set_task_debug_info, ORIGINAL_DEBUG_INFO):
            task = asyncio.ensure_future(asyncio.sleep(0))
            set_info(task, name="handler", client=("10.0.0.1", 5))
            seen.append((task.get_name(), getattr(task, "client", None), isinstance(task.created, float)))  # type: ignore[attr-defined]
            await task
        return seen

    ours, theirs = asyncio.run(run())
    assert ours == theirs
    assert ours[0] == ("handler" if test_name is None else f"handler [created in {test_name}]")

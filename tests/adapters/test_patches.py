"""The mitmproxy patches: refused on unverified versions, raw answers from the reason table."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import connection
from mitmproxy.proxy import context, events

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


def test_a_ready_worker_has_frozen_its_start_up_heap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A full collection walked the start-up heap on every run: 40 ms, the p99 at 200 req/s."""
    import gc

    from addons.runner import Ready

    monkeypatch.setenv("EGRESS_WORKER_READY_FILE", str(tmp_path / "ready"))
    gc.unfreeze()
    try:
        asyncio.run(Ready().running())
        assert gc.get_freeze_count() > 1000
        assert (tmp_path / "ready").read_text().isdigit()
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("pad", [60 * 1024, 200 * 1024])
def test_a_whole_head_in_one_read_is_bounded_where_it_ends(pad: int) -> None:
    """Workers read up to 256 KiB at once, so a whole oversized head, its end included, can
    arrive in one event: it is refused for where it ends, not for being incomplete."""
    from mitmproxy import connection, options
    from mitmproxy.proxy import commands, context, events
    from mitmproxy.proxy.layers.http import _http1

    patches.install_guards()
    client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0)
    server = _http1.Http1Server(context.Context(client, options.Options()))
    head = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Pad: " + b"a" * pad + b"\r\n\r\n"
    list(server.handle_event(events.Start()))
    sent = [
        c.data
        for c in server.handle_event(events.DataReceived(client, head))
        if isinstance(c, commands.SendData)
    ]
    refused = any(data.startswith(b"HTTP/1.1 431") for data in sent)
    assert refused is (len(head) > patches.MAX_HEAD), [data[:80] for data in sent]


def _stream() -> Any:
    from mitmproxy.options import Options
    from mitmproxy.proxy.layers import http as http_layer

    client = connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080), timestamp_start=0)
    ctx = context.Context(client, Options())
    ctx.layers = [object()]  # the layers above, as a forked context carries them
    return http_layer.HttpStream(ctx, 1)


def test_a_finished_stream_is_freed_by_reference_counting_alone() -> None:
    stream = _stream()
    stream.client_state = stream.server_state = stream.state_done
    stream.__dict__["_egress_timer"] = timer = patches._Timer(1.0, stream)
    above = stream.context.layers[0]
    gone = weakref.ref(stream)
    gc.disable()
    try:
        patches._release(stream)
        assert stream.client_state is stream.server_state is patches._done
        assert stream.context.layers == [above]
        with pytest.raises(AssertionError, match="state_done: Expected no events"):
            next(stream.client_state(events.Start()))
        # the wakeup still on its way is stale now: dropped, nothing touched
        assert list(patches._stream_handle_event(stream, events.Wakeup(timer))) == []
        del stream, timer
        assert gone() is None  # no cycle left: freed without the collector
    finally:
        gc.enable()


@pytest.mark.parametrize("side", ["client", "server"])
def test_a_stream_still_under_way_keeps_its_states(side: str) -> None:
    stream = _stream()
    stream.client_state = stream.server_state = stream.state_done
    waiting = stream.state_wait_for_response_headers if side == "server" else stream.state_stream_request_body
    setattr(stream, f"{side}_state", waiting)
    stream.__dict__["_egress_timer"] = timer = patches._Timer(1.0, stream)
    patches._release(stream)
    assert getattr(stream, f"{side}_state") == waiting
    assert stream.__dict__["_egress_timer"] is timer
    assert stream.context.layers[-1] is stream

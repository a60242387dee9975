"""Every change egress-proxy makes to mitmproxy internals, applied once, version-checked.

Guards (always, also under ``mitmdump -s``), closing gaps no hook can reach:

- request heads are buffered without limit ("FIXME: protect against header
  size DoS" in ``_http1.py``): heads past MAX_HEAD get 431 and a close;
  so are an upstream's response heads (502 and a close), and chunk-size
  lines (with their extensions) and trailer blocks either way (the
  connection is closed);
- chunked request trailers raise NotImplementedError, which crashes the
  connection without an answer: they get 400 and a close;
- chunked response trailers from an HTTP/1 upstream crash the client
  connection the same way: they are dropped (never scrubbed, never sent);
- mitmproxy's error pages quote the bytes it could not parse, which may be an
  upstream echoing the secret: they say only the status;
- WebSocket ping/pong payloads and close reasons are relayed without a hook:
  those sent to the client are emptied; a message is buffered until its last
  fragment: past ``LIMITS.websocket_message`` bytes both sides get close 1009;
- HTTP/2 rapid reset (HEADERS then RST_STREAM, over and over) turned each
  stream into an upstream request, and so did "MadeYouReset" (frames that
  make the proxy reset the stream): past ``LIMITS.h2_resets`` resets of
  either kind in ``LIMITS.h2_reset_window`` seconds the connection gets
  GOAWAY, and a reset that arrives with its request reaches the stream, so
  the request never goes upstream;
- the body of a request refused at its head was kept whole until the
  refusal could be sent: it is dropped as it arrives;
- an exception from a response stream transform (a decompression bomb, a
  corrupt compressed body) crashed the layer and hung the client: it kills
  the flow instead; so does one from a request stream transform (a secret in
  a streamed body), closing the upstream connection before the chunk leaves;
- nothing bounded how long a connection may take to reach TLS inside its
  tunnel (a silent socket, a trickled CONNECT head or ClientHello): past
  ``LIMITS.handshake_timeout`` it is closed.

One reach without a patch: ``close_client`` closes a client connection from a
hook (``flow.kill()`` does nothing to a WebSocket in progress), the way
mitmproxy's idle timeout does, for a WebSocket message that carries a secret.

Speedups and defaults (only in the product's own workers):

- listeners bind with SO_REUSEPORT so workers share one port, or adopt a
  listening socket the worker inherited (``LISTENER``, from `egress exec`);
- with no upstream connection yet (the lazy strategy) mitmproxy picks the
  client's first ALPN protocol, so httpx (which offers http/1.1 before h2)
  never got HTTP/2, and with ``http1=False`` spoke HTTP/2 on an HTTP/1
  connection and failed: h2 is chosen whenever offered, as servers do;
- mitmproxy's per-request machinery made cheaper, with the same behaviour
  (``addons.hotpath``).

These reach into private code, so they refuse to load on a mitmproxy this
module was not verified against.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import socket
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import h2.errors
import h2.events
import h11
import wsproto.events
from mitmproxy import connection, ctx, flow, http
from mitmproxy import version as mitmproxy_version
from mitmproxy.addons import tlsconfig
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import commands, events, layers, mode_servers, server
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http import _http1, _http2
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    RequestData,
    RequestEndOfMessage,
    RequestHeaders,
    RequestProtocolError,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
)
from mitmproxy.proxy.layers.http._hooks import HttpErrorHook

from proxy.reasons import Reason, blocked_answer

VERIFIED = ("12.1.", "12.2.", "12.3.")  # keep in step with pyproject.toml's mitmproxy range
MAX_HEAD = 64 * 1024  # a request or response head, a chunk-size line, a trailer block
HEAD_END = re.compile(rb"\n\r?\n")  # what h11's ReceiveBuffer takes as the end of a head
_original_read_headers = _http1.Http1Server.read_headers
_original_read_response_headers = _http1.Http1Client.read_headers
_original_read_body = _http1.Http1Connection.read_body
_original_h2_event = _http2.Http2Server.handle_h2_event
_original_handle_client = server.ConnectionHandler.handle_client
_original_handle_connection = server.ConnectionHandler.handle_connection
TUNE_IO: Callable[[server.ConnectionIO], None] | None = None  # set by addons.hotpath in workers
_original_ws_send = layers.websocket.WebsocketConnection.send2
_original_ws_events = layers.websocket.WebsocketConnection.events
_original_stream_body = http_layer.HttpStream.state_stream_response_body
_original_stream_request_body = http_layer.HttpStream.state_stream_request_body
_original_alpn_select = tlsconfig.alpn_select_callback
_original_stream_event = http_layer.HttpStream._handle_event
_original_consume_request_body = http_layer.HttpStream.state_consume_request_body
_original_stream_handle_event = http_layer.HttpStream.handle_event
_installed: set[str] = set()


@dataclass
class Limits:
    """Tunables of the guards; the limits addon sets them from its options."""

    h2_resets: int = 100  # stream resets (client's or provoked) per connection and window, then GOAWAY
    h2_reset_window: float = 10.0
    handshake_timeout: float = 10.0  # seconds from connect until TLS inside the tunnel
    request_body_timeout: float = 60.0  # seconds for a request body, plus one per BODY_RATE bytes
    upstream_timeout: float = 600.0  # seconds from the end of a request until its response head
    websocket_message: int = 16 * 1024 * 1024  # bytes of one WebSocket message, then close 1009


LIMITS = Limits()
BODY_RATE = 64 * 1024  # bytes a second that earn a request body one more second
# Wakeups of a request's deadlines: the first after at most FIRST_TICK (a pending wakeup keeps its
# finished stream, and most answers come sooner), then every TICK (the idle watchdog sees activity).
FIRST_TICK = 1.0
TICK = 5.0
BODY_TIMEOUT = "request body timed out"
UPSTREAM_TIMEOUT = "upstream response timed out"

_expiring: set[asyncio.Future[None]] = set()


class UnsupportedMitmproxy(RuntimeError):
    pass


def check_version(version: str = mitmproxy_version.VERSION) -> None:
    """Fail loudly on a mitmproxy whose internals these patches were not verified on."""
    if not version.startswith(VERIFIED):
        raise UnsupportedMitmproxy(
            f"egress-proxy patches mitmproxy internals verified on {', '.join(v + 'x' for v in VERIFIED)}; "
            f"mitmproxy {version} is not one of them (install a supported version)"
        )
    missing = [
        name
        for owner, name in (
            (_http1.Http1Server, "read_headers"),
            (_http1.Http1Client, "read_headers"),
            (_http1.Http1Connection, "read_body"),
            (mode_servers.AsyncioServerInstance, "listen"),
            (_http1, "format_error"),
            (_http2, "format_error"),
            (_http2.Http2Server, "handle_h2_event"),
            (server.ConnectionHandler, "handle_client"),
            (server.ConnectionHandler, "on_timeout"),
            (server.ConnectionHandler, "handle_connection"),
            (layers.websocket.WebsocketConnection, "send2"),
            (layers.websocket.WebsocketConnection, "events"),
            (http_layer.HttpStream, "state_stream_response_body"),
            (http_layer.HttpStream, "state_stream_request_body"),
            (http_layer.HttpStream, "check_killed"),
            (http_layer.HttpStream, "state_consume_request_body"),
            (http_layer.HttpStream, "state_wait_for_response_headers"),
            (http.MessageData, "__post_init__"),
            (tlsconfig, "alpn_select_callback"),
        )
        if not hasattr(owner, name)
    ]
    if missing:
        raise UnsupportedMitmproxy(f"mitmproxy {version} lacks {', '.join(missing)}: cannot apply guards")


def raw_answer(reason: Reason, detail: str, status: int | None = None) -> bytes:
    """A blocked answer as HTTP/1.1 bytes, for the guards that run before any flow exists."""
    code, headers, body = blocked_answer(reason, detail, uuid.uuid4().hex, status)
    lines = [f"HTTP/1.1 {code} {status_codes.RESPONSES.get(code, '')}".rstrip()]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += ["connection: close", f"content-length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def _over_head_limit(buf: Any) -> bool:
    """More than MAX_HEAD bytes buffered and no head ending within them."""
    return len(buf) > MAX_HEAD and HEAD_END.search(bytes(buf), 0, MAX_HEAD + 3) is None


def _bounded_read_headers(
    self: _http1.Http1Server, event: events.ConnectionEvent
) -> Generator[Any, Any, None]:
    if isinstance(event, events.DataReceived) and _over_head_limit(self.buf):
        yield commands.SendData(self.conn, raw_answer(Reason.BAD_REQUEST, "request head over 64 KiB", 431))
        yield commands.CloseConnection(self.conn)
        self.buf.maybe_extract_at_most(len(self.buf))
        self.state = self.done
        return
    yield from _original_read_headers(self, event)


def _bounded_read_response_headers(
    self: _http1.Http1Client, event: events.ConnectionEvent
) -> Generator[Any, Any, None]:
    """An upstream's response head is bounded like a client's: past MAX_HEAD, 502 and a close.

    Unguarded, an endless head is buffered whole. Bytes the upstream sends
    with no request outstanding are not quoted in the log either.
    """
    if isinstance(event, events.DataReceived) and (self.request is None or _over_head_limit(self.buf)):
        yield commands.CloseConnection(self.conn)
        self.buf.maybe_extract_at_most(len(self.buf))
        self.state = self.done
        if self.stream_id is None or self.request is None:
            yield commands.Log("closed an upstream connection that sent data no request asked for")
            return
        yield ReceiveHttp(
            ResponseProtocolError(self.stream_id, "response head over 64 KiB", ErrorCode.GENERIC_SERVER_ERROR)
        )
        return
    yield from _original_read_response_headers(self, event)


class _GuardedBody:
    """An h11 body reader whose chunk-size lines and trailer block are bounded.

    A reader that returns None with data still buffered is waiting for the end
    of a line (a chunk-size line with its extensions) or of the trailer block;
    past MAX_HEAD that is a protocol error, which mitmproxy answers by closing
    the connection. Response trailers end the body instead of raising
    (``drop_trailers``).
    """

    def __init__(self, reader: Any, drop_trailers: bool) -> None:
        self._reader = reader
        self._drop_trailers = drop_trailers

    def __call__(self, buf: Any) -> Any:
        event = self._reader(buf)
        if event is None and len(buf) > MAX_HEAD:
            raise h11.RemoteProtocolError("chunk-size line or trailers over 64 KiB")
        if self._drop_trailers and isinstance(event, h11.EndOfMessage) and event.headers:
            return h11.EndOfMessage()
        return event

    def read_eof(self) -> Any:
        return self._reader.read_eof()


def _guarded_read_body(self: _http1.Http1Connection, event: events.Event) -> Generator[Any, Any, None]:
    if not isinstance(self.body_reader, _GuardedBody):
        guarded = _GuardedBody(self.body_reader, drop_trailers=isinstance(self, _http1.Http1Client))
        self.body_reader = guarded  # type: ignore[assignment]
    try:
        for command in _original_read_body(self, event):
            yield command
            if isinstance(command, commands.CloseConnection) and command.connection is self.conn:
                # A protocol error: read nothing more. Each further read would
                # close again, and a second close cancels mitmproxy's connection
                # task before it closes the socket (left open, unread).
                self.buf.maybe_extract_at_most(len(self.buf))
                self.state = self.done
    except NotImplementedError:
        if not isinstance(self, _http1.Http1Server):
            raise
        yield commands.SendData(
            self.conn, raw_answer(Reason.BAD_REQUEST, "request trailers are not supported")
        )
        yield commands.CloseConnection(self.conn)
        self.state = self.done


def _stream_body_or_kill(self: http_layer.HttpStream, event: events.Event) -> Generator[Any, Any, None]:
    """A response stream transform that raises (a bomb, corrupt compression) kills its flow.

    Unguarded, the exception crashes the layer: the client waits on a body that
    never ends, and the request keeps its place in every counter.
    """
    try:
        yield from _original_stream_body(self, event)
    except Exception as e:
        logging.getLogger(__name__).warning("killed %s: %s", self.flow.id, type(e).__name__)
        self.flow.error = flow.Error(flow.Error.KILLED_MESSAGE)
        yield from self.check_killed(True)
        if self.context.server.connected:
            yield commands.CloseConnection(self.context.server)


def _stream_request_body_or_kill(
    self: http_layer.HttpStream, event: events.Event
) -> Generator[Any, Any, None]:
    """A request stream transform that raises (a secret in the body) kills its flow.

    The chunk that raised is never sent; the upstream connection is closed
    mid-body, so the upstream never sees a complete request.
    """
    try:
        yield from _original_stream_request_body(self, event)
    except Exception as e:
        logging.getLogger(__name__).warning("killed %s: %s", self.flow.id, type(e).__name__)
        self.flow.error = flow.Error(flow.Error.KILLED_MESSAGE)
        if self.context.server.connected:
            yield commands.CloseConnection(self.context.server)
        yield from self.check_killed(True)


class _Timer(commands.RequestWakeup):
    """A deadline wakeup, and the stream it belongs to."""

    def __init__(self, delay: float, stream: http_layer.HttpStream) -> None:
        super().__init__(delay)
        self.stream = stream


def _stream_handle_event(self: http_layer.HttpStream, event: events.Event) -> Generator[Any, Any, None]:
    """Drop this stream's deadline wakeup if stale, or if the stream is a tunnel now.

    Other wakeups pass: a CONNECT's stream relays those of the streams inside.
    """
    if (
        isinstance(event, events.Wakeup)
        and isinstance(event.command, _Timer)
        and event.command.stream is self
        and (event.command is not self.__dict__.get("_egress_timer") or "_handle_event" in self.__dict__)
    ):
        return  # "_handle_event" set on the instance: passthrough (a WebSocket now)
    yield from _original_stream_handle_event(self, event)


def _stream_event(self: http_layer.HttpStream, event: events.Event) -> Generator[Any, Any, None]:
    """Deadlines for one request: its body must arrive, then its upstream must answer.

    Nothing bounded either: a client trickling a body (a byte a second resets
    any idle timer) held the stream, and with it the connector's in-flight
    slot and an upstream connection, forever; an upstream that accepts and
    never answers was cut only by the idle timeout, which closed the client's
    connection without an answer. A body gets ``LIMITS.request_body_timeout``
    seconds from its head, one more per BODY_RATE bytes received (a large
    upload is not a slow one), then 408 and a close. A response head gets
    ``LIMITS.upstream_timeout`` seconds from the end of the request, then
    504; the wakeups while it waits keep the idle timeout from closing the
    connection first.
    """
    if isinstance(event, events.Wakeup) and isinstance(event.command, _Timer):
        yield from _deadline(self)
        return
    if isinstance(event, RequestData):
        self.__dict__["_egress_body_bytes"] = self.__dict__.get("_egress_body_bytes", 0) + len(event.data)
    yield from _original_stream_event(self, event)
    if "_handle_event" in self.__dict__:
        return  # a CONNECT or a WebSocket: no deadlines
    if isinstance(event, RequestEndOfMessage) or (isinstance(event, RequestHeaders) and not event.end_stream):
        yield from _deadline(self)
    _release(self)


_STATE_DONE = http_layer.HttpStream.state_done


def _done(event: events.Event) -> Generator[Any, Any, None]:
    """``HttpStream.state_done`` without the stream: it takes no event either."""
    raise AssertionError(f"Unexpected event type at HttpStream.state_done: Expected no events, got {event}.")
    yield


def _release(self: http_layer.HttpStream) -> None:
    """A finished stream lets go of itself, so reference counting frees it and its flow.

    Each state is a bound method kept on the stream, its context lists it among
    the layers, and its deadline wakeup points back at it (three reference
    cycles): every request's stream, flow, messages and body
    buffers waited for the cyclic garbage collector, whose pauses grew with
    them (tens of milliseconds at a few hundred requests a second). Once both
    sides are done nothing routes an event here but a stale wakeup, which
    ``_stream_handle_event`` drops; the states become ``_done``, which refuses
    every event as ``state_done`` does.
    """
    d = self.__dict__
    if (
        getattr(d.get("client_state"), "__func__", None) is _STATE_DONE
        and getattr(d.get("server_state"), "__func__", None) is _STATE_DONE
    ):
        d["client_state"] = d["server_state"] = _done
        d.pop("_egress_timer", None)
        layers = self.context.layers  # its own fork's, which ends with the stream itself
        if layers and layers[-1] is self:
            layers.pop()


def _deadline(self: http_layer.HttpStream) -> Generator[Any, Any, None]:
    """Act on a deadline that has passed, or wake up again (at most TICK from now)."""
    now = time.time()
    request = self.flow.request
    if self.client_state in (self.state_consume_request_body, self.state_stream_request_body):
        received = self.__dict__.get("_egress_body_bytes", 0)
        due = request.timestamp_start + LIMITS.request_body_timeout + received / BODY_RATE
        if now >= due:
            yield from _answer_timeout(self, BODY_TIMEOUT)
            return
    elif self.server_state == self.state_wait_for_response_headers and request.timestamp_end:
        due = request.timestamp_end + LIMITS.upstream_timeout
        if now >= due:
            yield from _answer_timeout(self, UPSTREAM_TIMEOUT)
            return
    else:
        return  # the response has begun, or the flow is over
    idle = self.context.options.tcp_timeout / 2 or TICK
    tick = TICK if "_egress_timer" in self.__dict__ else FIRST_TICK
    timer = _Timer(max(0.05, min(due - now, tick, idle)), self)
    self.__dict__["_egress_timer"] = timer
    yield timer


def _answer_timeout(self: http_layer.HttpStream, what: str) -> Generator[Any, Any, None]:
    """408 (the body) or 504 (the upstream), the flow ended as an error, the upstream closed.

    Neither is the flow's response: the ``error`` hook sees a flow without one
    (counted as a failure, or as a refusal for a body). A late body also ends
    the client's stream (HTTP/2) or connection (HTTP/1); if a response to it
    is already set (the upstream answered early, or the proxy refused it),
    that is all: a second response cannot follow.
    """
    body_late = what == BODY_TIMEOUT
    answered = self.flow.response is not None
    flow_id = self.flow.id
    self.flow.error = flow.Error(what)
    yield HttpErrorHook(self.flow)
    if body_late:
        seconds = f"{LIMITS.request_body_timeout:g}"
        code, headers, body = blocked_answer(
            Reason.BAD_REQUEST, f"the request body did not arrive within {seconds} s", flow_id, 408
        )
        answer = http.Response.make(code, body, headers)
    else:
        answer = http.Response.make(504, _quiet_error_page(504, ""), {"content-type": "text/html"})
    if self.server_state != self.state_done and self.context.server.connected:
        yield http_layer.SendHttp(
            RequestProtocolError(self.stream_id, what, ErrorCode.CANCEL), self.context.server
        )
    client = self.context.client
    if not answered:
        yield http_layer.SendHttp(ResponseHeaders(self.stream_id, answer, False), client)
        yield http_layer.SendHttp(ResponseData(self.stream_id, answer.raw_content or b""), client)
        yield http_layer.SendHttp(ResponseEndOfMessage(self.stream_id), client)
    if body_late:
        yield http_layer.SendHttp(ResponseProtocolError(self.stream_id, what, ErrorCode.CANCEL), client)
    self.flow.live = False
    self.client_state = self.server_state = self.state_errored
    yield http_layer.DropStream(self.stream_id)


def _consume_request_body(self: http_layer.HttpStream, event: events.Event) -> Generator[Any, Any, None]:
    """The body of a request already refused (its response set at its head) is read and dropped.

    mitmproxy sends that response once the body is in, and kept the whole
    body meanwhile: 200 MiB posted to a refused URL grew a worker by 200 MiB.
    """
    if isinstance(event, RequestData) and self.flow.response is not None:
        return
    yield from _original_consume_request_body(self, event)


def _quiet_error_page(status_code: int, message: str) -> bytes:
    """An error page that never quotes what failed to parse (it may be an echoed secret)."""
    reason = status_codes.RESPONSES.get(status_code, "Error")
    return f"<html><body><h1>{status_code} {reason}</h1><p>egress-proxy</p></body></html>".encode()


def _h2_server_event(self: _http2.Http2Server, event: h2.events.Event) -> Generator[Any, Any, bool]:
    """Every stream reset counts against the budget; no reset is lost before it reaches its stream.

    A reset is counted whoever sent the RST_STREAM: the client ("rapid
    reset"), or h2 in answer to a client frame that is a stream error (DATA or
    HEADERS after END_STREAM, a flow-control window pushed past 2^31-1:
    "MadeYouReset"). mitmproxy forgets a stream once h2 reports it closed, and
    h2 reports the state after the whole read: a request and its reset in one
    read lost the reset, so the request went upstream anyway. Such a reset is
    handed to its stream again, which then dies before any upstream contact.
    """
    if isinstance(event, h2.events.StreamReset):
        resets: collections.deque[float] = self.__dict__.setdefault("_egress_resets", collections.deque())
        now = time.monotonic()
        resets.append(now)
        while resets and resets[0] < now - LIMITS.h2_reset_window:
            resets.popleft()
        if len(resets) > LIMITS.h2_resets:
            yield from self.protocol_error(
                "too many stream resets (HTTP/2 rapid reset)",
                error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
            )
            return True
        # A stream no longer tracked here gets the reset anyway (the HTTP layer
        # ignores it for a stream that is already finished).
        self.streams.setdefault(event.stream_id, _http2.StreamState.HEADERS_RECEIVED)
    return (yield from _original_h2_event(self, event))


async def _handle_client_with_deadline(self: server.ConnectionHandler) -> None:
    def expire() -> None:
        if not self.client.tls_established and self.client.state is not connection.ConnectionState.CLOSED:
            task = asyncio.ensure_future(self.on_timeout())
            _expiring.add(task)
            task.add_done_callback(_expiring.discard)

    deadline = asyncio.get_running_loop().call_later(LIMITS.handshake_timeout, expire)
    try:
        await _original_handle_client(self)
    finally:
        deadline.cancel()


async def _handle_connection_closing(self: server.ConnectionHandler, conn: connection.Connection) -> None:
    """mitmproxy's task for one connection, which now always closes its socket.

    A close asked for by a layer cancels the task; when the cancellation lands
    on the event lock instead of the read, the task ended without closing the
    socket or forgetting it: an upstream cut off for sending too much stayed
    connected, unread, until the client left.
    """
    if TUNE_IO is not None:
        TUNE_IO(self.transports[conn])
    try:
        await _original_handle_connection(self, conn)
    finally:
        io = self.transports.pop(conn, None)  # still there only if the task ended early
        if io is not None and io.writer is not None:
            conn.state = connection.ConnectionState.CLOSED
            with contextlib.suppress(OSError):
                io.writer.close()


def _ws_send(self: Any, event: wsproto.events.Event) -> commands.SendData:
    if isinstance(self.conn, connection.Client):  # towards the sandbox: control payloads carry nothing
        if isinstance(event, wsproto.events.Ping | wsproto.events.Pong) and event.payload:
            event = type(event)(payload=b"")
        elif isinstance(event, wsproto.events.CloseConnection) and event.reason:
            event = wsproto.events.CloseConnection(code=event.code, reason="")
    return _original_ws_send(self, event)


def close_client(client: connection.Client) -> bool:
    """Close a live client connection now, as mitmproxy's idle timeout does (its reader task is
    cancelled; the connection handler then closes the upstream connection too). False when no
    connection handler of this process holds it (nothing to close)."""
    try:
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = proxyserver.connections.get(client.id) if proxyserver else None
        io = handler.transports.get(handler.client) if handler is not None else None
    except AttributeError:  # no master (adapter tests): the caller's drop stands alone
        return False
    if io is None or io.handler is None:
        return False
    io.handler.cancel("closed by egress-proxy")
    return True


LISTENER: list[socket.socket] = []  # an inherited listening socket, adopted by the first listener


def _ws_events(self: Any) -> Generator[wsproto.events.Event, None, None]:
    """One side's WebSocket events; a message past ``LIMITS.websocket_message`` ends the connection.

    mitmproxy keeps a message's fragments until the last one (to hand the
    whole message to ``websocket_message``); a message that never ends grew
    without bound. Past the limit the message is dropped unsent and both sides
    get close 1009 (message too big), as if this side had closed.
    """
    for event in _original_ws_events(self):
        if isinstance(event, wsproto.events.Message):
            data = event.data
            size = self.__dict__.get("_egress_message", 0) + len(
                data.encode(errors="surrogatepass") if isinstance(data, str) else data
            )
            if size > LIMITS.websocket_message:
                self.__dict__["_egress_message"] = 0
                logging.getLogger(__name__).warning(
                    "closed a WebSocket: a message over %d bytes", LIMITS.websocket_message
                )
                yield wsproto.events.CloseConnection(code=1009, reason="")
                return
            self.__dict__["_egress_message"] = 0 if event.message_finished else size
        yield event


async def _listen_reuse_port(
    self: mode_servers.RegularInstance, host: str, port: int
) -> list[asyncio.Server]:
    if LISTENER:
        sock = LISTENER.pop()
        if sock.getsockname()[:2] != (host, port):
            raise OSError(f"the inherited listener is {sock.getsockname()}, not {host}:{port}")
        return [await asyncio.start_server(self.handle_stream, sock=sock)]
    return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]


def _alpn_prefer_h2(conn: Any, options: list[bytes]) -> Any:
    """The client's ALPN choice: h2 if offered while the upstream is not known yet, else mitmproxy's."""
    app = conn.get_app_data()
    if app["client_alpn"] is None and app["server_alpn"] is None and app["http2"] and b"h2" in options:
        return b"h2"
    return _original_alpn_select(conn, options)


def install_guards() -> None:
    """The safety guards; idempotent."""
    if "guards" in _installed:
        return
    check_version()
    _http1.Http1Server.read_headers = _bounded_read_headers  # type: ignore[method-assign]
    _http1.Http1Client.read_headers = _bounded_read_response_headers  # type: ignore[method-assign]
    _http1.Http1Connection.read_body = _guarded_read_body  # type: ignore[method-assign]
    _http1.format_error = _quiet_error_page  # type: ignore[attr-defined]
    _http2.format_error = _quiet_error_page  # type: ignore[attr-defined]
    _http2.Http2Server.handle_h2_event = _h2_server_event  # type: ignore[method-assign]
    server.ConnectionHandler.handle_client = _handle_client_with_deadline  # type: ignore[method-assign]
    server.ConnectionHandler.handle_connection = _handle_connection_closing  # type: ignore[method-assign,assignment]
    layers.websocket.WebsocketConnection.send2 = _ws_send  # type: ignore[method-assign]
    layers.websocket.WebsocketConnection.events = _ws_events
    http_layer.HttpStream.state_stream_response_body = _stream_body_or_kill  # type: ignore[method-assign]
    http_layer.HttpStream.state_stream_request_body = _stream_request_body_or_kill  # type: ignore[method-assign]
    http_layer.HttpStream._handle_event = _stream_event  # type: ignore[method-assign]
    http_layer.HttpStream.state_consume_request_body = _consume_request_body  # type: ignore[method-assign]
    http_layer.HttpStream.handle_event = _stream_handle_event  # type: ignore[method-assign,assignment]
    _installed.add("guards")


def install_speedups() -> None:
    """What only the product's workers run with; idempotent."""
    if "speedups" in _installed:
        return
    check_version()
    mode_servers.RegularInstance.listen = _listen_reuse_port  # type: ignore[method-assign,assignment]
    mode_servers.TransparentInstance.listen = _listen_reuse_port  # type: ignore[method-assign,assignment]
    tlsconfig.alpn_select_callback = _alpn_prefer_h2
    from addons import hotpath

    hotpath.install()
    _installed.add("speedups")

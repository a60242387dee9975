"""mitmproxy's per-request machinery made cheaper, with the same behaviour (workers only).

Each replacement below was measured with a profile of the keep-alive or
transfer benchmark (``bench/profile.py``) and kept because it paid; each
yields what the code it replaces yields, which tests/adapters/test_hotpath.py
checks against mitmproxy's own code:

- mitmproxy type-checks every message's fields when run without -O; the
  values come from its own parser, and the check cost 6.7 % of a worker's CPU
  in the keep-alive benchmark;
- ``trigger_event`` enters a ``safecall`` and walks every addon (and its
  children, with ``getattr``) for every event, though most events have a
  handler in few of them: each event goes only to the addons implementing it,
  in the same order with the same error handling (18 % less CPU per
  keep-alive request);
- a body chunk went through h11's receive buffer, copied four times on its
  way: one that cannot end its Content-Length body (or belongs to a body read
  until close) and finds the buffer empty goes on as it is, with the events
  h11 would have produced;
- ``Hook.args`` asked ``dataclasses.fields`` on every event, reading an
  option left at its default deep-copied it twice, and the hook watchdog's
  ``disarm`` was a generator context manager: the field names are kept per
  hook class, scalars are not copied, ``disarm`` is a plain class;
- pyOpenSSL re-encoded and re-parsed the leaf certificate and key mitmproxy
  hands each new client connection (0.4 ms a connection): its copies are
  kept per certificate, and mitmproxy's certificate cache holds
  ``CERT_CAP`` hosts instead of 100, dropping the oldest by identity (it
  compared every entry field by field);
- a connection's task took at most 64 KiB off its stream per event, though
  asyncio buffers up to 384 KiB (one 256 KiB ``recv`` past its 128 KiB
  pause mark): every chunk of a transfer paid the whole layer stack, TLS,
  the hooks and the body scan's fixed costs: it takes ``READ_SIZE``;
- every ``SendData`` was its own ``send``: a response's head and body, and
  the TLS records of one event, left in two or three. The writes one event
  makes to a connection are joined and leave at the loop's next turn, in
  the order written; a close or half-close hands them over first;
- every request forked its context, which built a ``Server`` (a uuid4 and a
  guarded ``__setattr__`` per field) only to overwrite it; connections
  compared through the ABC's ``isinstance``; every task read its debug name
  from the environment (2-3 % of a keep-alive request's CPU together);
- ``Headers.get``, ``in`` and ``pop`` went through ``Mapping``'s generic
  methods, raising and catching ``KeyError`` for every absent header (``pop``
  scanned the fields three times), and every lookup called a static method
  per field: they read the fields directly, once.

Like ``addons.patches`` (which installs this), it reaches into private code
that ``patches.check_version`` vouches for.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import inspect
import os
import time
import warnings
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from cryptography import x509
from h11._readers import ContentLengthReader, Http10Reader
from mitmproxy import addonmanager, certs, connection, exceptions, hooks, http, optmanager
from mitmproxy.proxy import context, events, server
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.utils import asyncio_utils
from OpenSSL import SSL, crypto

from addons import patches
from addons.patches import _GuardedBody

_original_http1_event = _http1.Http1Connection._handle_event
_original_use_certificate = SSL.Connection.use_certificate
_original_use_privatekey = SSL.Connection.use_privatekey
CERT_CAP = 4096  # hosts whose leaf certificate a worker keeps (mitmproxy: 100)
MITMPROXY_READ_SIZE = 65535  # what handle_connection asks its stream for per event
# Bytes a connection's task takes off its stream at once instead: one asyncio recv.
# 0.64x the CPU per MiB of a download, 0.74x of an upload; 1 MiB gains nothing more.
READ_SIZE = 256 * 1024
_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})  # deepcopy returns them as they are


def _no_field_typecheck(self: http.MessageData) -> None:
    pass


class _HookIndex:
    """Per event name, for each top-level addon implementing it: its callables (its own, then
    its children's), as ``AddonManager._iter_hooks`` finds them with ``getattr`` on every event.

    Valid for one chain: ``add`` appends to the list, ``remove`` replaces it, so the list
    object and its length identify it (the index holds the list, so its id is never reused).
    None of the workers' addons changes its children at run time.
    """

    __slots__ = ("by_event", "chain", "length")

    def __init__(self, chain: list[Any]) -> None:
        self.chain, self.length = chain, len(chain)
        self.by_event: dict[str, list[list[Any]]] = {}


def _hooks_by_addon(manager: addonmanager.AddonManager, event: hooks.Hook) -> list[list[Any]]:
    index: _HookIndex | None = manager.__dict__.get("_egress_index")
    if index is None or index.chain is not manager.chain or index.length != len(manager.chain):
        index = manager.__dict__["_egress_index"] = _HookIndex(manager.chain)
    found = index.by_event.get(event.name)
    if found is None:
        found = index.by_event[event.name] = [
            funcs for top in manager.chain if (funcs := [f for _, f in manager._iter_hooks(top, event)])
        ]
    return found


async def _trigger_indexed(self: addonmanager.AddonManager, event: hooks.Hook) -> None:
    """``trigger_event`` skipping the addons without a handler: same order, same ``safecall``
    per addon (an exception is logged and the next addon runs: each of ours fails closed on
    its own), entered only once something raised, same ``AddonHalt``."""
    args = event.args()  # hooks share the event's objects; none reassigns its fields
    for funcs in _hooks_by_addon(self, event):
        try:
            for func in funcs:
                res = func(*args)
                if res is not None and inspect.isawaitable(res):
                    await res
        except exceptions.AddonHalt:
            return
        except Exception:
            with addonmanager.safecall():  # logged as mitmproxy logs it; OptionsError goes on up
                raise


def _body_straight_through(self: _http1.Http1Connection, event: events.Event) -> Generator[Any, Any, None]:
    """A body chunk that arrives with nothing buffered and cannot end its body goes on as it is.

    mitmproxy appends every chunk to h11's receive buffer, which h11 slices out
    twice and mitmproxy copies once more: about a tenth of the worker's CPU in
    a 200 MiB transfer. Only a Content-Length body the chunk does not finish,
    or one read until the connection closes, takes this path; the bytes and
    events are the ones h11 would have produced, and the last chunk of a
    Content-Length body (where framing is decided) still goes through h11.
    """
    if type(event) is events.DataReceived and event.data and not self.buf and self.state == self.read_body:
        reader = self.body_reader
        inner = reader._reader if isinstance(reader, _GuardedBody) else reader
        if isinstance(inner, ContentLengthReader) and len(event.data) < inner._remaining:
            inner._remaining -= len(event.data)
            straight = True
        else:
            straight = type(inner) is Http10Reader
        if straight:
            assert self.stream_id is not None
            yield ReceiveHttp(self.ReceiveData(self.stream_id, event.data))
            return
    yield from _original_http1_event(self, event)


_FIELDS: dict[type, tuple[str, ...]] = {}  # per hook class, its dataclass fields' names


def _hook_args(self: hooks.Hook) -> list[Any]:
    names = _FIELDS.get(type(self))
    if names is None:
        names = _FIELDS[type(self)] = tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]
    return [getattr(self, name) for name in names]


def _option_current(self: optmanager._Option) -> Any:
    value = self._default if self.value is optmanager.unset else self.value
    return value if type(value) in _SCALARS else copy.deepcopy(value)


class _Disarmed:
    """``TimeoutWatchdog.disarm``: no timeout while a hook runs."""

    __slots__ = ("_dog",)

    def __init__(self, dog: server.TimeoutWatchdog) -> None:
        self._dog = dog

    def __enter__(self) -> None:
        self._dog.can_timeout.clear()
        self._dog.blocker += 1

    def __exit__(self, *exc: object) -> None:
        dog = self._dog
        dog.blocker -= 1
        if dog.blocker == 0:
            dog.register_activity()
            dog.can_timeout.set()


def _disarm(self: server.TimeoutWatchdog) -> _Disarmed:
    return _Disarmed(self)


def _header_key(name: str | bytes) -> bytes:
    return (
        name.encode("utf-8", "surrogateescape") if type(name) is str else http._always_bytes(name)
    ).lower()


def _headers_get_all(self: http.Headers, name: str | bytes) -> list[str]:
    key = _header_key(name)
    return [v.decode("utf-8", "surrogateescape") for k, v in self.fields if k.lower() == key]


def _headers_get(self: http.Headers, name: str | bytes, default: Any = None) -> Any:
    values = self.get_all(name)
    return ", ".join(values) if values else default


def _headers_contain(self: http.Headers, name: object) -> bool:
    key = _header_key(name)  # type: ignore[arg-type]  # a wrong type raises, as in Mapping
    return any(k.lower() == key for k, _ in self.fields)


_ABSENT: Any = object()


def _headers_pop(self: http.Headers, name: str | bytes, default: Any = _ABSENT) -> Any:
    key = _header_key(name)
    fields = self.fields
    for k, _ in fields:
        if k.lower() == key:
            break
    else:  # absent (the common case: cookies, hop-by-hop headers): one pass, nothing raised
        if default is _ABSENT:
            raise KeyError(name)
        return default
    value = ", ".join(_headers_get_all(self, name))
    self.fields = tuple(f for f in fields if f[0].lower() != key)
    return value


class _Copies:
    """pyOpenSSL's copy of each certificate or key object it is handed, kept while the object
    lives here (held, so its id is not reused), at most ``CERT_CAP`` and a few, oldest out."""

    __slots__ = ("_convert", "_kept")

    def __init__(self, convert: Callable[[Any], Any]) -> None:
        self._convert = convert
        self._kept: dict[int, tuple[object, Any]] = {}

    def __call__(self, obj: object) -> Any:
        kept = self._kept.get(id(obj))
        if kept is not None and kept[0] is obj:
            return kept[1]
        if len(self._kept) >= CERT_CAP + 16:
            del self._kept[next(iter(self._kept))]
        converted = self._convert(obj)
        self._kept[id(obj)] = (obj, converted)
        return converted


_x509_copies = _Copies(crypto.X509.from_cryptography)
_key_copies = _Copies(crypto.PKey.from_cryptography_key)


def _use_certificate(self: SSL.Connection, cert: Any) -> None:
    _original_use_certificate(self, _x509_copies(cert) if isinstance(cert, x509.Certificate) else cert)


def _use_privatekey(self: SSL.Connection, key: Any) -> None:
    _original_use_privatekey(self, key if isinstance(key, crypto.PKey) else _key_copies(key))


def _expire(self: certs.CertStore, entry: certs.CertStoreEntry) -> None:
    self.expire_queue.append(entry)
    if len(self.expire_queue) > self.STORE_CAP:
        oldest = self.expire_queue.pop(0)
        self.certs = {k: v for k, v in self.certs.items() if v is not oldest}


def _fork(self: context.Context) -> context.Context:
    """``Context.fork`` without the throwaway ``Server`` (a uuid4 and a guarded ``__setattr__`` per
    field) that ``Context.__init__`` builds and fork overwrites at once: one per request."""
    ret = context.Context.__new__(context.Context)
    ret.client, ret.options, ret.server = self.client, self.options, self.server
    ret.layers = self.layers.copy()
    return ret


_CONNECTIONS = (connection.Client, connection.Server)


def _connection_eq(self: connection.Connection, other: Any) -> bool:
    """``Connection.__eq__`` (same id), with an exact type check before the ABC's isinstance."""
    same: bool = (
        type(other) in _CONNECTIONS or isinstance(other, connection.Connection)
    ) and self.id == other.id
    return same


# mitmproxy names every task after the test that made it, read from the environment per task;
# a worker's environment is fixed when it starts, so it is read once
_TEST_NAME = os.environ.get("PYTEST_CURRENT_TEST") if __debug__ else None


def _set_task_debug_info(
    task: asyncio.Task[Any], *, name: str, client: tuple[Any, ...] | None = None
) -> None:
    task.created = time.time()  # type: ignore[attr-defined]
    task.set_name(f"{name} [created in {_TEST_NAME}]" if _TEST_NAME else name)
    if client:
        task.client = client  # type: ignore[attr-defined]


def _tune_io(io: server.ConnectionIO) -> None:
    """Wider reads and joined writes for a connection on asyncio streams (not mitmproxy_rs's)."""
    reader, writer = io.reader, io.writer
    if isinstance(reader, asyncio.StreamReader) and READ_SIZE != MITMPROXY_READ_SIZE:
        read = reader.read

        def read_more(n: int = -1) -> Coroutine[Any, Any, bytes]:
            return read(READ_SIZE if n == MITMPROXY_READ_SIZE else n)

        reader.read = read_more  # type: ignore[method-assign]
    if isinstance(writer, asyncio.StreamWriter):
        _join_writes(writer)


def _join_writes(writer: asyncio.StreamWriter) -> None:
    """The writer's writes wait for the loop's next callback and go to the transport as one.

    mitmproxy handles an event in one step of the connection's task and writes
    each command's bytes at once; the joined bytes leave after that step. Only
    mitmproxy's own calls are wrapped (``write``, ``write_eof``, ``close``; never
    ``writelines`` or ``start_tls``): ``close`` and ``write_eof`` hand over what
    waits before they act, so nothing is lost or reordered. ``drain`` does not
    see what waits, so what a reader had buffered (one 256 KiB read past the
    128 KiB pause mark) can wait on top of the transport's own buffer before
    backpressure holds reading: bounded, about twice mitmproxy's.
    """
    transport, loop = writer.transport, asyncio.get_running_loop()
    waiting: list[bytes] = []

    def hand_over() -> None:
        if waiting:
            data = b"".join(waiting)  # one bytes object is returned as it is, not copied
            waiting.clear()
            if not transport.is_closing():  # as mitmproxy checks before every write
                transport.write(data)

    def write(data: bytes) -> None:
        if not waiting:
            loop.call_soon(hand_over)
        waiting.append(data)

    def write_eof() -> None:
        hand_over()
        transport.write_eof()

    def close() -> None:
        hand_over()
        transport.close()

    writer.write = write  # type: ignore[method-assign,assignment]
    writer.write_eof = write_eof  # type: ignore[method-assign]
    writer.close = close  # type: ignore[method-assign]


def install() -> None:
    """Put every replacement in place (``patches.install_speedups`` calls this once)."""
    http.MessageData.__post_init__ = _no_field_typecheck  # type: ignore[method-assign]
    addonmanager.AddonManager.trigger_event = _trigger_indexed  # type: ignore[method-assign]
    _http1.Http1Connection._handle_event = _body_straight_through  # type: ignore[method-assign]
    hooks.Hook.args = _hook_args  # type: ignore[method-assign]
    optmanager._Option.current = _option_current  # type: ignore[method-assign]
    server.TimeoutWatchdog.disarm = _disarm  # type: ignore[method-assign,assignment]
    http.Headers.get_all = _headers_get_all  # type: ignore[method-assign]
    http.Headers.get = _headers_get  # type: ignore[method-assign,assignment]
    http.Headers.__contains__ = _headers_contain  # type: ignore[method-assign,assignment]
    http.Headers.pop = _headers_pop  # type: ignore[method-assign,assignment]
    SSL.Connection.use_certificate = _use_certificate  # type: ignore[method-assign]
    SSL.Connection.use_privatekey = _use_privatekey  # type: ignore[method-assign,assignment]
    # pyOpenSSL would rather be given cryptography objects, which it converts on every call
    warnings.filterwarnings("ignore", "Passing pyOpenSSL (X509|PKey) objects", DeprecationWarning)
    context.Context.fork = _fork  # type: ignore[method-assign]
    connection.Connection.__eq__ = _connection_eq  # type: ignore[method-assign]
    asyncio_utils.set_task_debug_info = _set_task_debug_info
    certs.CertStore.STORE_CAP = CERT_CAP
    patches.TUNE_IO = _tune_io  # applied by patches' handle_connection, which wraps mitmproxy's
    certs.CertStore.expire = _expire  # type: ignore[method-assign]

"""Open-loop latency at a fixed offered rate: what a proxy adds when it is not saturated.

A closed-loop client (hey, probe.py) waits for each answer before it sends the
next request, so a slow answer delays the requests behind it and they are
never timed as late (coordinated omission). Here request ``i`` is due at
``start + i / rate`` whatever happened before, and its latency runs from that
due time to the end of its response: time spent waiting for a free connection
counts. The same client measures the direct connection, so subtracting the
direct percentiles leaves what the proxy adds.

A pacer thread sleeps until each due time (``clock_nanosleep``: tens of
microseconds late, where an asyncio timer is up to a millisecond late) and
queues it; a pool of worker threads with blocking sockets (probe.py's client,
GIL released while they wait) takes due times off the queue. Keep-alive: each
worker keeps one TLS connection, opened before the clock starts. New
connection: each request opens TCP, CONNECT and TLS and closes after; with
``resume`` each worker offers the TLS session its last connection got, as
clients with a session cache do (Node's fetch, curl within one process).
"""

from __future__ import annotations

import queue
import ssl
import threading
import time
from dataclasses import dataclass, field

import probe


@dataclass
class PacedResult:
    latencies: list[float] = field(default_factory=list)  # seconds from due time, 2xx only
    send_lag: list[float] = field(default_factory=list)  # due time to the request's send (queueing)
    ok: int = 0
    non_2xx: int = 0
    errors: list[str] = field(default_factory=list)
    reconnects: int = 0  # keep-alive: connections reopened after an error
    resumed: int = 0  # new connection: how many resumed a TLS session
    elapsed: float = 0.0


def run(
    upstream: tuple[str, int],
    host: str,
    port: int,
    cafile: str,
    proxy: tuple[str, int] | None,
    *,
    rate: float,
    duration: float,
    keepalive: bool,
    headers: dict[str, str] | None = None,
    workers: int = 16,
    resume: bool = False,
) -> PacedResult:
    """``rate`` GETs per second for ``duration`` seconds, each timed from its due time."""
    authority = host if port == 443 else f"{host}:{port}"
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if not keepalive:
        extra += "Connection: close\r\n"
    request = f"GET / HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n".encode()
    result = PacedResult()
    lock = threading.Lock()
    due_times: queue.SimpleQueue[float | None] = queue.SimpleQueue()
    clock = time.perf_counter
    ctx = probe.context(cafile)

    def connect(session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSocket, probe._Reader]:
        return probe.connect(upstream, host, port, cafile, proxy, ctx=ctx, session=session)

    conns = [connect() for _ in range(workers)] if keepalive else []

    def worker(index: int) -> None:
        conn = conns[index] if keepalive else None
        session: ssl.SSLSession | None = None
        while (due := due_times.get()) is not None:
            try:
                if conn is None:
                    conn = connect(session)
                sent = clock()
                conn[0].sendall(request)
                status = conn[1].response()
                elapsed = clock() - due
            except (OSError, ConnectionError, ValueError, IndexError) as e:
                with lock:
                    result.errors.append(f"{type(e).__name__}: {e}"[:160])
                    result.reconnects += keepalive
                if conn is not None:
                    conn[0].close()
                conn = None
                continue
            with lock:
                result.send_lag.append(sent - due)
                if 200 <= status < 300:
                    result.ok += 1
                    result.latencies.append(elapsed)
                else:
                    result.non_2xx += 1
            if not keepalive:
                with lock:
                    result.resumed += conn[0].session_reused
                if resume:
                    session = conn[0].session  # the ticket came with the response
                conn[0].close()
                conn = None
        if conn is not None:
            conn[0].close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    start = clock() + 0.01
    for i in range(int(rate * duration)):
        due = start + i / rate
        if (wait := due - clock()) > 0:
            time.sleep(wait)
        due_times.put(due)
    for _ in threads:
        due_times.put(None)
    for t in threads:
        t.join()
    result.elapsed = clock() - start
    return result

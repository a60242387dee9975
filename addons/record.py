"""Count and log outcomes: requests and errors per connector, blocked requests.

Hooks only touch in-memory counters; a writer task flushes them to the store
in a thread, every ``--flush-interval`` seconds (by default the store's: about
one for SQLite, five for PostgreSQL, which every sidecar of a fleet writes
to), jittered so that processes started together do not flush together;
``done`` flushes whatever is left, so SIGTERM loses nothing. While the store
is unreachable (a database down or restarting) the counts wait in memory,
bounded, and go out with the first flush that gets through; whatever the
bounds drop is logged and counted in ``egress_store_dropped_total``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterator, Mapping

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.addonmanager import Loader

from addons.source import home_from_options
from addons.state import Tunnels, peek, state
from proxy.audit import Decision
from proxy.connectors import split_key, workspace_of
from proxy.context import FlowState, Tunnel
from proxy.errors import EgressError, StoreUnavailable
from proxy.grants import Grant
from proxy.health import CLASS_NAMES
from proxy.hosts import format_authority
from proxy.policy import Block, parse_target
from proxy.reasons import Reason
from proxy.runtime.auditlog import DEFAULT_MAX_BYTES, AuditLog
from proxy.runtime.metrics import Metrics
from proxy.secrets import DEFAULT_WORKSPACE
from proxy.stats import Batch, Clock, Counted, Event, Tally, printable, strip_query
from proxy.store import Store

logger = logging.getLogger(__name__)
access_log = logging.getLogger("egress.access")  # a stable name operators filter on
FLUSH_INTERVAL = 1.0  # until a store says otherwise
FLUSH_JITTER = 0.2  # each wait is the interval times 1 +- this (the first one: anywhere below it)
MAX_FLUSH_FAILURES = 5  # then a batch's log rows are dropped so one bad row cannot jam the writer
# Kept for an unreachable store: a (connector, minute) key per minute of traffic (24 h of 10 connectors
# is 14,400), and the newest log rows (a flood of blocked requests must not exhaust memory).
BACKLOG_KEYS = 50_000
BACKLOG_EVENTS = 20_000


def failure_kind(message: str) -> str:
    """A short word for a transport failure, from mitmproxy's error text."""
    m = message.lower()
    for needle, kind in (
        ("refused", "refused"),
        ("connect call failed", "refused"),
        ("errno 111", "refused"),
        ("timed out", "timeout"),
        ("timeout", "timeout"),
        ("reset", "reset"),
        ("tls", "tls"),
        ("ssl", "tls"),
        ("certificate", "tls"),
        ("killed", "killed"),
    ):
        if needle in m:
            return kind
    return "other"


def workspace(tunnel: Tunnel | None, s: FlowState | None = None) -> str:
    """Whose event this is: the connector's workspace, else the grant's, else the default one."""
    if s is not None and s.route is not None:
        return split_key(s.route.connector)[0]
    allowed = tunnel.allowed if tunnel else None  # a grant's, or a transparent listener's scope
    return workspace_of(allowed) if allowed else DEFAULT_WORKSPACE


def described(flow: http.HTTPFlow, s: FlowState) -> tuple[str, str, str]:
    """Method, host and path (query dropped) as operators see them: escaped, bounded."""
    req = flow.request
    if req.method == "CONNECT":
        host, path = format_authority(req.host, req.port, None), ""
    else:
        host, path = s.host or req.pretty_host, strip_query(req.path)
    return printable(req.method, 32), printable(host, 300), printable(path, 2048)


def node_name(env: Mapping[str, str]) -> str:
    """Who counted: EGRESS_NODE (a pod name, say), else the host name; the workers of one proxy share it."""
    return printable(env.get("EGRESS_NODE") or socket.gethostname(), 100)


class Recorder:
    def __init__(self, clock: Clock = time.time, tunnels: Tunnels | None = None) -> None:
        self.clock = clock
        self.tunnels = tunnels
        self.tally = Tally(clock, node_name(os.environ))
        self.metrics = Metrics()
        self.store: Store | None = None
        self.interval = FLUSH_INTERVAL  # seconds between flushes (configure: the option or the store's)
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = threading.Lock()
        self._pending: Batch | None = None
        self._failures = 0
        # 407s to credential-less CONNECTs, by client connection: libcurl (git, curl
        # --proxy-anyauth) probes without credentials, then retries with the grant.
        self._probes: dict[str, http.HTTPFlow] = {}
        self._store_down = False
        self.audit: AuditLog | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option("egress_record", bool, True, "Record request, error and block statistics.")
        loader.add_option(
            "egress_access_log", bool, False, "Log one line per request (request id, status, bytes...)."
        )
        loader.add_option(
            "egress_audit_log", str, "", "Append one JSON audit line per decision to this file ('-': stdout)."
        )
        loader.add_option(
            "egress_audit_max_bytes", int, DEFAULT_MAX_BYTES, "Rotate the audit file past this size."
        )
        loader.add_option(
            "egress_flush_interval",
            float,
            0.0,
            "Seconds between statistics flushes to the store, jittered (0: the store's default).",
        )

    def configure(self, updated: set[str]) -> None:
        if "egress_audit_log" in updated or "egress_audit_max_bytes" in updated:
            if self.audit is not None:
                self.audit.close()
                self.audit = None
            if ctx.options.egress_audit_log:
                try:
                    self.audit = AuditLog(ctx.options.egress_audit_log, ctx.options.egress_audit_max_bytes)
                except EgressError as e:
                    raise exceptions.OptionsError(str(e)) from None
        if "egress_home" in updated or "egress_record" in updated:
            if self.store:
                self.store.close()
                self.store = None
            if ctx.options.egress_record:
                try:  # may be down: counts wait; shares the reload watcher's connection
                    self.store = home_from_options().store(lazy=True, shared=True)
                except EgressError as e:
                    raise exceptions.OptionsError(str(e)) from None
        if {"egress_home", "egress_record", "egress_flush_interval"} & updated:
            chosen = ctx.options.egress_flush_interval
            self.interval = (
                chosen if chosen > 0 else self.store.flush_interval if self.store else FLUSH_INTERVAL
            )

    async def running(self) -> None:
        self._task = asyncio.create_task(self._writer())

    def delays(self) -> Iterator[float]:
        """Seconds before each flush: the first anywhere below the interval (a fleet restarted
        together spreads out at once), then the interval, jittered (and it stays spread)."""
        yield random.uniform(0, self.interval)
        while True:
            yield self.interval * random.uniform(1 - FLUSH_JITTER, 1 + FLUSH_JITTER)

    async def _writer(self) -> None:
        for delay in self.delays():
            await asyncio.sleep(delay)
            batch = self.tally.drain()
            if batch and self.store:
                self._pending = batch
                try:
                    await asyncio.to_thread(self._flush, batch)
                except StoreUnavailable as e:
                    self._keep_for_later(batch, e)
                except Exception as e:
                    self._failures += 1
                    drop = self._failures >= MAX_FLUSH_FAILURES
                    logger.error(
                        "statistics flush failed (%s); %s",
                        type(e).__name__,
                        "dropping its log rows, keeping counts" if drop else "will retry",
                    )
                    with self._flush_lock:
                        if self._pending is batch:  # keep the counts for the next flush
                            self._pending = None
                            if drop:
                                batch.events.clear()
                                self._failures = 0
                            self.tally.merge(batch)
                else:
                    self._failures = 0
                    if self._store_down:
                        self._store_down = False
                        logger.warning("store reachable again: statistics written (%s)", Counted.of(batch))

    def _keep_for_later(self, batch: Batch, e: StoreUnavailable) -> None:
        """An outage is not a bad row: keep everything (bounded) and retry at the next flush."""
        with self._flush_lock:
            if self._pending is batch:
                self._pending = None
                self.tally.merge(batch)
            dropped = self.tally.shed(BACKLOG_EVENTS, BACKLOG_KEYS)
        if not self._store_down:
            self._store_down = True
            logger.error("%s: counting in memory until it answers (%s pending)", e, self.tally.pending())
        if dropped:
            self._dropped(dropped, "the backlog for the unreachable store is full")

    def _dropped(self, dropped: Counted, why: str) -> None:
        for kind, n in (
            ("request", dropped.requests),
            ("blocked", dropped.blocked),
            ("event", dropped.events),
        ):
            if n:
                self.metrics.store_dropped.labels(kind).inc(n)
        logger.error("statistics dropped, %s: %s", why, dropped)

    def _flush(self, batch: Batch) -> None:
        with self._flush_lock:  # done() must not close the store under a running flush
            if self.store and self._pending is batch:
                self.store.monitoring.flush(batch)
                self._pending = None

    def done(self) -> None:
        for flow in list(self._probes.values()):  # the client never came back with a grant
            self._blocked(flow, state(flow))
        self._probes.clear()
        if self._task:
            self._task.cancel()
        with self._flush_lock:  # waits for a flush still running in the writer's thread
            if self._pending is not None:  # drained but not yet written: write it now
                self.tally.merge(self._pending)
                self._pending = None
            if self.store:
                batch = self.tally.drain()
                if batch:
                    try:
                        self.store.monitoring.flush(batch)
                    except StoreUnavailable as e:
                        self.tally.merge(batch)
                        self._dropped(self.tally.pending(), f"stopping while {e}")
                self.store.close()
                self.store = None
        if self.audit is not None:
            self.audit.close()
            self.audit = None

    # -- hooks --------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        s = peek(flow)
        if s is None or s.route is None or s.blocked is not None or flow.response is None:
            return
        connector = s.route.connector
        status = flow.response.status_code
        failed = self._count(connector, status)
        self.metrics.latency.labels(connector).observe(
            max(0.0, (flow.response.timestamp_start or 0) - flow.request.timestamp_start)
        )
        if failed:
            self.tally.error(self._error_event(flow, s, status=status))

    def error(self, flow: http.HTTPFlow) -> None:
        s = peek(flow)
        if s is not None and s.blocked is not None and flow.response is None:
            self._blocked(flow, s)  # killed mid-stream by a check (a secret in the body)
            return
        if s is None or s.route is None or flow.response is not None or flow.error is None:
            return
        self._count(s.route.connector, None)
        self.tally.error(self._error_event(flow, s, failure=failure_kind(flow.error.msg)))
        s.note("error", failure_kind(flow.error.msg))
        self._decided(flow, s, "failed", None)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        s = peek(flow)
        if s is not None and s.blocked is not None:
            self._blocked(flow, s)  # closed by a check (a secret in a client's message)

    def _count(self, connector: str, status: int | None) -> bool:
        """Count a forwarded request (``None``: no upstream response); True if it failed."""
        slot = self.tally.request(connector, status)
        self.metrics.requests.labels(connector).inc()
        if slot is None:
            return False
        self.metrics.errors.labels(connector).inc()
        self.metrics.error_classes.labels(connector, CLASS_NAMES[slot]).inc()
        return True

    def _error_event(
        self, flow: http.HTTPFlow, s: FlowState, status: int | None = None, failure: str | None = None
    ) -> Event:
        method, host, path = described(flow, s)
        return Event(
            "error",
            self.clock(),
            method,
            host,
            path,
            flow.id,
            connector=s.connector,
            status=status,
            failure=failure,
            grant_label=s.grant_label,
            workspace=workspace(s.tunnel, s),
        )

    def response(self, flow: http.HTTPFlow) -> None:
        s = peek(flow)
        if s is None:
            return
        if s.blocked is not None:
            self._blocked(flow, s)
        elif flow.response is not None:
            status = flow.response.status_code
            self._decided(flow, s, "error" if status >= 400 else "ok", status)

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        s = peek(flow)
        if s is None or s.blocked is None:
            return
        if s.blocked.reason is Reason.NO_GRANT and "proxy-authorization" not in flow.request.headers:
            # Counted only if no grant follows on this connection (see client_disconnected).
            # Only the last one can be a probe: any earlier one is a block of its own.
            earlier = self._probes.pop(flow.client_conn.id, None)
            if earlier is not None:
                self._blocked(earlier, state(earlier))
            self._probes[flow.client_conn.id] = flow
            return
        self._blocked(flow, s)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """After the gate: a tunnel that opened makes the 407 just before it, for the same
        target, a probe; a 407 for another target stays a block."""
        if flow.response is None:
            probe = self._probes.pop(flow.client_conn.id, None)
            tunnel = self.tunnels.get(flow.client_conn) if self.tunnels is not None else None
            if probe is not None and (
                tunnel is None or parse_target(probe.request.host, probe.request.port) != tunnel.target
            ):
                self._blocked(probe, state(probe))

    def client_disconnected(self, client: connection.Client) -> None:
        flow = self._probes.pop(client.id, None)
        if flow is not None:
            self._blocked(flow, state(flow))

    def _decided(self, flow: http.HTTPFlow, s: FlowState, outcome: str, status: int | None) -> None:
        """The one place a finished request is reported: the access log and the audit file."""
        if ctx.options.egress_access_log:
            self._access(flow, s, outcome, status)
        if self.audit is not None:
            end = (
                flow.response.timestamp_end if flow.response and flow.response.timestamp_end else time.time()
            )
            method, host, path = described(flow, s)
            blocked = s.blocked
            self._audit(
                Decision(
                    flow.request.timestamp_start,
                    "blocked" if outcome == "blocked" else "allowed",
                    outcome,
                    flow.id,
                    method,
                    host,
                    path,
                    workspace(s.tunnel, s),
                    connector=s.connector,
                    reason=str(blocked.reason) if blocked is not None else None,
                    grant_label=s.grant_label,
                    status=status,
                    bytes_out=s.bytes_out if s.route is not None else None,
                    duration_ms=round(max(0.0, end - flow.request.timestamp_start) * 1000, 1),
                    near_miss=blocked.near_miss if blocked is not None else None,
                    node=self.tally.node,
                )
            )

    def _audit(self, decision: Decision) -> None:
        assert self.audit is not None
        try:
            self.audit.write(decision.to_json())
        except OSError as e:  # a full disk must not take requests down; say so once per error kind
            self.metrics.audit_failures.inc()
            logger.error("audit line not written (%s)", e.strerror)

    def _access(self, flow: http.HTTPFlow, s: FlowState, outcome: str, status: int | None) -> None:
        end = flow.response.timestamp_end if flow.response and flow.response.timestamp_end else time.time()
        method, host, path = described(flow, s)
        access_log.info(
            "%s %s %s%s %s %s",
            outcome,
            method,
            host,
            path,
            status if status is not None else "-",
            flow.id,
            extra={
                "request_id": flow.id,
                "connector": s.connector,
                "grant": s.grant_label,
                "method": method,
                "host": host,
                "path": path,
                "status": status,
                "duration_ms": round((end - flow.request.timestamp_start) * 1000, 1),
                "bytes": s.bytes_out if s.route is not None else None,
                "outcome": outcome,
                "trace": [f"{stage}:{what}" for stage, what in s.trace],
            },
        )

    def tls_failed_client(self, data: tls.TlsData) -> None:
        """A client that would not finish TLS with us (an untrusted CA, usually): say so."""
        client = data.context.client
        tunnel = self.tunnels.get(client) if self.tunnels else None
        if tunnel is not None:
            host = tunnel.target.authority
        else:
            host = format_authority(client.sni or str(client.sockname[0]), client.sockname[1], None)
        self.metrics.blocked.labels(str(Reason.CLIENT_TLS)).inc()
        event = Event(
            "blocked",
            self.clock(),
            "TLS",
            printable(host, 300),
            "",
            client.id,
            reason=str(Reason.CLIENT_TLS),
            grant_label=tunnel.grant.label if tunnel and tunnel.grant else None,
            workspace=workspace(tunnel),
        )
        self.tally.blocked(event)
        self._audit_refusal(event)

    def connection_refused(
        self,
        client: connection.Client,
        host: str,
        decision: Block,
        grant: Grant | None,
        scope: frozenset[str] | None,
    ) -> None:
        """An intercepted connection refused at its ClientHello (transparent mode): no request
        was made, so the row has method ``TLS`` and no path, like a client-tls one."""
        reason = str(decision.reason)
        self.metrics.blocked.labels(reason).inc()
        event = Event(
            "blocked",
            self.clock(),
            "TLS",
            printable(host, 300),
            "",
            client.id,
            reason=reason,
            grant_label=grant.label if grant else None,
            workspace=workspace_of(grant.connectors if grant else scope or ()),
            near_miss=decision.near_miss,
        )
        self.tally.blocked(event)
        self._audit_refusal(event)

    def _audit_refusal(self, e: Event) -> None:
        """A connection refused before any request (TLS level): audited like a blocked request."""
        if self.audit is not None:
            self._audit(
                Decision(
                    e.ts, "blocked", "blocked", e.request_id, e.method, e.host, e.path, e.workspace,
                    reason=e.reason, grant_label=e.grant_label, near_miss=e.near_miss, node=self.tally.node,
                )
            )  # fmt: skip

    def _blocked(self, flow: http.HTTPFlow, s: FlowState) -> None:
        assert s.blocked is not None
        reason = str(s.blocked.reason)
        if s.route is not None and s.blocked.reason is Reason.CREDENTIAL_UNAVAILABLE:
            # The connector is broken, not the client: it counts (and shows) as the connector's error.
            self._count(s.route.connector, None)
            self.tally.error(self._error_event(flow, s, failure=reason))
        self._decided(flow, s, "blocked", flow.response.status_code if flow.response else None)
        self.metrics.blocked.labels(reason).inc()
        method, host, path = described(flow, s)
        self.tally.blocked(
            Event(
                "blocked",
                self.clock(),
                method,
                host,
                path,
                flow.id,
                reason=reason,
                grant_label=s.grant_label,
                workspace=workspace(s.tunnel, s),
                near_miss=s.blocked.near_miss,
            )
        )

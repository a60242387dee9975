"""Count and log outcomes: requests and errors per connector, blocked requests.

Hooks only touch in-memory counters; a writer task flushes them to the store
in a thread, every ``--flush-interval`` seconds (by default the store's: about
one for SQLite, five for PostgreSQL, which every sidecar of a fleet writes
to), jittered so that processes started together do not flush together;
``done`` flushes whatever is left, so SIGTERM loses nothing. Every count is
also appended to this process's journal (``proxy.journal``, memory-mapped
files in EGRESS_HOME), so SIGKILL loses nothing either: the writer and every
other proxy process sharing the home replay the journals of dead processes
(at start, every few seconds, and at stop), each exactly once.

While the store is unreachable (a database down or restarting) the batch
drained last waits and is retried, counting goes on in memory, bounded, and
everything goes out as soon as a flush gets through; whatever the bounds drop
is logged and counted in ``egress_store_dropped_total``. Stopping during an
outage leaves the counts in the journal for the next proxy to start.
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
from dataclasses import dataclass, field

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
from proxy.journal import Journals, replay
from proxy.nearmiss import NearMiss
from proxy.policy import Block, parse_target
from proxy.reasons import Reason
from proxy.runtime.auditlog import DEFAULT_MAX_BYTES, AuditLog
from proxy.runtime.metrics import Metrics
from proxy.secrets import DEFAULT_WORKSPACE
from proxy.service.home import Home
from proxy.stats import Batch, Clock, Counted, Event, JournalMark, Tally, printable, strip_query
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
REPLAY_INTERVAL = 5.0  # seconds between looks for journals a dead process left (and at start)


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


@dataclass(eq=False)
class _Drained:
    """A batch taken from the tally and not yet in the store."""

    batch: Batch
    mark: JournalMark | None  # the journal files holding it: the owner's, up to ``mark.seq``
    missed: Counted = field(default_factory=Counted)  # what the journal had missed when it was cut


class Recorder:
    def __init__(self, clock: Clock = time.time, tunnels: Tunnels | None = None) -> None:
        self.clock = clock
        self.tunnels = tunnels
        self.tally = Tally(clock, node=node_name(os.environ))
        self.metrics = Metrics()
        self.store: Store | None = None
        self.interval = FLUSH_INTERVAL  # seconds between flushes (configure: the option or the store's)
        self.journals: Journals | None = None
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = threading.RLock()  # done() replays journals while holding it
        self._replay_lock = threading.RLock()  # done() lets a replay in the writer's thread finish
        self._pending: _Drained | None = None
        self._written: _Drained | None = None  # the last batch written: its journal files may go
        self._failures = 0
        self._next_replay = 0.0
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
            self._close_journals(remove=True)  # what they hold is still in memory, for the new store
            if ctx.options.egress_record:
                try:  # may be down: counts wait; shares the reload watcher's connection
                    home = home_from_options()
                    self.store = home.store(lazy=True, shared=True)
                except EgressError as e:
                    raise exceptions.OptionsError(str(e)) from None
                self._open_journals(home)
        if {"egress_home", "egress_record", "egress_flush_interval"} & updated:
            chosen = ctx.options.egress_flush_interval
            self.interval = (
                chosen if chosen > 0 else self.store.flush_interval if self.store else FLUSH_INTERVAL
            )

    def _open_journals(self, home: Home) -> None:
        try:
            self.journals = Journals(home.journal_dir)
        except OSError as e:
            logger.warning(
                "no statistics journal in %s (%s): counts not yet written die with this process",
                home.journal_dir,
                e.strerror,
            )
        self.tally.journal = self.journals

    def _close_journals(self, *, remove: bool) -> None:
        if self.journals is not None:
            self.journals.close(remove=remove)
        self.journals = self.tally.journal = None

    async def running(self) -> None:
        self._task = asyncio.create_task(self._writer())

    def delays(self) -> Iterator[float]:
        """Seconds before each flush: the first anywhere below the interval (a fleet restarted
        together spreads out at once), then the interval, jittered (and it stays spread)."""
        yield random.uniform(0, self.interval)
        while True:
            yield self.interval * random.uniform(1 - FLUSH_JITTER, 1 + FLUSH_JITTER)

    async def _writer(self) -> None:
        await self._replay()  # journals a killed process left: its counts are due now
        for delay in self.delays():
            await asyncio.sleep(delay)
            await self._write()
            if time.monotonic() >= self._next_replay:
                await self._replay()

    def _drain(self, *, final: bool = False) -> _Drained:
        """Take the tally and cut the journal, at once (on the event loop, between two counts)."""
        journals = self.journals
        if journals is None:
            return _Drained(self.tally.drain(), None)
        if final:  # nothing is counted after this: the files so far hold it all
            seq = journals.seq
            self.tally.journal = None
        else:
            seq = journals.cut()
        return _Drained(self.tally.drain(), JournalMark(journals.owner, seq), journals.missed)

    async def _write(self) -> None:
        """One flush: a batch still waiting for the store first, then what was counted since."""
        while self.store:
            drained, retry = self._pending, self._pending is not None
            if drained is None:
                if not self.tally:
                    return
                drained = self._pending = self._drain()
            try:
                await asyncio.to_thread(self._flush, drained)
            except StoreUnavailable as e:
                self._keep_for_later(e)
                return
            except Exception as e:
                self._failed(drained, e)
                return
            self._failures = 0
            self._committed()
            if self._store_down:
                self._store_down = False
                logger.warning("store reachable again: statistics written (%s)", Counted.of(drained.batch))
            if not retry:
                return  # else write what was counted while that batch waited, now

    def _committed(self) -> None:
        """The journal files of the last batch written go."""
        journals, mark = self.journals, self._written.mark if self._written is not None else None
        if journals is not None and mark is not None and mark.owner == journals.owner:
            journals.committed(mark.seq)

    def _failed(self, drained: _Drained, e: Exception) -> None:
        """A store that answers but refuses the batch: retried, and after a few tries without its
        log rows, so one bad row cannot jam the writer."""
        self._failures += 1
        drop = self._failures >= MAX_FLUSH_FAILURES
        logger.error(
            "statistics flush failed (%s); %s",
            type(e).__name__,
            "dropping its log rows, keeping counts" if drop else "will retry",
        )
        if drop:
            with self._flush_lock:
                if self._pending is drained:
                    drained.batch.events.clear()
                    self._failures = 0

    def _keep_for_later(self, e: StoreUnavailable) -> None:
        """An outage is not a bad row: keep everything (bounded) and retry at the next flush."""
        with self._flush_lock:
            waiting = self._pending.batch if self._pending is not None else None
            dropped = self.tally.shed(BACKLOG_EVENTS, BACKLOG_KEYS, older=waiting)
            pending = self.tally.pending() + (Counted.of(waiting) if waiting is not None else Counted())
        if not self._store_down:
            self._store_down = True
            logger.error("%s: counting in memory until it answers (%s pending)", e, pending)
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

    def _flush(self, drained: _Drained) -> None:
        with self._flush_lock:  # done() must not close the store under a running flush
            if self.store and self._pending is drained:
                if not self.store.monitoring.flush(drained.batch, drained.mark):
                    logger.info("statistics batch %s was already written; not written twice", drained.mark)
                self._pending = None
                self._written = drained

    async def _replay(self) -> None:
        self._next_replay = time.monotonic() + REPLAY_INTERVAL
        if self.journals is None or self.store is None:
            return
        try:
            await asyncio.to_thread(self._replay_now)
        except StoreUnavailable:
            pass  # the files stay: the next try writes them
        except Exception as e:
            logger.error("replaying statistics journals failed (%s: %s)", type(e).__name__, e)

    def _replay_now(self) -> None:
        """Write what dead proxy processes left in their journals (a worker killed, a proxy that
        stopped while the store was down); each owner's files once, in order."""
        with self._replay_lock:
            self._replay_locked()

    def _replay_locked(self) -> None:
        journals = self.journals
        if journals is None:
            return

        def flush(batch: Batch, mark: JournalMark) -> bool:
            batch.node = batch.node or self.tally.node  # a dead worker of this proxy, most likely
            with self._flush_lock:
                if self.store is None:
                    raise StoreUnavailable("stopping")
                return self.store.monitoring.flush(batch, mark)

        for r in replay(journals.directory, flush, own=journals.owner):
            pid = r.owner.split("-", 1)[0]
            logger.warning(
                "wrote the statistics a stopped process (pid %s) left in its journal: %s%s",
                pid,
                r.counted,
                f" ({r.skipped} file(s) already written)" if r.skipped else "",
            )

    def done(self) -> None:
        for flow in list(self._probes.values()):  # the client never came back with a grant
            self._blocked(flow, state(flow))
        self._probes.clear()
        if self._task:
            self._task.cancel()
        if self.audit is not None:
            self.audit.close()
            self.audit = None
        # Waits for a replay, then a flush, still running in the writer's thread (a replay cut
        # short here would leave a dead process's counts to the next start).
        with self._replay_lock, self._flush_lock:
            if self.store is None:
                self._close_journals(remove=True)
                return
            self._committed()
            kept = False
            try:
                if self._pending is not None:  # drained but not yet written: write it now
                    self.store.monitoring.flush(self._pending.batch, self._pending.mark)
                    self._pending = None
                if self.tally:
                    drained = self._drain(final=True)
                    self._pending = drained
                    self.store.monitoring.flush(drained.batch, drained.mark)
                    self._pending = None
            except StoreUnavailable as e:
                self._left_for_later(e)
                kept = self.journals is not None
            if not kept:
                try:
                    self._replay_now()  # a sibling killed just before the stop
                except StoreUnavailable:
                    pass
                except Exception as e:
                    logger.error("replaying statistics journals failed (%s: %s)", type(e).__name__, e)
            self._close_journals(remove=not kept)
            self.store.close()
            self.store = None

    def _left_for_later(self, e: StoreUnavailable) -> None:
        """Stopping while the store is down: say what waits in the journal for the next start,
        and what is lost (all of it without a journal; what found no room in it otherwise)."""
        waiting = self._pending
        self._pending = None
        if waiting is not None:
            self.tally.merge(waiting.batch)
        pending, journals = self.tally.pending(), self.journals
        if journals is None:
            self._dropped(pending, f"stopping while {e}")
            return
        written = self._written
        ours = written is not None and written.mark is not None and written.mark.owner == journals.owner
        lost = journals.missed - (written.missed if written is not None and ours else Counted())
        logger.warning(
            "stopping while %s: %s kept in the statistics journal %s; the next proxy started "
            "with this home and store writes them",
            e,
            pending - lost,
            journals.directory,
        )
        if lost:
            self._dropped(lost, "they found no room in the journal")

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
        grant_label = tunnel.grant.label if tunnel and tunnel.grant else None
        self._refused_at_tls(client, host, str(Reason.CLIENT_TLS), grant_label, workspace(tunnel))

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
        self._refused_at_tls(
            client,
            host,
            str(decision.reason),
            grant.label if grant else None,
            workspace_of(grant.connectors if grant else scope or ()),
            decision.near_miss,
        )

    def _refused_at_tls(
        self,
        client: connection.Client,
        host: str,
        reason: str,
        grant_label: str | None,
        ws: str,
        near_miss: NearMiss | None = None,
    ) -> None:
        """A connection refused before any request (TLS level): counted, logged with method
        ``TLS`` and no path, and audited like a blocked request."""
        self.metrics.blocked.labels(reason).inc()
        e = Event(
            "blocked",
            self.clock(),
            "TLS",
            printable(host, 300),
            "",
            client.id,
            reason=reason,
            grant_label=grant_label,
            workspace=ws,
            near_miss=near_miss,
        )
        self.tally.blocked(e)
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

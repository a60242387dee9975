"""The PostgreSQL store: one database shared by every proxy and sidecar of a fleet.

Same protocol and semantics as the SQLite store. Writes serialise on the
generation row (locked first, so its row lock plays BEGIN IMMEDIATE's part),
bump it when they change what proxies hold and NOTIFY ``egress_changes`` on
commit.

A fleet is many processes, so each holds one connection at rest: reads,
writes, counter flushes and LISTEN all share it, one caller at a time under
a lock (``_Link``). ``wait_for_change`` waits for the socket to become
readable without the lock, then drains the notifications; a notification
that arrives while another thread runs a query reaches the same handler.
While LISTEN is in force, ``generation()`` answers from what was read at
connect time and announced since, and reads the row again every
``SAFETY_POLL`` seconds and after every reconnect, which covers anything
missed while disconnected: watchers cost the database nothing between
changes. Proxies opening the same URL with ``shared`` (a worker's reload
watcher and its statistics writer) use one link between them.

When the database cannot be reached, operations raise StoreUnavailable at
once; the connection is re-made by the next operation after a delay drawn
with full jitter from an exponential backoff, so a restarted database does
not meet every process at the same instant.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from proxy.errors import ConfigError, StoreUnavailable
from proxy.stats import Clock
from proxy.store.base import StoredConnector
from proxy.store.transaction import GRANT_SELECT, TOKEN_SELECT, SqlTransaction, grant_from_row, token_from_row

try:
    import psycopg
    from psycopg import pq
    from psycopg.conninfo import conninfo_to_dict
except ImportError:  # pragma: no cover - depends on the installation
    raise ImportError(
        "EGRESS_DATABASE_URL=postgresql://... needs psycopg: pip install 'egress-proxy[postgres]'"
    ) from None

from proxy.store import mask_url
from proxy.store.postgres_monitoring import PostgresMonitoring
from proxy.store.postgres_schema import PG_MIGRATIONS, PG_VERSION

logger = logging.getLogger(__name__)

CHANNEL = "egress_changes"
MIGRATION_LOCK = 0x6567_7265_7373_0001  # pg_advisory_xact_lock keys ("egress" + n), any bigint will do
CONNECT_TIMEOUT = 5  # seconds for one connection attempt (an unreachable host, not a refused port)
LOCK_TIMEOUT = 5.0  # seconds an operation waits for the connection (another thread's query) before giving up
RECONNECT_BASE = 0.5  # seconds: the first reconnection waits up to this, each failure doubles it...
RECONNECT_CAP = 10.0  # ...up to this; the actual wait is drawn uniformly below it (full jitter)
SAFETY_POLL = 30.0  # seconds: while listening, the generation row is still read this often
FLUSH_INTERVAL = 5.0  # seconds between a proxy's counter flushes (jittered by the recorder)
APPLICATION_NAME = "egress-proxy"  # in pg_stat_activity, unless the URL names one
# libpq settings the URL (or PG* variables) may override: keepalives notice a peer that vanished
# without closing (a failed-over host), the user timeout bounds a query sent into that void.
_CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # milliseconds
}


def _reason(e: BaseException) -> str:
    """libpq's message on one line (it names host and port, never the password)."""
    return "; ".join(line.strip() for line in str(e).strip().splitlines() if line.strip()) or type(e).__name__


def _has_table(conn: psycopg.Connection[Any], name: str) -> bool:
    """A catalog query (not ``to_regclass``, whose cache may miss a table another session just committed)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables WHERE tablename = %s "
        "AND schemaname = current_schema())",
        (name,),
    ).fetchone()
    return row == (True,)


def _version(conn: psycopg.Connection[Any]) -> int:
    if not _has_table(conn, "meta"):
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return int(row[0]) if row else 0


def _newer(location: str, version: int) -> ConfigError:
    return ConfigError(
        f"{location}: store schema {version} is newer than this egress-proxy understands "
        f"({PG_VERSION}): upgrade egress-proxy; the database was left untouched"
    )


def migrate(conn: psycopg.Connection[Any], location: str, *, create: bool) -> None:
    """Bring the schema to PG_VERSION in one transaction, under an advisory lock.

    Many processes starting together all see an old version; the lock makes
    them queue, and each re-reads the version once it holds it, so exactly one
    applies the steps. Nothing is locked when the schema is current.
    """
    current = _version(conn)
    if current == PG_VERSION:
        return
    if current > PG_VERSION:
        raise _newer(location, current)
    if current == 0 and not create:
        raise ConfigError(f"no store at {location}: run `egress init` first")
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            current = _version(conn)
            if current == 0 and _has_table(conn, "connectors"):
                raise ConfigError(
                    f"{location}: a database with a 'connectors' table that is not an egress store; "
                    "it was left untouched (use a database of its own)"
                )
            if current > PG_VERSION:
                raise _newer(location, current)
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for step in PG_MIGRATIONS[current:]:
                conn.execute(step)
            if current < PG_VERSION:
                conn.execute(
                    "INSERT INTO meta VALUES ('schema', %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    (str(PG_VERSION),),
                )
                conn.execute("INSERT INTO meta VALUES ('generation', '0') ON CONFLICT (key) DO NOTHING")
    except psycopg.OperationalError:
        raise
    except psycopg.Error as e:
        raise ConfigError(
            f"{location}: migrating the store failed ({_reason(e)}); it was left as it was"
        ) from None


def _backoff(failures: int) -> float:
    """Seconds before the next connection attempt: full jitter over an exponential backoff."""
    return random.uniform(0.0, min(RECONNECT_CAP, RECONNECT_BASE * 2 ** max(0, failures - 1)))


def _connect_kwargs(url: str) -> dict[str, Any]:
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error:
        given = {}  # psycopg.connect says what is wrong with it
    defaults = {k: v for k, v in _CONNECT_DEFAULTS.items() if k not in given}
    return {**defaults, "autocommit": True, "fallback_application_name": APPLICATION_NAME}


class _Link:
    """The one connection a process keeps to the database, and what it knows through it.

    Every use holds ``lock``; ``watch`` waits for notifications without it.
    A connection that breaks is closed and re-made by the first use after
    ``retry_at``; until then uses fail at once. ``changes`` counts the
    notifications received, ``known`` is the generation (read on this
    connection, or announced since), trusted only while LISTEN is in force.
    """

    def __init__(self, url: str, location: str, *, create: bool) -> None:
        self.url = url
        self.location = location
        self.create = create
        self.lock = threading.Lock()
        self.conn: psycopg.Connection[Any] | None = None
        self.ready = False  # the schema was checked (once per process)
        self.subscribed = False  # someone waits for changes: LISTEN on every connection
        self.listening = False  # LISTEN is in force on self.conn
        self.changes = 0
        self.known: int | None = None
        self.read_at = 0.0  # monotonic time the generation row was last read
        self.failures = 0
        self.retry_at = 0.0
        self.reason = ""
        self.closed = False
        self.refs = 0
        # Wakes a watcher blocked in select(): a notification another thread read, a new connection, close.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # -- the connection ------------------------------------------------------

    @contextmanager
    def use(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection, for this caller alone; database failures become StoreUnavailable or ConfigError."""
        if not self.lock.acquire(timeout=LOCK_TIMEOUT):
            raise StoreUnavailable(f"store {self.location} unavailable: no answer within {LOCK_TIMEOUT:g} s")
        try:
            conn = self._connected()
            try:
                yield conn
            except psycopg.OperationalError as e:
                if conn.broken or conn.closed:
                    self._lost(e)
                raise StoreUnavailable(f"store {self.location} unavailable: {_reason(e)}") from None
            except psycopg.Error as e:
                raise ConfigError(
                    f"{self.location}: store error ({_reason(e)}); nothing was changed"
                ) from None
        finally:
            self.lock.release()

    def _connected(self) -> psycopg.Connection[Any]:
        """The live connection (made now if due); held lock. A restart that closed it is seen here."""
        if self.closed:
            raise StoreUnavailable(f"store {self.location} is closed")
        if self.conn is not None and _readable(self.conn, 0):
            self._drain(self.conn)  # notifications, or the server saying goodbye
        if self.conn is not None:
            return self.conn
        now = time.monotonic()
        if now < self.retry_at:
            raise StoreUnavailable(
                f"cannot reach the store {self.location}: {self.reason} "
                f"(next attempt in {self.retry_at - now:.1f} s)"
            )
        try:
            conn = psycopg.connect(self.url, **_connect_kwargs(self.url))
        except psycopg.OperationalError as e:
            self._failed(_reason(e))
            raise StoreUnavailable(f"cannot reach the store {self.location}: {self.reason}") from None
        except psycopg.Error as e:
            raise ConfigError(f"EGRESS_DATABASE_URL={self.location}: {_reason(e)}") from None
        try:
            if not self.ready:
                migrate(conn, self.location, create=self.create)
                self.ready = True
            conn.add_notify_handler(lambda n: self._announced(n.channel, n.payload))
            if self.subscribed:
                conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.OperationalError as e:
            conn.close()
            self._failed(_reason(e))
            raise StoreUnavailable(f"cannot reach the store {self.location}: {self.reason}") from None
        except psycopg.Error as e:  # a permission, say: not something a retry mends
            conn.close()
            raise ConfigError(f"{self.location}: store error ({_reason(e)})") from None
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        self.listening = self.subscribed
        self.known = None  # anything may have changed while we were away: read the row again
        self.failures = 0
        self._wake()
        return conn

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self.reason = reason
        self.retry_at = time.monotonic() + _backoff(self.failures)

    def _lost(self, e: BaseException) -> None:
        """The connection broke (a restart, a network cut): drop it; the next use reconnects, jittered."""
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.listening = False
        self.known = None
        self._failed(_reason(e))
        self._wake()

    def _drain(self, conn: psycopg.Connection[Any]) -> None:
        """Read what the server sent unasked (held lock): notifications, or an error before it hangs up."""
        try:
            conn.pgconn.consume_input()
            while n := conn.pgconn.notifies():
                self._announced(n.relname.decode(), n.extra.decode())
        except psycopg.OperationalError as e:
            self._lost(e)
            return
        if conn.pgconn.status == pq.ConnStatus.BAD:
            self._lost(psycopg.OperationalError("connection lost"))

    def _announced(self, channel: str, payload: str) -> None:
        if channel != CHANNEL:
            return
        self.changes += 1
        try:
            announced = int(payload)
        except ValueError:
            self.known = None  # a notification we did not send: read the row
        else:
            if self.known is not None:
                self.known = max(self.known, announced)
        self._wake()

    def _wake(self) -> None:
        with suppress(OSError):  # full (a wake is pending anyway) or closed
            self._wake_w.send(b"\0")

    # -- changes -------------------------------------------------------------

    def subscribe(self) -> None:
        """LISTEN from now on (held lock); the generation is read again after it."""
        self.subscribed = True
        if self.conn is not None and not self.listening:
            self.conn.execute(f"LISTEN {CHANNEL}")
            self.listening = True
            self.known = None

    def cached_generation(self) -> int | None:
        """The generation without a query, when LISTEN makes that safe and the last read is recent."""
        if self.listening and self.known is not None and time.monotonic() - self.read_at < SAFETY_POLL:
            return self.known
        return None

    def read_generation(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        value = int(row[0]) if row else 0
        if self.listening:  # a notification handled during the query may already say more
            self.known = max(value, self.known or 0)
            self.read_at = time.monotonic()
            return self.known
        return value

    def watch(self, seen: int, timeout: float) -> int:
        """Wait up to ``timeout`` for ``changes`` to move past ``seen``; the new count (or ``seen``).

        The socket is watched without the lock, so writers never wait on a
        watcher; whoever holds the lock when a notification arrives hands it
        to ``_announced``, which wakes this select() through the socket pair.
        """
        deadline = time.monotonic() + timeout
        self.subscribed = True
        while self.changes == seen and not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            fd = None
            wait = remaining
            if self.lock.acquire(timeout=min(remaining, LOCK_TIMEOUT)):
                try:
                    conn = self._connected()
                    self.subscribe()  # a connection made before anyone waited
                    fd = conn.fileno()
                except StoreUnavailable:
                    wait = min(remaining, max(0.05, self.retry_at - time.monotonic()))  # the next attempt
                except ConfigError:
                    pass  # not a store we can use: the caller's reads say why
                except psycopg.OperationalError as e:
                    self._lost(e)
                    wait = 0.0
                finally:
                    self.lock.release()
            if self.changes != seen:
                break
            try:
                ready, _, _ = select.select([self._wake_r] + ([fd] if fd is not None else []), [], [], wait)
            except (OSError, ValueError):
                break  # closed under us
            if self._wake_r in ready:
                self._drain_wakes()
            if fd is not None and fd in ready and self.lock.acquire(timeout=min(LOCK_TIMEOUT, remaining)):
                try:
                    if self.conn is not None and not self.conn.closed and self.conn.fileno() == fd:
                        self._drain(self.conn)
                finally:
                    self.lock.release()
        return self.changes

    def _drain_wakes(self) -> None:
        with suppress(OSError):  # empty (BlockingIOError) or closed
            while self._wake_r.recv(4096):
                pass

    def close(self) -> None:
        self.closed = True
        self._wake()
        with self.lock:  # waits for a use in another thread
            if self.conn is not None:
                self.conn.close()
                self.conn = None
        self._wake_w.close()
        self._wake_r.close()


def _readable(conn: psycopg.Connection[Any], timeout: float) -> bool:
    try:
        ready, _, _ = select.select([conn.fileno()], [], [], timeout)
    except (OSError, ValueError, psycopg.Error):
        return True  # let the read say what is wrong
    return bool(ready)


_shared: dict[str, _Link] = {}
_shared_lock = threading.Lock()


class PostgresStore:
    flush_interval = FLUSH_INTERVAL

    def __init__(
        self,
        url: str,
        *,
        create: bool = False,
        clock: Clock = time.time,
        lazy: bool = False,
        shared: bool = False,
    ) -> None:
        self.url = url
        self.location = mask_url(url)
        self._shared = shared
        with _shared_lock:
            link = _shared.get(url) if shared else None
            if link is None:
                link = _Link(url, self.location, create=create)
                if shared:
                    _shared[url] = link
            link.refs += 1
        self._link = link
        self._seen = link.changes
        # Reach it now: a CLI command fails at once with libpq's reason. A lazy store (a proxy)
        # only notes that it is down, so its first operations fail fast too.
        try:
            with link.use():
                pass
        except StoreUnavailable:
            if not lazy:
                self.close()
                raise
        except BaseException:
            self.close()
            raise
        self.monitoring = PostgresMonitoring(link.use, clock)

    def close(self) -> None:
        link = self._link
        with _shared_lock:
            link.refs -= 1
            last = link.refs <= 0
            if last and _shared.get(self.url) is link:
                del _shared[self.url]
        if last:
            link.close()

    @contextmanager
    def write(self) -> Iterator[SqlTransaction]:
        """One transaction; bumps the generation and notifies every listening proxy on commit, unless
        it only added grants or admin tokens (nothing a running proxy holds: a pod minting its grant
        reloads no one). Writers queue on the generation row first, as BEGIN IMMEDIATE does in SQLite."""
        with self._link.use() as conn, conn.transaction():
            conn.execute("SELECT value FROM meta WHERE key = 'generation' FOR UPDATE")
            tx = SqlTransaction(conn, "%s")
            yield tx
            if tx.changed:
                row = conn.execute(
                    "UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'generation' RETURNING value"
                ).fetchone()
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, row[0] if row else ""))

    def generation(self) -> int:
        cached = self._link.cached_generation()
        if cached is not None:
            return cached
        with self._link.use() as conn:
            return self._link.read_generation(conn)

    def wait_for_change(self, timeout: float) -> bool:
        """Until a NOTIFY or ``timeout``; subscribes on first use (and after every reconnect)."""
        changes = self._link.watch(self._seen, timeout)
        changed = changes != self._seen
        self._seen = changes
        return changed

    def connectors(self) -> list[StoredConnector]:
        with self._link.use() as conn:
            return SqlTransaction(conn, "%s").connectors()

    def get(self, name: str) -> StoredConnector | None:
        with self._link.use() as conn:
            return SqlTransaction(conn, "%s").get(name)

    def grants(self) -> list[dict[str, Any]]:
        with self._link.use() as conn:
            rows = conn.execute(GRANT_SELECT).fetchall()
        return [grant_from_row(r) for r in rows]

    def revoked_grants(self) -> frozenset[str]:
        with self._link.use() as conn:
            rows = conn.execute("SELECT id FROM grants WHERE revoked_at IS NOT NULL").fetchall()
        return frozenset(r[0] for r in rows)

    def admin_tokens(self) -> list[dict[str, Any]]:
        with self._link.use() as conn:
            rows = conn.execute(f"{TOKEN_SELECT} ORDER BY created_at, id").fetchall()
        return [token_from_row(r) for r in rows]

    def admin_token(self, tid: str) -> dict[str, Any] | None:
        with self._link.use() as conn:
            row = conn.execute(f"{TOKEN_SELECT} WHERE id = %s", (tid,)).fetchone()
        return token_from_row(row) if row else None

"""The PostgreSQL store: one database shared by every proxy and sidecar of a fleet.

Same protocol and semantics as the SQLite store. Writes serialise on the
generation row (bumped first, so its row lock plays BEGIN IMMEDIATE's part)
and NOTIFY ``egress_changes`` on commit; ``wait_for_change`` LISTENs on a
connection of its own, and the generation stays a cheap query that watchers
poll after every wait, which covers notifications missed while disconnected.
Connections come from a small pool that reconnects with backoff; when the
database cannot be reached, every operation raises StoreUnavailable quickly
instead of hanging, so the proxy can keep serving from memory.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from proxy.errors import ConfigError, StoreUnavailable
from proxy.stats import Clock
from proxy.store.base import StoredConnector

try:
    import psycopg
    from psycopg_pool import ConnectionPool
except ImportError:  # pragma: no cover - depends on the installation
    raise ImportError(
        "EGRESS_DATABASE_URL=postgresql://... needs psycopg: pip install 'egress-proxy[postgres]'"
    ) from None

from proxy.store import mask_url
from proxy.store.postgres_monitoring import PostgresMonitoring
from proxy.store.postgres_schema import PG_MIGRATIONS, PG_VERSION

logger = logging.getLogger(__name__)
# The pool logs every failed reconnection attempt; our callers say once that the store is down.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

CHANNEL = "egress_changes"
MIGRATION_LOCK = 0x6567_7265_7373_0001  # pg_advisory_xact_lock keys ("egress" + n), any bigint will do
CONNECT_TIMEOUT = 5  # seconds for one connection attempt (an unreachable host, not a refused port)
CHECKOUT_TIMEOUT = 5.0  # seconds an operation waits for a pooled connection before StoreUnavailable
DOWN_CHECKOUT_TIMEOUT = 1.0  # the same once the store is known down: callers retry anyway
RECONNECT_TIMEOUT = 10.0  # the pool's backoff (1, 2, 4 s...) restarts after this, so a return is seen soon
POOL_SIZE = 4  # per process: the reload watcher, the statistics writer, admin reads
LISTEN_BACKOFF_MAX = 5.0
_CONNECTOR_COLUMNS = "name, spec, secret, created_at, updated_at, secret_updated_at"
_TOKEN_COLUMNS = ("id", "token_hash", "workspace", "read_only", "label", "created_at", "revoked_at")


def _reason(e: BaseException) -> str:
    """libpq's message on one line (it names host and port, never the password)."""
    return "; ".join(line.strip() for line in str(e).strip().splitlines() if line.strip()) or type(e).__name__


def _connector(row: Any) -> StoredConnector:
    return StoredConnector(row[0], json.loads(row[1]), bytes(row[2]), row[3], row[4], row[5])


def _token(row: Any) -> dict[str, Any]:
    return dict(zip(_TOKEN_COLUMNS, row, strict=True))


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


class _Transaction:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def get(self, name: str) -> StoredConnector | None:
        row = self._conn.execute(
            f"SELECT {_CONNECTOR_COLUMNS} FROM connectors WHERE name = %s", (name,)
        ).fetchone()
        return _connector(row) if row else None

    def connectors(self) -> list[StoredConnector]:
        rows = self._conn.execute(f"SELECT {_CONNECTOR_COLUMNS} FROM connectors ORDER BY name").fetchall()
        return [_connector(r) for r in rows]

    def put(self, name: str, spec: dict[str, Any], sealed: bytes, *, secret_changed: bool = True) -> None:
        now = time.time()
        self._conn.execute(
            f"INSERT INTO connectors ({_CONNECTOR_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, secret = EXCLUDED.secret, "
            "updated_at = EXCLUDED.updated_at, secret_updated_at = CASE WHEN %s "
            "THEN EXCLUDED.secret_updated_at ELSE connectors.secret_updated_at END",
            (name, json.dumps(spec, sort_keys=True), sealed, now, now, now, secret_changed),
        )

    def delete(self, name: str) -> bool:
        return self._conn.execute("DELETE FROM connectors WHERE name = %s", (name,)).rowcount > 0

    def add_grant(self, gid: str, label: str, connectors: list[str], expires_at: float) -> None:
        self._conn.execute(
            "INSERT INTO grants VALUES (%s, %s, %s, %s, %s, NULL)",
            (gid, label, json.dumps(sorted(connectors)), expires_at, time.time()),
        )

    def revoke_grant(self, gid: str) -> bool:
        cursor = self._conn.execute(
            "UPDATE grants SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL", (time.time(), gid)
        )
        return cursor.rowcount > 0

    def add_admin_token(
        self, tid: str, token_hash: str, workspace: str | None, read_only: bool, label: str
    ) -> None:
        self._conn.execute(
            f"INSERT INTO admin_tokens ({', '.join(_TOKEN_COLUMNS)}) VALUES (%s, %s, %s, %s, %s, %s, NULL)",
            (tid, token_hash, workspace, read_only, label, time.time()),
        )

    def revoke_admin_token(self, tid: str) -> bool:
        cursor = self._conn.execute(
            "UPDATE admin_tokens SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL", (time.time(), tid)
        )
        return cursor.rowcount > 0


class PostgresStore:
    def __init__(
        self, url: str, *, create: bool = False, clock: Clock = time.time, lazy: bool = False
    ) -> None:
        self.url = url
        self.location = mask_url(url)
        self._create = create
        self._ready = False
        self._down = False  # the last operation could not reach the database
        self._schema_lock = threading.Lock()
        self._listen_lock = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None
        self._listen_retry_at = 0.0
        self._listen_backoff = 0.0
        # Reach it now, directly: a CLI command fails at once with libpq's reason. A lazy store
        # (a proxy) only notes that it is down, so its first operations fail fast too.
        try:
            with self._direct() as conn:
                self._ensure_schema(conn)
        except StoreUnavailable:
            if not lazy:
                raise
            self._down = True
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            open=False,
            kwargs=self._connect_kwargs(),
            check=ConnectionPool.check_connection,  # a restart breaks idle connections: test on checkout
            timeout=CHECKOUT_TIMEOUT,
            reconnect_timeout=RECONNECT_TIMEOUT,
            num_workers=1,
            name="egress-store",
        )
        self._pool.open(wait=False)
        self.monitoring = PostgresMonitoring(self._conn, clock)

    @staticmethod
    def _connect_kwargs() -> dict[str, Any]:
        return {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT, "application_name": "egress-proxy"}

    def _direct(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, **self._connect_kwargs())
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"cannot reach the store {self.location}: {_reason(e)}") from None
        except psycopg.Error as e:
            raise ConfigError(f"EGRESS_DATABASE_URL={self.location}: {_reason(e)}") from None

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        with self._schema_lock:
            if not self._ready:
                migrate(conn, self.location, create=self._create)
                self._ready = True

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; database failures become StoreUnavailable or ConfigError."""
        try:
            with self._pool.connection(DOWN_CHECKOUT_TIMEOUT if self._down else CHECKOUT_TIMEOUT) as conn:
                self._down = False
                if not self._ready:  # a lazy store checks the schema the first time it gets through
                    self._ensure_schema(conn)
                yield conn
        except psycopg.OperationalError as e:
            self._down = True
            raise StoreUnavailable(f"store {self.location} unavailable: {_reason(e)}") from None
        except psycopg.Error as e:
            raise ConfigError(f"{self.location}: store error ({_reason(e)}); nothing was changed") from None

    def close(self) -> None:
        self._pool.close(timeout=5)
        with self._listen_lock:  # waits for a wait_for_change in another thread (at most its timeout)
            if self._listener is not None:
                self._listener.close()
                self._listener = None

    @contextmanager
    def write(self) -> Iterator[_Transaction]:
        """One transaction; bumps the generation and notifies every listening proxy on commit."""
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'generation' RETURNING value"
            ).fetchone()
            yield _Transaction(conn)
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, row[0] if row else ""))

    def generation(self) -> int:
        with self._conn() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def wait_for_change(self, timeout: float) -> bool:
        """Until a NOTIFY or ``timeout``; a lost listening connection is re-made with backoff."""
        deadline = time.monotonic() + timeout
        with self._listen_lock:
            conn = self._listening()
            if conn is not None:
                try:
                    for _ in conn.notifies(timeout=max(0.0, deadline - time.monotonic()), stop_after=1):
                        return True
                    return False
                except psycopg.Error:
                    conn.close()
                    self._listener = None
        time.sleep(max(0.0, deadline - time.monotonic()))
        return False

    def _listening(self) -> psycopg.Connection[Any] | None:
        if self._listener is not None and not self._listener.closed:
            return self._listener
        now = time.monotonic()
        if now < self._listen_retry_at:
            return None
        try:
            conn = psycopg.connect(self.url, **self._connect_kwargs())
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error:
            self._listen_backoff = min(LISTEN_BACKOFF_MAX, max(1.0, self._listen_backoff * 2))
            self._listen_retry_at = now + self._listen_backoff
            return None
        self._listen_backoff = 0.0
        self._listener = conn
        return conn

    def connectors(self) -> list[StoredConnector]:
        with self._conn() as conn:
            return _Transaction(conn).connectors()

    def get(self, name: str) -> StoredConnector | None:
        with self._conn() as conn:
            return _Transaction(conn).get(name)

    def grants(self) -> list[dict[str, Any]]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, label, connectors, expires_at, created_at, revoked_at FROM grants ORDER BY created_at"
            ).fetchall()
        keys = ("id", "label", "connectors", "expires_at", "created_at", "revoked_at")
        return [dict(zip(keys, (*r[:2], json.loads(r[2]), *r[3:]), strict=True)) for r in rows]

    def revoked_grants(self) -> frozenset[str]:
        with self._conn() as conn:
            rows = conn.execute("SELECT id FROM grants WHERE revoked_at IS NOT NULL").fetchall()
        return frozenset(r[0] for r in rows)

    def admin_tokens(self) -> list[dict[str, Any]]:
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_TOKEN_COLUMNS)} FROM admin_tokens ORDER BY created_at, id"
            ).fetchall()
        return [_token(r) for r in rows]

    def admin_token(self, tid: str) -> dict[str, Any] | None:
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {', '.join(_TOKEN_COLUMNS)} FROM admin_tokens WHERE id = %s", (tid,)
            ).fetchone()
        return _token(row) if row else None

"""The PostgreSQL schema: the same versions as ``proxy.store.schema``, types adapted.

Step N here is step N there (BYTEA for BLOB, BIGSERIAL for AUTOINCREMENT,
DOUBLE PRECISION for REAL, BIGINT counters), so a version number means the
same tables in both backends. Each entry is self-contained: a new version
appends one entry to each list.
"""

from __future__ import annotations

PG_MIGRATIONS: list[str] = [
    # 1: connectors with sealed secrets, grants and revocations
    """
    CREATE TABLE connectors (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        secret BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE grants (
        id TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        connectors TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    );
    """,
    # 2: per-minute counters and the event log
    """
    CREATE TABLE stats_minute (
        connector TEXT NOT NULL, minute BIGINT NOT NULL,
        requests BIGINT NOT NULL, errors BIGINT NOT NULL,
        PRIMARY KEY (connector, minute)
    );
    CREATE TABLE blocked_minute (
        host TEXT NOT NULL, reason TEXT NOT NULL, minute BIGINT NOT NULL, count BIGINT NOT NULL,
        PRIMARY KEY (host, reason, minute)
    );
    CREATE TABLE events (
        id BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        connector TEXT, reason TEXT, status INTEGER, failure TEXT,
        method TEXT NOT NULL, host TEXT NOT NULL, path TEXT NOT NULL,
        request_id TEXT NOT NULL, grant_label TEXT
    );
    CREATE INDEX events_by_time ON events (ts);
    """,
    # 3: credential health: the classes that make up ``errors`` (rows written before count 0)
    """
    ALTER TABLE stats_minute ADD COLUMN rejected BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE stats_minute ADD COLUMN client_errors BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE stats_minute ADD COLUMN server_errors BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE stats_minute ADD COLUMN transport_failures BIGINT NOT NULL DEFAULT 0;
    """,
    # 4: workspaces: events gain the workspace they belong to
    """
    ALTER TABLE events ADD COLUMN workspace TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX events_by_workspace ON events (workspace, ts);
    """,
    # 5: near miss: a blocked row's nearest connector and what differed, as JSON (NULL: none)
    """
    ALTER TABLE events ADD COLUMN near_miss TEXT;
    """,
    # 6: the admin API: when each credential last changed, and admin tokens (SHA-256 only)
    """
    ALTER TABLE connectors ADD COLUMN secret_updated_at DOUBLE PRECISION;
    UPDATE connectors SET secret_updated_at = updated_at WHERE secret_updated_at IS NULL;
    CREATE TABLE admin_tokens (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        workspace TEXT,
        read_only BOOLEAN NOT NULL DEFAULT FALSE,
        label TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    );
    """,
    # 7: fleets: which process (host or pod: EGRESS_NODE) counted what, and saw each log row
    """
    CREATE TABLE stats_node (
        node TEXT NOT NULL, connector TEXT NOT NULL, minute BIGINT NOT NULL,
        requests BIGINT NOT NULL, errors BIGINT NOT NULL,
        PRIMARY KEY (node, connector, minute)
    );
    ALTER TABLE events ADD COLUMN node TEXT;
    """,
    # 8: journal marks: per proxy process, the highest journal file number whose counts are written
    """
    CREATE TABLE journal_marks (
        owner TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    """,
]
PG_VERSION = len(PG_MIGRATIONS)

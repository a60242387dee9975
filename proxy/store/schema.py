"""The store's one versioned schema: every table, and the steps between versions.

Version 1 held connectors and grants; version 2 adds the monitoring tables
(stores written by earlier releases already have them, hence IF NOT EXISTS);
3 to 5 add health classes, workspaces and near misses; 6 the admin API's
tokens and when each credential last changed; 7 the per-process breakdown;
8 the journal marks that make a crashed process's counts count exactly once.
A migration runs inside the transaction that bumps the version, so a store
is never left half-migrated.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: connectors with sealed secrets, grants and revocations
    """
    CREATE TABLE IF NOT EXISTS connectors (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        secret BLOB NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS grants (
        id TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        connectors TEXT NOT NULL,
        expires_at REAL NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    """,
    # 2: per-minute counters and the event log
    """
    CREATE TABLE IF NOT EXISTS stats_minute (
        connector TEXT NOT NULL, minute INTEGER NOT NULL,
        requests INTEGER NOT NULL, errors INTEGER NOT NULL,
        PRIMARY KEY (connector, minute)
    );
    CREATE TABLE IF NOT EXISTS blocked_minute (
        host TEXT NOT NULL, reason TEXT NOT NULL, minute INTEGER NOT NULL, count INTEGER NOT NULL,
        PRIMARY KEY (host, reason, minute)
    );
    CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        ts REAL NOT NULL,
        connector TEXT, reason TEXT, status INTEGER, failure TEXT,
        method TEXT NOT NULL, host TEXT NOT NULL, path TEXT NOT NULL,
        request_id TEXT NOT NULL, grant_label TEXT
    );
    CREATE INDEX IF NOT EXISTS events_by_time ON events (ts);
    """,
    # 3: credential health: the classes that make up ``errors`` (rows written before count 0)
    """
    ALTER TABLE stats_minute ADD COLUMN rejected INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE stats_minute ADD COLUMN client_errors INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE stats_minute ADD COLUMN server_errors INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE stats_minute ADD COLUMN transport_failures INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: workspaces. Connectors and grants already name connectors by key (``ws/name``,
    # plain names in ``default``); events gain the workspace they belong to.
    """
    ALTER TABLE events ADD COLUMN workspace TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX IF NOT EXISTS events_by_workspace ON events (workspace, ts);
    """,
    # 5: near miss: a blocked row's nearest connector and what differed, as JSON (NULL: none)
    """
    ALTER TABLE events ADD COLUMN near_miss TEXT;
    """,
    # 6: the admin API. When each connector's credential last changed (a re-seal under a new
    # master key is no change; rows written before count from their last update), and admin
    # tokens: only a SHA-256 of each is kept; workspace NULL reaches every workspace.
    """
    ALTER TABLE connectors ADD COLUMN secret_updated_at REAL;
    UPDATE connectors SET secret_updated_at = updated_at WHERE secret_updated_at IS NULL;
    CREATE TABLE IF NOT EXISTS admin_tokens (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        workspace TEXT,
        read_only INTEGER NOT NULL DEFAULT 0,
        label TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    """,
    # 7: fleets: which process (host or pod: EGRESS_NODE) counted what, and saw each log row
    """
    CREATE TABLE IF NOT EXISTS stats_node (
        node TEXT NOT NULL, connector TEXT NOT NULL, minute INTEGER NOT NULL,
        requests INTEGER NOT NULL, errors INTEGER NOT NULL,
        PRIMARY KEY (node, connector, minute)
    );
    ALTER TABLE events ADD COLUMN node TEXT;
    """,
    # 8: journal marks: per proxy process (its journal owner id, proxy.journal), the highest
    # journal file number whose counts are written, set in the flush's own transaction; a
    # replay after a crash skips files at or below it. Rows of owners gone 24 hours are deleted.
    """
    CREATE TABLE IF NOT EXISTS journal_marks (
        owner TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        at REAL NOT NULL
    );
    """,
]
VERSION = len(MIGRATIONS)

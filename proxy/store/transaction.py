"""The write transaction both SQL backends hand out: the same statements, only the placeholder differs.

Works on any DB-API-like connection whose ``execute`` returns a cursor with
``fetchone``, ``fetchall`` and ``rowcount`` (sqlite3 and psycopg 3 both do).
``changed`` says whether something proxies hold changed, so the store bumps
its generation on commit (minting a grant or an admin token does not).
"""

from __future__ import annotations

import json
import time
from typing import Any

from proxy.store.base import StoredConnector

CONNECTOR_COLUMNS = "name, spec, secret, created_at, updated_at, secret_updated_at"
TOKEN_COLUMNS = ("id", "token_hash", "workspace", "read_only", "label", "created_at", "revoked_at")
TOKEN_SELECT = f"SELECT {', '.join(TOKEN_COLUMNS)} FROM admin_tokens"


def connector_from_row(row: Any) -> StoredConnector:
    return StoredConnector(row[0], json.loads(row[1]), bytes(row[2]), row[3], row[4], row[5])


def token_from_row(row: Any) -> dict[str, Any]:
    doc = dict(zip(TOKEN_COLUMNS, row, strict=True))
    doc["read_only"] = bool(doc["read_only"])  # SQLite keeps 0/1
    return doc


def grant_from_row(row: Any) -> dict[str, Any]:
    keys = ("id", "label", "connectors", "expires_at", "created_at", "revoked_at")
    return dict(zip(keys, (*row[:2], json.loads(row[2]), *row[3:]), strict=True))


GRANT_SELECT = (
    "SELECT id, label, connectors, expires_at, created_at, revoked_at FROM grants ORDER BY created_at"
)


class SqlTransaction:
    def __init__(self, conn: Any, placeholder: str) -> None:
        self._conn = conn
        self._p = placeholder
        self.changed = False  # something proxies hold changed: bump the generation on commit

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        return self._conn.execute(sql.replace("?", self._p), args)

    def get(self, name: str) -> StoredConnector | None:
        row = self._run(f"SELECT {CONNECTOR_COLUMNS} FROM connectors WHERE name = ?", (name,)).fetchone()
        return connector_from_row(row) if row else None

    def connectors(self) -> list[StoredConnector]:
        rows = self._run(f"SELECT {CONNECTOR_COLUMNS} FROM connectors ORDER BY name").fetchall()
        return [connector_from_row(r) for r in rows]

    def put(self, name: str, spec: dict[str, Any], sealed: bytes, *, secret_changed: bool = True) -> None:
        self.changed = True
        now = time.time()
        self._run(
            f"INSERT INTO connectors ({CONNECTOR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, secret = EXCLUDED.secret, "
            "updated_at = EXCLUDED.updated_at, secret_updated_at = CASE WHEN ? "
            "THEN EXCLUDED.secret_updated_at ELSE connectors.secret_updated_at END",
            (name, json.dumps(spec, sort_keys=True), sealed, now, now, now, secret_changed),
        )

    def delete(self, name: str) -> bool:
        return self._changed(self._run("DELETE FROM connectors WHERE name = ?", (name,)).rowcount > 0)

    def _changed(self, changed: bool) -> bool:
        self.changed = self.changed or changed
        return changed

    def touch(self) -> None:
        self.changed = True

    def add_grant(self, gid: str, label: str, connectors: list[str], expires_at: float) -> None:
        self._run(
            "INSERT INTO grants VALUES (?, ?, ?, ?, ?, NULL)",
            (gid, label, json.dumps(sorted(connectors)), expires_at, time.time()),
        )

    def revoke_grant(self, gid: str) -> bool:
        cursor = self._run(
            "UPDATE grants SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), gid)
        )
        return self._changed(cursor.rowcount > 0)

    def add_admin_token(
        self, tid: str, token_hash: str, workspace: str | None, read_only: bool, label: str
    ) -> None:
        self._run(
            f"INSERT INTO admin_tokens ({', '.join(TOKEN_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (tid, token_hash, workspace, read_only, label, time.time()),
        )

    def revoke_admin_token(self, tid: str) -> bool:
        cursor = self._run(
            "UPDATE admin_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), tid)
        )
        return self._changed(cursor.rowcount > 0)

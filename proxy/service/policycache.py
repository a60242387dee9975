"""The last policy a proxy loaded from a shared store, kept in EGRESS_HOME to start without it.

A proxy whose database is down at start would otherwise refuse to run. The
cache holds what the store held (connector specs, the secrets still sealed
with the master key, revoked grant ids), never an opened secret; it is
written only for database stores (a local SQLite file is its own cache).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.errors import ConfigError
from proxy.service.files import write_atomic
from proxy.service.home import Home
from proxy.store import StoredConnector, sqlite_path

CACHE_FILE = "policy-cache.json"
FORMAT = 1


@dataclass(frozen=True)
class Snapshot:
    generation: int
    connectors: list[StoredConnector]
    revoked: frozenset[str]
    saved_at: float
    store: str  # where it came from, password masked


def path(home: Home) -> Path:
    return home.root / CACHE_FILE


def wanted(home: Home) -> bool:
    """Only a store on another machine needs a local copy of its policy."""
    return sqlite_path(home.database_url) is None


def save(home: Home, snapshot: Snapshot) -> None:
    doc = {
        "format": FORMAT,
        "generation": snapshot.generation,
        "saved_at": snapshot.saved_at,
        "store": snapshot.store,
        "connectors": [
            {
                "name": c.name,
                "spec": c.spec,
                "sealed": base64.b64encode(c.sealed).decode("ascii"),
                "created_at": c.created_at,
                "updated_at": c.updated_at,
            }
            for c in snapshot.connectors
        ],
        "revoked_grants": sorted(snapshot.revoked),
    }
    write_atomic(path(home), json.dumps(doc, indent=1, sort_keys=True).encode(), private=True)


def snapshot(
    generation: int, connectors: list[StoredConnector], revoked: frozenset[str], store: str
) -> Snapshot:
    return Snapshot(generation, connectors, revoked, time.time(), store)


def load(home: Home) -> Snapshot | None:
    """The cached policy, None if there is none; ConfigError if it is damaged."""
    where = path(home)
    try:
        doc: Any = json.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: unreadable policy cache ({e})") from None
    try:
        if doc["format"] != FORMAT:
            raise ConfigError(f"{where}: policy cache format {doc['format']!r} is not {FORMAT}")
        connectors = [
            StoredConnector(
                str(c["name"]),
                dict(c["spec"]),
                base64.b64decode(c["sealed"], validate=True),
                float(c["created_at"]),
                float(c["updated_at"]),
            )
            for c in doc["connectors"]
        ]
        return Snapshot(
            int(doc["generation"]),
            connectors,
            frozenset(str(g) for g in doc["revoked_grants"]),
            float(doc["saved_at"]),
            str(doc["store"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: damaged policy cache ({type(e).__name__}: {e})") from None


def describe(snapshot: Snapshot) -> str:
    saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot.saved_at))
    return f"{len(snapshot.connectors)} connector(s), generation {snapshot.generation}, saved {saved}"

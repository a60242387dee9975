"""Where connectors, grants and monitoring live: ``open_store(url)`` picks the backend."""

from __future__ import annotations

import time
from pathlib import Path

from proxy.errors import ConfigError
from proxy.stats import Clock
from proxy.store.base import Monitoring, Store, StoredConnector, Transaction

__all__ = ["Monitoring", "Store", "StoredConnector", "Transaction", "open_store", "sqlite_path"]

SQLITE_PREFIX = "sqlite:///"


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL; None for other schemes."""
    return Path(url.removeprefix(SQLITE_PREFIX)) if url.startswith(SQLITE_PREFIX) else None


def open_store(url: str, *, create: bool = False, clock: Clock = time.time) -> Store:
    """Open (or with ``create``, create) the store at ``url``; ConfigError if unusable."""
    path = sqlite_path(url)
    if path is None:
        scheme = url.split(":", 1)[0]
        raise ConfigError(f"EGRESS_DATABASE_URL={scheme}:...: only sqlite:///PATH is supported")
    from proxy.store.sqlite import SqliteStore

    return SqliteStore(path, create=create, clock=clock)

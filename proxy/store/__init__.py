"""Where connectors, grants and monitoring live: ``open_store(url)`` picks the backend."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from proxy.errors import ConfigError
from proxy.stats import Clock
from proxy.store.base import Monitoring, Store, StoredConnector, Transaction

__all__ = [
    "Monitoring",
    "Store",
    "StoredConnector",
    "Transaction",
    "is_postgres",
    "mask_url",
    "open_store",
    "sqlite_path",
]

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres(url: str) -> bool:
    return url.split(":", 1)[0].lower() in POSTGRES_SCHEMES


def mask_url(url: str) -> str:
    """The URL with any password (in the authority or a ``password=`` parameter) shown as ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return url.split(":", 1)[0] + "://***"


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL; None for other schemes."""
    return Path(url.removeprefix(SQLITE_PREFIX)) if url.startswith(SQLITE_PREFIX) else None


def open_store(
    url: str, *, create: bool = False, clock: Clock = time.time, lazy: bool = False, shared: bool = False
) -> Store:
    """Open (or with ``create``, create) the store at ``url``; ConfigError if unusable.

    ``lazy`` (proxies) opens a database store without reaching it: operations
    raise StoreUnavailable until it answers, so a proxy can start from its
    policy cache and catch up later. ``shared`` stores of one URL in a process
    use one database connection between them (a proxy's reload watcher and
    statistics writer). SQLite is a local file and ignores both.
    """
    if is_postgres(url):
        try:
            from proxy.store.postgres import PostgresStore  # psycopg only when asked for
        except ImportError as e:
            raise ConfigError(str(e)) from None
        return PostgresStore(url, create=create, clock=clock, lazy=lazy, shared=shared)
    path = sqlite_path(url)
    if path is None:
        scheme = url.split(":", 1)[0]
        raise ConfigError(
            f"EGRESS_DATABASE_URL={scheme}:...: use sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
        )
    from proxy.store.sqlite import SqliteStore

    return SqliteStore(path, create=create, clock=clock)

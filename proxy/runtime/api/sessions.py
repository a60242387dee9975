"""Dashboard sessions: an HttpOnly cookie naming a session kept in the admin process's memory.

``POST /api/v1/session`` with an admin token (Bearer) opens a session: a random
id (the cookie, which page scripts cannot read) and a random CSRF token (in the
answer, kept by the page in memory only). A session stands for its admin token:
it has the token's workspace and access, and it ends when the token is revoked
(checked on every request), on logout, after ``IDLE_SECONDS`` without a request,
or ``MAX_AGE_SECONDS`` after login, whichever comes first. A restart of the
admin listener ends every session.

A request that rides on the cookie must come from the dashboard's own origin
(``Origin`` and ``Sec-Fetch-Site``, where the browser sends them) and, unless it
only reads (GET, HEAD), carry the session's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from proxy.service.admin_tokens import Principal

COOKIE = "egress_session"
CSRF_HEADER = "x-csrf-token"
IDLE_SECONDS = 3600.0
MAX_AGE_SECONDS = 12 * 3600.0
MAX_SESSIONS = 10_000  # at once; the oldest is dropped past it
READS = frozenset({"GET", "HEAD"})
MAX_ID_CHARS = 128


@dataclass
class Session:
    id: str
    csrf: str
    principal: Principal
    created: float
    seen: float

    @property
    def expires_at(self) -> float:
        """When it ends at the latest (login plus the maximum age)."""
        return self.created + MAX_AGE_SECONDS

    def alive(self, now: float) -> bool:
        return now < self.expires_at and now < self.seen + IDLE_SECONDS

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())


class Sessions:
    """The live sessions of one admin listener (thread-safe: handlers run in worker threads)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._live: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, principal: Principal) -> Session:
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), principal, now, now)
        with self._lock:
            for sid in [sid for sid, s in self._live.items() if not s.alive(now)]:
                del self._live[sid]
            while len(self._live) >= MAX_SESSIONS:
                self._live.pop(next(iter(self._live)))  # the oldest login
            self._live[session.id] = session
        return session

    def get(self, sid: str, touch: bool = True) -> Session | None:
        """The live session ``sid`` names (its idle clock restarted), or None."""
        if len(sid) > MAX_ID_CHARS:
            return None
        now = self.clock()
        with self._lock:
            session = self._live.get(sid)
            if session is None:
                return None
            if not session.alive(now):
                del self._live[sid]
                return None
            if touch:
                session.seen = now
            return session

    def close(self, sid: str) -> None:
        with self._lock:
            self._live.pop(sid, None)

    def close_token(self, token_id: str) -> None:
        """End every session of an admin token (it was revoked)."""
        with self._lock:
            for sid in [sid for sid, s in self._live.items() if s.principal.token_id == token_id]:
                del self._live[sid]

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)


def cross_site(host: str | None, origin: str | None, fetch_site: str | None) -> str | None:
    """Why a cookie-borne request is not from the dashboard's own origin, or None if it is (or the
    browser said nothing). ``Origin`` must name the ``Host`` the request was sent to: the scheme is
    not compared, since a TLS-terminating reverse proxy forwards https as http."""
    if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
        return f"a {fetch_site.strip()} request (Sec-Fetch-Site) cannot use the dashboard session"
    if origin is None:
        return None
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not host or parts.netloc.lower() != host.strip().lower():
        return "a request from another origin cannot use the dashboard session"
    return None


def cookie_header(value: str, secure: bool, clear: bool = False) -> str:
    """The Set-Cookie value: session-only (no Expires), whole site, never readable by scripts."""
    attrs = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if clear:
        attrs.insert(2, "Max-Age=0")
    if secure:
        attrs.append("Secure")
    return "; ".join(attrs)

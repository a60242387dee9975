"""The admin listener as one Starlette app: /healthz, /metrics, the JSON API and the dashboard.

Every API request opens the store once (in a worker thread: SQLite blocks),
authenticates (a Bearer admin token, or the dashboard's session cookie:
``sessions.py``), checks the workspace and write access, runs one operation of
``routes.operations`` and closes the store. Errors are one JSON shape; every
response carries the security headers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.connectors import check_workspace
from proxy.errors import ConfigError, Conflict, EgressError, NotFound
from proxy.runtime.api import openapi
from proxy.runtime.api.auth import FailureLimiter, bearer
from proxy.runtime.api.routes import API, Call, Operation, operations
from proxy.runtime.api.sessions import (
    COOKIE,
    CSRF_HEADER,
    IDLE_SECONDS,
    READS,
    Session,
    Sessions,
    cookie_header,
    cross_site,
)
from proxy.service.admin_tokens import AdminTokens, Principal
from proxy.service.home import Home

logger = logging.getLogger("egress.admin")
STATIC_DIR = Path(__file__).resolve().parent.parent / "dashboard" / "static"
MAX_BODY = 256 * 1024
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
NO_CSRF = "a change made with the dashboard session needs its CSRF token (X-CSRF-Token)"
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


@dataclass(frozen=True)
class AdminConfig:
    home: Home
    metrics: Callable[[], bytes]
    healthy: Callable[[], bool]
    metrics_token: bool = False  # --admin-metrics-token: /metrics needs an all-workspace token
    static_dir: Path | None = STATIC_DIR


class _Refusal(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


def error(status: int, word: str, detail: str, field: str | None = None, **headers: str) -> JSONResponse:
    body: dict[str, Any] = {"error": word, "detail": detail}
    if status == 400:
        body["field"] = field or "body"
    return JSONResponse(body, status, headers=headers or None)


def _unauthorized(detail: str) -> _Refusal:
    return _Refusal(401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"})


class SecurityHeaders:
    """Adds the headers to every response, the router's own 404/405 and static files included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"] == "/" or scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"cache-control"]
                extra = [] if static else [(b"cache-control", b"no-store")]
                message["headers"] = headers + SECURITY_HEADERS + extra
            await send(message)

        await self.app(scope, receive, with_headers)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _session_ended(request: Request, detail: str) -> _Refusal:
    refusal = _unauthorized(detail)
    refusal.headers["Set-Cookie"] = cookie_header("", _secure(request), clear=True)
    return refusal


class AdminApp:
    def __init__(
        self, config: AdminConfig, limiter: FailureLimiter | None = None, sessions: Sessions | None = None
    ) -> None:
        self.config = config
        self.limiter = limiter or FailureLimiter()
        self.sessions = Sessions() if sessions is None else sessions
        self.operations = operations(self._openapi)
        self.document = openapi.document(self.operations)

    def _openapi(self, call: Call) -> tuple[int, Any]:
        return 200, self.document

    # ---- authentication

    def _client(self, request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def _not_limited(self, request: Request) -> None:
        wait = self.limiter.retry_after(self._client(request))
        if wait is not None:
            raise _Refusal(429, "too_many_requests", "too many failed logins", {"Retry-After": str(wait)})

    async def _principal(self, request: Request) -> Principal:
        """Who asks: the Bearer token if there is an Authorization header, else the session cookie."""
        self._not_limited(request)
        header = request.headers.get("authorization")
        sid = request.cookies.get(COOKIE)
        if header is None and sid is not None:
            return (await self._from_session(request, sid))[0]
        client = self._client(request)
        token = bearer(header)
        if token is None:
            raise _unauthorized("an admin token is required: Authorization: Bearer TOKEN")
        principal = await run_in_threadpool(self._authenticate, token)
        if principal is None:
            self.limiter.fail(client)
            logger.warning(
                "admin API: refused a token from %s (%s %s)", client, request.method, request.url.path
            )
            raise _unauthorized("the token is not valid (unknown or revoked)")
        return principal

    def _authenticate(self, token: str) -> Principal | None:
        with AdminTokens(self.config.home) as tokens:
            return tokens.authenticate(token)

    def _active(self, token_id: str) -> Principal | None:
        with AdminTokens(self.config.home) as tokens:
            return tokens.active(token_id)

    async def _from_session(self, request: Request, sid: str) -> tuple[Principal, Session]:
        """The principal of a live session, its token still valid, asked from the dashboard's
        origin, with the CSRF token if it changes anything. A revoked token ends its sessions."""
        session = self.sessions.get(sid)
        if session is None:
            raise _session_ended(request, "the dashboard session has ended (logged out or expired): log in")
        token_id = session.principal.token_id
        principal = await run_in_threadpool(self._active, token_id)
        if principal is None:
            self.sessions.close_token(token_id)
            raise _session_ended(request, "the admin token of this session was revoked: log in again")
        self._same_origin(request, session)
        return principal, session

    def _same_origin(self, request: Request, session: Session | None) -> None:
        """Refuse (403) a session request from another origin, or a change without the CSRF token."""
        headers = request.headers
        why = cross_site(headers.get("host"), headers.get("origin"), headers.get("sec-fetch-site"))
        if why is None and session is not None and request.method not in READS:
            why = None if session.csrf_matches(headers.get(CSRF_HEADER)) else NO_CSRF
        if why is not None:
            logger.warning(
                "admin API: refused a session request from %s (%s %s): %s",
                self._client(request), request.method, request.url.path, why,
            )  # fmt: skip
            raise _Refusal(403, "forbidden", why)

    # ---- the dashboard's session: log in, describe, log out

    def _session_doc(self, principal: Principal, session: Session) -> dict[str, Any]:
        return {
            "workspace": principal.workspace,
            "read_only": principal.read_only,
            "csrf_token": session.csrf,
            "expires_at": session.expires_at,
            "idle_timeout": IDLE_SECONDS,
        }

    async def login(self, request: Request) -> Response:
        """An admin token (Bearer, never a cookie) for a session cookie and its CSRF token."""
        try:
            self._same_origin(request, None)
            if request.headers.get("authorization") is None:
                self._not_limited(request)
                raise _unauthorized("log in with an admin token: Authorization: Bearer TOKEN")
            principal = await self._principal(request)
        except _Refusal as r:
            return error(r.status, r.error, r.detail, **r.headers)
        previous = request.cookies.get(COOKIE)
        if previous is not None:
            self.sessions.close(previous)
        session = self.sessions.open(principal)
        cookie = cookie_header(session.id, _secure(request))
        return JSONResponse(self._session_doc(principal, session), 201, headers={"Set-Cookie": cookie})

    async def current_session(self, request: Request) -> Response:
        """The session the cookie names (whatever the Authorization header says)."""
        try:
            self._not_limited(request)
            sid = request.cookies.get(COOKIE)
            if sid is None:
                raise _unauthorized("no dashboard session: log in with POST /api/v1/session")
            principal, session = await self._from_session(request, sid)
        except _Refusal as r:
            return error(r.status, r.error, r.detail, **r.headers)
        return JSONResponse(self._session_doc(principal, session))

    async def logout(self, request: Request) -> Response:
        """End the session the cookie names (from its origin, with its CSRF token) and clear the cookie."""
        sid = request.cookies.get(COOKIE)
        session = self.sessions.get(sid, touch=False) if sid is not None else None
        if session is not None:
            try:
                self._same_origin(request, session)
            except _Refusal as r:
                return error(r.status, r.error, r.detail, **r.headers)
            self.sessions.close(session.id)
        cleared = cookie_header("", _secure(request), clear=True)
        return Response(status_code=204, headers={"Set-Cookie": cleared})

    # ---- dispatch

    def endpoint(self, op: Operation) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            try:
                principal = await self._principal(request)
                params = dict(request.path_params)
                if "ws" in params and not principal.sees(params["ws"]):
                    raise _Refusal(404, "not_found", f"no workspace named {params['ws']!r}")
                if op.write and principal.read_only:
                    raise _Refusal(403, "forbidden", "this token is read-only")
                body = await self._body(request) if op.body else None
                status, doc = await run_in_threadpool(self._run, op, principal, params, request, body)
            except _Refusal as r:
                return error(r.status, r.error, r.detail, **r.headers)
            except NotFound as e:
                return error(404, "not_found", str(e))
            except Conflict as e:
                return error(409, "conflict", str(e))
            except ConfigError as e:
                return error(400, "bad_request", str(e), e.field)
            except EgressError as e:
                logger.error("admin API: %s %s failed: %s", request.method, request.url.path, e)
                return error(500, "internal", str(e))
            if status == 204:
                return Response(status_code=204)
            return JSONResponse(doc, status)

        handle.__name__ = op.operation_id
        return handle

    async def _body(self, request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise ConfigError(f"the body is larger than {MAX_BODY} bytes", field="body")
        try:
            return json.loads(raw)
        except ValueError:
            raise ConfigError("the body must be JSON", field="body") from None

    def _run(
        self, op: Operation, principal: Principal, params: dict[str, str], request: Request, body: Any
    ) -> tuple[int, Any]:
        home = self.config.home
        if "ws" in params:
            home = home.in_workspace(check_workspace(params["ws"], "workspace"))
        store = home.store()
        try:
            return op.handler(Call(principal, home, store, params, dict(request.query_params), body))
        finally:
            store.close()

    # ---- the open endpoints

    async def healthz(self, request: Request) -> Response:
        ok = self.config.healthy()
        return Response(b"ok\n" if ok else b"unhealthy\n", 200 if ok else 503, media_type="text/plain")

    async def metrics(self, request: Request) -> Response:
        if self.config.metrics_token:
            try:
                principal = await self._principal(request)
            except _Refusal as r:
                return error(r.status, r.error, r.detail, **r.headers)
            if principal.workspace is not None:
                return error(403, "forbidden", "metrics cover every workspace: use an all-workspace token")
        from prometheus_client import CONTENT_TYPE_LATEST

        body = await run_in_threadpool(self.config.metrics)
        return Response(body, headers={"content-type": CONTENT_TYPE_LATEST})

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route(
                f"{API}/session",
                _by_method({"POST": self.login, "GET": self.current_session, "DELETE": self.logout}),
                methods=["POST", "GET", "DELETE"],
            ),
        ]
        by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
        for op in self.operations:
            by_path.setdefault(op.path, {})[op.method] = self.endpoint(op)
        # One route per path, so a 405 lists every method the path has (Allow).
        routes += [
            Route(path, _by_method(handlers), methods=list(handlers)) for path, handlers in by_path.items()
        ]
        static = self.config.static_dir
        if static is not None and (static / "index.html").is_file():
            index = static / "index.html"

            async def dashboard(request: Request) -> Response:
                return FileResponse(index, media_type="text/html")

            routes += [
                Route("/", dashboard, methods=["GET"]),
                Mount("/static", StaticFiles(directory=static)),
            ]
        return routes


def _by_method(
    handlers: dict[str, Callable[[Request], Awaitable[Response]]],
) -> Callable[[Request], Awaitable[Response]]:
    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return dispatch


def create_app(
    config: AdminConfig, limiter: FailureLimiter | None = None, sessions: Sessions | None = None
) -> ASGIApp:
    admin = AdminApp(config, limiter, sessions)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        word = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return error(exc.status_code, word, str(exc.detail), **(exc.headers or {}))

    async def crash(request: Request, exc: Exception) -> Response:
        logger.error("admin API: %s %s crashed: %s", request.method, request.url.path, type(exc).__name__)
        return error(500, "internal", "internal error (see the proxy's log)")

    app = Starlette(routes=admin.routes(), exception_handlers={HTTPException: http_error, Exception: crash})
    return SecurityHeaders(app)

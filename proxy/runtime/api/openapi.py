"""The OpenAPI 3.1 document, built from the operation table so it cannot miss a path."""

from __future__ import annotations

from typing import Any

from proxy import __version__
from proxy.runtime.api.routes import API, Operation
from proxy.runtime.api.sessions import COOKIE, IDLE_SECONDS, MAX_AGE_SECONDS

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}
_STRS = {"type": "array", "items": _STR}
_OBJ = {"type": "object"}


def _ref(name: str) -> dict[str, Any]:
    if name.startswith("["):
        return {"type": "array", "items": _ref(name[1:-1])}
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _array(items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "array", **extra, "items": items}


def _object(
    properties: dict[str, Any],
    required: list[str] | None = None,
    description: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An object schema with these ``properties``, of which it must have ``required``;
    ``extra`` adds keywords (``additionalProperties``)."""
    out: dict[str, Any] = {"type": "object"}
    if description is not None:
        out["description"] = description
    if required is not None:
        out["required"] = required
    return {**out, **extra, "properties": properties}


def _record(properties: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    """An object schema that must have every one of its ``properties``."""
    return _object(properties, list(properties), description)


_COUNTS = _object(
    {k: _INT for k in ("requests", "rejected", "client_errors", "server_errors", "transport_failures")}
)
_SECRET_VALUE = {"type": "string", "minLength": 1, "description": "Accepted, never returned."}

SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {"error": _STR, "detail": _STR, "field": {**_STR, "description": "The input at fault (400 only)."}},
        ["error", "detail"],
    ),
    "WhoAmI": _record({"workspace": _nullable(_STR), "read_only": _BOOL}),
    "OpenAPI": {"type": "object"},
    "Session": _record(
        {
            "workspace": _nullable(_STR),
            "read_only": _BOOL,
            "csrf_token": _STR,
            "expires_at": {**_NUM, "description": "The latest it ends (login + 12 hours), epoch seconds."},
            "idle_timeout": {**_NUM, "description": "Seconds without a request after which it ends."},
        },
        "A dashboard session: the token's scope and access, and the CSRF token that every "
        "change made with the session cookie sends as X-CSRF-Token.",
    ),
    "Preset": _object(
        {
            "name": _STR,
            "patterns": _STRS,
            "inject": _OBJ,
            "inject_summary": _STR,
            "fields": _STRS,
            "strip_headers": _STRS,
            "placeholders": {"type": "object", "additionalProperties": _STR},
        },
        ["name", "patterns", "inject", "fields", "strip_headers", "placeholders"],
    ),
    "Workspace": _record({"name": _STR}),
    "Health": _object(
        {
            "state": {"enum": ["ok", "unused", "credential-rejected", "failing"]},
            "alert": _BOOL,
            "last_1h": _COUNTS,
            "last_24h": _COUNTS,
            "rejected_share_1h": _NUM,
            "rejected_share_24h": _NUM,
        },
        ["state", "alert"],
    ),
    "Connector": _record(
        {
            "name": _STR,
            "workspace": _STR,
            "preset": _nullable(_STR),
            "patterns": _STRS,
            "methods": _nullable(_STRS),
            "inject": _OBJ,
            "inject_summary": _STR,
            "strip_headers": _STRS,
            "fields": _STRS,
            "secret_set": _BOOL,
            "secret_updated_at": _NUM,
            "created_at": _NUM,
            "updated_at": _NUM,
            "requests_24h": _INT,
            "errors_24h": _INT,
            "health": _ref("Health"),
        },
        "A connector. Never carries a secret value: only field names and when it changed.",
    ),
    "SecretIn": {
        "description": 'One value (the field "secret") or named fields; replaces the whole credential.',
        "oneOf": [
            _record({"value": _SECRET_VALUE}) | {"additionalProperties": False},
            _record({"fields": {"type": "object", "minProperties": 1, "additionalProperties": _SECRET_VALUE}})
            | {"additionalProperties": False},
        ],
    },
    "ConnectorIn": _object(
        {
            "name": {**_STR, "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
            "preset": {**_STR, "description": "Fills patterns, inject and strip_headers (see /presets)."},
            "patterns": _STRS,
            "inject": {
                **_OBJ,
                "description": "One placement: header, query, headers, basic, oauth2, aws_sigv4.",
            },
            "methods": _nullable(_STRS),
            "strip_headers": _STRS,
            "secret": _ref("SecretIn"),
        },
        ["name", "secret"],
        additionalProperties=False,
    ),
    "ConnectorPatch": _object(
        {
            "preset": _nullable(_STR),
            "patterns": _STRS,
            "inject": _OBJ,
            "methods": _nullable(_STRS),
            "strip_headers": _nullable(_STRS),
            "secret": _ref("SecretIn"),
        },
        description="Keys to change; absent keys keep their value. A secret's fields merge into the stored ones.",
        additionalProperties=False,
    ),
    "Series": _record(
        {"hours": _array(_record({"hour": _INT, "requests": _INT, "errors": _INT}), minItems=24, maxItems=24)}
    ),
    "ConnectorStats": _object(
        {
            "connector": _STR,
            "workspace": _STR,
            "requests_24h": _INT,
            "errors_24h": _INT,
            "error_rate": _NUM,
            "errors_1h": _INT,
            "alert": _BOOL,
            "last_error": _nullable(_OBJ),
            "health": _ref("Health"),
        },
        ["connector", "workspace", "requests_24h", "errors_24h", "error_rate", "alert", "health"],
    ),
    "Stats": _record(
        {
            "window_hours": _INT,
            "connectors": _ref("[ConnectorStats]"),
            "blocked": _array(_record({"host": _STR, "reason": _STR, "count": _INT})),
        }
    ),
    "NodeStats": _record(
        {
            "window_hours": _INT,
            "nodes": _array(
                _record(
                    {
                        "node": _STR,
                        "requests_24h": _INT,
                        "errors_24h": _INT,
                        "last_seen": _NUM,
                        "connectors": _array(
                            _record({"connector": _STR, "requests_24h": _INT, "errors_24h": _INT})
                        ),
                    }
                )
            ),
        }
    ),
    "Event": _object(
        {
            "kind": {"enum": ["error", "blocked"]},
            "ts": _NUM,
            "method": _STR,
            "host": _STR,
            "path": _STR,
            "request_id": _STR,
            "connector": _STR,
            "status": _INT,
            "failure": _STR,
            "reason": _STR,
            "grant_label": _STR,
            "workspace": _STR,
            "near_miss": _ref("NearMiss"),
            "node": _STR,
            "id": _INT,
        },
        ["kind", "ts", "method", "host", "path", "workspace"],
        "An error or blocked request; paths never carry a query string.",
    ),
    "NearMiss": _object(
        {
            "connector": {
                "type": "string",
                "description": "The connector's key (`ws/name`; `name` in default)",
            },
            "differs": {
                "type": "string",
                "examples": [
                    "scheme",
                    "host",
                    "port",
                    "path",
                    "method",
                    "not-granted",
                    "other-workspace",
                    "ambiguous-with",
                ],
            },
            "detail": _STR,
            "pattern": {"type": "string", "description": "The nearest pattern, canonical"},
            "also": {**_STRS, "description": "Further words that differ"},
            "depth": {
                "type": "integer",
                "description": "For `host`: labels the pattern wants more (1) or fewer (-1)",
            },
            "others": {**_STRS, "description": "For `ambiguous-with`: the connectors tied with `connector`"},
        },
        ["differs", "detail"],
        "On a blocked row: the connector that came closest and what differed. "
        "Readers keep a `differs` word they do not know. For `other-workspace` a token that does "
        "not see that workspace gets neither `connector` nor `pattern`.",
    ),
    "Grant": _record(
        {
            "id": _STR,
            "label": _STR,
            "connectors": _STRS,
            "expires_at": _NUM,
            "created_at": _NUM,
            "revoked_at": _nullable(_NUM),
            "workspace": _STR,
            "state": {"enum": ["active", "expired", "revoked"]},
        }
    ),
    "GrantIn": _object(
        {
            "connectors": {**_STRS, "minItems": 1},
            "ttl": {
                "anyOf": [_STR, {"type": "integer", "minimum": 1}],
                "description": "A duration (15m, 1h, 2d) or seconds; default 15m.",
            },
            "label": {**_STR, "maxLength": 200},
        },
        ["connectors"],
        additionalProperties=False,
    ),
    "MintedGrant": _object(
        {
            "id": _STR,
            "token": {**_STR, "description": "The grant token, shown only here."},
            "workspace": _STR,
            "connectors": _STRS,
            "label": _STR,
            "expires_at": _INT,
        },
        ["id", "token", "connectors", "label", "expires_at"],
    ),
}

_ERRORS = {
    400: "Invalid input: `field` names it",
    401: "No token, or not a valid one",
    403: "A read-only token on a write; with the session cookie, a request from another origin "
    "or a change without X-CSRF-Token",
    404: "Unknown, or in a workspace this token cannot see",
    409: "The name exists",
    429: "Too many failed logins from this address: see Retry-After",
}
_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}
_PARAM_SCHEMAS = {"ws": _NAME, "name": _NAME, "id": _STR}
_PARAMS = {
    "ws": "The workspace (a workspace token sees only its own).",
    "name": "The connector's name within the workspace.",
    "id": "The grant's id.",
}


def _error(code: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": _ERRORS[code],
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if code == 401:
        out["headers"] = {"WWW-Authenticate": {"schema": _STR}}
    if code == 429:
        out["headers"] = {"Retry-After": {"schema": _INT}}
    return out


def _operation(op: Operation) -> dict[str, Any]:
    params = [p for p in ("ws", "name", "id") if "{" + p + "}" in op.path]
    doc: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    doc["parameters"] = [
        {"name": p, "in": "path", "required": True, "description": _PARAMS[p], "schema": _PARAM_SCHEMAS[p]}
        for p in params
    ] + [{"name": q.name, "in": "query", "description": q.description, "schema": q.schema} for q in op.query]
    if not doc["parameters"]:
        del doc["parameters"]
    if op.body:
        doc["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(op.body)}}}
    ok: dict[str, Any] = {"description": "Done" if op.response is None else "OK"}
    if op.response is not None:
        ok["content"] = {"application/json": {"schema": _ref(op.response)}}
    codes = [401, 403, 429]
    if op.body or op.query or params:
        codes.append(400)
    if params:
        codes.append(404)
    if op.conflict:
        codes.append(409)
    doc["responses"] = {str(op.status): ok, **{str(c): _error(c) for c in sorted(codes)}}
    return doc


def _session_paths() -> dict[str, Any]:
    """The dashboard's login, session and logout (served by app.py: they set the cookie)."""
    session = {"application/json": {"schema": _ref("Session")}}
    cookie = {
        "Set-Cookie": {
            "description": f"{COOKIE}=...; Path=/; HttpOnly; SameSite=Strict (Secure over https)",
            "schema": _STR,
        }
    }
    refused = {
        "description": "From another origin (Origin, Sec-Fetch-Site), or without the session's X-CSRF-Token",
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    return {
        f"{API}/session": {
            "post": {
                "operationId": "login",
                "summary": "Log in: an admin token (Bearer) for a session cookie and its CSRF token",
                "security": [{"bearer": []}],
                "responses": {
                    "201": {"description": "Logged in", "headers": cookie, "content": session},
                    "401": _error(401),
                    "403": refused,
                    "429": _error(429),
                },
            },
            "get": {
                "operationId": "get_session",
                "summary": "The session the cookie names (the dashboard asks on load)",
                "security": [{"session": []}],
                "responses": {
                    "200": {"description": "OK", "content": session},
                    "401": _error(401),
                    "403": refused,
                    "429": _error(429),
                },
            },
            "delete": {
                "operationId": "logout",
                "summary": "Log out: the session ends on the server and the cookie is cleared",
                "security": [{"session": []}, {}],
                "responses": {"204": {"description": "Logged out", "headers": cookie}, "403": refused},
            },
        }
    }


def document(operations: list[Operation]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    open_paths = {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: every worker is running",
                "security": [],
                "responses": {
                    "200": {"description": "ok", "content": {"text/plain": {"schema": _STR}}},
                    "503": {"description": "unhealthy", "content": {"text/plain": {"schema": _STR}}},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics summed over workers (a token only with --admin-metrics-token)",
                "security": [{"bearer": []}, {"session": []}, {}],
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": _STR}}},
                    "401": _error(401),
                    "403": {
                        "description": "A workspace token: metrics cover every workspace",
                        "content": {"application/json": {"schema": _ref("Error")}},
                    },
                    "429": _error(429),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "egress-proxy admin API",
            "version": __version__,
            "description": "Connectors, credentials, grants and monitoring of an egress-proxy. "
            "Secrets are accepted, never returned.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": {**_session_paths(), **paths, **open_paths},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An admin token from `egress admin token create` (or EGRESS_ADMIN_TOKEN).",
                },
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": COOKIE,
                    "description": "The dashboard's session, from POST /api/v1/session: it ends on logout, "
                    f"after {IDLE_SECONDS / 3600:g} h without a request, {MAX_AGE_SECONDS / 3600:g} h after "
                    "login, or when its admin token is revoked. Only from the dashboard's origin; a change "
                    "(not GET) also sends the session's csrf_token as X-CSRF-Token.",
                },
            },
        },
    }

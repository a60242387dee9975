"""The admin API's operations: one table that both the router and the OpenAPI document read.

Each handler is a plain function over a ``Call`` (who asks, the workspace's
home, one store opened for this request, the parsed input) that calls the
service layer and returns ``(status, body)``. Validation is the service's:
its ``ConfigError`` (with the field at fault) becomes a 400 in ``app.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from proxy.connectors import Connector, split_key
from proxy.durations import parse_duration
from proxy.errors import ConfigError
from proxy.health import Health
from proxy.service.admin_tokens import Principal
from proxy.service.connectors import Connectors, describe, known_workspaces, presets
from proxy.service.grants import Grants
from proxy.service.home import Home
from proxy.service.monitoring import Monitoring
from proxy.stats import Event
from proxy.store import Store, StoredConnector

API = "/api/v1"
WS = f"{API}/workspaces/{{ws}}"
MAX_LIMIT = 1000
MAX_GRANT_LABEL = 200
GRANT_KEYS = ("connectors", "ttl", "label")


@dataclass(frozen=True)
class Call:
    principal: Principal
    home: Home  # acting on the path's workspace, if the path has one
    store: Store
    params: Mapping[str, str]
    query: Mapping[str, str]
    body: Any = None


Handler = Callable[[Call], tuple[int, Any]]


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    response: str | None  # a component schema name (``[Name]`` for a list); None: no body
    status: int = 200
    write: bool = False
    body: str | None = None  # request body: a component schema name
    query: tuple[Query, ...] = ()
    conflict: bool = False  # may answer 409

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.strip("_")


# ---- connectors


def _connector_doc(c: Connector, stored: StoredConnector, health: Health | None) -> dict[str, Any]:
    doc = describe(c, stored)
    if health is None:
        return {**doc, "requests_24h": 0, "errors_24h": 0, "health": {"state": "unused", "alert": False}}
    day = health.last_24h
    errors = day.rejected + day.client_errors + day.server_errors + day.transport_failures
    return {
        **doc,
        "requests_24h": day.requests,
        "errors_24h": errors,
        "health": {**health.to_dict(), "alert": health.alert},
    }


def _one(call: Call, pair: tuple[Connector, StoredConnector]) -> dict[str, Any]:
    connector, stored = pair
    health = Monitoring(call.home, call.store).health(connector.name).get(connector.key)
    return _connector_doc(connector, stored, health)


def list_connectors(call: Call) -> tuple[int, Any]:
    pairs = Connectors(call.home, call.store).all()
    health = Monitoring(call.home, call.store).health()
    return 200, [_connector_doc(c, s, health.get(c.key)) for c, s in pairs]


def create_connector(call: Call) -> tuple[int, Any]:
    return 201, _one(call, Connectors(call.home, call.store).create(call.body))


def get_connector(call: Call) -> tuple[int, Any]:
    return 200, _one(call, Connectors(call.home, call.store).get(call.params["name"]))


def update_connector(call: Call) -> tuple[int, Any]:
    return 200, _one(call, Connectors(call.home, call.store).patch(call.params["name"], call.body))


def delete_connector(call: Call) -> tuple[int, Any]:
    Connectors(call.home, call.store).remove(call.params["name"])
    return 204, None


def replace_secret(call: Call) -> tuple[int, Any]:
    pair = Connectors(call.home, call.store).replace_secret(call.params["name"], call.body)
    return 200, _one(call, pair)


def connector_series(call: Call) -> tuple[int, Any]:
    return 200, {"hours": Monitoring(call.home, call.store).series(call.params["name"])}


# ---- monitoring


def _event(e: Event, principal: Principal) -> dict[str, Any]:
    """An event as the API shows it: a near miss naming a connector of a workspace the token
    does not see says only ``other-workspace`` (what the blocked client was told)."""
    near = e.near_miss
    if near is not None and near.foreign and not principal.sees(split_key(near.connector)[0]):
        e = replace(e, near_miss=near.concealed())
    doc = e.to_dict()
    if e.connector is not None:
        doc["connector"] = split_key(e.connector)[1]
    return doc


def _since(query: Mapping[str, str]) -> float:
    text = query.get("since") or "24h"
    return time.time() - parse_duration(text, "since", field="since")


def _limit(query: Mapping[str, str], default: int = 100) -> int:
    text = query.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ConfigError(f"limit must be a whole number from 1 to {MAX_LIMIT}", field="limit")
    return int(text)


def get_stats(call: Call) -> tuple[int, Any]:
    rows, blocked = Monitoring(call.home, call.store).stats()
    connectors = []
    for r in rows:
        workspace, name = split_key(r.connector)
        doc = asdict(r)
        doc.update(
            connector=name, workspace=workspace, health={**r.health.to_dict(), "alert": r.health.alert}
        )
        connectors.append(doc)
    return 200, {"window_hours": 24, "connectors": connectors, "blocked": blocked}


def node_stats(call: Call) -> tuple[int, Any]:
    nodes = Monitoring(call.home, call.store).nodes(call.query.get("connector") or None)
    return 200, {"window_hours": 24, "nodes": nodes}


def error_log(call: Call) -> tuple[int, Any]:
    events = Monitoring(call.home, call.store).events(
        kind="error", connector=call.query.get("connector") or None, since=_since(call.query),
        limit=_limit(call.query),
    )  # fmt: skip
    return 200, [_event(e, call.principal) for e in events]


def blocked_log(call: Call) -> tuple[int, Any]:
    events = Monitoring(call.home, call.store).events(
        kind="blocked", since=_since(call.query), limit=_limit(call.query)
    )
    return 200, [_event(e, call.principal) for e in events]


# ---- grants


def _grant_row(row: Mapping[str, Any], now: float) -> dict[str, Any]:
    state = "revoked" if row["revoked_at"] else "expired" if row["expires_at"] <= now else "active"
    return {**row, "state": state}


def list_grants(call: Call) -> tuple[int, Any]:
    now = time.time()
    return 200, [_grant_row(g, now) for g in Grants(call.home, call.store).list()]


def create_grant(call: Call) -> tuple[int, Any]:
    body = call.body
    if not isinstance(body, Mapping):
        raise ConfigError("the body must be a JSON object", field="body")
    unknown = sorted(str(k) for k in body if k not in GRANT_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}", field=unknown[0])
    names = body.get("connectors")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError("connectors must be a non-empty list of connector names", field="connectors")
    ttl = body.get("ttl", "15m")
    if isinstance(ttl, int) and not isinstance(ttl, bool):
        ttl = str(ttl)
    label = body.get("label", "")
    if not isinstance(label, str) or len(label) > MAX_GRANT_LABEL or not label.isprintable():
        raise ConfigError(f"label must be at most {MAX_GRANT_LABEL} printable characters", field="label")
    seconds = parse_duration(ttl, "ttl", field="ttl")
    token, grant = Grants(call.home, call.store).mint(names, seconds, label)
    return 201, {
        "id": grant.id,
        "token": token,
        "workspace": call.home.workspace,
        "connectors": sorted(split_key(k)[1] for k in grant.connectors),
        "label": grant.label,
        "expires_at": grant.expires_at,
    }


def revoke_grant(call: Call) -> tuple[int, Any]:
    Grants(call.home, call.store).revoke(call.params["id"])
    return 204, None


# ---- the rest


def whoami(call: Call) -> tuple[int, Any]:
    return 200, {"workspace": call.principal.workspace, "read_only": call.principal.read_only}


def list_presets(call: Call) -> tuple[int, Any]:
    return 200, presets()


def list_workspaces(call: Call) -> tuple[int, Any]:
    mine = call.principal.workspace
    names = [mine] if mine is not None else known_workspaces(call.store)
    return 200, [{"name": n} for n in names]


_SINCE = Query(
    "since", "How far back: a duration such as 15m, 1h, 2d (default 24h, the window).", {"type": "string"}
)
_LIMIT = Query(
    "limit", f"At most this many rows, newest first (default 100, at most {MAX_LIMIT}).", {"type": "string"}
)
_CONNECTOR = Query("connector", "Only this connector's rows.", {"type": "string"})


def operations(openapi: Handler) -> list[Operation]:
    """Every operation, in the order the OpenAPI document lists them."""
    C = f"{WS}/connectors/{{name}}"
    return [
        Operation("GET", f"{API}/whoami", whoami, "Who the token is: its workspace and access", "WhoAmI"),
        Operation("GET", f"{API}/openapi.json", openapi, "This document", "OpenAPI"),
        Operation("GET", f"{API}/presets", list_presets, "Known APIs a connector can start from", "[Preset]"),
        Operation("GET", f"{API}/workspaces", list_workspaces, "Workspaces the token can see", "[Workspace]"),
        Operation("GET", f"{WS}/connectors", list_connectors, "The workspace's connectors", "[Connector]"),
        Operation(
            "POST",
            f"{WS}/connectors",
            create_connector,
            "Add a connector (secret required)",
            "Connector",
            status=201,
            write=True,
            body="ConnectorIn",
            conflict=True,
        ),
        Operation("GET", C, get_connector, "One connector", "Connector"),
        Operation(
            "PATCH",
            C,
            update_connector,
            "Change some of a connector's keys (a secret's fields merge)",
            "Connector",
            write=True,
            body="ConnectorPatch",
        ),
        Operation("DELETE", C, delete_connector, "Remove a connector", None, status=204, write=True),
        Operation(
            "PUT",
            f"{C}/secret",
            replace_secret,
            "Replace the credential; proxies use it within a second",
            "Connector",
            write=True,
            body="SecretIn",
        ),
        Operation("GET", f"{C}/series", connector_series, "Requests and errors per hour, 24 hours", "Series"),
        Operation("GET", f"{WS}/stats", get_stats, "24-hour totals and health per connector", "Stats"),
        Operation(
            "GET",
            f"{WS}/stats/nodes",
            node_stats,
            "24-hour totals per proxy process (EGRESS_NODE or host name): a fleet's breakdown",
            "NodeStats",
            query=(_CONNECTOR,),
        ),
        Operation(
            "GET",
            f"{WS}/logs/errors",
            error_log,
            "Failed requests, newest first",
            "[Event]",
            query=(_CONNECTOR, _SINCE, _LIMIT),
        ),
        Operation(
            "GET",
            f"{WS}/logs/blocked",
            blocked_log,
            "Blocked requests, newest first",
            "[Event]",
            query=(_SINCE, _LIMIT),
        ),
        Operation("GET", f"{WS}/grants", list_grants, "The workspace's grants", "[Grant]"),
        Operation(
            "POST",
            f"{WS}/grants",
            create_grant,
            "Mint a grant (its token is shown once)",
            "MintedGrant",
            status=201,
            write=True,
            body="GrantIn",
        ),
        Operation(
            "DELETE", f"{WS}/grants/{{id}}", revoke_grant, "Revoke a grant", None, status=204, write=True
        ),
    ]

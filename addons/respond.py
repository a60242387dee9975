"""Blocked answers and the fail-closed wrapper every hook goes through.

mitmproxy logs a hook's exception and carries on with the flow (fail open).
Our hooks never let one escape: the request is answered 502 instead, or the
flow is killed once a response is on its way.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from mitmproxy import http

from proxy.policy import Block, Reason

logger = logging.getLogger("egress")

F = TypeVar("F", bound=Callable[..., Any])


def block(flow: http.HTTPFlow, decision: Block) -> None:
    """Answer ``flow`` with the blocked JSON body; nothing goes upstream."""
    flow.request.stream = False  # a response on a streaming request hangs the client
    body = {
        "error": "blocked",
        "reason": str(decision.reason),
        "detail": decision.detail,
        "request_id": flow.id,
    }
    headers = {"content-type": "application/json", "x-egress-blocked": str(decision.reason)}
    if decision.status == 407:
        headers["proxy-authenticate"] = 'Basic realm="egress-proxy"'
    flow.response = http.Response.make(decision.status, json.dumps(body).encode(), headers)
    flow.metadata["egress.blocked"] = decision.reason
    if logger.isEnabledFor(logging.INFO):
        path = flow.request.path.partition("?")[0] if flow.request.method != "CONNECT" else ""
        logger.info(
            "blocked %s %s %s%s (%s) id=%s",
            decision.reason,
            flow.request.method,
            flow.request.pretty_host if flow.request.method != "CONNECT" else flow.request.host,
            path,
            decision.detail,
            flow.id,
        )


def where_failed(e: BaseException) -> str:
    # Type and location only: an exception's message may quote header values.
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    return f"{type(e).__name__} at {frame.filename}:{frame.lineno}" if frame else type(e).__name__


def _fail(hook: str, flow: http.HTTPFlow, e: BaseException) -> None:
    logger.error("%s hook failed (%s); flow %s refused", hook, where_failed(e), flow.id)
    if hook in ("responseheaders", "response"):
        flow.kill()
    else:
        block(flow, Block(Reason.INTERNAL, "the proxy failed to check this request", 502))


def fail_closed[F: Callable[..., Any]](hook: F) -> F:
    """Wrap a flow hook so any exception refuses the flow instead of passing it."""
    name = hook.__name__
    if inspect.iscoroutinefunction(hook):

        @functools.wraps(hook)
        async def async_wrapper(self: Any, flow: http.HTTPFlow) -> None:
            try:
                await hook(self, flow)
            except Exception as e:
                _fail(name, flow, e)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(hook)
    def wrapper(self: Any, flow: http.HTTPFlow) -> None:
        try:
            hook(self, flow)
        except Exception as e:
            _fail(name, flow, e)

    return wrapper  # type: ignore[return-value]

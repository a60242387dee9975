"""Blocked answers and the fail-closed wrapper every hook goes through.

mitmproxy logs a hook's exception and carries on with the flow (fail open).
Our hooks never let one escape: the request is answered 502 instead, or the
flow is killed once a response is on its way.
"""

from __future__ import annotations

import functools
import inspect
import logging
import traceback
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, http

from addons.state import state
from proxy.context import FlowState
from proxy.policy import Block
from proxy.reasons import Reason, blocked_answer
from proxy.stats import printable

logger = logging.getLogger(__name__)

FAILED = Block(Reason.INTERNAL, "the proxy failed to check this request")


def block(flow: http.HTTPFlow, decision: Block) -> None:
    """Answer ``flow`` with the blocked JSON body; nothing goes upstream."""
    flow.request.stream = False  # a response on a streaming request hangs the client
    s = state(flow)
    near = decision.near_miss.body() if decision.near_miss is not None and explains(flow, s) else None
    status, headers, body = blocked_answer(decision.reason, decision.detail, flow.id, decision.status, near)
    flow.response = http.Response.make(status, body, headers)
    s.blocked = decision
    s.note("blocked", str(decision.reason))
    if logger.isEnabledFor(logging.INFO):
        connect = flow.request.method == "CONNECT"
        logger.info(
            "blocked %s %s %s%s (%s) id=%s",
            decision.reason,
            printable(flow.request.method, 32),
            printable(flow.request.host if connect else flow.request.pretty_host, 300),
            "" if connect else printable(flow.request.path.partition("?")[0], 2048),
            printable(decision.detail, 300),
            flow.id,
        )


def explains(flow: http.HTTPFlow, s: FlowState) -> bool:
    """Whether a blocked client is told the near miss (``--explain-blocks``).

    Connector names and patterns are no secrets, but an operator may not want
    clients to learn what connectors exist; and a client the proxy could not
    identify (a plain http:// request under ``--require-grant``) learns none.
    """
    options = ctx.options
    if not getattr(options, "egress_explain_blocks", True):
        return False
    unidentified = s.tunnel is None and flow.request.method != "CONNECT"
    return not (unidentified and getattr(options, "egress_require_grant", False))


def where_failed(e: BaseException) -> str:
    # Type and location only: an exception's message may quote header values.
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    return f"{type(e).__name__} at {frame.filename}:{frame.lineno}" if frame else type(e).__name__


def _fail(hook: str, flow: http.HTTPFlow, e: BaseException) -> None:
    logger.error("%s hook failed (%s); flow %s refused", hook, where_failed(e), flow.id)
    if hook in ("responseheaders", "response"):
        flow.kill()
    else:
        block(flow, FAILED)


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

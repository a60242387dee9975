"""Per-tunnel and per-request state: what each stage decided, in one typed place.

The gate opens a ``Tunnel`` at CONNECT; every request inside it carries a
``FlowState`` naming its tunnel, route and outcome, plus a short ``trace`` of
what each stage decided, which the access log reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.grants import Grant
from proxy.policy import Allow, Block, Target


@dataclass(frozen=True, slots=True)
class Tunnel:
    """Where one client connection may go: opened at CONNECT, or at the ClientHello
    of an intercepted (transparent) connection, whose destination address the
    proxy ignores."""

    target: Target
    address: str  # the vetted IP the upstream socket must use
    grant: Grant | None = None
    scope: frozenset[str] | None = None  # connectors a transparent listener was given
    transparent: bool = False
    # A tunnel the policy refused, opened only to tell the client why: every request
    # inside is answered with this block and no upstream connection is ever made.
    refused: Block | None = None

    @property
    def allowed(self) -> frozenset[str] | None:
        """The connectors this tunnel's client may use (None: every one)."""
        return self.grant.connectors if self.grant else self.scope


@dataclass(slots=True)
class FlowState:
    tunnel: Tunnel | None = None
    route: Allow | None = None
    blocked: Block | None = None
    grant_label: str | None = None
    host: str | None = None  # the authority the request was for, as logged
    bytes_out: int = 0  # response body bytes sent to the client
    access_token: str | None = field(default=None, repr=False)  # an OAuth2 token injected here
    # The tail of the client's last WebSocket message, scanned with the next one (a secret split
    # across two messages is seen whole before the second is relayed).
    ws_carry: bytes = field(default=b"", repr=False)
    trace: list[tuple[str, str]] = field(default_factory=list)

    def note(self, stage: str, decision: str) -> None:
        self.trace.append((stage, decision))

    @property
    def connector(self) -> str | None:
        return self.route.connector if self.route else None

"""What a placement puts on a request, computed once per policy load."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.credentials.signing import Signer

if TYPE_CHECKING:
    from proxy.credentials.oauth2 import TokenRequest


@dataclass(frozen=True, slots=True)
class Rendered:
    """Headers to set (client copies overwritten) and query items to put in place.

    ``query`` holds (decoded name, encoded ``name=value`` item) pairs; any
    client parameter of that name is removed first. ``secrets`` are the
    values to scrub from responses. ``oauth2`` is set when the credential is an
    access token the proxy must fetch per request (it is not known at load);
    ``signer``, when set, must sign each final request (a signature covers the
    request itself, so it cannot be pre-rendered).
    """

    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    query: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    oauth2: TokenRequest | None = field(default=None, repr=False)
    signer: Signer | None = field(default=None, repr=False)

    def header_names(self) -> tuple[str, ...]:
        """Every header this credential sets: client copies of them never go upstream."""
        dynamic = ("Authorization",) if self.oauth2 is not None else ()
        signed = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token") if self.signer is not None else ()
        return (*(name for name, _ in self.headers), *dynamic, *signed)

"""What a placement puts on a request, computed once per policy load."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.credentials.signing import Signer


@dataclass(frozen=True, slots=True)
class Rendered:
    """Headers to set (client copies overwritten) and query items to put in place.

    ``query`` holds (decoded name, encoded ``name=value`` item) pairs; any
    client parameter of that name is removed first. ``secrets`` are the
    values to scrub from responses. ``signer``, when set, must sign each final
    request (a signature covers the request itself, so it cannot be pre-rendered).
    """

    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    query: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)
    signer: Signer | None = field(default=None, repr=False)

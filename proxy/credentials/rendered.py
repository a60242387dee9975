"""What a placement puts on a request, computed once per policy load."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Rendered:
    """Headers to set (client copies overwritten) and query items to put in place.

    ``query`` holds (decoded name, encoded ``name=value`` item) pairs; any
    client parameter of that name is removed first. ``secrets`` are the
    values to scrub from responses.
    """

    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    query: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)

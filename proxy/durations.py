"""Durations as operators write them: 30s, 15m, 1h, 2d (or combined: 1h30m)."""

from __future__ import annotations

import re

from proxy.errors import ConfigError

_PART = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, flag: str = "duration", field: str | None = None) -> int:
    """Seconds in ``text``; a bare number means seconds. ``field`` tags the error for the admin API."""
    if not isinstance(text, str):
        raise ConfigError(f"{flag} must be a duration such as 30s, 15m, 1h or 2d", field=field)
    t = text.strip().lower()
    if t.isdigit():
        return int(t)
    parts = _PART.findall(t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise ConfigError(f"{flag} {text!r}: expected a duration such as 30s, 15m, 1h or 2d", field=field)
    return sum(int(n) * _UNITS[u] for n, u in parts)

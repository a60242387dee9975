"""Bearer tokens and the failed-login limit of the admin API.

Failures are counted per client address in a sliding window: past the limit
every request from that address gets 429 until the oldest failure ages out,
a correct token included, so the limit cannot be used as an oracle. Behind a
reverse proxy every client shares its address; put the limit there instead.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

MAX_FAILURES = 10
WINDOW_SECONDS = 60.0
MAX_TRACKED = 10_000  # addresses remembered at once (a flood of sources cannot grow memory forever)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (scheme case-insensitive)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        return None
    return token


class FailureLimiter:
    """At most ``limit`` failed logins per address in ``window`` seconds."""

    def __init__(
        self,
        limit: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None if it may now."""
        with self._lock:
            times = self._recent(address)
            if times is None or len(times) < self.limit:
                return None
            return max(1, math.ceil(times[0] + self.window - self.clock()))

    def fail(self, address: str) -> None:
        with self._lock:
            times = self._recent(address)
            if times is None:
                if len(self._failures) >= MAX_TRACKED:
                    self._failures.pop(next(iter(self._failures)))  # the longest-tracked address
                times = self._failures[address] = deque()
            times.append(self.clock())
            while len(times) > self.limit:
                times.popleft()

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        horizon = self.clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

"""Microbenchmark: the exfiltration guard's scan, in microseconds per KiB, by number of secrets.

Three ways to find any spelling of any of N secrets in a request: the guard's
``SecretIndex`` (runs of the spellings' bytes found with ``translate`` and
``find``, then 64-bit words intersected with the index; measured on random
text, English JSON and base64, 64 KiB each), one compiled
``re`` alternation of the same spellings, and ``Needles.mask`` (the response
scrubber: one ``in`` per spelling family plus its regex). Also the time to
build each. The alternation is skipped past 1,000 secrets (it compiles for
tens of seconds).

Run alone: ``.venv/bin/python bench/exfil.py``.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import sys
import time
import timeit
from collections.abc import Callable

from proxy.scrub import SecretIndex, guarded_spellings, needles_for


def secrets(n: int) -> list[tuple[str, str]]:
    rnd = random.Random(n)
    alphabet = string.ascii_letters + string.digits
    return [(f"c{i}", "sk_live_" + "".join(rnd.choice(alphabet) for _ in range(24))) for i in range(n)]


def request(size: int = 1024) -> bytes:
    """A JSON body of printable text, no secret in it."""
    rnd = random.Random(1)
    text = "".join(rnd.choice(string.ascii_letters + string.digits + " ,.:/-_") for _ in range(size))
    return (b'{"model": "x", "input": "' + text.encode() + b'"}')[:size]


def prose(size: int = 64 * 1024) -> bytes:
    """A JSON chat request in English words (what an LLM API call sends), no secret in it."""
    sentence = (
        "Summarise the attached report about https://example.com/reports/2026/q3 and list ten findings. "
    )
    return (b'{"messages": [{"role": "user", "content": "' + sentence.encode() * (size // 90 + 1))[:size]


def timed(build: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    built = build()
    return built, time.perf_counter() - started


def per_kib_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def measure(n: int) -> dict[str, float | int | None]:
    pairs = secrets(n)
    data = request()
    text, b64 = prose(), base64.b64encode(random.Random(n).randbytes(48 * 1024))
    index, index_s = timed(lambda: SecretIndex(pairs))
    assert isinstance(index, SecretIndex) and index.find(data) is None and index.find(text) is None
    row: dict[str, float | int | None] = {
        "secrets": n,
        "index_build_s": round(index_s, 3),
        "index_us_per_kib": round(per_kib_us(lambda: index.find(data), 2000), 2),
        "index_us_per_64kib": round(per_kib_us(lambda: index.find(data * 64), 50), 1),
        "index_us_per_64kib_prose": round(per_kib_us(lambda: index.find(text), 200), 1),
        "index_us_per_64kib_base64": round(per_kib_us(lambda: index.find(b64), 50), 1),
    }
    if n <= 1000:
        literals = sorted(
            {s for _, secret in pairs for s in guarded_spellings(secret)}, key=len, reverse=True
        )
        rx, rx_s = timed(lambda: re.compile(b"|".join(re.escape(s) for s in literals)))
        assert isinstance(rx, re.Pattern)
        row["re_alternation_build_s"] = round(rx_s, 3)
        row["re_alternation_us_per_kib"] = round(per_kib_us(lambda: rx.search(data.lower()), 5), 1)
    needles, needles_s = timed(lambda: needles_for(s for _, s in pairs))
    row["needles_build_s"] = round(needles_s, 3)
    row["needles_mask_us_per_kib"] = round(per_kib_us(lambda: needles.mask(data), 5), 1)  # type: ignore[attr-defined]
    return row


def main() -> int:
    for n in (10, 100, 1000, 5000):
        print(json.dumps(measure(n)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

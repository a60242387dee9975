#!/usr/bin/env python3
"""Microbenchmark: a body scan over a large transfer, MiB/s and us per chunk.

The 200 MiB download of `make bench` streams every chunk through
``StreamScrubber`` (the response side), the upload through ``StreamGuard``
(the request side, ``--guard``); this measures one of them alone, in process,
so a change to proxy/scrub.py can be judged without the noise of a whole
proxy run. Data is random (like the bench's files), so no needle ever
matches: the figure is the price of looking; ``--text`` streams an English
JSON chat request instead (bench/exfil.py's), which must not get slower.

    .venv/bin/python bench/scrub_speed.py [--mib 200] [--chunk-kib 64] [--secret S ...]
        [--guard] [--connectors N] [--text]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from exfil import prose, secrets

from proxy.scrub import SecretIndex, StreamGuard, StreamScrubber, needles_for

MiB = 1 << 20


def measure(
    scan: Callable[[], Callable[[bytes], bytes]], block: bytes, mib: int, chunk: int, repeat: int
) -> list[float]:
    """Seconds of CPU per pass of ``mib`` MiB in ``chunk``-byte chunks, one per repetition."""
    chunks = [block[i : i + chunk] for i in range(0, len(block), chunk)]
    passes = max(1, mib * MiB // len(block))
    runs = []
    for _ in range(repeat):
        stream = scan()
        t0 = time.process_time()
        for _ in range(passes):
            for c in chunks:
                stream(c)
        stream(b"")
        runs.append(time.process_time() - t0)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=200)
    p.add_argument("--chunk-kib", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument(
        "--secret", action="append", default=[], help="secret(s) to look for (default: bench-secret)"
    )
    p.add_argument("--connectors", type=int, default=0, help="N generated secrets instead (bench/exfil.py's)")
    p.add_argument("--guard", action="store_true", help="the request side: StreamGuard")
    p.add_argument("--text", action="store_true", help="English JSON text instead of random bytes")
    a = p.parse_args()
    pairs = (
        secrets(a.connectors)
        if a.connectors
        else [(f"c{i}", s) for i, s in enumerate(a.secret or ["bench-secret"])]
    )
    chunk = a.chunk_kib * 1024
    mib = max(16, a.mib // 16 * 16)
    block = (prose(MiB) * 16) if a.text else os.urandom(16 * MiB)
    if a.guard:
        index = SecretIndex(pairs)
        runs = measure(lambda: StreamGuard(index), block, mib, chunk, a.repeat)
    else:
        needles = needles_for(s for _, s in pairs)
        runs = measure(lambda: StreamScrubber(needles), block, mib, chunk, a.repeat)
    best, mid = min(runs), statistics.median(runs)
    per_chunk = mid / (mib * MiB / chunk) * 1e6
    print(
        f"{'StreamGuard' if a.guard else 'StreamScrubber'}, {mib} MiB of {'text' if a.text else 'random bytes'} "
        f"in {a.chunk_kib} KiB chunks, {len(pairs)} secret(s): "
        f"{mib / mid:,.0f} MiB/s (best {mib / best:,.0f}), {mid * 1e3 / mib:.3f} ms/MiB, "
        f"{per_chunk:.1f} us per chunk (CPU time, median of {a.repeat})"
    )


if __name__ == "__main__":
    main()

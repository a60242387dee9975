#!/usr/bin/env python3
"""Microbenchmark: the response-body scrubber over a large download, MiB/s and us per chunk.

The 200 MiB download of `make bench` streams every chunk through
``StreamScrubber``; this measures that cost alone, in process, so a change to
proxy/scrub.py can be judged without the noise of a whole proxy run. Data is
random (like the bench's download file), so no needle ever matches: the figure
is the price of looking.

    .venv/bin/python bench/scrub_speed.py [--mib 200] [--chunk-kib 64] [--secret S ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from proxy.scrub import StreamScrubber, needles_for

MiB = 1 << 20


def measure(secrets: list[str], mib: int, chunk: int, repeat: int) -> list[float]:
    """Seconds of CPU per pass of ``mib`` MiB in ``chunk``-byte chunks, one per repetition."""
    block = os.urandom(16 * MiB)
    chunks = [block[i : i + chunk] for i in range(0, len(block), chunk)]
    passes = max(1, mib // 16)
    needles = needles_for(secrets)
    runs = []
    for _ in range(repeat):
        scrubber = StreamScrubber(needles)
        t0 = time.process_time()
        for _ in range(passes):
            for c in chunks:
                scrubber(c)
        scrubber(b"")
        runs.append(time.process_time() - t0)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=200)
    p.add_argument("--chunk-kib", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--secret", action="append", default=[], help="secret(s) to mask (default: bench-secret)")
    a = p.parse_args()
    secrets = a.secret or ["bench-secret"]
    chunk = a.chunk_kib * 1024
    mib = max(16, a.mib // 16 * 16)
    runs = measure(secrets, mib, chunk, a.repeat)
    best, mid = min(runs), statistics.median(runs)
    per_chunk = mid / (mib * MiB / chunk) * 1e6
    print(
        f"{mib} MiB in {a.chunk_kib} KiB chunks, {len(secrets)} secret(s): "
        f"{mib / mid:,.0f} MiB/s (best {mib / best:,.0f}), {mid * 1e3 / mib:.3f} ms/MiB, "
        f"{per_chunk:.1f} us per chunk (CPU time, median of {a.repeat})"
    )


if __name__ == "__main__":
    main()

"""Microbenchmark: what the statistics journal (proxy/journal.py) costs a counted request.

Per call, in CPU microseconds (median of ``--repeat`` timings of ``--number`` calls, with and
without the journal timed in alternation):

- ``tally_*``: ``Tally.request`` alone, without a journal (what it cost before) and with one (the
  same count plus one 8-byte record in the memory-mapped file), for a 200 and a 503;
- ``recorder_*``: ``Recorder._count``, what the recorder runs per forwarded request (the tally and
  the Prometheus counters), without and with the journal;
- ``event_*``: ``Tally.error`` with an error row, without and with the journal (the row as JSON);
- ``cut_us`` / ``committed_us``: the writer's work once per flush (the next file: a spare
  renamed; emptying the written one), and ``read_ms_2000_rows``: reading back, at replay, a file
  with 50 connectors' counts and 2,000 error rows.

Run alone: ``.venv/bin/python bench/journal.py``. Files go to a temporary directory (``--dir`` to
pick one: the journal lives in EGRESS_HOME, so measure on that filesystem).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from addons.record import Recorder
from proxy.journal import Journals, read
from proxy.stats import Event, Tally


def _pair_us(
    without: Callable[[], object],
    with_: Callable[[], object],
    number: int,
    repeat: int,
    setup: Callable[[], None],
) -> tuple[float, float]:
    """Median CPU microseconds per call of each (process time: a neighbour on the shared cores
    slows the wall clock far more), timed in alternation (A B, then B A)."""
    a: list[float] = []
    b: list[float] = []
    for i in range(repeat):
        for fn, out in ((without, a), (with_, b)) if i % 2 == 0 else ((with_, b), (without, a)):
            setup()
            out.append(timeit.Timer(fn, timer=time.process_time).timeit(number))
    return statistics.median(a) / number * 1e6, statistics.median(b) / number * 1e6


def measure(directory: Path, number: int = 50_000, repeat: int = 9) -> dict[str, float]:
    journals = Journals(directory)
    plain, journaled = Tally(), Tally(journal=journals)
    recorder, bare = Recorder(), Recorder()
    recorder.tally.journal = journals
    event = Event("error", time.time(), "GET", "api.bench.test", "/v1/items/42", "req-id-0123456789",
                  connector="bench", status=503, grant_label="ci", workspace="default")  # fmt: skip

    def fresh() -> None:  # as the writer does every second: drain, cut, empty what was written
        for t in (plain, journaled, recorder.tally, bare.tally):
            t.drain()
        journals.committed(journals.cut())

    out: dict[str, float] = {}
    for name, without, with_, n in (
        ("tally_ok", lambda: plain.request("bench", 200), lambda: journaled.request("bench", 200), number),
        ("tally_503", lambda: plain.request("bench", 503), lambda: journaled.request("bench", 503), number),
        ("recorder", lambda: bare._count("bench", 200), lambda: recorder._count("bench", 200), number),
        ("event", lambda: plain.error(event), lambda: journaled.error(event), number // 10),
    ):
        out[f"{name}_us"], out[f"{name}_journal_us"] = _pair_us(without, with_, n, repeat, fresh)
    assert not journals.missed, journals.missed

    cuts: list[float] = []
    commits: list[float] = []
    for _ in range(200):
        journaled.request("bench", 200)
        t0 = time.perf_counter()
        seq = journals.cut()
        t1 = time.perf_counter()
        journals.committed(seq)
        t2 = time.perf_counter()
        cuts.append(t1 - t0)
        commits.append(t2 - t1)
    out["cut_us"] = statistics.median(cuts) * 1e6
    out["committed_us"] = statistics.median(commits) * 1e6

    fresh()
    for minute in range(1000):  # a file as a busy second of many connectors and errors leaves it
        journaled.request(f"connector-{minute % 50}", 200 if minute % 3 else 503)
    for _ in range(2000):
        journaled.error(event)
    (path,) = journals.files
    t0 = time.perf_counter()
    batch = read(path)
    out["read_ms_2000_rows"] = (time.perf_counter() - t0) * 1e3
    assert len(batch.events) == 2000
    journals.close(remove=True)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, help="where the journal files go (default: a temporary directory)"
    )
    parser.add_argument("--number", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        row = measure(Path(d), args.number, args.repeat)
    print(json.dumps({k: round(v, 3) for k, v in row.items()}))
    for what in ("tally_ok", "tally_503", "recorder", "event"):
        added = row[f"{what}_journal_us"] - row[f"{what}_us"]
        print(f"{what:10} {row[f'{what}_us']:7.3f} us -> {row[f'{what}_journal_us']:7.3f} us (+{added:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The statistics journal: what a Tally counted survives its process, and is written once."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import journal
from proxy.journal import HEADER, Journals, read, replay
from proxy.nearmiss import NearMiss
from proxy.stats import Batch, Event, JournalMark, Tally
from proxy.store.sqlite import SqliteStore

T0 = 1_800_000_000.0


def blocked(i: int, near: bool = False) -> Event:
    nm = NearMiss("ws/stripe", "path", "/v2", pattern="https://api.stripe.test/v1/*", also=("method",))
    return Event(
        "blocked", T0 + i, "GET", "evil.test", f"/x{i}", f"b{i}", reason="not-allowed",
        grant_label="ci", workspace="ws", near_miss=nm if near else None,
    )  # fmt: skip


def error(i: int) -> Event:
    return Event("error", T0 + i, "POST", "api.test", "/\\x1b[31m", f"e{i}", connector="c", status=503)


def journaled(tmp_path: Path, **kw: int) -> tuple[Tally, Journals]:
    journals = Journals(tmp_path, **kw)
    return Tally(lambda: T0, journals), journals


def same(a: Batch, b: Batch) -> None:
    assert a.requests == b.requests
    assert a.blocked == b.blocked
    assert a.events == b.events


def files_in(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.journal"))


def test_every_count_is_in_the_file_as_counted(tmp_path: Path) -> None:
    tally, journals = journaled(tmp_path)
    for status in (200, 201, 401, 403, 404, 500, None):
        tally.request("ws/stripe", status)
    tally.request("other", 200)
    tally.error(error(1))
    tally.blocked(blocked(2, near=True))
    tally.blocked(blocked(3))
    (path,) = files_in(tmp_path)
    on_disk = read(path)  # read through the file, not the mapping
    same(on_disk, tally.drain())
    assert on_disk.events[1].near_miss is not None and on_disk.events[1].near_miss.also == ("method",)
    journals.close(remove=True)
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.just("r"), st.sampled_from(["a", "ws/b", "é"]), st.sampled_from([200, 401, 404, 502, None])
            ),
            st.tuples(st.just("e"), st.integers(0, 50)),
            st.tuples(st.just("b"), st.integers(0, 50)),
            st.tuples(st.just("cut")),
        ),
        max_size=60,
    )
)
def test_files_replayed_in_order_add_up_to_what_was_counted(ops: list[tuple[object, ...]]) -> None:
    """Whatever the counts and cuts (small files, so they also roll over when full)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        directory = Path(d)
        journals = Journals(directory, size=HEADER + 200, max_files=1000)
        tally = Tally(lambda: T0, journals)
        for op in ops:
            if op[0] == "r":
                tally.request(str(op[1]), op[2])  # type: ignore[arg-type]
            elif op[0] == "e":
                tally.error(error(int(op[1])))  # type: ignore[call-overload]
            elif op[0] == "b":
                tally.blocked(blocked(int(op[1])))  # type: ignore[call-overload]
            else:
                journals.cut()
        whole = Tally(lambda: T0)
        for path in sorted(files_in(directory), key=lambda p: int(p.name.split(".")[1])):
            whole.merge(read(path))
        got = whole.drain()
        want = tally.drain()
        assert got.requests == want.requests and got.blocked == want.blocked
        assert sorted(e.request_id for e in got.events) == sorted(e.request_id for e in want.events)
        assert not journals.missed
        journals.close(remove=True)


def test_a_record_not_yet_committed_by_the_length_is_never_read(tmp_path: Path) -> None:
    tally, journals = journaled(tmp_path)
    tally.request("c", 200)
    tally.error(error(1))
    (path,) = files_in(tmp_path)
    length = int.from_bytes(path.read_bytes()[8:16], "little")
    tally.request("c", 500)  # in place, in c's counters
    tally.request("d", 200)  # a new record, and the length advanced...
    tally.error(error(2))
    data = bytearray(path.read_bytes())
    data[8:16] = length.to_bytes(8, "little")  # ...but as if killed between the two stores
    path.write_bytes(bytes(data))
    torn = read(path)
    assert torn.requests == {("c", int(T0 // 60)): [2, 1, 0, 0, 1, 0]}
    assert [e.request_id for e in torn.events] == ["e1"]
    journals.close(remove=True)


def test_a_damaged_record_ends_the_file_and_what_came_before_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tally, journals = journaled(tmp_path)
    tally.request("a", 200)
    tally.request("b", 200)
    (path,) = files_in(tmp_path)
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[8:16], "little")
    data[length - journal._COUNTS.size] = 0xEE  # the kind of b's counts, the last record
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert read(path).requests == {("a", int(T0 // 60)): [1, 0, 0, 0, 0, 0]}
    assert "damaged" in caplog.text
    journals.committed(journals.cut())
    tally.error(error(1))
    tally.error(error(2))
    path = journals.files[-1]
    data = bytearray(path.read_bytes())
    second = (
        HEADER + journal._EVENT.size + ((int.from_bytes(data[HEADER + 4 : HEADER + 8], "little") + 3) & ~3)
    )
    data[second + journal._EVENT.size] = 0  # the second row's first byte: no value starts so
    path.write_bytes(bytes(data))
    assert [e.request_id for e in read(path).events] == ["e1"]
    path.write_bytes(b"not a journal at all, and long enough to have a header" + b"\x00" * 64)
    with pytest.raises(journal.JournalError):
        read(path)
    journals.close(remove=True)


def test_cut_moves_to_the_next_file_and_committed_empties_the_old_for_reuse(tmp_path: Path) -> None:
    tally, journals = journaled(tmp_path)
    tally.request("c", 200)
    first = journals.cut()
    tally.request("c", 404)
    assert first == 1 and journals.seq == 2
    assert [p.name.split(".")[1] for p in files_in(tmp_path)] == ["1", "2"]
    journals.committed(first)
    assert [p.name for p in journals.files] == [f"{journals.owner}.2.journal"]
    assert read(tmp_path / f"{journals.owner}.1.journal") == Batch()  # emptied: a crash replays nothing
    assert read(journals.files[0]).requests == {("c", int(T0 // 60)): [1, 1, 0, 1, 0, 0]}
    second = journals.cut()  # file 1, renamed 3, is reused
    assert [p.name.split(".")[1] for p in files_in(tmp_path)] == ["2", "3"]
    tally.request("c", 200)
    assert read(journals.files[-1]).requests == {("c", int(T0 // 60)): [1, 0, 0, 0, 0, 0]}
    journals.committed(second)
    journals.close(remove=False)  # stopped without writing: the unwritten file stays, the lock goes
    assert [p.name.split(".")[1] for p in files_in(tmp_path)] == ["3"]
    assert (tmp_path / f"{journals.owner}.lock").exists()


def test_a_full_journal_rolls_over_then_counts_in_memory_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tally, journals = journaled(tmp_path, size=HEADER + 80, max_files=2)  # two connectors a file
    with caplog.at_level(logging.WARNING):
        for i in range(10):
            tally.request(f"c{i}", 200)
            tally.request(f"c{i}", 200)
    assert len(files_in(tmp_path)) == 2
    in_files = sum(sum(c[0] for c in read(p).requests.values()) for p in files_in(tmp_path))
    assert (in_files, journals.missed.requests) == (8, 12)
    assert tally.pending().requests == 20  # memory has them all
    assert "counting in memory only" in caplog.text
    journals.close(remove=True)


class Written:
    """A flush that keeps what it was given."""

    def __init__(self) -> None:
        self.batches: list[tuple[Batch, JournalMark]] = []

    def __call__(self, batch: Batch, mark: JournalMark) -> bool:
        self.batches.append((batch, mark))
        return True


def test_replay_writes_a_dead_owners_files_in_order_and_removes_them(tmp_path: Path) -> None:
    tally, dead = journaled(tmp_path)
    tally.request("c", 200)
    dead.cut()
    tally.request("c", 500)
    dead.close(remove=False)  # as the kernel does for a killed process: the lock is released
    alive = Journals(tmp_path)
    Tally(lambda: T0, alive).request("c", 200)
    written = Written()
    (done,) = replay(tmp_path, written, own=alive.owner)
    assert [m for _, m in written.batches] == [JournalMark(dead.owner, 1), JournalMark(dead.owner, 2)]
    assert done.counted.requests == 2 and done.files == 2
    assert {p.name.split(".")[0] for p in tmp_path.iterdir()} == {alive.owner}  # the living one stays
    assert replay(tmp_path, written) == []  # its lock is held: alive, even for a replayer that is not it
    alive.close(remove=True)
    assert list(tmp_path.iterdir()) == []


def test_an_owner_being_replayed_elsewhere_is_left_alone(tmp_path: Path) -> None:
    tally, dead = journaled(tmp_path)
    tally.request("c", 200)
    dead.close(remove=False)
    fd = os.open(tmp_path / f"{dead.owner}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another replayer holds it
        assert replay(tmp_path, Written()) == []
    finally:
        os.close(fd)
    assert len(replay(tmp_path, Written())) == 1


def test_a_store_down_during_replay_leaves_the_files_for_the_next_try(tmp_path: Path) -> None:
    tally, dead = journaled(tmp_path)
    tally.request("c", 200)
    dead.cut()
    tally.request("c", 200)
    dead.close(remove=False)
    calls: list[JournalMark] = []

    def down_after_one(batch: Batch, mark: JournalMark) -> bool:
        if calls:
            raise ConnectionError("store down")
        calls.append(mark)
        return True

    with pytest.raises(ConnectionError):
        replay(tmp_path, down_after_one)
    assert [p.name.split(".")[1] for p in files_in(tmp_path)] == ["2"]  # the first one is written
    written = Written()
    replay(tmp_path, written)
    assert [m.seq for _, m in written.batches] == [2]
    assert list(tmp_path.iterdir()) == []


def test_a_batch_written_just_before_the_kill_is_not_written_again(tmp_path: Path) -> None:
    """The store keeps each owner's last mark, set in the flush's transaction: a file whose batch
    is in the store but which its process did not live to delete counts once."""
    store = SqliteStore(tmp_path / "egress.db", create=True, clock=lambda: T0)
    journal_dir = tmp_path / "journal"
    tally, dead = journaled(journal_dir)
    for _ in range(3):
        tally.request("c", 200)
    seq = dead.cut()
    assert store.monitoring.flush(tally.drain(), JournalMark(dead.owner, seq))  # written; then killed
    tally.request("c", 200)  # counted after the cut, never written
    dead.close(remove=False)
    (done,) = replay(journal_dir, store.monitoring.flush)
    assert (done.files, done.skipped, done.counted.requests) == (2, 1, 1)
    (row,) = store.monitoring.summary([])
    assert row.requests_24h == 4
    store.close()


def test_lock_files_left_half_made_are_cleared_but_only_when_old(tmp_path: Path) -> None:
    aside = tmp_path / ".123-abc.lock.new"
    aside.write_text("123\n")
    replay(tmp_path, Written())
    assert aside.exists()  # its maker may be about to lock and rename it
    os.utime(aside, (T0 - 3600, 1_000_000.0))
    replay(tmp_path, Written())
    assert not aside.exists()


def test_no_directory_to_write_is_an_error_at_open(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("a file where the directory should be")
    with pytest.raises(OSError):
        Journals(tmp_path / "home" / "journal")


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from proxy.journal import Journals
    from proxy.stats import Tally

    journals = Journals(Path(sys.argv[1]))
    tally = Tally(journal=journals)
    for i in range(int(sys.argv[2])):
        tally.request("c", 500 if i % 10 == 0 else 200)
        if i % 1000 == 0:
            journals.cut()  # as the writer does; nothing is ever written or removed here
    print(journals.owner, flush=True)
    time.sleep(60)
    """
)


def test_counts_survive_sigkill(tmp_path: Path) -> None:
    """A real process counts, is killed with SIGKILL, and another one finds every count."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), "5000"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    owner = proc.stdout.readline().strip()
    assert replay(tmp_path, Written()) == []  # alive: its lock is held
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    written = Written()
    (done,) = replay(tmp_path, written)
    assert done.owner == owner and done.counted.requests == 5000
    errors = sum(c[1] for b, _ in written.batches for c in b.requests.values())
    assert errors == 500
    assert [m.seq for _, m in written.batches] == sorted(m.seq for _, m in written.batches)
    assert list(tmp_path.iterdir()) == []


def test_when_the_next_file_cannot_be_made_counting_goes_on_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tally, journals = journaled(tmp_path)
    tally.request("c", 200)
    (tmp_path / f"{journals.owner}.2.journal").write_text("in the way")  # the next file's name
    with caplog.at_level(logging.WARNING):
        first = journals.cut()
    assert "cannot make" in caplog.text
    tally.request("c", 200)  # no file: memory only, and no stale counters touched
    tally.error(error(1))
    assert journals.missed.requests == 1 and journals.missed.events == 1
    assert read(journals.files[0]).requests == {("c", int(T0 // 60)): [1, 0, 0, 0, 0, 0]}
    assert journals.cut() > first  # and the next cut tries again, with a new number
    tally.request("c", 200)
    assert read(journals.files[-1]).requests == {("c", int(T0 // 60)): [1, 0, 0, 0, 0, 0]}
    journals.close(remove=True)

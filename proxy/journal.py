"""Counts a crash cannot take: each proxy process mirrors its ``Tally`` into memory-mapped files.

The hot path counts in memory (``proxy.stats.Tally``) and a writer flushes
about once a second, so a process killed outright (``kill -9``, the OOM
killer) would lose up to a second of counts. So every count also goes to a
file mapped ``MAP_SHARED``: plain memory stores, no system call per request.
The pages belong to the kernel's page cache, so they outlive the process; a
machine that loses power may still lose them (nothing is fsynced).

A file is a header and records. Each (connector, minute) gets a record of
the counters of a count row (``proxy.health`` slots), incremented in place
as 4-byte words (a word is written whole or not at all); an error or
blocked row is a record of its own. A new record is written first and the
length in the header advanced after it, so a reader never sees half of one.

Files are numbered per owner (one process, ``<pid>-<random>``); every flush
*cuts*: counting moves on to the next file, and once the drained batch is
committed the files up to the cut are emptied and kept for reuse (renamed:
no allocation on the hot loop). The store records, in the flush's own
transaction, the highest file number it has written for the owner
(``JournalMark``), so a file whose batch committed just before a crash is
never counted twice.

Liveness is a lock, not a pid: each owner holds ``flock`` on
``<owner>.lock`` for its lifetime (the kernel drops it when the process
dies, however it dies). ``replay`` takes the lock of every owner nobody
holds, writes its files in order and deletes them; two proxies sharing
EGRESS_HOME never replay each other while alive, and two replayers never
replay the same owner.

Bounded: files of ``FILE_SIZE`` bytes, preallocated (a full disk is an
error when a file is made, not a SIGBUS later), at most ``MAX_FILES`` per
owner (during a store outage nothing is cut, and the log rows pile up);
past that, counts are kept in memory only, with a warning.
"""

from __future__ import annotations

import fcntl
import logging
import marshal
import mmap
import os
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from proxy.health import SLOTS
from proxy.nearmiss import NearMiss
from proxy.stats import Batch, Counted, Event, JournalMark

logger = logging.getLogger(__name__)

FILE_SIZE = 1 << 20  # 1 MiB: 32,000 (connector, minute) blocks, or some 4,000 log rows
MAX_FILES = 32  # per owner: what a long store outage may fill before counting goes memory-only
SPARES = 2  # written files kept, emptied, for the next cuts
MAGIC = b"EGRJ"
FORMAT = 1
HEADER = 64  # magic, format, committed length, file number, created, pid; records follow
LOCK_SUFFIX = ".lock"
FILE_SUFFIX = ".journal"

_HEAD = struct.Struct("<4sHxxQQdI")
_LENGTH = struct.Struct("<Q")  # at offset 8: the end of the last complete record
_LENGTH_AT = 8
# Records start on 4-byte boundaries (counters are words of the mapping).
_NAME = struct.Struct("<BxH")  # kind 1, length; a connector key, numbered in order of appearance
_COUNTS = struct.Struct(f"<BxHI{SLOTS}I")  # kind 2, connector number, minute, the six counters
_EVENT = struct.Struct("<BxxxI")  # kind 3, length; an error or blocked row (marshal, see _event_doc)
NAME, COUNTS, EVENT = 1, 2, 3
_COUNTERS_AT = 8 // 4  # words from a counts record's start to its first counter
_MAX_NAMES = 0xFFFF
_ONE_REQUEST, _ONE_EVENT, _ONE_BLOCKED = Counted(requests=1), Counted(events=1), Counted(1, 0, 1)


class JournalError(Exception):
    """A file that is not a journal this version can read."""


def _padded(n: int) -> int:
    return (n + 3) & ~3


def _event_doc(e: Event) -> bytes:
    """An event row as bytes: ``marshal`` (the interpreter's own C serialiser, several times
    faster than JSON for a row; journals are read back by the same installation) of plain
    values, checked field by field when read."""
    near = None if e.near_miss is None else e.near_miss.to_dict()
    return marshal.dumps((e.kind, e.ts, e.method, e.host, e.path, e.request_id, e.connector, e.reason,
                          e.status, e.failure, e.grant_label, e.workspace, near), 4)  # fmt: skip


_STR: tuple[type, ...] = (str,)
_OPT_STR: tuple[type, ...] = (str, type(None))
_EVENT_TYPES: tuple[tuple[type, ...], ...] = (_STR, (float, int), _STR, _STR, _STR, _STR, _OPT_STR, _OPT_STR, (int, type(None)),
                _OPT_STR, _OPT_STR, _STR, (dict, type(None)))  # fmt: skip


def _event_of(data: bytes) -> Event:
    doc: Any = marshal.loads(data)
    if not (
        isinstance(doc, tuple)
        and len(doc) == len(_EVENT_TYPES)
        and all(isinstance(v, t) for v, t in zip(doc, _EVENT_TYPES, strict=True))
        and doc[0] in ("error", "blocked")
    ):
        raise JournalError("bad event row")
    event = Event(*doc[:12])
    return event if doc[12] is None else replace(event, near_miss=NearMiss.from_dict(doc[12]))


@dataclass
class _File:
    seq: int
    path: Path
    fd: int
    mm: mmap.mmap
    words: memoryview  # the mapping as 4-byte words (released before the mapping is closed)

    def close(self, *, remove: bool) -> None:
        self.words.release()
        self.mm.close()
        os.close(self.fd)
        if remove:
            self.path.unlink(missing_ok=True)


def _create_locked(path: Path) -> int:
    """A lock file that is locked from the first instant it exists (made aside, then renamed)."""
    aside = path.with_name(f".{path.name}.new")
    fd = os.open(aside, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(aside, path)
    except BaseException:
        os.close(fd)
        aside.unlink(missing_ok=True)
        raise
    return fd


class Journals:
    """This process's journal files in one directory.

    ``request`` and ``event`` are the hot path (called by ``Tally``); the
    writer calls ``cut`` when it drains the tally, ``committed`` once that
    batch is in the store, and ``close`` at the end.
    """

    def __init__(self, directory: Path, *, size: int = FILE_SIZE, max_files: int = MAX_FILES) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory = directory
        self.owner = f"{os.getpid()}-{secrets.token_hex(8)}"
        self.size = size
        self.max_files = max_files
        self._lock_fd = _create_locked(directory / f"{self.owner}{LOCK_SUFFIX}")
        self._files: list[_File] = []  # not yet written to the store, oldest first; the last is current
        self._spares: list[_File] = []  # written and emptied, for reuse
        self._seq = 0
        self.missed = Counted()  # what found no room (counted in memory only), all along
        self._warned = False  # since the last cut
        # the current file, flattened for the hot path; _cap < 0: no file, count in memory only
        self._mm: mmap.mmap | None = None
        self._words: memoryview | None = None
        self._end = HEADER
        self._cap = -1
        self._ids: dict[str, int] = {}
        self._blocks: dict[tuple[str, int], int] = {}  # (connector, minute) -> word of its first counter
        self._open()

    @property
    def seq(self) -> int:
        """The current file's number: everything counted so far is in files up to it."""
        return self._seq

    @property
    def files(self) -> list[Path]:
        return [f.path for f in self._files]

    # -- hot path -----------------------------------------------------------

    def request(self, key: tuple[str, int], slot: int) -> None:
        """One forwarded request of ``key`` (connector, minute); ``slot`` its failure class, or 0."""
        at = self._blocks.get(key)
        if at is None:
            at = self._block(key)
            if at is None:
                self.missed += _ONE_REQUEST
                return
        words = self._words
        assert words is not None
        words[at] += 1  # the request first: torn by a kill here, it still counts (as a success)
        if slot:
            words[at + slot] += 1  # ``errors`` (word 1) is their sum, made when read

    def event(self, event: Event) -> None:
        data = _event_doc(event)
        need = _EVENT.size + _padded(len(data))
        if self._end + need > self._cap and not self._room(need):
            self.missed += _ONE_BLOCKED if event.kind == "blocked" else _ONE_EVENT
            return
        mm, end = self._mm, self._end
        assert mm is not None
        _EVENT.pack_into(mm, end, EVENT, len(data))
        mm[end + _EVENT.size : end + _EVENT.size + len(data)] = data
        self._commit(end + need)

    def _commit(self, end: int) -> None:
        self._end = end
        assert self._mm is not None
        _LENGTH.pack_into(self._mm, _LENGTH_AT, end)

    def _block(self, key: tuple[str, int]) -> int | None:
        """A zeroed counts record for ``key`` (and its connector's name first, if new here)."""
        connector, minute = key
        if not self._room(_COUNTS.size, connector):
            return None
        mm, end = self._mm, self._end
        assert mm is not None
        _COUNTS.pack_into(mm, end, COUNTS, self._ids[connector], minute, *(0,) * SLOTS)
        self._commit(end + _COUNTS.size)
        at = end // 4 + _COUNTERS_AT
        self._blocks[key] = at
        return at

    def _room(self, need: int, connector: str | None = None) -> bool:
        """Make room for a record of ``need`` bytes (and its connector's name): the next file if
        this one is full. False: no room anywhere, the caller counts in memory only."""
        for _ in range(2):
            name = b""
            if connector is not None and connector not in self._ids:
                name = connector.encode("utf-8", "surrogatepass")
            total = need + (_NAME.size + _padded(len(name)) if name else 0)
            if self._end + total <= self._cap and len(self._ids) < _MAX_NAMES:
                if name:
                    mm, end = self._mm, self._end
                    assert mm is not None and connector is not None
                    _NAME.pack_into(mm, end, NAME, len(name))
                    mm[end + _NAME.size : end + _NAME.size + len(name)] = name
                    self._commit(end + _NAME.size + _padded(len(name)))
                    self._ids[connector] = len(self._ids)
                return True
            if self._cap < 0 or self._end == HEADER or len(self._files) >= self.max_files:
                break  # no file, a record larger than a whole file, or no more files
            if not self._open():
                return False
        self._warn("no room left in the journal")
        return False

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "statistics journal %s: %s; counting in memory only until the next flush "
                "(a crash before then loses those counts)",
                self.directory,
                why,
            )

    # -- the writer ---------------------------------------------------------

    def _open(self) -> bool:
        """Start the next file (a spare if there is one); False (journal off until the next cut)
        if it cannot be made."""
        seq = self._seq + 1
        path = self.directory / f"{self.owner}.{seq}{FILE_SUFFIX}"
        try:
            f = self._reuse(seq, path) if self._spares else self._create(seq, path)
        except OSError as e:
            self._mm, self._words, self._cap, self._ids, self._blocks = None, None, -1, {}, {}
            self._warn(f"cannot make {path.name} ({e.strerror})")
            return False
        self._seq = seq
        self._files.append(f)
        self._mm, self._words, self._end, self._cap = f.mm, f.words, HEADER, self.size
        self._ids, self._blocks = {}, {}
        return True

    def _create(self, seq: int, path: Path) -> _File:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.size)  # blocks now: a full disk fails here, not in mmap
            mm = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        _HEAD.pack_into(mm, 0, MAGIC, FORMAT, HEADER, seq, time.time(), os.getpid())
        return _File(seq, path, fd, mm, memoryview(mm).cast("I"))

    def _reuse(self, seq: int, path: Path) -> _File:
        f = self._spares[-1]
        _HEAD.pack_into(f.mm, 0, MAGIC, FORMAT, HEADER, seq, time.time(), os.getpid())  # empty first
        os.rename(f.path, path)
        self._spares.pop()
        f.seq, f.path = seq, path
        return f

    def cut(self) -> int:
        """Move counting on to the next file; return the last number before the cut (what a batch
        drained now is covered by). Call it together with ``Tally.drain``, on the same thread, and
        only when there is something to drain: every cut starts a file, and numbers only grow."""
        last = self._seq
        self._warned = False
        if not self._open():
            self._seq = last + 1  # numbers still move on: the next batch must not reuse ``last``
        return last

    def committed(self, seq: int) -> None:
        """The batch up to file ``seq`` is in the store: its files are emptied, kept as spares."""
        keep = []
        for f in self._files:
            if f.seq > seq or f.mm is self._mm:
                keep.append(f)
            elif len(self._spares) < SPARES:
                _LENGTH.pack_into(f.mm, _LENGTH_AT, HEADER)  # a crash now finds nothing to replay
                self._spares.append(f)
            else:
                f.close(remove=True)
        self._files = keep

    def close(self, *, remove: bool) -> None:
        """Stop; ``remove`` deletes every file (all counts written), otherwise they stay for ``replay``."""
        for f in self._spares:
            f.close(remove=True)
        for f in self._files:
            f.close(remove=remove)
        self._files, self._spares = [], []
        self._mm, self._words, self._cap, self._ids, self._blocks = None, None, -1, {}, {}
        if remove:
            (self.directory / f"{self.owner}{LOCK_SUFFIX}").unlink(missing_ok=True)
        os.close(self._lock_fd)  # the lock goes with it: what is left is anyone's to replay


def read(path: Path) -> Batch:
    """The counts in one journal file; a damaged record ends it (what came before counts)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER:
        if data.strip(b"\x00"):
            raise JournalError(f"{path.name}: too short for a journal")
        return Batch()  # created, never written
    magic, fmt, length, _seq, _created, _pid = _HEAD.unpack_from(data, 0)
    if magic != MAGIC or fmt != FORMAT:
        raise JournalError(f"{path.name}: not a journal of format {FORMAT}")
    length = min(length, len(data))
    batch = Batch()
    names: list[str] = []
    at = rec = HEADER
    try:
        while at < length:
            rec, kind = at, data[at]
            if kind == COUNTS:
                _, cid, minute, *counts = _COUNTS.unpack_from(data, at)
                at += _COUNTS.size
                if at > length or cid >= len(names):
                    raise JournalError("bad counts record")
                if counts[0]:
                    row = batch.requests.setdefault((names[cid], minute), [0] * SLOTS)
                    counts[1] = sum(counts[2:])
                    for i, n in enumerate(counts):
                        row[i] += n
            elif kind == NAME:
                _, n = _NAME.unpack_from(data, at)
                start, at = at + _NAME.size, at + _NAME.size + _padded(n)
                if at > length:
                    raise JournalError("bad name record")
                names.append(data[start : start + n].decode("utf-8", "surrogatepass"))
            elif kind == EVENT:
                _, n = _EVENT.unpack_from(data, at)
                start, at = at + _EVENT.size, at + _EVENT.size + _padded(n)
                if at > length:
                    raise JournalError("bad event record")
                event = _event_of(data[start : start + n])
                if event.kind == "blocked":
                    key = (event.host, event.reason or "", int(event.ts // 60))
                    batch.blocked[key] = batch.blocked.get(key, 0) + 1
                batch.events.append(event)
            else:
                raise JournalError(f"unknown record kind {kind}")
    except (JournalError, struct.error, ValueError, TypeError, EOFError) as e:
        logger.warning("%s: damaged at byte %d (%s): using the records before it", path.name, rec, e)
    return batch


@dataclass(frozen=True)
class Replayed:
    owner: str
    files: int
    counted: Counted
    skipped: int  # files the store had already written (a crash right after a flush)


Flush = Callable[[Batch, JournalMark], bool]


def _owner_of(name: str) -> str | None:
    if name.startswith("."):
        return None
    if name.endswith(LOCK_SUFFIX):
        return name[: -len(LOCK_SUFFIX)]
    if name.endswith(FILE_SUFFIX):
        owner, _, seq = name[: -len(FILE_SUFFIX)].rpartition(".")
        return owner if owner and seq.isdigit() else None
    return None


def _files_of(directory: Path, owner: str) -> list[tuple[int, Path]]:
    found = []
    prefix = f"{owner}."
    for name in os.listdir(directory):
        if name.startswith(prefix) and name.endswith(FILE_SUFFIX):
            seq = name[len(prefix) : -len(FILE_SUFFIX)]
            if seq.isdigit():
                found.append((int(seq), directory / name))
    return sorted(found)


def _remove_if_unlocked(path: Path) -> None:
    try:
        if time.time() - path.stat().st_mtime < 60:
            return  # its maker may be between creating and locking it
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except OSError:
        pass  # its maker is alive and about to rename it
    finally:
        os.close(fd)


def replay(directory: Path, flush: Flush, *, own: str | None = None) -> list[Replayed]:
    """Write and delete what dead owners left in ``directory``; ``own`` (this process) is skipped.

    ``flush(batch, mark)`` writes one file's batch with its mark and returns
    False if the store already had it. An exception from it (the store is
    down) leaves that owner's remaining files for a later call.
    """
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    owners = sorted({o for n in names if (o := _owner_of(n)) is not None and o != own})
    for name in names:  # a lock file still being made aside when its maker died
        if name.startswith(".") and name.endswith(f"{LOCK_SUFFIX}.new"):
            _remove_if_unlocked(directory / name)
    done = []
    for owner in owners:
        lock_path = directory / f"{owner}{LOCK_SUFFIX}"
        try:  # a file left without its lock (removed by hand) is dead too: make one to hold
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            logger.warning("%s: cannot open (%s): its journal stays", lock_path, e.strerror)
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # alive, or being replayed by someone else
            if os.fstat(fd).st_nlink == 0:
                continue  # replayed and removed while we opened it
            counted, files, skipped = Counted(), 0, 0
            for seq, path in _files_of(directory, owner):
                try:
                    batch = read(path)
                except JournalError as e:
                    logger.error("%s; moved aside as %s.bad", e, path.name)
                    path.rename(path.with_name(path.name + ".bad"))
                    continue
                if batch:
                    if flush(batch, JournalMark(owner, seq)):
                        counted += Counted.of(batch)
                    else:
                        skipped += 1
                path.unlink()
                files += 1
            lock_path.unlink(missing_ok=True)
            if counted or skipped:
                done.append(Replayed(owner, files, counted, skipped))
        finally:
            os.close(fd)
    return done

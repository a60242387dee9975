"""The audit file: JSON lines appended by every worker, rotated by size.

Each line goes out in one ``write`` on an ``O_APPEND`` descriptor, so the
workers of one proxy can share the file without interleaving. Rotation
(``FILE`` -> ``FILE.1`` ... ``FILE.N``) happens under an exclusive lock on
``FILE.lock``; a writer whose file was rotated by another notices the new
inode and reopens, and lines written to the old one land in ``FILE.1``:
nothing is lost. ``-`` writes to standard output instead (never rotated).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

from proxy.errors import ConfigError

DEFAULT_MAX_BYTES = 100 * 1024 * 1024
BACKUPS = 5
CHECK_SECONDS = 1.0  # how often a writer looks at the file's size and inode


class AuditLog:
    def __init__(self, target: str, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = BACKUPS) -> None:
        self.target = target
        self.max_bytes = max_bytes
        self.backups = backups
        self._path = None if target == "-" else Path(target)
        self._fd = sys.stdout.fileno() if self._path is None else self._open()
        self._checked = time.monotonic()

    def _open(self) -> int:
        assert self._path is not None
        try:
            return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ConfigError(f"--audit-log {self._path}: cannot open ({e.strerror})") from None

    def write(self, line: str) -> None:
        os.write(self._fd, (line + "\n").encode())
        if self._path is not None and time.monotonic() - self._checked >= CHECK_SECONDS:
            self._checked = time.monotonic()
            self._maybe_rotate()

    def _maybe_rotate(self) -> None:
        assert self._path is not None
        mine = os.fstat(self._fd)
        try:
            current = os.stat(self._path)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == mine.st_ino and mine.st_size < self.max_bytes:
            return
        lock_path = self._path.with_name(self._path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = os.stat(self._path) if self._path.exists() else None
                if (
                    current is not None
                    and current.st_ino == mine.st_ino
                    and current.st_size >= self.max_bytes
                ):
                    self._shift()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = self._open()

    def _shift(self) -> None:
        assert self._path is not None
        for n in range(self.backups - 1, 0, -1):
            older = self._path.with_name(f"{self._path.name}.{n}")
            if older.exists():
                os.replace(older, self._path.with_name(f"{self._path.name}.{n + 1}"))
        os.replace(self._path, self._path.with_name(f"{self._path.name}.1"))

    def close(self) -> None:
        if self._path is not None:
            os.close(self._fd)

"""An append-only file that several worker processes write and rotate between them.

Every worker appends whole lines in batches. Appends alone would need no
coordination (O_APPEND makes each write land at the end), but rotation
and the audit chain do: a worker must not append to a file another one has
just renamed away, two workers must not both rotate, and the audit trail
must read the last record and append the next one with nobody in between.
So each batch runs under an exclusive `flock` on a sibling `{path}.lock`
file. The lock lives on a file that is never renamed: locking the data
file itself would let a waiter acquire the lock on the inode that was just
rotated away. The lock file's mtime also records when the current file was
started, which the age limit needs and which Linux does not keep for us
(no birth time in `os.stat`).

Rotated files are named `{path}.{UTC YYYYMMDDTHHMMSSZ}`, with `-N` added when
two rotations fall in the same second, so they sort in time order and a
reader can find the whole series from the base path (`rotated_files`).

flock locks belong to an open file description, which a forked child
shares with its parent; a child therefore reopens both files before its
first batch, or it would "hold" the lock its parent holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("edgeward.telemetry")

_MODE = 0o640
_BLOCK = 65536
_ROTATED = re.compile(r"(\d{8}T\d{6}Z)(?:-(\d+))?")


def rotated_files(path: str) -> list[str]:
    """The rotated files of `path`, oldest first (not `path` itself)."""
    directory, base = os.path.split(os.path.abspath(path))
    prefix = base + "."
    found: list[tuple[str, int, str]] = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        if not name.startswith(prefix):
            continue
        match = _ROTATED.fullmatch(name[len(prefix) :])
        if match is not None:
            found.append((match[1], int(match[2] or 0), os.path.join(directory, name)))
    found.sort()
    return [full for _, _, full in found]


def _suffix(name: str) -> int:
    """N of a rotated name ending `-N`, 0 without one."""
    match = _ROTATED.fullmatch(name.rpartition(".")[2])
    return int(match[2] or 0) if match is not None else 0


def rotation_base(path: str) -> str | None:
    """The base path a rotated file belongs to, or None when `path` is not a rotated name."""
    directory, name = os.path.split(path)
    base, dot, suffix = name.rpartition(".")
    if dot and base and _ROTATED.fullmatch(suffix):
        return os.path.join(directory, base)
    return None


def last_complete_line(fd: int, size: int) -> bytes | None:
    """The last newline-terminated line of the first `size` bytes of `fd`, without its newline.

    Bytes after the last newline are a torn write (a crash mid-append), not
    a line: they are ignored here and terminated by the next append.
    """
    end = -1  # offset of the newline that ends the last complete line
    pos = size
    tail = b""
    while pos > 0:
        start = max(0, pos - _BLOCK)
        chunk = os.pread(fd, pos - start, start)
        tail = chunk + tail
        pos = start
        if end < 0:
            i = tail.rfind(b"\n")
            if i < 0:
                continue
            end = pos + i
        i = tail.rfind(b"\n", 0, end - pos)
        if i >= 0:
            return tail[i + 1 : end - pos]
    if end < 0:
        return None
    return tail[: end - pos]


class Batch:
    """What a caller may do while it holds the lock: read the last line, then append."""

    __slots__ = ("_file", "size")

    def __init__(self, file: RotatingFile, size: int) -> None:
        self._file = file
        self.size = size

    @property
    def identity(self) -> tuple[int, int, int]:
        """(device, inode, size) of the current file: unchanged means nobody wrote since you last did."""
        st = os.fstat(self._file._fd)
        return st.st_dev, st.st_ino, self.size

    def last_line(self) -> bytes | None:
        """The last complete line of the current file, or of the newest rotated file when the current has none."""
        line = last_complete_line(self._file._fd, self.size) if self.size else None
        if line is not None:
            return line
        for name in reversed(rotated_files(self._file.path)):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                line = last_complete_line(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
            if line is not None:
                return line
        return None

    def write(self, data: bytes) -> None:
        """Append `data` (whole lines); a torn line left by a crashed writer is terminated first."""
        fd = self._file._fd
        if self.size and os.pread(fd, 1, self.size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            self.size += written
            view = view[written:]


class RotatingFile:
    """`path`, rotated at `rotate_bytes` (0: never) or `rotate_interval` seconds (0: never); `keep` rotated (0: all)."""

    def __init__(
        self,
        path: str,
        rotate_bytes: int = 0,
        rotate_interval: float = 0.0,
        keep: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.path.abspath(path)
        self.rotate_bytes = rotate_bytes
        self.rotate_interval = rotate_interval
        self.keep = keep
        self.clock = clock
        self.errors = 0  # batches `write` could not append
        self._lock_path = self.path + ".lock"
        self._fd = -1
        self._lock_fd = -1
        self._pid = 0
        self._failing = False

    def write(self, data: bytes) -> bool:
        """Append one batch of lines; False (counted in `errors`, logged once per outage) if it failed."""
        try:
            with self.locked() as batch:
                batch.write(data)
        except OSError as exc:
            self.errors += 1
            if not self._failing:
                self._failing = True
                log.error(
                    "cannot write %s: %s", self.path, exc, extra={"event": "telemetry.file_failed", "file": self.path}
                )
            return False
        self._failing = False
        return True

    @contextlib.contextmanager
    def locked(self) -> Iterator[Batch]:
        """Hold the lock for one batch: the current file is open, rotated if due, and nobody else writes."""
        if self._pid != os.getpid():
            self.close()  # opened before a fork: the descriptors (and the flock) are the parent's
            self._pid = os.getpid()
        if self._lock_fd < 0:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _MODE)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield Batch(self, self._current())
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock_fd = -1

    def _current(self) -> int:
        """Size of the current file, opened anew if another process rotated it, and rotated here if due."""
        # (1) Follow a rotation done by another process: the path now names a different inode.
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if self._fd >= 0:
            own = os.fstat(self._fd)
            if st is None or (own.st_dev, own.st_ino) != (st.st_dev, st.st_ino):
                os.close(self._fd)
                self._fd = -1
        if self._fd < 0:
            self._open()
        size = os.fstat(self._fd).st_size
        # (2) Rotate when a limit is reached; an empty file is never rotated, but its age restarts
        # so that a file first written long after it was created is not rotated after one batch.
        if self._due(size):
            if size:
                self._rotate()
                size = 0
            else:
                self._mark_started()
        return size

    def _due(self, size: int) -> bool:
        if self.rotate_bytes and size >= self.rotate_bytes:
            return True
        if self.rotate_interval:
            started = os.fstat(self._lock_fd).st_mtime
            return self.clock() - started >= self.rotate_interval
        return False

    def _open(self) -> None:
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, _MODE)
        except FileExistsError:
            self._fd = os.open(self.path, flags)
        else:
            self._mark_started()

    def _mark_started(self) -> None:
        now = self.clock()
        os.utime(self._lock_fd, (now, now))

    def _rotate(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
        # After the newest file of the same second, even if older ones of that second were pruned:
        # reusing a freed name would sort this file before them.
        taken = [_suffix(name) for name in rotated_files(self.path) if name.startswith(f"{self.path}.{stamp}")]
        n = max(taken) + 1 if taken else 0
        target = f"{self.path}.{stamp}-{n}" if n else f"{self.path}.{stamp}"
        while os.path.lexists(target):
            n += 1
            target = f"{self.path}.{stamp}-{n}"
        os.rename(self.path, target)
        os.close(self._fd)
        self._fd = -1
        self._open()
        if self.keep:
            for old in rotated_files(self.path)[: -self.keep]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(old)

"""Count file opens and reads under directories, as the kernel sees them (inotify).

The access-policy suite uses this as its counting backend: a static route's
files are what the edge would touch behind the gate, and inotify reports
every open or read of them by any process, independently of the server's
own counters. Watches are per directory (not recursive).
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

IN_ACCESS = 0x001
IN_OPEN = 0x020
_HEADER = struct.Struct("iIII")

_libc = ctypes.CDLL(None, use_errno=True)


class FileWatch:
    def __init__(self, *directories: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.dirs: dict[int, Path] = {}
        for directory in directories:
            wd = _libc.inotify_add_watch(self.fd, str(directory).encode(), IN_OPEN | IN_ACCESS)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
            self.dirs[wd] = directory
        self.touched: list[Path] = []

    def drain(self) -> list[Path]:
        """Every file opened or read since the last call (a directory listing shows as the directory)."""
        seen: list[Path] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                wd, _mask, _cookie, length = _HEADER.unpack_from(data, offset)
                name = data[offset + _HEADER.size : offset + _HEADER.size + length].rstrip(b"\0").decode()
                seen.append(self.dirs[wd] / name if name else self.dirs[wd])
                offset += _HEADER.size + length
        self.touched.extend(seen)
        return seen

    def close(self) -> None:
        os.close(self.fd)

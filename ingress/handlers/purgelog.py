"""Cache purges shared by every worker of one server.

Each worker keeps its own cache, and an admin request reaches only one
worker (SO_REUSEPORT picks it). So a purge is appended to a log every
worker can read: an unnamed file the supervisor opens before forking, so
it is inherited and vanishes with the server. Appends are single
O_APPEND writes of one short line, which the kernel does not interleave;
each worker reads what was added since its last look once a second, so
a purge reaches every worker's cache within a second of being accepted.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import NamedTuple

MAX_RECORD = 4096


class Purge(NamedTuple):
    host: str
    path: str
    prefix: bool


class PurgeLog:
    def __init__(self) -> None:
        handle = tempfile.TemporaryFile(prefix="edgeward-purge-")  # noqa: SIM115 - kept open for the server's life
        self._file = handle
        self.fd = os.open(f"/proc/self/fd/{handle.fileno()}", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.offset = 0

    def append(self, purge: Purge) -> None:
        line = json.dumps(list(purge), separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_RECORD:
            raise ValueError("purge record too long")
        os.write(self.fd, line)

    def poll(self) -> list[Purge]:
        """Purges appended (by any worker) since the last poll."""
        size = os.fstat(self._file.fileno()).st_size
        if size <= self.offset:
            return []
        data = os.pread(self._file.fileno(), size - self.offset, self.offset)
        end = data.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in data[:end].splitlines():
            host, path, prefix = json.loads(line)
            out.append(Purge(str(host), str(path), bool(prefix)))
        return out

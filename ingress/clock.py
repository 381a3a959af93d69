"""The coarse clock: one tick a second, shared by every request.

The Date header, timeouts and cache revalidation only need one-second
resolution. Formatting the date once per tick, instead of once per
request, keeps `time` calls and string formatting off the hot path.
"""

from __future__ import annotations

import time
from email.utils import formatdate


class Clock:
    __slots__ = ("date", "now", "preamble", "server", "server_name", "tick")

    def __init__(self, server_header: str) -> None:
        self.tick = 0
        self.set_server(server_header)

    def set_server(self, server_header: str) -> None:
        self.server_name = server_header.encode("latin-1")
        self.server = b"Server: " + server_header.encode("latin-1") + b"\r\n" if server_header else b""
        self.advance()

    def advance(self) -> None:
        """Called once a second by the worker; the preamble object changes identity."""
        self.now = time.monotonic()
        self.date = formatdate(usegmt=True).encode("ascii")
        self.preamble = b"Date: " + self.date + b"\r\n" + self.server
        self.tick += 1

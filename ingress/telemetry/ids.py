"""Random ids for requests, traces and spans, from a buffer of CSPRNG output.

Ids must not be guessable (an origin may key idempotency or audit on a
request id, a trace id is a capability in some backends, and a counter
would also tell anyone the traffic volume), but `os.urandom` per id is a
system call per request. One refill serves about a hundred requests. The
buffer is dropped in a forked child, so workers never share ids.
"""

from __future__ import annotations

import os
from binascii import hexlify


class Entropy:
    __slots__ = ("_buffer", "_position")

    SIZE = 2048  # bytes per refill

    def __init__(self) -> None:
        self._buffer = b""
        self._position = 0

    def reset(self) -> None:
        self._buffer = b""
        self._position = 0

    def raw(self, size: int) -> bytes:
        start = self._position
        end = start + size
        if end > len(self._buffer):
            self._buffer = os.urandom(self.SIZE)
            start, end = 0, size
        self._position = end
        return self._buffer[start:end]

    def hex(self, digits: int) -> bytes:
        """`digits` lower-case hex digits (an even number), as ASCII bytes."""
        return hexlify(self.raw(digits // 2))


ENTROPY = Entropy()
os.register_at_fork(after_in_child=ENTROPY.reset)

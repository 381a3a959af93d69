"""A body streaming between two connections on one loop, with backpressure both ways.

A proxied request body flows from the client's connection into the upstream
one, and the answer flows back; neither may be held whole in memory. A Pipe
is the one shape for both directions and every protocol version: the
producer `feed`s chunks and is told to pause when more than `high_water`
bytes wait, and `on_drain` resumes it once the consumer has read them
down. The consumer is woken by `on_readable` and pulls with `read`, as
much as its own window (a socket's buffer, an HTTP/2 or QUIC flow-control
window) allows. Callbacks only, no coroutine: both ends are asyncio
Protocols and stay on the hot path's terms.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

HIGH_WATER = 256 * 1024


class Pipe:
    __slots__ = (
        "_chunks",
        "buffered",
        "discarding",
        "eof",
        "error",
        "fed",
        "high_water",
        "length",
        "on_abandon",
        "on_consumed",
        "on_drain",
        "on_readable",
        "on_wanted",
        "paused",
        "read_total",
    )

    def __init__(self, length: int | None = None, high_water: int = HIGH_WATER) -> None:
        """`length`: the body's size when framing says it (Content-Length), None when it is delimited otherwise."""
        self.length = length
        self.high_water = high_water
        self._chunks: deque[bytes | memoryview] = deque()
        self.buffered = 0
        self.fed = 0
        self.read_total = 0
        self.eof = False
        self.error = ""
        self.paused = False
        self.discarding = False
        # Consumer side: called when data, the end or an error arrives.
        self.on_readable: Callable[[], None] | None = None
        # Producer side: called once buffered bytes fall to half the high-water mark after a pause.
        self.on_drain: Callable[[], None] | None = None
        # Producer side: called with the number of bytes read (HTTP/2 returns them as flow-control credit).
        self.on_consumed: Callable[[int], None] | None = None
        # Producer side: called once if the consumer goes away for good (the client disconnected),
        # so an upstream exchange stops instead of reading a body nobody will receive.
        self.on_abandon: Callable[[], None] | None = None
        # Producer side: called once when a consumer first asks for the body (HTTP/1.1 sends
        # 100 Continue then, so a request refused before that never has its body uploaded).
        self.on_wanted: Callable[[], None] | None = None

    # producer ---------------------------------------------------------------
    def feed(self, data: bytes | memoryview) -> bool:
        """Queue `data`; False means stop producing until `on_drain`."""
        n = len(data)
        if not n or self.eof or self.error:
            return True
        self.fed += n
        if self.length is not None and self.fed > self.length:
            # More than the framing promised (HTTP/3 checks Content-Length only at the stream's end):
            # passing the excess on would let it be read upstream as a request of its own.
            self.fail("body longer than its Content-Length")
            return False
        if self.discarding:
            if self.on_consumed is not None:
                self.on_consumed(n)
            return True
        self._chunks.append(data)
        self.buffered += n
        if self.on_readable is not None:
            self.on_readable()
        if self.buffered > self.high_water:
            self.paused = True
            return False
        return True

    def finish(self) -> None:
        """The producer has sent everything; `done` once the consumer has read it."""
        if self.eof or self.error:
            return
        self.eof = True
        if self.on_readable is not None:
            self.on_readable()

    def fail(self, reason: str) -> None:
        """The producer broke off: the body is incomplete and must not be passed on as if whole."""
        if self.eof or self.error:
            return
        self.error = reason or "aborted"
        self._chunks.clear()
        dropped, self.buffered = self.buffered, 0
        if dropped and self.on_consumed is not None:
            self.on_consumed(dropped)  # HTTP/2 window the bytes held: returned, or the connection's shrinks
        if self.on_readable is not None:
            self.on_readable()

    # consumer ---------------------------------------------------------------
    def want(self, reader: Callable[[], None]) -> None:
        """Become the consumer: `reader` is called whenever there is something to read."""
        self.on_readable = reader
        wanted = self.on_wanted
        if wanted is not None:
            self.on_wanted = None
            wanted()
        if self._chunks or self.eof or self.error:
            reader()

    def read(self, limit: int = -1) -> bytes | memoryview:
        """Up to `limit` bytes (all buffered when -1); empty when nothing waits."""
        chunks = self._chunks
        if not chunks:
            return b""
        if limit < 0 or limit >= self.buffered:
            if len(chunks) == 1:
                data = chunks.popleft()
            else:
                data = b"".join(chunks)
                chunks.clear()
        else:
            parts: list[bytes | memoryview] = []
            need = limit
            while need:
                head = chunks[0]
                if len(head) <= need:
                    parts.append(chunks.popleft())
                    need -= len(head)
                else:
                    view = memoryview(head)
                    parts.append(view[:need])
                    chunks[0] = view[need:]
                    need = 0
            data = parts[0] if len(parts) == 1 else b"".join(parts)
        n = len(data)
        self.buffered -= n
        self.read_total += n
        if self.on_consumed is not None:
            self.on_consumed(n)
        if self.paused and self.buffered <= self.high_water // 2:
            self.paused = False
            if self.on_drain is not None:
                self.on_drain()
        return data

    def set_high_water(self, mark: int) -> None:
        """Move the pause threshold; a producer paused under the old one resumes if the new one has room.

        Without the resume, a consumer that raises the mark to wait for more (and reads nothing
        meanwhile) would wait for ever on a producer that stopped at the old mark.
        """
        self.high_water = mark
        if self.paused and self.buffered <= mark:
            self.paused = False
            if self.on_drain is not None:
                self.on_drain()

    def discard(self) -> None:
        """Nobody will read this body: drop what waits and whatever comes, still counting it."""
        if self.discarding:
            return
        self.discarding = True
        self.on_readable = None
        waiting = self.buffered
        self._chunks.clear()
        self.buffered = 0
        if waiting and self.on_consumed is not None:
            self.on_consumed(waiting)
        if self.paused:
            self.paused = False
            if self.on_drain is not None:
                self.on_drain()

    def abandon(self) -> None:
        """The consumer is gone: drop the body and tell the producer to stop."""
        self.discard()
        hook = self.on_abandon
        if hook is not None:
            self.on_abandon = None
            hook()

    @property
    def done(self) -> bool:
        """Everything was produced and read."""
        return self.eof and not self._chunks

    @property
    def complete(self) -> bool:
        """Whether what was fed is the whole body its framing promised."""
        return self.eof and (self.length is None or self.fed == self.length)


def drop_outcome(waiting: asyncio.Future[Any]) -> None:
    """A handler's answer nobody will receive: cancel it, or if it is already there, let its body go.

    Cancelling a Future that has finished does nothing, so an answer that
    arrived just as its client left would keep its upstream exchange open.
    """
    if not waiting.done():
        waiting.cancel()
        return
    if waiting.cancelled() or waiting.exception() is not None:
        return
    body = getattr(waiting.result(), "body", None)
    if isinstance(body, Pipe):
        body.abandon()

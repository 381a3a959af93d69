"""Streaming a FileBody without copying it through Python bytes.

Plain TCP: `os.sendfile` from the page cache to the socket. When the socket
is full, writability is watched on a dup of its fd, because uvloop owns the
original fd's poll registration and has no loop.sendfile. TLS: slices of a
read-only mmap are written as memoryviews, so OpenSSL encrypts straight from
the page cache. Both honour backpressure: nothing is read ahead of what the
peer accepts. kTLS would let sendfile work under TLS too, but uvloop's TLS
runs on memory BIOs, which kTLS cannot take over; see `ktls_status`.

A file truncated while it is mapped would fault (SIGBUS) on the next slice,
so the size is checked before each slice: a response cut short is aborted,
the worker lives.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from ingress.protocol.events import FileBody

CHUNK = 256 * 1024


class FileSender:
    """Sends one FileBody after its head; calls `done(ok)` exactly once, possibly before returning."""

    __slots__ = (
        "done",
        "finished",
        "loop",
        "offset",
        "parts",
        "paused",
        "progress",
        "remaining",
        "sock_fd",
        "source",
        "transport",
        "watch_fd",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.WriteTransport,
        body: FileBody,
        sock_fd: int,
        done: Callable[[bool], None],
        progress: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.transport = transport
        self.done = done
        self.progress = progress
        self.source = body.source
        self.parts = list(body.parts)
        self.paused = False
        self.finished = False
        self.sock_fd = -1
        self.watch_fd = -1
        self.offset = 0
        self.remaining = 0
        single = len(self.parts) == 1 and isinstance(self.parts[0], tuple)
        if sock_fd >= 0 and single and transport.get_write_buffer_size() == 0:
            self.sock_fd = sock_fd

    def start(self) -> None:
        """Begin sending; the caller must already hold this sender, as `done` may run at once."""
        if self.sock_fd >= 0:
            part = self.parts.pop()
            assert isinstance(part, tuple)
            self.offset, self.remaining = part
            self._sendfile()
        else:
            self._pump()

    # sendfile path ------------------------------------------------------
    def _sendfile(self) -> None:
        fd = self.source.fd
        try:
            while self.remaining:
                sent = os.sendfile(self.sock_fd, fd, self.offset, self.remaining)
                if sent == 0:
                    self._finish(False)  # the file shrank under us
                    return
                self.offset += sent
                self.remaining -= sent
        except BlockingIOError:
            self.progress()
            if self.watch_fd < 0:
                self.watch_fd = os.dup(self.sock_fd)
            self.loop.add_writer(self.watch_fd, self._writable)
            return
        except OSError:
            self._finish(False)
            return
        self._finish(True)

    def _writable(self) -> None:
        self.loop.remove_writer(self.watch_fd)
        self._sendfile()

    # memoryview path ----------------------------------------------------
    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        if self.paused and not self.finished and self.sock_fd < 0:
            self.paused = False
            self._pump()

    def _pump(self) -> None:
        write = self.transport.write
        source = self.source
        view = source.view()
        while not self.paused:
            if self.remaining:
                n = min(self.remaining, CHUNK)
                # Touching a mapped page past the end of a file truncated under us
                # raises SIGBUS and kills the worker; check the size before each slice.
                if os.fstat(source.fd).st_size < self.offset + n:
                    self._finish(False)
                    return
                write(view[self.offset : self.offset + n])
                self.offset += n
                self.remaining -= n
                self.progress()
                continue
            if not self.parts:
                self._finish(True)
                return
            part = self.parts.pop(0)
            if isinstance(part, bytes):
                write(part)
            else:
                self.offset, self.remaining = part

    def _finish(self, ok: bool) -> None:
        if self.finished:
            return
        self.close()
        self.done(ok)

    def close(self) -> None:
        """Release the socket watch; safe to call more than once (e.g. on connection loss)."""
        self.finished = True
        if self.watch_fd >= 0:
            self.loop.remove_writer(self.watch_fd)
            os.close(self.watch_fd)
            self.watch_fd = -1


def ktls_status() -> str:
    """Why large files over TLS use mmap writes rather than kernel TLS."""
    if not os.path.exists("/sys/module/tls"):
        return "unavailable: the kernel has no tls module loaded"
    return "kernel supports kTLS, but uvloop terminates TLS on memory BIOs, which kTLS cannot offload"


class BodyCursor:
    """Reads a response body piece by piece, as HTTP/2 and HTTP/3 flow control allows.

    Those protocols frame every byte themselves, so a file cannot go out by
    sendfile; it is read with `pread` one window at a time instead, and a
    peer that stops granting credit stops the reads. A file that shrinks
    under the cursor raises OSError: the promised length can no longer be kept.
    """

    __slots__ = ("body", "fd", "index", "offset", "parts", "remaining")

    def __init__(self, body: bytes | FileBody) -> None:
        self.body = body  # a FileBody holds its FileSource, and so its descriptor, open until sent
        if isinstance(body, bytes):
            self.parts: tuple[bytes | tuple[int, int], ...] = (body,)
            self.fd = -1
            self.remaining = len(body)
        else:
            self.parts = body.parts
            self.fd = body.source.fd
            self.remaining = body.length
        self.index = 0
        self.offset = 0

    def read(self, limit: int) -> bytes:
        """Up to `limit` next bytes; raises OSError if the file shrank under us."""
        parts = self.parts
        pieces: list[bytes] = []
        while limit and self.index < len(parts):
            part = parts[self.index]
            if isinstance(part, bytes):
                piece = part[self.offset : self.offset + limit]
                size = len(part)
            else:
                start, size = part
                want = min(limit, size - self.offset)
                piece = os.pread(self.fd, want, start + self.offset)
                if len(piece) != want:
                    raise OSError("file shrank while it was sent")
            self.offset += len(piece)
            limit -= len(piece)
            if self.offset >= size:
                self.index += 1
                self.offset = 0
            pieces.append(piece)
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.remaining -= len(data)
        return data

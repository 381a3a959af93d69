"""Streaming a FileBody without copying it through Python bytes.

Plain TCP: `os.sendfile` from the page cache to the socket, driven by
writability of a dup of the socket's fd (uvloop has no loop.sendfile and
owns the original fd's poll registration). TLS: slices of a read-only mmap
are written as memoryviews, so OpenSSL encrypts straight from the page
cache. Both honour backpressure: nothing is read ahead of what the peer
accepts. kTLS would let sendfile work under TLS too, but uvloop's TLS runs
on memory BIOs, which kTLS cannot take over; see `ktls_status`.
"""

from __future__ import annotations

import asyncio
import mmap
import os
from collections.abc import Callable

from ingress.protocol.events import FileBody

CHUNK = 256 * 1024


class FileChanged(Exception):
    pass


def _open(body: FileBody) -> int:
    fd = os.open(body.path, os.O_RDONLY | os.O_CLOEXEC)
    st = os.fstat(fd)
    if (st.st_ino, st.st_mtime_ns, st.st_size) != body.identity:
        os.close(fd)
        raise FileChanged(body.path)
    return fd


class FileSender:
    """Sends one FileBody; calls `done(ok)` exactly once."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.WriteTransport,
        body: FileBody,
        use_sendfile: bool,
        done: Callable[[bool], None],
        progress: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.transport = transport
        self.done = done
        self.progress = progress
        self.fd = _open(body)
        self.parts = list(body.parts)
        self.paused = False
        self.finished = False
        self.sock_fd = -1
        self.mv: memoryview | None = None
        self.offset = 0
        self.remaining = 0
        single = len(self.parts) == 1 and isinstance(self.parts[0], tuple)
        sock = transport.get_extra_info("socket")
        if use_sendfile and single and sock is not None and transport.get_write_buffer_size() == 0:
            self.sock_fd = os.dup(sock.fileno())
            part = self.parts.pop()
            assert isinstance(part, tuple)
            self.offset, self.remaining = part
            self._sendfile()
        else:
            if body.length:
                mm = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
                self.mv = memoryview(mm)
            self._pump()

    # sendfile path ------------------------------------------------------
    def _sendfile(self) -> None:
        try:
            while self.remaining:
                sent = os.sendfile(self.sock_fd, self.fd, self.offset, min(self.remaining, 1 << 20))
                if sent == 0:
                    raise FileChanged("file shrank during sendfile")
                self.offset += sent
                self.remaining -= sent
                self.progress()
        except BlockingIOError:
            self.loop.add_writer(self.sock_fd, self._writable)
            return
        except (OSError, FileChanged):
            self._finish(False)
            return
        self._finish(True)

    def _writable(self) -> None:
        self.loop.remove_writer(self.sock_fd)
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
        while not self.paused:
            if self.remaining:
                assert self.mv is not None
                n = min(self.remaining, CHUNK)
                write(self.mv[self.offset : self.offset + n])
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
        self.finished = True
        self.close()
        self.done(ok)

    def close(self) -> None:
        """Release everything; safe to call more than once (e.g. on connection loss)."""
        self.finished = True
        if self.sock_fd >= 0:
            self.loop.remove_writer(self.sock_fd)
            os.close(self.sock_fd)
            self.sock_fd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        # The transport may still hold slices; the mmap is unmapped once they are gone.
        self.mv = None


def ktls_status() -> str:
    """Why large files over TLS use mmap writes rather than kernel TLS."""
    if not os.path.exists("/sys/module/tls"):
        return "unavailable: the kernel has no tls module loaded"
    return "kernel supports kTLS, but uvloop terminates TLS on memory BIOs, which kTLS cannot offload"

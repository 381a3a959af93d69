"""Accepting on a listener whose connections start with a PROXY protocol header.

The header comes before everything else, the TLS ClientHello included, so
the event loop's own server (which starts TLS the moment it accepts) cannot
be used. This accepts raw sockets itself, reads exactly the header, and only
then hands the socket to the loop, TLS and all, with the address the header
named as the connection's client.

Reading exactly the header, and never a byte more, is what keeps the TLS
stream intact: each read first peeks, the parser says how much of what it
saw is header, and only that much is received (see ingress.protocol.proxy).

A header is believed only from the balancers in `listener.proxy_from`; any
other peer is disconnected at accept, before a byte is read. A header that
does not parse, or does not arrive within `limits.handshake_timeout`, closes
the connection. Neither is answered: the peer is a balancer, not a client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING

from ingress.errors import ProtocolError
from ingress.policy.network import AddressSet
from ingress.protocol.proxy import MAX_HEADER, parse_proxy_header
from ingress.server.selector import protocol_factory

if TYPE_CHECKING:
    from ingress.server.runtime import ListenerRuntime, WorkerContext

log = logging.getLogger("edgeward.proxy")

# Connections accepted per readiness callback: enough to empty a burst, small enough to stay fair to requests.
ACCEPT_BATCH = 64
# After the process runs out of descriptors or memory, wait this long before accepting again.
ACCEPT_BACKOFF = 1.0


class ProxiedServer:
    """Stands in for the loop's server on one listening socket: `close` stops accepting."""

    __slots__ = ("_from", "closed", "connecting", "ctx", "loop", "readers", "runtime", "sock", "ssl")

    def __init__(
        self, ctx: WorkerContext, runtime: ListenerRuntime, sock: socket.socket, ssl_ctx: ssl.SSLContext | None
    ) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.runtime = runtime
        self.sock = sock
        self.ssl = ssl_ctx
        self.readers: set[_HeaderReader] = set()
        self.connecting = 0
        self.closed = False
        self._from: tuple[tuple[str, ...], AddressSet] = ((), AddressSet(()))

    @property
    def pending(self) -> int:
        """Connections accepted but not yet handed to a protocol (header or TLS handshake under way)."""
        return len(self.readers) + self.connecting

    def start(self) -> None:
        self.loop.add_reader(self.sock, self._accept, ACCEPT_BATCH)

    def close(self) -> None:
        """Stop accepting and close the listening socket; connections in setup finish on their own."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock)
        self.sock.close()

    def accept_backlog(self) -> None:
        """Take every connection the kernel has completed (see Worker._adopt_backlog)."""
        if not self.closed:
            self._accept(0)

    # accepting ---------------------------------------------------------------
    def _accept(self, batch: int) -> None:
        """Accept up to `batch` connections (0: until none is waiting)."""
        accepted = 0
        while not batch or accepted < batch:
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                # EMFILE, ENFILE, ENOBUFS: the socket stays readable, so waiting is the only way not to spin.
                log.error(
                    "cannot accept on listener %s: %s; pausing %.0fs",
                    self.runtime.config.name,
                    exc,
                    ACCEPT_BACKOFF,
                    extra={"event": "proxy.accept_failed"},
                )
                self.loop.remove_reader(self.sock)
                self.loop.call_later(ACCEPT_BACKOFF, self._resume)
                return
            accepted += 1
            self._start(conn, address[0])

    def _resume(self) -> None:
        if not self.closed:
            self.start()

    def _allowed(self) -> AddressSet:
        """The balancers of the current config; rebuilt only when a reload changed them."""
        cidrs = self.runtime.config.proxy_from
        if self._from[0] is not cidrs:
            self._from = (cidrs, AddressSet(cidrs))
        return self._from[1]

    def _start(self, conn: socket.socket, peer: str) -> None:
        conn.setblocking(False)
        if peer not in self._allowed():
            self.ctx.stats.refused["proxy_from"] += 1
            log.debug("%s is not in proxy_from; closed", peer, extra={"event": "proxy.refused"})
            conn.close()
            return
        reader = _HeaderReader(self, conn)
        self.readers.add(reader)
        self.loop.add_reader(conn, reader.readable)
        reader.timer = self.loop.call_later(self.ctx.limits.handshake_timeout, reader.expire)

    # handing over ------------------------------------------------------------
    def _hand_over(self, conn: socket.socket, client: str) -> None:
        self.connecting += 1
        self.loop.create_task(self._connect(conn, client))

    async def _connect(self, conn: socket.socket, client: str) -> None:
        try:
            await self.loop.connect_accepted_socket(
                protocol_factory(self.ctx, self.runtime, client),
                conn,
                ssl=self.ssl,
                ssl_handshake_timeout=self.ctx.limits.handshake_timeout if self.ssl is not None else None,
            )
        except (OSError, ssl.SSLError):
            conn.close()  # a failed handshake; the transport detached the socket if it took it
        finally:
            self.connecting -= 1


class _HeaderReader:
    """One connection until its header is read: peek, consume only header bytes, repeat."""

    __slots__ = ("conn", "seen", "server", "timer")

    def __init__(self, server: ProxiedServer, conn: socket.socket) -> None:
        self.server = server
        self.conn = conn
        self.seen = b""
        self.timer: asyncio.TimerHandle | None = None

    def readable(self) -> None:
        conn = self.conn
        try:
            chunk = conn.recv(MAX_HEADER - len(self.seen), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset: nothing to count unless a header had begun
            self._fail("truncated" if self.seen else "", "connection reset")
            return
        if not chunk:
            # A balancer's TCP health check connects and closes without a byte; only a cut header is an error.
            self._fail("truncated" if self.seen else "", "closed before the header ended")
            return
        data = self.seen + chunk
        try:
            mode = self.server.runtime.config.proxy_protocol
            header = parse_proxy_header(data, "any" if mode == "off" else mode)  # "off" after a reload: still a header
        except ProtocolError as exc:
            self._fail("malformed", exc.reason)
            return
        try:
            if header is None:
                _receive_exactly(conn, len(chunk))  # all of it is header (the parser's promise)
                self.seen = data
                return
            _receive_exactly(conn, header.length - len(self.seen))
        except OSError:
            self._fail("truncated", "connection reset")
            return
        self._stop()
        self.server._hand_over(conn, header.client)

    def expire(self) -> None:
        self.timer = None
        self._fail("timeout", "no complete header in time")

    def _stop(self) -> None:
        server = self.server
        server.readers.discard(self)
        server.loop.remove_reader(self.conn)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fail(self, reason: str, detail: str) -> None:
        self._stop()
        self.conn.close()
        if reason:
            self.server.ctx.stats.proxy_errors[reason] += 1
            log.debug("PROXY header refused (%s): %s", reason, detail, extra={"event": "proxy.error", "reason": reason})


def _receive_exactly(conn: socket.socket, n: int) -> None:
    """Take `n` bytes already peeked at; they are in the kernel's buffer, so this does not block."""
    while n > 0:
        got = conn.recv(n)
        if not got:
            raise ConnectionResetError("connection closed under a peeked header")
        n -= len(got)

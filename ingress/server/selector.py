"""Which protocol a new TCP connection speaks.

On TLS the handshake has already settled it: ALPN `h2` means HTTP/2, and
anything else (`http/1.1`, or a client that offered no ALPN) means
HTTP/1.1. On a plain listener with h2c enabled, the first bytes decide: the
HTTP/2 connection preface, or an HTTP/1.1 request line. Listeners without
either never see this module's sniffing, so the HTTP/1.1 hot path is as it was.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING

from ingress.protocol.http2 import PREFACE
from ingress.server.connection import HTTP1Connection
from ingress.server.h2connection import HTTP2Connection

if TYPE_CHECKING:
    from ingress.server.runtime import ListenerRuntime, WorkerContext

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


def protocol_factory(ctx: WorkerContext, runtime: ListenerRuntime, client: str = "") -> ProtocolFactory:
    """What the event loop calls for each accepted connection of this listener.

    `client` is the address a PROXY protocol header named (a factory made for
    one connection, see ingress.server.proxied); "" uses the socket's.
    """
    config = runtime.config
    if config.tls is not None and "h2" in config.tls.alpn:
        return lambda: _ALPNChoice(ctx, runtime, client)
    if config.tls is None and config.h2c:
        return lambda: _PrefaceSniffer(ctx, runtime, client)
    return lambda: HTTP1Connection(ctx, runtime, client)


class _ALPNChoice(asyncio.Protocol):
    """Stands in until the handshake is done, then hands the transport over."""

    __slots__ = ("client", "ctx", "runtime")

    def __init__(self, ctx: WorkerContext, runtime: ListenerRuntime, client: str) -> None:
        self.ctx = ctx
        self.runtime = runtime
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sslobj = transport.get_extra_info("ssl_object")
        chosen = sslobj.selected_alpn_protocol() if sslobj is not None else None
        # http/1.1, or no ALPN at all, is HTTP/1.1.
        kind = HTTP2Connection if chosen == "h2" else HTTP1Connection
        proto: asyncio.Protocol = kind(self.ctx, self.runtime, self.client)
        transport.set_protocol(proto)
        proto.connection_made(transport)


class _PrefaceSniffer(asyncio.Protocol):
    """Holds the first bytes until they show the HTTP/2 preface or cannot be it.

    Until then it is a connection like any other (in `ctx.connections`), so
    a client that connects and sends nothing is closed at the header
    timeout, and a draining worker closes it, as it would an idle HTTP/1.1
    connection.
    """

    __slots__ = ("client", "ctx", "deadline", "listener", "seen", "transport")

    def __init__(self, ctx: WorkerContext, runtime: ListenerRuntime, client: str) -> None:
        self.ctx = ctx
        self.listener = runtime
        self.client = client
        self.seen = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        ctx = self.ctx
        self.deadline = ctx.clock.now + ctx.limits.header_timeout
        ctx.connections.add(self)
        if ctx.draining:
            self.drain(ctx.config.server.drain_idle_grace)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        seen = self.seen + data
        if len(seen) < len(PREFACE) and PREFACE.startswith(seen):
            self.seen = seen  # still could be either
            return
        self.ctx.connections.discard(self)  # the real connection takes over from here
        kind = HTTP2Connection if seen.startswith(PREFACE) else HTTP1Connection
        proto: asyncio.Protocol = kind(self.ctx, self.listener, self.client)
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        if not self.transport.is_closing():  # refused (over the per-address cap): nothing more to read
            proto.data_received(seen)

    def eof_received(self) -> bool | None:
        return None

    # the worker's Connection interface -----------------------------------------
    def sweep(self, now: float) -> None:
        if now >= self.deadline:
            self.transport.close()

    def drain(self, grace: float) -> None:
        self.ctx.loop.call_later(grace, self._close_if_undecided)

    def abort(self) -> None:
        self.transport.abort()

    def _close_if_undecided(self) -> None:
        if self in self.ctx.connections:
            self.transport.close()

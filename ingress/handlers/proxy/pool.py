"""Keep-alive connections to one origin, within the limits that protect it.

Reusing a connection saves a TCP and often a TLS handshake per request,
which at a bank's request rates is most of an origin's connection work.
The most recently used idle connection is taken first (LIFO): it is the
one least likely to have been closed by the origin's own idle timeout,
and the least used ones age out of the pool by themselves.

`max_connections` counts every connection, busy, idle or still
connecting, so an origin never sees more. Requests beyond it wait in
arrival order; beyond `max_pending` waiting, the circuit is open and they
fail at once with `pool_full` rather than queue behind an origin that is
already not keeping up.

Idle connections are closed after `idle_timeout` by one timer per pool,
armed for the oldest idle connection only. One the origin closes while
idle leaves the pool when its close is seen. The race that remains (the
origin closes just as a request goes out) fails that request with
`reused=True` and nothing answered, which the caller may safely retry.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from ingress.config.upstream import Upstream
from ingress.handlers.proxy.upstream import IDLE, Origin, UpstreamConnection, UpstreamError
from ingress.protocol.pipe import Pipe
from ingress.tls.origin import origin_context, server_hostname

# Leeway for a timer the loop fires a millisecond early (uvloop rounds to milliseconds).
_EARLY = 0.002


class OriginPool:
    """The connections to one origin of an upstream, and the requests waiting for one."""

    def __init__(
        self,
        origin: Origin,
        upstream: Upstream,
        loop: asyncio.AbstractEventLoop,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context` is the upstream's `origin_context`, shared by its pools; built here when absent."""
        self.origin = origin
        self.config = upstream
        self._loop = loop
        if origin.scheme == "https":
            self._ssl: ssl.SSLContext | None = ssl_context or origin_context(upstream)
            self._server_hostname: str | None = server_hostname(upstream, origin.host)
        else:
            self._ssl = None
            self._server_hostname = None
        self._idle: deque[UpstreamConnection] = deque()
        self._busy: set[UpstreamConnection] = set()
        self._waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self.connecting = 0
        self.opened_total = 0
        self.reused_total = 0
        self.closed = False

    # counters ---------------------------------------------------------------------
    @property
    def active(self) -> int:
        """Connections handed out and not yet back: requests in flight on this origin."""
        return len(self._busy)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def pending(self) -> int:
        """Requests waiting for a connection."""
        return len(self._waiters)

    @property
    def total(self) -> int:
        """Connections counted against `max_connections`: busy, idle and connecting."""
        return len(self._busy) + len(self._idle) + self.connecting

    @property
    def in_flight(self) -> int:
        """Requests this origin is busy with or committed to, for least-requests balancing."""
        return len(self._busy) + len(self._waiters) + self.connecting

    # taking and giving back -----------------------------------------------------------
    async def acquire(self) -> UpstreamConnection:
        """A connection for one exchange: an idle one, a new one, or the next one freed.

        Raises UpstreamError (never answered): connect, connect_timeout,
        tls, pool_full (the circuit is open), closed. The connection goes
        back by itself when its exchange ends reusable; one acquired and
        not used must be given back with `release`.
        """
        limit = self.config.max_connections
        while True:
            if self.closed:
                raise UpstreamError("closed", f"the pool for {self.origin} is closed")
            conn = self.take_idle()
            if conn is not None:
                return conn
            if not self._waiters and self.total < limit:
                return await self._open(reserved=False)
            if len(self._waiters) >= self.config.max_pending:
                raise UpstreamError(
                    "pool_full",
                    f"{self.total} connections to {self.origin} in use and {len(self._waiters)} requests waiting",
                )
            fut: asyncio.Future[UpstreamConnection | None] = self._loop.create_future()
            self._waiters.append(fut)
            try:
                handed = await fut
            except asyncio.CancelledError:
                self._abandon(fut)
                raise
            if handed is None:
                # A slot was freed and reserved for this request.
                return await self._open(reserved=True)
            if handed.usable:
                return handed
            # Closed by the origin between being handed over and this task running: queue again.

    def take_idle(self) -> UpstreamConnection | None:
        """An idle connection now, without waiting: None when there is none (`acquire` would dial or queue).

        Taken as `acquire` takes it: it goes back by itself, or with `release` if it is not used.
        """
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.usable:
                conn.held = True
                self._busy.add(conn)
                self.reused_total += 1
                return conn
            conn.close()
        return None

    def release(self, conn: UpstreamConnection) -> None:
        """Give back a connection acquired and never started; it is kept idle (or closed past the limits).

        A started connection is not the caller's to give back: it returns by
        itself when its exchange ends, and may already serve another request,
        so releasing it then does nothing. To give up an exchange, `abort` it.
        """
        if not conn.held:
            return
        conn.held = False
        if conn.state != IDLE:
            conn.abort()
            return
        self.connection_idle(conn)

    def close(self) -> None:
        """Close idle connections and fail waiting requests (reload, shutdown).

        Exchanges in flight are left to finish: their connections are
        closed as they come back instead of being kept. New `acquire`s fail
        with `closed`.
        """
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._idle:
            self._idle.pop().close()
        error = UpstreamError("closed", f"the pool for {self.origin} was closed")
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(error)
                fut.exception()

    # connection callbacks --------------------------------------------------------------
    def connection_idle(self, conn: UpstreamConnection) -> None:
        """`conn` finished an exchange and may serve another: hand it to a waiter, keep it, or close it."""
        busy = self._busy
        if conn not in busy:
            return
        if not conn.usable or self.closed or self.total > self.config.max_connections:
            busy.discard(conn)
            conn.close()
            self._wake()
            return
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                self.reused_total += 1
                conn.held = True
                fut.set_result(conn)
                return
        busy.discard(conn)
        if len(self._idle) >= self.config.max_idle:
            conn.close()
            return
        conn.idle_since = self._loop.time()
        self._idle.append(conn)
        self._arm_sweep()

    def connection_closed(self, conn: UpstreamConnection) -> None:
        """`conn`'s socket is gone (origin close, error, our own close): its slot is free."""
        if conn in self._busy:
            self._busy.discard(conn)
        else:
            try:
                self._idle.remove(conn)  # an idle connection the origin closed; the pool keeps tens at most
            except ValueError:
                return
        self._wake()

    # probes -------------------------------------------------------------------------------------
    async def probe(self, path: str = "/", host: str = "", timeout: float = 2.0) -> int:
        """GET `path` for an active health check; the status, once the body was read and dropped.

        The probe takes an idle connection or opens a new one even when the
        pool is at `max_connections` or its circuit is open: a busy origin
        is not an unhealthy one. It may exceed the limit by one connection
        per probe in flight, closed when the probe ends. Raises UpstreamError
        on failure, with the `*_timeout` kind of the stage `timeout` ran out in.
        """
        if not path.startswith("/") or any(c in path for c in " \t\r\n"):
            raise ValueError(f"health check path {path!r} must start with / and hold no whitespace")
        authority = host.encode("ascii") if host else self.origin.authority
        if any(c in authority for c in b" \t\r\n"):
            raise ValueError(f"health check host {host!r} holds whitespace")
        head = b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: edgeward-health\r\nAccept: */*\r\n\r\n" % (
            path.encode("ascii"),
            authority,
        )
        conn: UpstreamConnection | None = None
        stage = "connect_timeout"
        try:
            async with asyncio.timeout(timeout):
                conn = self.take_idle() or await self._open(reserved=False)
                stage = "first_byte_timeout"
                exchange = await conn.start(head, None, "GET")
                stage = "read_timeout"
                await _drain(conn, exchange.stream(), self._loop)
                return exchange.status
        except TimeoutError:
            if conn is not None:
                conn.abort()
            raise UpstreamError(
                stage, f"health probe took longer than {timeout:g}s", answered=stage == "read_timeout"
            ) from None

    # inside ---------------------------------------------------------------------------------
    async def _open(self, reserved: bool) -> UpstreamConnection:
        """Connect (and handshake) under `connect_timeout`; `reserved`: the slot was counted by `_wake`."""
        if not reserved:
            self.connecting += 1
        cfg = self.config
        loop = self._loop
        origin = self.origin
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamConnection(loop, cfg, self),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                    ssl_handshake_timeout=cfg.connect_timeout if self._ssl is not None else None,
                ),
                cfg.connect_timeout,
            )
        except BaseException as exc:
            self.connecting -= 1
            self._wake()
            if isinstance(exc, TimeoutError):
                raise UpstreamError(
                    "connect_timeout", f"{origin} did not connect within {cfg.connect_timeout:g}s"
                ) from None
            if isinstance(exc, ssl.SSLError) or (self._ssl is not None and isinstance(exc, ConnectionResetError)):
                raise UpstreamError("tls", f"TLS with {origin} failed: {exc}") from None
            if isinstance(exc, OSError):
                raise UpstreamError("connect", f"{origin}: {exc.strerror or exc}") from None
            raise
        self.connecting -= 1
        self.opened_total += 1
        conn.held = True
        self._busy.add(conn)
        if self.closed:
            self.release(conn)
            raise UpstreamError("closed", f"the pool for {self.origin} was closed")
        return conn

    def _wake(self) -> None:
        """A slot freed: reserve it for the first waiter, which then connects."""
        waiters = self._waiters
        while waiters and not self.closed and self.total < self.config.max_connections:
            fut = waiters.popleft()
            if not fut.done():
                self.connecting += 1
                fut.set_result(None)

    def _abandon(self, fut: asyncio.Future[UpstreamConnection | None]) -> None:
        """A waiter was cancelled: pass on whatever it had been given."""
        try:
            self._waiters.remove(fut)
            return
        except ValueError:
            pass
        if not fut.done() or fut.cancelled() or fut.exception() is not None:
            return
        handed = fut.result()
        if handed is None:
            self.connecting -= 1
            self._wake()
        else:
            self.release(handed)

    def _arm_sweep(self) -> None:
        if self._sweep is None and self._idle:
            self._sweep = self._loop.call_at(self._idle[0].idle_since + self.config.idle_timeout, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close the connections idle for `idle_timeout`; the oldest are at the front."""
        self._sweep = None
        deadline = self._loop.time() - self.config.idle_timeout + _EARLY
        idle = self._idle
        while idle and idle[0].idle_since <= deadline:
            idle.popleft().close()
        self._arm_sweep()


async def _drain(conn: UpstreamConnection, body: Pipe, loop: asyncio.AbstractEventLoop) -> None:
    """Read `body` to its end and drop it; raise the connection's failure if it breaks off."""
    done: asyncio.Future[None] = loop.create_future()

    def reader() -> None:
        body.read()
        if done.done():
            return
        if body.error:
            done.set_exception(conn.failure or UpstreamError("reset", body.error, answered=True))
        elif body.done:
            done.set_result(None)

    body.want(reader)
    await done

"""One worker process: one uvloop loop, its own listening sockets, no threads.

Everything periodic (the Date tick, timeouts, certificate polling, log
flushing) runs from loop timers between requests, never inside one.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingress.check import verify_config
from ingress.config.model import Config, Listener, TLSSettings
from ingress.config.semantics import parse_address
from ingress.errors import EdgewardError
from ingress.handlers.admin import AdminHandler
from ingress.handlers.purgelog import Purge, PurgeLog
from ingress.pipeline import Site
from ingress.routing import RouteEntry, Router
from ingress.server import reload
from ingress.server.filesend import ktls_status
from ingress.server.listeners import listen
from ingress.server.metrics import WorkerCollector
from ingress.server.proxied import ProxiedServer
from ingress.server.runtime import ListenerRuntime, WorkerContext, build_listener
from ingress.server.selector import protocol_factory
from ingress.telemetry.otlp.metrics import encode_metrics
from ingress.tls.contexts import base_context, tls_policy

if TYPE_CHECKING:
    from ingress.server.quic import QuicEndpoint

log = logging.getLogger("edgeward.worker")

ADMIN = "__admin__"

ReloadFn = Callable[[], Config]
ReadyFn = Callable[[], None]
SNICallback = Callable[[ssl.SSLObject, "str | None", ssl.SSLContext], None]


@dataclass
class _Bound:
    runtime: ListenerRuntime
    server: asyncio.AbstractServer | ProxiedServer  # the latter for listeners with proxy_protocol
    address: tuple[str, int]
    sock: socket.socket
    ssl: ssl.SSLContext | None


class Worker:
    def __init__(
        self,
        config: Config,
        addresses: dict[str, tuple[str, int]],
        reload_config: ReloadFn,
        index: int,
        udp: dict[str, socket.socket] | None = None,
        purges: PurgeLog | None = None,
    ) -> None:
        """`purges`: the server's shared cache-purge log, so a purge sent to one worker reaches all."""
        self.purges = purges
        self.config = config
        self.addresses = addresses
        self.reload_config = reload_config
        self.index = index
        # Every worker advertises HTTP/3 (Alt-Svc) on its TCP responses; only worker 0 serves it.
        self.udp = udp or {}
        self.quic_ports = {name: sock.getsockname()[1] for name, sock in self.udp.items()}
        self.quic: dict[str, QuicEndpoint] = {}
        self.bound: dict[str, _Bound] = {}
        self.done: asyncio.Future[None] | None = None
        self.adopting = 0

    async def run(self, ready: ReadyFn) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.ctx = WorkerContext(loop, self.config, self.index)
        self.started_ns = time.time_ns()
        self.collector = WorkerCollector(
            self.index, self.ctx, lambda: [b.runtime for b in self.bound.values()], self.quic
        )
        loop.set_exception_handler(self._loop_exception)
        self.done = loop.create_future()
        for listener in self.config.listeners:
            quic_port = self.quic_ports.get(listener.name, 0)
            ctx = self.ctx
            runtime = build_listener(
                self.config, listener, ctx.clock, quic_port, ctx.gate, ctx.backends, self.loop, ctx.tracer, ctx.firewall
            )
            await self._bind(listener, runtime)
        await self._serve_quic()
        if self.config.admin.enabled:
            await self._bind_admin()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drain)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.call_later(1.0, self._tick)
        loop.call_later(self.config.server.cert_poll_interval, self._poll_certs)
        loop.call_later(self.config.access_log.flush_interval, self._flush)
        loop.call_later(self.config.telemetry.interval, self._observe)
        loop.call_later(self.config.telemetry.otlp.metrics_interval, self._export_metrics)
        if self.index == 0 and any(listener.tls for listener in self.config.listeners):
            log.info(
                "large files over TLS are sent as mmap slices; kTLS %s",
                ktls_status(),
                extra={"event": "worker.ktls"},
            )
        gc.freeze()  # the listeners, contexts and routes built above live as long as the worker (see Supervisor.start)
        ready()
        await self.done
        if self.ctx.gate is not None:
            self.ctx.gate.stop()
        if self.ctx.backends is not None:
            self.ctx.backends.stop()
        if self.ctx.observer is not None:
            await self.ctx.observer.close()

    # binding ---------------------------------------------------------------
    async def _bind(self, listener: Listener, runtime: ListenerRuntime) -> None:
        host, port = self.addresses.get(listener.name) or parse_address(listener.address)
        sock = listen(host, port, listener.socket, listener.name, report=self.index == 0 and listener.name != ADMIN)
        ssl_ctx = None
        if runtime.certs is not None and listener.tls is not None:
            ssl_ctx = base_context(listener.name, listener.tls)
            ssl_ctx.sni_callback = _sni_callback(runtime)
        limits = self.ctx.limits
        server: asyncio.AbstractServer | ProxiedServer
        if listener.proxy_protocol != "off":
            server = ProxiedServer(self.ctx, runtime, sock, ssl_ctx)
            server.start()
        else:
            server = await self.loop.create_server(
                protocol_factory(self.ctx, runtime),
                sock=sock,
                ssl=ssl_ctx,
                ssl_handshake_timeout=limits.handshake_timeout if ssl_ctx else None,
                backlog=listener.socket.backlog,  # the loop listens again, with 100 unless told
            )
        old = self.bound.get(listener.name)
        self.bound[listener.name] = _Bound(runtime, server, (host, port), sock, ssl_ctx)
        if old is not None:
            old.server.close()
            self._drain_listener(old.runtime)

    async def _serve_quic(self) -> None:
        """Worker 0 serves each listener's UDP socket; the others let go of their inherited copies."""
        if self.index != 0:
            for sock in self.udp.values():
                sock.close()
            return
        for name, sock in self.udp.items():
            bound = self.bound.get(name)
            if bound is not None:
                self.quic[name] = await self._open_quic(sock, bound.runtime)

    async def _open_quic(self, sock: socket.socket, runtime: ListenerRuntime) -> QuicEndpoint:
        # Imported here: aioquic costs every worker memory, and only worker 0 with QUIC needs it.
        from ingress.server.quic import QuicEndpoint

        endpoint = QuicEndpoint(self.ctx, runtime)
        await self.loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        return endpoint

    async def _bind_admin(self) -> None:
        router = Router()
        handler = AdminHandler(lambda: not self.ctx.draining, self._metrics, self._purge)
        methods = frozenset({"GET", "HEAD", "PURGE"})
        router.add("*", RouteEntry("/", methods, b"GET, HEAD, OPTIONS, PURGE", handler.handle))
        admin_listener = Listener(name=ADMIN, address=self.config.admin.address)
        runtime = ListenerRuntime(admin_listener, Site(router), tls=False, capped=False, observed=False)
        await self._bind(admin_listener, runtime)

    def _purge(self, host: str, path: str, prefix: bool) -> int | None:
        backends = self.ctx.backends
        cache = backends.cache if backends is not None else None
        if cache is None or not self.ctx.config.cache.purge:
            return None
        if self.purges is not None:
            self.purges.append(Purge(host, path, prefix))  # the other workers follow within a second
        return cache.purge(host, path, prefix)

    def _apply_purges(self) -> None:
        backends = self.ctx.backends
        if self.purges is None:
            return
        for purge in self.purges.poll():
            if backends is not None and backends.cache is not None:
                backends.cache.purge(purge.host, purge.path, purge.prefix)

    # periodic work -----------------------------------------------------------
    def _tick(self) -> None:
        ctx = self.ctx
        ctx.clock.advance()
        self._apply_purges()
        now = ctx.clock.now
        for conn in list(ctx.connections):
            conn.sweep(now)
        self.loop.call_later(1.0, self._tick)

    def _poll_certs(self) -> None:
        for bound in self.bound.values():
            if bound.runtime.certs is not None:
                bound.runtime.certs.poll()
        self.loop.call_later(self.ctx.config.server.cert_poll_interval, self._poll_certs)

    def _flush(self) -> None:
        observer = self.ctx.observer
        if observer is not None and observer.access_log is not None:
            observer.access_log.flush()
        self.loop.call_later(self.ctx.config.access_log.flush_interval, self._flush)

    def _observe(self) -> None:
        if self.ctx.observer is not None:
            self.ctx.observer.tick()
        self.loop.call_later(self.ctx.config.telemetry.interval, self._observe)

    def _export_metrics(self) -> None:
        if self.ctx.observer is not None:
            self.ctx.observer.export_metrics(self._otlp_metrics)
        self.loop.call_later(self.ctx.config.telemetry.otlp.metrics_interval, self._export_metrics)

    def _otlp_metrics(self) -> bytes:
        observer = self.ctx.observer
        assert observer is not None
        return encode_metrics(self.collector.collect(), observer.resource, self.started_ns, time.time_ns())

    def _metrics(self) -> str:
        return self.collector.prometheus()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        exc = context.get("exception")
        if isinstance(exc, ssl.SSLError | ConnectionError | TimeoutError):
            return  # a failed or abandoned handshake is the client's problem, not an incident
        loop.default_exception_handler(context)

    # reload and drain --------------------------------------------------------
    def reload(self) -> None:
        config = reload.attempt(self.reload_config, verify_config)
        if config is not None:
            self.loop.create_task(self._apply(config))

    async def _apply(self, config: Config) -> None:
        try:
            self.ctx.apply(config)
        except EdgewardError as exc:
            log.error(
                "reload refused; still serving the previous config:\n%s",
                exc,
                extra={"event": "config.reload_refused"},
            )
            return
        self.config = config
        wanted = {listener.name for listener in config.listeners}
        for listener in config.listeners:
            fresh = build_listener(
                config,
                listener,
                self.ctx.clock,
                self.quic_ports.get(listener.name, 0),
                self.ctx.gate,
                self.ctx.backends,
                self.loop,
                self.ctx.tracer,
                self.ctx.firewall,
            )
            old = self.bound.get(listener.name)
            # Certificates are picked per handshake from runtime.certs, so only a new address, TLS
            # policy, PROXY mode or socket options needs a new socket; anything else is swapped in place.
            if (
                old is not None
                and old.runtime.config.address == listener.address
                and _policy(old.runtime.config) == _policy(listener)
                and old.runtime.config.proxy_protocol == listener.proxy_protocol
                and old.runtime.config.socket == listener.socket
            ):
                old.runtime.site = fresh.site
                old.runtime.certs = fresh.certs
                old.runtime.config = listener
                continue
            try:
                await self._bind(listener, fresh)
            except OSError as exc:
                log.error(
                    "cannot bind listener %s at %s: %s",
                    listener.name,
                    listener.address,
                    exc,
                    extra={"event": "config.bind_failed"},
                )
        for name in list(self.bound):
            if name != ADMIN and name not in wanted:
                gone = self.bound.pop(name)
                gone.server.close()
                self._drain_listener(gone.runtime)
        for name, endpoint in self.quic.items():
            if name in self.bound:
                endpoint.runtime = self.bound[name].runtime  # a rebound listener has a fresh runtime
            else:
                endpoint.drain()
        log.info("config reloaded", extra={"event": "config.reloaded", "source": config.source})

    def _drain_listener(self, runtime: ListenerRuntime) -> None:
        grace = self.ctx.config.server.drain_idle_grace
        for conn in list(self.ctx.connections):
            if conn.listener is runtime:
                conn.drain(grace)

    def drain(self) -> None:
        ctx = self.ctx
        if ctx.draining:
            return
        ctx.draining = True
        log.info("draining", extra={"event": "worker.drain", "connections": len(ctx.connections)})
        for name, bound in self.bound.items():
            if name != ADMIN:
                self._adopt_backlog(bound)
                bound.server.close()
        for endpoint in self.quic.values():
            endpoint.drain()
        grace = ctx.config.server.drain_idle_grace
        for conn in list(ctx.connections):
            conn.drain(grace)
        self._deadline = self.loop.time() + ctx.config.server.drain_timeout
        self._check_drained()

    def _adopt_backlog(self, bound: _Bound) -> None:
        """Take over connections the kernel has completed but the loop has not accepted yet.

        Closing a listening socket resets every connection still in its accept
        queue, request and all. With SO_REUSEPORT that queue fills exactly when
        it hurts: clients told `Connection: close` by a worker that drained
        first reconnect to a worker that drains a moment later. Accepting them
        here leaves only the instant between the last accept and the close.
        """
        if isinstance(bound.server, ProxiedServer):
            bound.server.accept_backlog()  # through its own path: each still starts with a header
            return
        while True:
            try:
                conn, _ = bound.sock.accept()
            except OSError:  # BlockingIOError: nothing is waiting
                return
            conn.setblocking(False)
            self.adopting += 1
            self.loop.create_task(self._adopt(conn, bound))

    async def _adopt(self, conn: socket.socket, bound: _Bound) -> None:
        try:
            await self.loop.connect_accepted_socket(
                protocol_factory(self.ctx, bound.runtime),
                conn,
                ssl=bound.ssl,
                ssl_handshake_timeout=self.ctx.limits.handshake_timeout if bound.ssl else None,
            )
        except (OSError, ssl.SSLError):
            conn.close()
        finally:
            self.adopting -= 1

    def _proxied_pending(self) -> int:
        """Connections a PROXY listener accepted and is still setting up (header, TLS handshake)."""
        return sum(b.server.pending for b in self.bound.values() if isinstance(b.server, ProxiedServer))

    def _check_drained(self) -> None:
        ctx = self.ctx
        if (ctx.connections or self.adopting or self._proxied_pending()) and self.loop.time() < self._deadline:
            self.loop.call_later(0.05, self._check_drained)
            return
        if ctx.connections:
            log.warning(
                "drain deadline reached; closing %d connections",
                len(ctx.connections),
                extra={"event": "worker.drain_deadline"},
            )
            for conn in list(ctx.connections):
                conn.abort()
        for bound in self.bound.values():
            bound.server.close()
        for endpoint in self.quic.values():
            endpoint.close()
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


def _policy(listener: Listener) -> TLSSettings | None:
    return None if listener.tls is None else tls_policy(listener.tls)


def _sni_callback(runtime: ListenerRuntime) -> SNICallback:
    def select(sslobj: ssl.SSLObject, server_name: str | None, current: ssl.SSLContext) -> None:
        sslobj.edge_sni = server_name  # type: ignore[attr-defined]
        certs = runtime.certs
        if certs is not None:
            certs.select(sslobj, server_name, current)

    return select

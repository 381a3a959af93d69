"""One HTTP/1.1 connection: the hot path.

Raw asyncio.Protocol callbacks, no streams and no coroutine per request:
bytes arrive in `data_received`, llhttp parses them in C, the pipeline
returns a Response, and a pre-serialised response goes out in one
`transport.write`. Timeouts are not timers per connection, and the hot path
does no timeout bookkeeping at all: the worker's one-second sweep notices
when a connection's state moved on and restarts its deadline from there.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing
from collections import deque
from typing import TYPE_CHECKING

from ingress.errors import ProtocolError
from ingress.handlers.errors import error_response
from ingress.protocol.events import FileBody, Request, Response
from ingress.protocol.http1 import BODY, HEAD, IDLE, RequestParser, serialize_head
from ingress.server.filesend import FileSender
from ingress.server.peer import tcp_peer

if TYPE_CHECKING:
    from ingress.server.runtime import ListenerRuntime, WorkerContext

log = logging.getLogger("edgeward.http1")


class HTTP1Connection(asyncio.Protocol):
    __slots__ = (
        "client",
        "closing",
        "counted",
        "ctx",
        "deadline",
        "final",
        "listener",
        "logging",
        "parser",
        "peer",
        "queue",
        "requests",
        "sender",
        "sent",
        "snap",
        "sock_fd",
        "t0",
        "transport",
        "write_paused",
    )

    def __init__(self, ctx: WorkerContext, listener: ListenerRuntime, client: str = "") -> None:
        """`client`: the address a PROXY protocol header named, "" to use the socket's."""
        self.ctx = ctx
        self.listener = listener
        self.client = client
        self.counted = False
        self.requests = 0
        self.closing = False
        self.final = False
        self.write_paused = False
        self.sender: FileSender | None = None
        self.queue: deque[Request] = deque()
        self.t0 = 0.0
        self.sent = 0

    # asyncio callbacks ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        ctx = self.ctx
        self.logging = ctx.access_log is not None
        self.peer = tcp_peer(transport, self.listener, self.logging, self.client)
        counted = ctx.admit(self.listener, self.peer.client)
        if counted is None:
            self.transport.abort()  # over the per-address cap; no further callback but connection_lost
            return
        self.counted = counted
        self.parser = RequestParser(self, ctx.limits, "https" if self.listener.tls else "http")
        self.snap = (IDLE, 0, 0)
        self.deadline = ctx.clock.now + ctx.limits.header_timeout
        ctx.connections.add(self)
        ctx.stats.connections_total += 1
        sock = transport.get_extra_info("socket") if not self.listener.tls else None
        self.sock_fd = sock.fileno() if sock is not None else -1
        if ctx.draining:  # accepted from the backlog while the worker drains
            self.drain(ctx.config.server.drain_idle_grace)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        if self.counted:
            self.ctx.release(self.peer.client)
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if self.logging and parser.state == IDLE:
            self.t0 = time.perf_counter()
        try:
            parser.feed(data)
        except ProtocolError as exc:
            self._reject(exc.status_hint, exc.reason)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.transport.pause_reading()
        if self.sender is not None:
            self.sender.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.sender is not None:
            self.sender.resume()
        elif not self.closing:
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        # A half-closed client still gets the responses it asked for.
        if self.sender is None and not self.queue:
            return None
        self.closing = True
        return True

    # requests ---------------------------------------------------------------
    def request_received(self, request: Request) -> None:
        request.peer = self.peer
        self.requests += 1
        if self.sender is not None or self.queue:
            self.queue.append(request)
            self.transport.pause_reading()
            return
        self._respond(request)

    def _respond(self, request: Request) -> None:
        ctx = self.ctx
        response = self.listener.site.handle(request)
        close = self.closing or not request.keep_alive or self.requests >= ctx.limits.max_requests_per_connection
        if close:
            # Set before writing: a file sent synchronously calls _sent from inside this call,
            # and nothing queued behind a closing response may be answered.
            self.closing = self.final = True
        wire = response.wire
        if wire is not None and not close and request.version == "1.1":
            self.transport.write(wire)
            body = response.body
            if body.__class__ is FileBody:
                self._send_file(body)
        else:
            self._write_generic(request, response, close)
        if self.logging:
            self._log(request, response)
        ctx.stats.by_class[response.status // 100] += 1
        if close and self.sender is None:
            self.transport.close()

    def _write_generic(self, request: Request, response: Response, close: bool) -> None:
        preamble = self.ctx.clock.preamble
        if request.version == "1.0" and not close:
            preamble += b"Connection: keep-alive\r\n"
        head = serialize_head(response.status, response.headers, preamble, close)
        body = response.body
        if request.method == "HEAD" or response.status in (204, 304):
            self.transport.write(head)
        elif isinstance(body, bytes):
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self._send_file(body)

    def _send_file(self, body: FileBody) -> None:
        sender = FileSender(self.ctx.loop, self.transport, body, self.sock_fd, self._sent, self._progress)
        self.sender = sender
        if self.write_paused:
            sender.pause()
        sender.start()

    def _progress(self) -> None:
        self.sent += 1

    def _sent(self, ok: bool) -> None:
        self.sender = None
        if not ok:
            self.transport.abort()
            return
        if self.final or (self.closing and not self.queue):
            self.transport.close()
            return
        while self.queue and self.sender is None and not self.transport.is_closing():
            self._respond(self.queue.popleft())
        if self.sender is None and not self.queue and not self.closing and not self.write_paused:
            self.transport.resume_reading()

    def _log(self, request: Request, response: Response) -> None:
        nbytes = response.body_length if request.method != "HEAD" else 0
        assert self.ctx.access_log is not None
        self.ctx.access_log.request(
            request.peer,
            request.method,
            request.path.decode("latin-1"),
            response.status,
            nbytes,
            self.t0,
            "HTTP/" + request.version,
            request.decision,
        )

    def _record(self, method: str, path: str, status: int, nbytes: int, protocol: str) -> None:
        assert self.ctx.access_log is not None
        self.ctx.access_log.request(self.peer, method, path, status, nbytes, self.t0, protocol)

    def _reject(self, status: int, reason: str) -> None:
        """Answer a protocol violation and close: the framing can no longer be trusted."""
        self.ctx.stats.protocol_errors += 1
        if self.transport.is_closing():
            return
        if self.sender is None and not self.queue:
            response = error_response(status)
            assert isinstance(response.body, bytes)
            self.transport.write(
                serialize_head(status, response.headers, self.ctx.clock.preamble, True) + response.body
            )
            self.ctx.stats.by_class[status // 100] += 1
            if self.logging:
                # The request never became an event; log what the edge answered.
                self._record("", "", status, len(response.body), "HTTP/1.1")
        self.closing = True
        if self.sender is None:
            self.transport.close()
        log.debug("rejected request: %s", reason, extra={"event": "http1.rejected", "status": status})

    # timers and lifecycle (called by the worker, not per request) --------------
    def sweep(self, now: float) -> None:
        """Once a second: restart the deadline if the connection moved on, else enforce it."""
        state = self.parser.state
        snap = (state, self.requests, self.sent)
        if snap != self.snap:
            self.snap = snap
            limits = self.ctx.limits
            if self.sender is not None:
                timeout = limits.send_timeout
            elif state == HEAD:
                timeout = limits.header_timeout
            elif state == BODY:
                timeout = limits.body_timeout
            else:
                timeout = limits.idle_timeout
            self.deadline = now + timeout
        elif now >= self.deadline:
            self.expire()

    def expire(self) -> None:
        """The deadline passed: 408 for a request half-received, silent close when idle."""
        if self.sender is not None:
            self.sender.close()
            self.sender = None
            self.transport.abort()
        elif self.parser.state in (HEAD, BODY):
            self._reject(408, "request not received in time")
        else:
            self.transport.close()

    def drain(self, grace: float) -> None:
        """Stop keep-alive: the next response closes; an idle connection gets `grace` to send one."""
        self.closing = True
        if self.parser.state == IDLE and self.sender is None and not self.queue:
            self.ctx.loop.call_later(grace, self._close_if_idle)

    def abort(self) -> None:
        self.transport.abort()

    def _close_if_idle(self) -> None:
        if self.parser.state == IDLE and self.sender is None and not self.queue and not self.transport.is_closing():
            self.transport.close()

"""One HTTP/1.1 connection: the hot path.

Raw asyncio.Protocol callbacks, no streams and no coroutine per request:
bytes arrive in `data_received`, llhttp parses them in C, the pipeline
returns a Response, and a pre-serialised response goes out in one
`transport.write`. Timeouts are not timers per connection, and the hot path
does no timeout bookkeeping at all: the worker's one-second sweep notices
when a connection's state moved on and restarts its deadline from there.

A proxied request is the exception to "no await": its handler answers with
a Future, and its bodies stream through Pipes. A request body is fed to its
Pipe as llhttp parses it, and reading stops while the Pipe is over its
high-water mark; a streamed answer is written as the Pipe fills, and the
Pipe's producer (the upstream) stops while the client is not reading. A
101 answer turns the connection into a tunnel of raw bytes both ways.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing
from collections import deque
from typing import TYPE_CHECKING

from ingress.errors import ProtocolError
from ingress.protocol.errorpages import error_response, settled
from ingress.protocol.events import FileBody, Request, Response
from ingress.protocol.http1 import BODY, HEAD, IDLE, RequestParser, serialize_head
from ingress.protocol.pipe import Pipe, drop_outcome
from ingress.server.filesend import FileSender
from ingress.server.peer import tcp_peer

if TYPE_CHECKING:
    from ingress.server.runtime import ListenerRuntime, WorkerContext

log = logging.getLogger("edgeward.http1")


class HTTP1Connection(asyncio.Protocol):
    __slots__ = (
        "chunked",
        "client",
        "closing",
        "counted",
        "ctx",
        "current",
        "deadline",
        "final",
        "held",
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
        "streaming",
        "t0",
        "transport",
        "tunnel",
        "upgrading",
        "waiting",
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
        self.t0 = 0
        self.sent = 0
        # A handler's answer still to come (a proxied request), and the request it answers.
        self.waiting: asyncio.Future[Response] | None = None
        self.current: tuple[Request, Response | None] | None = None
        # The answer body being written as it arrives, and whether it is chunk-framed.
        self.streaming: Pipe | None = None
        self.chunked = False
        # After a 101: the client's raw bytes, flowing to the handler.
        self.tunnel: Pipe | None = None
        # An upgrade request with a tunnel pipe, until its answer says whether it switches,
        # and the bytes after its head, held until then.
        self.upgrading: Request | None = None
        self.held: bytes | None = None

    # asyncio callbacks ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        ctx = self.ctx
        self.logging = ctx.observer is not None and self.listener.observed
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
        if not hasattr(self, "parser"):
            return  # refused in connection_made
        # Whatever still flows through this connection stops: the upstream side is told.
        upload = self.parser.pipe
        if upload is not None:
            upload.fail("client closed the connection")
        if self.tunnel is not None:
            self.tunnel.fail("client closed the connection")
        if self.streaming is not None:
            self.streaming.abandon()
            self.streaming = None
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            drop_outcome(waiting)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            if not tunnel.feed(data):
                self.transport.pause_reading()
            return
        parser = self.parser
        if self.logging and parser.state == IDLE:
            self.t0 = time.time_ns()
        try:
            rest = parser.feed(data)
        except ProtocolError as exc:
            self._reject(exc.status_hint, exc.reason)
            return
        if rest is not None:
            self._upgrade_requested(rest)
            return
        upload = parser.pipe
        if upload is not None and upload.paused:
            self.transport.pause_reading()  # resumed by the pipe's on_drain

    def pause_writing(self) -> None:
        self.write_paused = True
        self.transport.pause_reading()
        if self.sender is not None:
            self.sender.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.sender is not None:
            self.sender.resume()
            return
        if self.streaming is not None:
            self._pump()
        self._resume_reading()

    def _resume_reading(self) -> None:
        """Read again unless something still holds reading back."""
        if self.write_paused or self.queue or self.held is not None or self.transport.is_closing():
            return
        if self.closing and self.tunnel is None and self.parser.pipe is None:
            return
        for pipe in (self.tunnel, self.parser.pipe):
            if pipe is not None and pipe.paused:
                return
        self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        # A half-closed client still gets the responses it asked for.
        if self.tunnel is not None:
            self.tunnel.finish()
            return True
        upload = self.parser.pipe
        if upload is not None:
            upload.fail("client closed its side before the body ended")
        if not self._busy() and not self.queue:
            return None
        self.closing = True
        return True

    def _busy(self) -> bool:
        return self.sender is not None or self.waiting is not None or self.streaming is not None

    # requests ---------------------------------------------------------------
    def request_received(self, request: Request) -> None:
        request.peer = self.peer
        self.requests += 1
        body = request.body
        if body.__class__ is Pipe:
            assert isinstance(body, Pipe)
            body.on_drain = self._resume_reading
            if request.headers.get(b"expect", b"").lower() == b"100-continue" and request.version == "1.1":
                body.on_wanted = self._continue
            if request.upgrade:
                self.upgrading = request
        if self._busy() or self.queue:
            self.queue.append(request)
            self.transport.pause_reading()
            return
        self._respond(request)

    def streams(self, request: Request) -> bool:
        return self.listener.site.streams(request)

    def _continue(self) -> None:
        """The handler wants the body the client is holding back for an Expect: 100-continue."""
        if not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _respond(self, request: Request) -> None:
        result = self.listener.site.handle(request)
        if result.__class__ is not Response:
            waiting = typing.cast("asyncio.Future[Response]", result)
            self.waiting = waiting
            self.current = (request, None)
            waiting.add_done_callback(self._answered)
            return
        self._deliver(request, result)

    def _answered(self, waiting: asyncio.Future[Response]) -> None:
        """A deferred answer is ready: send it, then carry on with what queued behind it."""
        if self.waiting is not waiting or self.current is None:
            return  # the connection went away and cancelled it
        request = self.current[0]
        self.waiting = self.current = None
        if self.transport.is_closing():
            drop_outcome(waiting)
            return
        response = settled(waiting, "http1")
        self._deliver(request, response)
        if not self._busy() and not self.transport.is_closing():
            self._next()

    def _deliver(self, request: Request, response: Response) -> None:
        ctx = self.ctx
        close = self.closing or not request.keep_alive or self.requests >= ctx.limits.max_requests_per_connection
        upload = request.body
        if upload.__class__ is Pipe:
            assert isinstance(upload, Pipe)
            if upload.on_readable is None and not upload.discarding and self.tunnel is None:
                # Answered without reading the body: drop it as it arrives. A client still
                # waiting for 100 Continue has not sent it and may not; close after this answer.
                if upload.on_wanted is not None and not upload.done:
                    close = True
                upload.discard()
        if close:
            # Set before writing: a file sent synchronously calls _sent from inside this call,
            # and nothing queued behind a closing response may be answered.
            self.closing = self.final = True
        body = response.body
        if body.__class__ is Pipe:
            assert isinstance(body, Pipe)
            self._write_stream(request, response, body, close)
            ctx.stats.by_class[response.status // 100] += 1
            return
        wire = response.wire
        if wire is not None and not close and request.version == "1.1":
            self.transport.write(wire)
            if body.__class__ is FileBody:
                assert isinstance(body, FileBody)
                self._send_file(body)
        else:
            self._write_generic(request, response, close)
        if self.logging:
            self._log(request, response)
        ctx.stats.by_class[response.status // 100] += 1
        if request is self.upgrading:
            self._not_upgraded(request)
        if close and self.sender is None:
            self.transport.close()

    # streamed answers and tunnels -----------------------------------------------
    def _write_stream(self, request: Request, response: Response, pipe: Pipe, close: bool) -> None:
        status = response.status
        headers = response.headers
        switching = status == 101
        bodiless = request.method == "HEAD" or status in (204, 304) or switching
        chunked = False
        if not bodiless and pipe.length is None:
            if request.version == "1.1":
                chunked = True
                headers = [*headers, (b"Transfer-Encoding", b"chunked")]
            else:
                close = self.closing = self.final = True  # an HTTP/1.0 client reads to the close
        preamble = self.ctx.clock.preamble
        if request.version == "1.0" and not close:
            preamble += b"Connection: keep-alive\r\n"
        self.transport.write(serialize_head(status, headers, preamble, close and not switching))
        self.current = (request, response)
        self.streaming = pipe
        self.chunked = chunked
        if switching and request is self.upgrading:
            self._switch(request)
        elif request is self.upgrading:
            self._not_upgraded(request)
        if bodiless and request.method == "HEAD":
            pipe.abandon()
            self._stream_done()
            return
        pipe.want(self._pump)

    def _pump(self) -> None:
        """Write what the answer's pipe holds, as far as the client keeps reading."""
        pipe = self.streaming
        if pipe is None:
            return
        write = self.transport.write
        while not self.write_paused:
            data = pipe.read()
            if not data:
                break
            self.sent += 1
            if self.chunked:
                write(b"%x\r\n" % len(data))
                write(data)
                write(b"\r\n")
            else:
                write(data)
        if pipe.error:
            # The answer broke off upstream: a reset, so the client cannot take a cut body for a whole one.
            self.streaming = None
            self._log_current(pipe)
            self.transport.abort()
        elif pipe.done:
            if self.chunked:
                write(b"0\r\n\r\n")
            self._stream_done()

    def _stream_done(self) -> None:
        pipe = self.streaming
        self.streaming = None
        if pipe is not None:
            self._log_current(pipe)
        if self.tunnel is not None:
            self.transport.close()  # the tunnel's far side is finished
            return
        self._sent(True)

    def _log_current(self, pipe: Pipe) -> None:
        current = self.current
        self.current = None
        if current is not None and self.logging and current[1] is not None:
            self._log(current[0], current[1])

    def _upgrade_requested(self, rest: bytes) -> None:
        """Hold what follows an upgrade request's head until its answer says whose it is."""
        if self.tunnel is not None:
            if rest and not self.tunnel.feed(rest):
                self.transport.pause_reading()
        elif self.upgrading is not None:
            self.held = rest
            self.transport.pause_reading()
        elif rest and not self.final:
            self.data_received(rest)  # already answered without switching: the next request

    def _switch(self, request: Request) -> None:
        """101: from here the connection carries the request's tunnel, raw both ways."""
        tunnel = request.body
        assert isinstance(tunnel, Pipe)
        self.upgrading = None
        self.tunnel = tunnel
        self.closing = self.final = True
        held, self.held = self.held or b"", None
        if held and not tunnel.feed(held):
            return
        if not self.write_paused:
            self.transport.resume_reading()

    def _not_upgraded(self, request: Request) -> None:
        """The answer was not 101: the upgrade is off and what followed is the next request."""
        self.upgrading = None
        held, self.held = self.held, None
        tunnel = request.body
        if isinstance(tunnel, Pipe):
            tunnel.finish()
        if held and not self.final:
            self.data_received(held)
        self._resume_reading()

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
            assert isinstance(body, FileBody)
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
        self._next()

    def _next(self) -> None:
        """The answer in progress is complete: close, or answer what queued behind it."""
        if self.final or (self.closing and not self.queue and self.parser.pipe is None):
            self.transport.close()
            return
        while self.queue and not self._busy() and not self.transport.is_closing():
            self._respond(self.queue.popleft())
        if not self.queue:
            # Even while an answer is awaited: its request's body may still be arriving.
            self._resume_reading()

    def _log(self, request: Request, response: Response) -> None:
        nbytes = response.body_length if request.method != "HEAD" else 0
        assert self.ctx.observer is not None
        self.ctx.observer.request(request, response.status, nbytes, self.t0, request.version)

    def _reject(self, status: int, reason: str) -> None:
        """Answer a protocol violation and close: the framing can no longer be trusted."""
        self.ctx.stats.protocol_errors += 1
        if self.transport.is_closing():
            return
        if self.waiting is not None or self.streaming is not None or self.tunnel is not None:
            # An answer is still to come or going out: an error written now would land before or
            # inside it. The framing is broken either way, so the connection just ends.
            self.transport.abort()
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
                assert self.ctx.observer is not None
                self.ctx.observer.refused(self.peer, status, self.t0, "1.1", self.parser.scheme)
        self.closing = True
        if self.sender is None:
            self.transport.close()
        log.debug("rejected request: %s", reason, extra={"event": "http1.rejected", "status": status})

    # timers and lifecycle (called by the worker, not per request) --------------
    def sweep(self, now: float) -> None:
        """Once a second: restart the deadline if the connection moved on, else enforce it.

        While an answer is awaited or streams in, or a tunnel is open, the upstream's own
        timeouts govern; this connection only bounds a client that stopped reading.
        """
        state = self.parser.state
        tunnel = self.tunnel
        if tunnel is not None:
            # A WebSocket may be quiet, but not for ever: idle_timeout without a byte either way ends it.
            snap = (-1, tunnel.fed, self.sent)
            if snap != self.snap:
                self.snap = snap
                self.deadline = now + self.ctx.limits.idle_timeout
            elif now >= self.deadline:
                self.transport.abort()
            return
        upload = self.parser.pipe
        if upload is not None and not upload.paused:
            # A body streaming to a handler: body_timeout without a byte, whatever else is under way.
            snap = (BODY, upload.fed, self.sent)
            if snap != self.snap:
                self.snap = snap
                self.deadline = now + self.ctx.limits.body_timeout
            elif now >= self.deadline:
                upload.fail("request body not received in time")
                self._reject(408, "request body not received in time")
            return
        snap = (state, self.requests, self.sent)
        relayed = self.waiting is not None or self.streaming is not None
        if (relayed and not self.write_paused) or (upload is not None and upload.paused):
            self.snap = snap
            self.deadline = now + self.ctx.limits.send_timeout
            return
        if snap != self.snap:
            self.snap = snap
            limits = self.ctx.limits
            if self.sender is not None or relayed:
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
        if self.sender is not None or self.streaming is not None or self.tunnel is not None:
            if self.sender is not None:
                self.sender.close()
                self.sender = None
            self.transport.abort()
        elif self.parser.state in (HEAD, BODY):
            self._reject(408, "request not received in time")
        else:
            self.transport.close()

    def drain(self, grace: float) -> None:
        """Stop keep-alive: the next response closes; an idle connection gets `grace` to send one.

        A tunnel or streamed answer in progress runs on until it ends or the drain deadline aborts it.
        """
        self.closing = True
        if self.parser.state == IDLE and not self._busy() and not self.queue and self.tunnel is None:
            self.ctx.loop.call_later(grace, self._close_if_idle)

    def abort(self) -> None:
        self.transport.abort()

    def _close_if_idle(self) -> None:
        if self.parser.state != IDLE or self._busy() or self.queue or self.tunnel is not None:
            return
        if not self.transport.is_closing():
            self.transport.close()

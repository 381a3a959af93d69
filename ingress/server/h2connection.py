"""One HTTP/2 connection: sockets, flow-controlled sending, deadlines.

Requests reach the same `Site.handle` as HTTP/1.1. Responses are sent as
far as the flow-control windows allow; the rest waits in a per-stream
`BodyCursor` until WINDOW_UPDATE (or the transport's resume) arrives. A file
is read with `pread` one window's worth at a time, so a large body never
sits in memory and a reader that stops reading stops the reads.

Like HTTP/1.1, no timer is armed per connection: the worker's one-second
sweep compares progress snapshots and also clears the flood counters.

A proxied request's answer may come later (a Future, kept in `pending`)
and its body may stream (a Pipe, pumped like a file but only as far as
the upstream has delivered). Its request body streams too: the session
returns window to the client only as the handler reads, so a slow
upstream slows the client's stream instead of filling memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing
from typing import TYPE_CHECKING

import h2.exceptions
from h2.errors import ErrorCodes

from ingress.protocol.errorpages import error_response, settled
from ingress.protocol.events import Request, Response
from ingress.protocol.fields import STATUS_TEXT as _STATUS
from ingress.protocol.fields import response_fields
from ingress.protocol.http2 import (
    FloodError,
    H2Session,
    PeerClosed,
    RequestReady,
    RequestRefused,
    StreamCancelled,
    WindowOpened,
    encode_literal,
)
from ingress.protocol.pipe import Pipe, drop_outcome
from ingress.server.filesend import BodyCursor
from ingress.server.peer import tcp_peer

if TYPE_CHECKING:
    from ingress.server.runtime import ListenerRuntime, WorkerContext

log = logging.getLogger("edgeward.http2")

# Largest single read from a file per send; bounded by the windows anyway.
READ_MAX = 256 * 1024


_NO_BODY = (204, 304)


class HTTP2Connection(asyncio.Protocol):
    __slots__ = (
        "blocked_since",
        "client",
        "closing",
        "counted",
        "ctx",
        "deadline",
        "listener",
        "logging",
        "outbound",
        "peer",
        "pending",
        "progress",
        "requests",
        "session",
        "snap",
        "transport",
        "write_paused",
    )

    def __init__(self, ctx: WorkerContext, listener: ListenerRuntime, client: str = "") -> None:
        """`client`: the address a PROXY protocol header named, "" to use the socket's."""
        self.ctx = ctx
        self.listener = listener
        self.client = client
        self.counted = False
        self.outbound: dict[int, BodyCursor | Pipe] = {}
        # Answers still to come from handlers (proxied requests), by stream.
        self.pending: dict[int, tuple[asyncio.Future[Response], Request, int]] = {}
        self.requests = 0
        self.progress = 0
        self.closing = False
        self.write_paused = False
        self.blocked_since = 0.0

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
        self.session = H2Session(ctx.config.http2, ctx.limits, self._streams)
        self.session.initiate()
        self.snap = (-1, -1)
        self.deadline = ctx.clock.now + ctx.limits.idle_timeout
        ctx.connections.add(self)
        ctx.stats.connections_total += 1
        self.transport.write(self.session.data_to_send())
        if ctx.draining:  # accepted from the backlog while the worker drains
            self.drain(ctx.config.server.drain_idle_grace)

    def _streams(self, request: Request) -> bool:
        return self.listener.site.streams(request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        if self.counted:
            self.ctx.release(self.peer.client)
        self._drop_all()

    def _drop_all(self) -> None:
        """Nothing more will be sent: tell every handler and upstream still working for this connection."""
        for out in self.outbound.values():
            if out.__class__ is Pipe:
                out.abandon()
        self.outbound.clear()
        pending, self.pending = self.pending, {}
        for waiting, request, _ in pending.values():
            drop_outcome(waiting)
            if request.body.__class__ is Pipe:
                request.body.fail("connection closed")
        if hasattr(self, "session"):
            for inbound in self.session.inbound.values():
                if inbound.pipe is not None:
                    inbound.pipe.fail("connection closed")
            self.session.inbound.clear()

    def data_received(self, data: bytes) -> None:
        self.progress += 1
        session = self.session
        try:
            events = session.receive(data)
        except FloodError as exc:
            self._flood(exc.kind)
            return
        except h2.exceptions.ProtocolError as exc:
            self.ctx.stats.protocol_errors += 1
            log.debug("http2 protocol error: %s", exc, extra={"event": "http2.protocol_error"})
            self._close_now()
            return
        for event in events:
            cls = event.__class__
            if cls is RequestReady:
                assert isinstance(event, RequestReady)
                self._respond(event.stream_id, event.request)
            elif cls is WindowOpened:
                assert isinstance(event, WindowOpened)
                if event.stream_id == 0:
                    self._pump_all()
                elif event.stream_id in self.outbound:
                    self._pump(event.stream_id)
            elif cls is StreamCancelled:
                assert isinstance(event, StreamCancelled)
                self._cancel(event.stream_id)
            elif cls is RequestRefused:
                assert isinstance(event, RequestRefused)
                self.ctx.stats.protocol_errors += 1
                if self._cancel(event.stream_id):
                    self._answer(event.stream_id, None, error_response(event.status))
                    session.refuse(event.stream_id)
                    if self.logging:
                        assert self.ctx.observer is not None
                        scheme = "https" if self.listener.tls else "http"
                        self.ctx.observer.refused(self.peer, event.status, time.time_ns(), "2", scheme)
                else:  # an answer already under way is cut: a reset that cannot pass for a clean end
                    session.refuse(event.stream_id, ErrorCodes.INTERNAL_ERROR)
            elif cls is PeerClosed:
                # h2 refuses to send anything after the peer's GOAWAY; nothing more can be answered.
                self._close_now()
                return
        self._flush()

    def _cancel(self, stream_id: int) -> bool:
        """Stop work for a stream that is gone; True when its answer has not been started."""
        waiting = self.pending.pop(stream_id, None)
        if waiting is not None:
            waiting[0].cancel()
        out = self.outbound.pop(stream_id, None)
        if out is not None and out.__class__ is Pipe:
            out.abandon()
        if out is not None:
            return False
        stream = self.session.conn.streams.get(stream_id)
        return stream is not None and not stream.state_machine.headers_sent

    def pause_writing(self) -> None:
        self.write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.transport.resume_reading()
        self._pump_all()
        self._flush()

    def eof_received(self) -> bool | None:
        return None

    # responding -------------------------------------------------------------
    def _respond(self, stream_id: int, request: Request) -> None:
        session = self.session
        if session.goaway_sent and stream_id > session.last_stream:
            session.refuse(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self.requests += 1
        t0 = time.time_ns() if self.logging else 0
        request.peer = self.peer
        body = request.body
        if body.__class__ is Pipe:
            # Window returned as the handler reads goes out now, not with the next frame received:
            # the client may be waiting on exactly this credit.
            body.on_consumed = lambda n: self._credit(stream_id, n)
        result = self.listener.site.handle(request)
        if result.__class__ is Response:
            response = result
            self._settle(stream_id, request, response)
            self._answer(stream_id, request, response)
            if self.logging:
                self._log(request, response, t0)
        else:
            waiting = typing.cast("asyncio.Future[Response]", result)
            self.pending[stream_id] = (waiting, request, t0)
            waiting.add_done_callback(lambda w: self._answered(stream_id, w))
        if self.requests >= self.ctx.limits.max_requests_per_connection and not session.goaway_sent:
            self.drain(0.0)

    def _credit(self, stream_id: int, n: int) -> None:
        self.session.consumed(stream_id, n)
        data = self.session.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def _answered(self, stream_id: int, waiting: asyncio.Future[Response]) -> None:
        entry = self.pending.get(stream_id)
        if entry is None or entry[0] is not waiting:
            return  # the stream or the connection went away and cancelled it
        del self.pending[stream_id]
        _, request, t0 = entry
        response = settled(waiting, "http2")
        self._settle(stream_id, request, response)
        self._answer(stream_id, request, response)
        if self.logging:
            self._log(request, response, t0)
        self._flush()

    def _settle(self, stream_id: int, request: Request, response: Response) -> None:
        """An answer that did not read the request body drops the rest of it (credited at once)."""
        body = request.body
        if body.__class__ is Pipe:
            pipe = body
            if pipe.on_readable is None and not pipe.discarding:
                pipe.discard()
        if response.status == 101:  # HTTP/2 has no 101: an extended CONNECT that succeeded is a 200
            response.status = 200

    def _answer(self, stream_id: int, request: Request | None, response: Response) -> None:
        clock = self.ctx.clock
        status = response.status
        self.ctx.stats.by_class[status // 100] += 1
        memo = response.encoded
        if memo is not None and memo[0] == clock.tick:
            block = memo[1]
        else:
            block = encode_literal(response_fields(status, response.headers, clock.date, clock.server_name))
            response.encoded = (clock.tick, block)
        session = self.session
        body = response.body
        if (request is not None and request.method == "HEAD") or status in _NO_BODY or not body:
            if not session.send_whole(stream_id, block, b""):
                session.send_head(stream_id, _STATUS[status], block, True)
            return
        if body.__class__ is bytes and not self.write_paused and session.send_whole(stream_id, block, body):
            return
        session.send_head(stream_id, _STATUS[status], block, False)
        if body.__class__ is Pipe:
            pipe = body
            self.outbound[stream_id] = pipe
            pipe.want(lambda: self._relay(stream_id))
            return
        assert not isinstance(body, Pipe)
        self.outbound[stream_id] = BodyCursor(body)
        self._pump(stream_id)

    def _relay(self, stream_id: int) -> None:
        """More of a streamed answer arrived (or its end): send it, and the frames it makes."""
        self._pump(stream_id)
        self._flush()

    def _pump(self, stream_id: int) -> None:
        """Send as much of the stream's body as its windows allow, READ_MAX bytes per read."""
        out = self.outbound.get(stream_id)
        if out is None or self.write_paused:
            return
        session = self.session
        if out.__class__ is Pipe:
            self._pump_pipe(stream_id, out)
            return
        assert isinstance(out, BodyCursor)
        while True:
            window = session.window(stream_id)
            if window < 0:
                self.outbound.pop(stream_id, None)
                return
            if window == 0:
                return  # WINDOW_UPDATE pumps again; the sweep notices if it never comes
            try:
                chunk = out.read(min(window, READ_MAX))
            except OSError:  # the file shrank: the response cannot be completed honestly
                self.outbound.pop(stream_id, None)
                session.refuse(stream_id, ErrorCodes.INTERNAL_ERROR)
                return
            session.send_body(stream_id, chunk, not out.remaining)
            if not out.remaining:
                del self.outbound[stream_id]
                return

    def _pump_pipe(self, stream_id: int, pipe: Pipe) -> None:
        session = self.session
        while True:
            window = session.window(stream_id)
            if window < 0:
                del self.outbound[stream_id]
                pipe.abandon()
                return
            data = pipe.read(min(window, READ_MAX)) if window else b""
            if data:
                self.progress += 1
                session.send_body(stream_id, data, pipe.done)
                if pipe.done:
                    del self.outbound[stream_id]
                    return
                continue
            if pipe.error:
                # Cut off upstream: a reset, never an END_STREAM that would pass the cut body off as whole.
                del self.outbound[stream_id]
                session.refuse(stream_id, ErrorCodes.INTERNAL_ERROR)
            elif pipe.done:
                del self.outbound[stream_id]
                session.send_body(stream_id, b"", True)
            return  # waiting for the upstream, or for window

    def _pump_all(self) -> None:
        for stream_id in list(self.outbound):
            self._pump(stream_id)
            if self.write_paused:
                break

    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data:
            self.transport.write(data)
        if self.closing and self._idle():
            self.transport.close()

    def _idle(self) -> bool:
        return not self.outbound and not self.session.inbound and not self.pending

    def _log(self, request: Request, response: Response, t0: int) -> None:
        assert self.ctx.observer is not None
        nbytes = response.body_length if request.method != "HEAD" else 0
        self.ctx.observer.request(request, response.status, nbytes, t0, "2")

    # abuse and errors ---------------------------------------------------------
    def _flood(self, kind: str) -> None:
        stats = self.ctx.stats
        stats.floods[kind] = stats.floods.get(kind, 0) + 1
        log.warning(
            "http2 %s flood from %s; connection closed with ENHANCE_YOUR_CALM",
            kind,
            self.peer.client or self.transport.get_extra_info("peername"),
            extra={"event": "http2.flood", "kind": kind},
        )
        self._close_now()

    def _close_now(self) -> None:
        """Send what h2 queued (its GOAWAY) and close; nothing in flight is worth finishing."""
        self._drop_all()
        data = self.session.data_to_send()
        if data:
            self.transport.write(data)
        self.transport.close()

    # timers and lifecycle ---------------------------------------------------------
    def sweep(self, now: float) -> None:
        self.session.tick()
        if self.outbound and all(self.session.window(sid) <= 0 for sid in self.outbound):
            # Every queued response waits on credit: a reader that took one window and
            # never sent WINDOW_UPDATE is not pumped again, so the stall is seen here.
            if not self.blocked_since:
                self.blocked_since = now
        else:
            self.blocked_since = 0.0
        snap = (self.progress, self.requests)
        limits = self.ctx.limits
        relayed = self.pending or any(out.__class__ is Pipe for out in self.outbound.values())
        uploading = any(i.pipe is not None and not i.pipe.paused for i in self.session.inbound.values())
        if relayed and not self.blocked_since and not uploading:
            # A relayed answer is bounded by the upstream's timeouts, not the client's idleness.
            self.snap = snap
            self.deadline = now + limits.send_timeout
            return
        stalled = self.outbound and self.blocked_since
        if stalled and now - self.blocked_since >= self.ctx.config.http2.window_stall_timeout:
            stats = self.ctx.stats
            stats.floods["window_stall"] = stats.floods.get("window_stall", 0) + 1
            self.transport.write(self.session.goaway_frame(ErrorCodes.ENHANCE_YOUR_CALM))
            self._close_now()
            return
        if snap != self.snap:
            self.snap = snap
            busy = self.outbound or self.session.inbound
            timeout = limits.send_timeout if self.outbound else limits.body_timeout if busy else limits.idle_timeout
            self.deadline = now + timeout
        elif now >= self.deadline and not (self.outbound and self.blocked_since):
            self.expire()

    def expire(self) -> None:
        if not self.session.goaway_sent:
            self.transport.write(self.session.goaway_frame())
        self._close_now()

    def drain(self, grace: float) -> None:
        """GOAWAY now: every stream already opened is answered, later ones are refused."""
        self.closing = True
        session = self.session
        if not session.goaway_sent:
            self.transport.write(session.goaway_frame())
        if self._idle():
            self.ctx.loop.call_later(grace, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if self._idle() and not self.transport.is_closing():
            self.transport.write(self.session.data_to_send())
            self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

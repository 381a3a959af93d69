"""One HTTP/3 connection: QUIC events in, responses and datagrams out.

aioquic's QuicConnection and H3Connection are sans-IO; this object is the
glue that feeds them datagrams and timer ticks and sends what they return,
like aioquic's own QuicConnectionProtocol but without its stream readers
and writers: a request is answered from the event callback that completes
it, with no coroutine and no await.

Large files are not handed to aioquic whole. Its send buffer holds every
byte until the peer acknowledges it, so `_pump` tops each response up to
STREAM_WINDOW unacknowledged bytes (and the connection to
CONNECTION_WINDOW) on every transmit, which runs after each datagram
received (acknowledgements arrive in those) and each timer. Memory per
response stays bounded whatever the file size, and a peer that stops
reading stalls its own download, not the worker.

A request whose headers arrive before the handshake completes came in
0-RTT data, which an attacker can replay: only safe methods run then, and
anything else gets 425 Too Early (RFC 8470) so the client retries it once
the handshake has completed.

A proxied request is answered later (a Future in `pending`) and may stream
both ways through Pipes: the answer is topped up like a file, as far as
the upstream has delivered; the request body's stream window grows only as
the handler reads it (`ServerConnection.reader_paced`), so a slow upstream
slows the client instead of filling memory.
"""

from __future__ import annotations

import contextlib
import time
import typing
from typing import TYPE_CHECKING, Protocol

from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

from ingress.errors import ProtocolError
from ingress.protocol.errorpages import error_response, settled
from ingress.protocol.events import Peer, Request, Response
from ingress.protocol.fields import response_fields
from ingress.protocol.http3 import (
    H3_INTERNAL_ERROR,
    H3_MESSAGE_ERROR,
    H3_NO_ERROR,
    H3_REQUEST_REJECTED,
    SAFE_METHODS,
    goaway_frame,
    parse_request,
)
from ingress.protocol.pipe import Pipe, drop_outcome
from ingress.server.filesend import BodyCursor
from ingress.tls.quic import ServerConnection

if TYPE_CHECKING:
    import asyncio

    from ingress.server.runtime import ListenerRuntime, Stats, WorkerContext


class Endpoint(Protocol):
    """What a connection needs of the UDP endpoint that owns it (server/quic.py).

    Named here, rather than imported, so the endpoint depends on its
    connections and not the other way round.
    """

    ctx: WorkerContext
    runtime: ListenerRuntime
    transport: asyncio.DatagramTransport

    def route(self, cid: bytes, conn: HTTP3Connection) -> None: ...

    def unroute(self, cid: bytes) -> None: ...

    def forget(self, conn: HTTP3Connection) -> None: ...


CHUNK = 64 * 1024
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 1024 * 1024


def count(stats: Stats, kind: str) -> None:
    """Bump a QUIC event counter; for rare events only, never once per request."""
    stats.quic[kind] = stats.quic.get(kind, 0) + 1


class _Incoming:
    """A request whose headers have arrived and whose body is still coming: gathered, or through `pipe`."""

    __slots__ = ("chunks", "pipe", "request", "size", "t0")

    def __init__(self, request: Request, pipe: Pipe | None, t0: int) -> None:
        self.request = request
        self.pipe = pipe
        self.chunks: list[bytes] = []
        self.size = 0
        self.t0 = t0


def _unacked(quic: ServerConnection, stream_id: int) -> int:
    """Bytes of a stream aioquic still buffers (sent or not, not yet acknowledged).

    aioquic exposes no send-buffer level, so this reads its stream's bounds.
    """
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    sender = stream.sender
    return sender._buffer_stop - sender._buffer_start


class HTTP3Connection:
    __slots__ = (
        "born",
        "cids",
        "closed",
        "closing",
        "crediting",
        "ctx",
        "deadline",
        "discarding",
        "draining",
        "endpoint",
        "established",
        "goaway",
        "grace_over",
        "h3",
        "incoming",
        "listener",
        "logging",
        "loop",
        "next_stream",
        "outgoing",
        "peer",
        "pending",
        "progress",
        "quic",
        "snap",
        "timer",
        "timer_at",
    )

    def __init__(self, endpoint: Endpoint, quic: ServerConnection, addr: NetworkAddress) -> None:
        self.endpoint = endpoint
        self.ctx = ctx = endpoint.ctx
        self.loop: asyncio.AbstractEventLoop = ctx.loop
        self.listener = endpoint.runtime
        self.quic = quic
        self.h3: H3Connection | None = None
        self.cids: list[bytes] = []
        self.peer = Peer(str(addr[0]), "TLSv1.3")
        self.born = ctx.clock.now
        self.established = False
        self.draining = False
        self.grace_over = False
        self.closed = self.closing = False
        self.goaway: int | None = None
        self.next_stream = 0
        self.incoming: dict[int, _Incoming] = {}
        self.outgoing: dict[int, BodyCursor | Pipe] = {}
        self.pending: dict[int, tuple[asyncio.Future[Response], Request, int]] = {}
        self.discarding: set[int] = set()
        self.progress = 0
        self.crediting = False
        self.snap = -1
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        self.logging = ctx.observer is not None
        ctx.connections.add(self)
        ctx.stats.connections_total += 1
        if ctx.draining:
            self.draining = self.grace_over = True

    # I/O callbacks -------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.quic.receive_datagram(data, addr, now=self.loop.time())
        self._process()
        self.transmit()

    def _on_timer(self) -> None:
        timer_at = self.timer_at or 0.0
        self.timer = self.timer_at = None
        self.quic.handle_timer(now=max(timer_at, self.loop.time()))
        self._process()
        self.transmit()

    def transmit(self) -> None:
        if self.outgoing:
            self._pump()
        quic = self.quic
        transport = self.endpoint.transport
        for data, addr in quic.datagrams_to_send(now=self.loop.time()):
            transport.sendto(data, addr)
        self._process()  # sending may issue connection IDs, which must be routable before the peer uses them
        if self.closed:
            return
        timer_at = quic.get_timer()
        if self.timer is not None and self.timer_at != timer_at:
            self.timer.cancel()
            self.timer = None
        if self.timer is None and timer_at is not None:
            self.timer = self.loop.call_at(timer_at, self._on_timer)
        self.timer_at = timer_at
        if self.draining and self.grace_over:
            self._close_if_done()

    # QUIC and HTTP/3 events ---------------------------------------------------------
    def _process(self) -> None:
        quic = self.quic
        event = quic.next_event()
        while event is not None:
            if isinstance(event, StreamDataReceived):
                h3 = self.h3
                if h3 is not None:
                    for h3_event in h3.handle_event(event):
                        if isinstance(h3_event, HeadersReceived):
                            self._headers(h3_event)
                        elif isinstance(h3_event, DataReceived):
                            self._data(h3_event)
            elif isinstance(event, ProtocolNegotiated):
                self.h3 = H3Connection(quic)
                self.peer = Peer(self.peer.client, "TLSv1.3", quic.sni or "")  # 0-RTT requests may come next
            elif isinstance(event, HandshakeCompleted):
                self.established = True
                # The identity was verified in the handshake (tls/quic.py), as OpenSSL does on TCP.
                self.peer = Peer(self.peer.client, "TLSv1.3", quic.sni or "", quic.identity)
                stats = self.ctx.stats
                count(stats, "handshakes")
                if event.session_resumed:
                    count(stats, "resumed")
                if self.draining:
                    self._send_goaway()
            elif isinstance(event, ConnectionIdIssued):
                self.endpoint.route(event.connection_id, self)
            elif isinstance(event, ConnectionIdRetired):
                self.endpoint.unroute(event.connection_id)
            elif isinstance(event, StopSendingReceived | StreamReset):
                if self.h3 is not None:
                    self.h3.handle_event(event)
                self._stream_gone(event.stream_id, isinstance(event, StopSendingReceived))
            elif isinstance(event, ConnectionTerminated):
                self._terminated()
                return
            event = quic.next_event()

    def _headers(self, event: HeadersReceived) -> None:
        stream_id = event.stream_id
        pending = self.incoming.get(stream_id)
        if pending is not None:  # trailers: nothing here reads them, but they may end the request
            if event.stream_ended:
                del self.incoming[stream_id]
                self._complete(stream_id, pending)
            return
        if stream_id in self.discarding:
            if event.stream_ended:
                self.discarding.discard(stream_id)
            return
        if stream_id >= self.next_stream:
            self.next_stream = stream_id + 4
        if self.goaway is not None and stream_id >= self.goaway:
            # RFC 9114 section 5.2: above the GOAWAY identifier nothing is processed, and the client may retry.
            self.quic.reset_stream(stream_id, H3_REQUEST_REJECTED)
            self._stop(stream_id, event.stream_ended, H3_REQUEST_REJECTED)
            return
        t0 = time.time_ns() if self.logging else 0
        try:
            request = parse_request(event.headers, self.ctx.limits)
        except ProtocolError as exc:
            self.ctx.stats.protocol_errors += 1
            self._refuse(stream_id, exc.status_hint, event.stream_ended, t0)
            return
        request.peer = self.peer
        if not self.established and (request.method not in SAFE_METHODS or not self.listener.config.quic.early_data):
            count(self.ctx.stats, "too_early")
            self._refuse(stream_id, 425, event.stream_ended, t0, request)
            return
        if not self.established:
            count(self.ctx.stats, "early_data")
        if not event.stream_ended and not self.listener.site.streams(request):
            self.incoming[stream_id] = _Incoming(request, None, t0)
            return
        if not event.stream_ended:
            length = request.headers.get(b"content-length")
            pipe = Pipe(int(length) if length is not None and not request.upgrade else None)
            self.quic.reader_paced[stream_id] = lambda: pipe.buffered
            pipe.on_consumed = lambda n: self._consumed(stream_id, n)
            request.body = pipe
            self.incoming[stream_id] = _Incoming(request, pipe, t0)
        self._respond(stream_id, request, t0)

    def _consumed(self, stream_id: int, n: int) -> None:
        """The handler read `n` body bytes: window for that many more (sent with the next packet)."""
        if stream_id in self.quic.reader_paced and not self.crediting:
            # The client may be blocked on exactly this window: send it soon, once per loop turn.
            self.crediting = True
            self.loop.call_soon(self._credit)

    def _credit(self) -> None:
        self.crediting = False
        if not self.closed:
            self.transmit()

    def _data(self, event: DataReceived) -> None:
        stream_id = event.stream_id
        pending = self.incoming.get(stream_id)
        if pending is None:
            if event.stream_ended:
                self.discarding.discard(stream_id)
            return
        data = event.data
        if data:
            self.progress += 1
            pending.size += len(data)
            if pending.size > self.ctx.limits.max_body_bytes:
                del self.incoming[stream_id]
                if pending.pipe is not None:
                    pending.pipe.fail("request body larger than the limit")
                if pending.pipe is None or self._cancel(stream_id):
                    self._refuse(stream_id, 413, event.stream_ended, pending.t0, pending.request)
                else:
                    self._stop(stream_id, event.stream_ended, H3_NO_ERROR)
                return
            pipe = pending.pipe
            if pipe is not None:
                pipe.feed(data)
                if pipe.error:  # more body than its content-length: a malformed request (RFC 9114 4.1.2)
                    del self.incoming[stream_id]
                    self.quic.reader_paced.pop(stream_id, None)
                    self.ctx.stats.protocol_errors += 1
                    self._cancel(stream_id)
                    with contextlib.suppress(ValueError, AssertionError):
                        self.quic.reset_stream(stream_id, H3_MESSAGE_ERROR)
                    self._stop(stream_id, event.stream_ended, H3_MESSAGE_ERROR)
                    return
            else:
                pending.chunks.append(data)
        if event.stream_ended:
            del self.incoming[stream_id]
            self._complete(stream_id, pending)

    def _complete(self, stream_id: int, pending: _Incoming) -> None:
        """The request's body is whole: finish its pipe, or run it with the gathered bytes."""
        if pending.pipe is not None:
            self.quic.reader_paced.pop(stream_id, None)
            pending.pipe.finish()
            return
        request = pending.request
        if pending.chunks:
            request.body = b"".join(pending.chunks)
        self._respond(stream_id, request, pending.t0)

    def _stream_gone(self, stream_id: int, stop_sending: bool) -> None:
        """The peer reset its request or asked us to stop sending the response."""
        gone = self.incoming.pop(stream_id, None)
        if gone is not None and gone.pipe is not None:
            gone.pipe.fail("client reset the stream")
        self.quic.reader_paced.pop(stream_id, None)
        self.discarding.discard(stream_id)
        if stop_sending:
            self._cancel(stream_id)

    def _cancel(self, stream_id: int) -> bool:
        """Stop work for an answer nobody will receive; True when none of it was sent yet."""
        waiting = self.pending.pop(stream_id, None)
        if waiting is not None:
            waiting[0].cancel()
            return True
        out = self.outgoing.pop(stream_id, None)
        if out is not None and out.__class__ is Pipe:
            out.abandon()
        return False

    # responses -------------------------------------------------------------
    def _respond(self, stream_id: int, request: Request, t0: int) -> None:
        result = self.listener.site.handle(request)
        if result.__class__ is not Response:
            waiting = typing.cast("asyncio.Future[Response]", result)
            self.pending[stream_id] = (waiting, request, t0)
            waiting.add_done_callback(lambda w: self._answered(stream_id, w))
            return
        self._deliver(stream_id, request, result, t0)

    def _answered(self, stream_id: int, waiting: asyncio.Future[Response]) -> None:
        entry = self.pending.get(stream_id)
        if entry is None or entry[0] is not waiting or self.closing:
            return  # the stream or the connection went away and cancelled it
        del self.pending[stream_id]
        _, request, t0 = entry
        response = settled(waiting, "http3")
        self._deliver(stream_id, request, response, t0)
        self.transmit()

    def _deliver(self, stream_id: int, request: Request, response: Response, t0: int) -> None:
        body = request.body
        if body.__class__ is Pipe and body.on_readable is None and not body.discarding:
            body.discard()  # answered without reading it: take the rest and drop it
        if response.status == 101:  # an extended CONNECT that succeeded is a 200 in HTTP/3
            response.status = 200
        self._send(stream_id, request.method, response)
        if self.logging:
            self._log(response, t0, request)

    def _refuse(self, stream_id: int, status: int, ended: bool, t0: int, request: Request | None = None) -> None:
        """Answer without running the request, and stop reading the rest of it (RFC 9114 section 4.1.2)."""
        response = error_response(status)
        method = request.method if request is not None else ""
        self._send(stream_id, method, response)
        self._stop(stream_id, ended, H3_MESSAGE_ERROR if status == 400 else H3_NO_ERROR)
        if self.logging:
            self._log(response, t0, request)

    def _stop(self, stream_id: int, ended: bool, code: int) -> None:
        if not ended:
            with contextlib.suppress(ValueError):  # the stream is already gone
                self.quic.stop_stream(stream_id, code)
            self.discarding.add(stream_id)

    def _send(self, stream_id: int, method: str, response: Response) -> None:
        h3 = self.h3
        assert h3 is not None  # requests only arrive once ALPN chose h3
        clock = self.ctx.clock
        fields = response_fields(response.status, response.headers, clock.date, clock.server_name)
        body = response.body
        try:
            if (
                method == "HEAD"
                or response.status in (204, 304)
                or not (response.body_length or isinstance(body, Pipe))
            ):
                h3.send_headers(stream_id, fields, end_stream=True)
            elif isinstance(body, bytes):
                h3.send_headers(stream_id, fields)
                h3.send_data(stream_id, body, end_stream=True)
            elif isinstance(body, Pipe):
                h3.send_headers(stream_id, fields)
                self.outgoing[stream_id] = body
                body.want(self.transmit)
            else:
                h3.send_headers(stream_id, fields)
                self.outgoing[stream_id] = BodyCursor(body)
        except RuntimeError:
            # STOP_SENDING arrived in the same packet as the request: aioquic has reset the
            # stream's sending side already, and the event saying so is next in the queue.
            return
        self.ctx.stats.by_class[response.status // 100] += 1

    def _pump(self) -> None:
        """Top up file responses to their windows; more follows as the peer acknowledges."""
        h3 = self.h3
        quic = self.quic
        assert h3 is not None
        budget = CONNECTION_WINDOW
        levels = {stream_id: _unacked(quic, stream_id) for stream_id in self.outgoing}
        budget -= sum(levels.values())
        for stream_id, out in list(self.outgoing.items()):
            level = levels[stream_id]
            if level >= STREAM_WINDOW // 2:
                continue
            room = min(STREAM_WINDOW - level, budget)
            if out.__class__ is Pipe:
                budget -= self._pump_pipe(h3, stream_id, out, room)
                if budget <= 0:
                    break
                continue
            assert isinstance(out, BodyCursor)
            try:
                while room > 0 and out.remaining:
                    data = out.read(min(CHUNK, room))
                    h3.send_data(stream_id, data, end_stream=not out.remaining)
                    room -= len(data)
                    budget -= len(data)
                    self.progress += 1
            except OSError:
                # The file shrank under us: the promised length cannot be kept, so the response is cut.
                quic.reset_stream(stream_id, H3_INTERNAL_ERROR)
                del self.outgoing[stream_id]
                continue
            except RuntimeError:  # reset by the peer's STOP_SENDING
                del self.outgoing[stream_id]
                continue
            if not out.remaining:
                del self.outgoing[stream_id]
            if budget <= 0:
                break

    def _pump_pipe(self, h3: H3Connection, stream_id: int, pipe: Pipe, room: int) -> int:
        """Send up to `room` bytes of a streamed answer; returns how many were sent."""
        sent = 0
        try:
            while room > 0:
                data = pipe.read(min(CHUNK, room))
                if not data:
                    break
                h3.send_data(stream_id, bytes(data), end_stream=pipe.done)
                room -= len(data)
                sent += len(data)
                self.progress += 1
                if pipe.done:
                    del self.outgoing[stream_id]
                    return sent
            if pipe.error:
                # Cut off upstream: a reset, never a FIN that would pass the cut body off as whole.
                self.quic.reset_stream(stream_id, H3_INTERNAL_ERROR)
                del self.outgoing[stream_id]
            elif pipe.done:
                h3.send_data(stream_id, b"", end_stream=True)
                del self.outgoing[stream_id]
        except RuntimeError:  # reset by the peer's STOP_SENDING
            self.outgoing.pop(stream_id, None)
            pipe.abandon()
        return sent

    def _log(self, response: Response, t0: int, request: Request | None = None) -> None:
        observer = self.ctx.observer
        if observer is None:
            return
        if request is None:
            observer.refused(self.peer, response.status, t0, "3", "https")
            return
        nbytes = response.body_length if request.method != "HEAD" else 0
        observer.request(request, response.status, nbytes, t0, "3")

    # lifecycle (called by the worker, not per request) ------------------------------
    def sweep(self, now: float) -> None:
        """Once a second: bound the handshake, and any response or request body that stopped moving."""
        limits = self.ctx.limits
        if not self.established:
            if now - self.born >= limits.handshake_timeout:
                self.abort()
            return
        if not (self.outgoing or self.incoming or self.pending):
            self.snap = -1
            return
        relayed = self.pending or any(out.__class__ is Pipe for out in self.outgoing.values())
        uploading = any(i.pipe is not None and not i.pipe.paused for i in self.incoming.values())
        if relayed and not uploading:
            self.snap = -1  # a relayed answer: the upstream's timeouts govern
            return
        if self.progress != self.snap:
            self.snap = self.progress
            self.deadline = now + (limits.send_timeout if self.outgoing else limits.body_timeout)
        elif now >= self.deadline:
            self.abort()

    def drain(self, grace: float) -> None:
        """GOAWAY now; close once in-flight requests are answered and acknowledged, `grace` at the earliest."""
        if self.draining:
            return
        self.draining = True
        if self.established:
            self._send_goaway()
        self.loop.call_later(grace, self._grace_elapsed)
        self.transmit()

    def _send_goaway(self) -> None:
        h3 = self.h3
        if h3 is None or self.goaway is not None or self.closed:
            return
        control = h3._local_control_stream_id
        assert control is not None  # opened when the H3Connection was made
        self.goaway = self.next_stream
        # aioquic has no GOAWAY API; the frame goes on its control stream.
        self.quic.send_stream_data(control, goaway_frame(self.goaway))

    def _grace_elapsed(self) -> None:
        self.grace_over = True
        if not self.closed:
            self.transmit()

    def _close_if_done(self) -> None:
        if self.incoming or self.outgoing or self.pending or self.closing:
            return
        for stream_id, stream in self.quic._streams.items():
            if stream_id % 4 == 0 and not stream.sender.is_finished:
                return  # a response still unacknowledged, or a request still arriving
        self._close("drained")

    def abort(self) -> None:
        self._close("shutting down")

    def _close(self, reason: str) -> None:
        """CONNECTION_CLOSE now; aioquic keeps answering the peer for its closing period."""
        if self.closing:
            return
        self.closing = True
        self.quic.close(error_code=H3_NO_ERROR, reason_phrase=reason)
        self._drop_all()
        self.ctx.connections.discard(self)
        self.transmit()

    def _drop_all(self) -> None:
        """Nothing more will be sent: tell every handler and upstream still working for this connection."""
        for incoming in self.incoming.values():
            if incoming.pipe is not None:
                incoming.pipe.fail("connection closed")
        self.incoming.clear()
        for out in self.outgoing.values():
            if out.__class__ is Pipe:
                out.abandon()
        self.outgoing.clear()
        pending, self.pending = self.pending, {}
        for waiting, request, _ in pending.values():
            drop_outcome(waiting)
            if request.body.__class__ is Pipe:
                request.body.fail("connection closed")

    def _terminated(self) -> None:
        if self.closed:
            return
        self.closed = self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._drop_all()
        self.ctx.connections.discard(self)
        self.endpoint.forget(self)

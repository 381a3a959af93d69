"""One keep-alive HTTP/1.1 connection to an origin: the request written, the answer parsed, both bodies streamed.

The caller serialises the request head (it owns header rewriting); this
module only moves bytes and judges the answer's framing, with llhttp
(httptools) so response smuggling shapes (Content-Length with
Transfer-Encoding, duplicate lengths, bad chunks) are refused the same way
requests are. Bodies go through `Pipe`s both ways, so neither is ever held
whole: the request body is read from its pipe only while the socket takes
more, and the answer's body stops the socket being read while its pipe is
full.

An answer is told to the caller once the read that carried its head has
been parsed (`send`'s callback, or `start`'s future): if that read also
held the whole answer, as it does for most small answers, the body comes
as bytes and no Pipe is made for it; otherwise it streams through a Pipe.

A connection is reused only when it is known to be at a message boundary:
the answer was read to its end, the request body was sent whole, both
sides kept the connection alive, and not one byte arrived that nobody
asked for. Anything else closes it, because a connection left mid-message
would hand one client's answer to the next.

Timeouts cost one timer per exchange, never one per chunk:

- `first_byte_timeout` runs from `start()` (when the head is written).
  While a streamed request body is still being uploaded it does not
  expire; it restarts when the last body byte is written, so a slow
  upload is not mistaken for a silent origin. An upload the origin stops
  reading for `read_timeout` fails with `write_timeout`.
- `read_timeout` is a progress check: one timer that re-arms itself when
  bytes arrived since it was armed, or when reading is paused by our own
  backpressure (a slow client is not the origin's fault). Only silence
  from an origin we are reading fails the exchange.
- A 101 tunnel has no timeout here: a WebSocket may be quiet for long, and
  the client side's idle timeouts govern it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import httptools

from ingress.config.upstream import Upstream
from ingress.config.upstream_semantics import parse_origin
from ingress.errors import EdgewardError
from ingress.protocol.pipe import Pipe

# Answer heads beyond these are refused: the origin is trusted for content, not for memory.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 256

IDLE, HEAD, BODY, TUNNEL, CLOSED = range(5)
_FIRST, _READ = 1, 2

_HOST = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one origin is: what is dialled, and the authority it is known by."""

    scheme: str
    host: str
    port: int
    authority: bytes

    @classmethod
    def parse(cls, text: str) -> Origin:
        """`http://127.0.0.1:9000`, `https://[::1]:8443`, `http://localhost`; ValueError says what is wrong.

        The config's own rule (`parse_origin`), so what `ingress check` accepts is exactly what runs.
        """
        scheme, host, port = parse_origin(text)
        if ":" in host:
            host = str(ipaddress.IPv6Address(host))
        shown = f"[{host}]" if ":" in host else host
        return cls(scheme, host, port, f"{shown}:{port}".encode("ascii"))

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority.decode('ascii')}"


class UpstreamError(EdgewardError):
    """Why an exchange with an origin failed, with what the caller needs to decide on a retry.

    `kind` is one of a small fixed set, to label metrics and pick the
    answer (502, 503 or 504): connect, connect_timeout, tls, reset,
    first_byte_timeout, write_timeout, read_timeout, protocol,
    request_body (the client's body broke off), aborted, pool_full,
    closed (the pool was shut).

    `answered`: a byte of the answer arrived, so the origin may have acted
    on the request; never retry then. `sent_body`: bytes of the request
    body were sent, so a streamed body can no longer be replayed.
    `reused`: the connection had served an earlier exchange; a failure
    there with nothing answered is the classic keep-alive race (the origin
    closed the idle connection as the request went out), which is safe to
    retry on a fresh connection even for non-idempotent requests when no
    body was sent.
    """

    def __init__(
        self,
        kind: str,
        detail: str = "",
        *,
        answered: bool = False,
        sent_body: bool = False,
        reused: bool = False,
    ) -> None:
        self.kind = kind
        self.detail = detail
        self.answered = answered
        self.sent_body = sent_body
        self.reused = reused
        super().__init__(f"{kind}: {detail}" if detail else kind)

    @property
    def retryable(self) -> bool:
        """Nothing was answered and no body byte was spent: another attempt repeats nothing the origin saw."""
        return not self.answered and not self.sent_body


@dataclass(slots=True)
class Exchange:
    """The answer's head, with its body: bytes when it had all arrived, else the Pipe it keeps arriving in.

    `reason` is the raw status phrase; `headers` are in arrival order and
    original case. `length` is the body's length as its framing gives it
    (Content-Length; 0 for an answer to HEAD, a 204 or a 304), or None when
    the body is chunked, close-delimited or a tunnel; a Pipe body has the
    same `length`. `keep_alive` is the origin's word on reuse; the connection
    decides reuse itself.
    """

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes | Pipe
    keep_alive: bool
    length: int | None

    def stream(self) -> Pipe:
        """The body as a Pipe, for a caller that reads every answer as a stream; a whole body becomes a finished one."""
        body = self.body
        if isinstance(body, Pipe):
            return body
        pipe = self.body = Pipe(self.length)
        if body:
            pipe.feed(body)
        pipe.finish()
        return pipe


Told = Callable[["Exchange | UpstreamError"], None]


class ConnectionOwner(Protocol):
    """What a connection tells its pool: it may serve another request, or it is gone."""

    def connection_idle(self, conn: UpstreamConnection) -> None: ...

    def connection_closed(self, conn: UpstreamConnection) -> None: ...


class _Refused(Exception):
    """Raised from a parser callback to stop llhttp on an answer we refuse."""


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an origin, serving one exchange at a time (no pipelining)."""

    __slots__ = (
        "_answered",
        "_chunks",
        "_close_delimited",
        "_complete",
        "_due",
        "_feeding",
        "_first_byte_timeout",
        "_head_only",
        "_headers",
        "_interim",
        "_keep_alive",
        "_length",
        "_loop",
        "_lost",
        "_parser",
        "_progress",
        "_progress_mark",
        "_pumping",
        "_raw_head",
        "_read_paused",
        "_read_timeout",
        "_reason",
        "_req",
        "_req_chunked",
        "_req_done",
        "_reused",
        "_sent",
        "_sent_body",
        "_sent_mark",
        "_spare_parser",
        "_status",
        "_stream",
        "_te_chunked",
        "_timer",
        "_timer_at",
        "_timer_phase",
        "_told",
        "_tunnel_in",
        "_upgrade",
        "_write_paused",
        "exchanges",
        "failure",
        "held",
        "idle_since",
        "owner",
        "state",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, config: Upstream, owner: ConnectionOwner | None = None) -> None:
        self._loop = loop
        self._first_byte_timeout = config.first_byte_timeout
        self._read_timeout = config.read_timeout
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.state = IDLE
        # Exchanges started on this connection; more than one means it was reused.
        self.exchanges = 0
        # loop.time() when it last became idle, for the pool's idle sweep.
        self.idle_since = 0.0
        # Handed out by the pool and not yet started: only then may the caller give it back unused.
        self.held = False
        # What ended the last exchange, for outlier detection of failures after the head.
        self.failure: UpstreamError | None = None
        self._spare_parser: httptools.HttpResponseParser | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_phase = 0
        self._timer_at = 0.0  # when the pending timer fires
        self._due = 0.0  # the deadline it serves; later than _timer_at after a re-arm
        self._lost: Exception | None = None
        self._write_paused = False
        self._read_paused = False
        self._pumping = False
        # Scratch of the answer being parsed, reset by llhttp's on_message_begin for each message.
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []  # the final answer's body until it is told
        self._raw_head = 0  # bytes of the answer's head in the reads before the current one
        self._feeding = 0  # bytes in the read being parsed
        self._length: int | None = None
        self._te_chunked = False
        self._clear()

    def _clear(self) -> None:
        # Whom to tell of the answer (or the failure); None once told.
        self._told: Told | None = None
        # The body of an answer told as a stream: the rest of it goes here.
        self._stream: Pipe | None = None
        # The final answer's status once its head is parsed (0 before).
        self._status = 0
        self._keep_alive = False
        self._parser: httptools.HttpResponseParser | None = None
        self._req: Pipe | None = None
        self._tunnel_in: Pipe | None = None
        self._req_chunked = False
        self._req_done = False
        self._head_only = False
        self._upgrade = False
        self._reused = False
        self._answered = False
        self._sent_body = False
        self._sent = 0
        self._sent_mark = 0
        self._progress = 0
        self._progress_mark = 0
        self._complete = False
        self._interim = False
        self._close_delimited = False

    @property
    def usable(self) -> bool:
        """Open and between exchanges: a request may be started on it."""
        transport = self.transport
        return self.state == IDLE and transport is not None and not transport.is_closing()

    # the exchange ------------------------------------------------------------
    def send(self, head: bytes, body: bytes | Pipe | None, method: str, told: Told, *, upgrade: bool = False) -> None:
        """Send a request; `told` is called once, with the answer (`Exchange`) or the UpstreamError that ended it.

        `head` is the whole serialised request head. A Pipe `body` with a
        length is sent raw (the head must say Content-Length), one without
        is sent chunked (the head must say Transfer-Encoding: chunked).
        With `upgrade`, the head asks to switch protocols and `body` is the
        client's side of the tunnel: nothing is read from it unless the
        origin answers 101, after which both directions are raw bytes.

        `told` runs from this connection's callbacks. With a bytes body it
        never runs before `send` returns (a connection that cannot take the
        request raises UpstreamError instead); a Pipe body that has already
        failed may end the exchange at once. An answer that fails after it
        was told fails its Pipe. To give up, `abort`.
        """
        self.held = False  # from now on the exchange's end decides where the connection goes
        reused = self.exchanges > 0
        transport = self.transport
        if self.state == CLOSED or transport is None:
            lost = self._lost
            kind = "tls" if isinstance(lost, ssl.SSLError) else "reset"
            detail = "connection closed before the request" + (f": {lost}" if lost is not None else "")
            raise UpstreamError(kind, detail, reused=reused)
        if self.state != IDLE:
            raise RuntimeError("an exchange is already in progress on this connection")
        # IDLE is only reached through `_clear` (a new connection, or `_end`): nothing to reset here.
        self.exchanges += 1
        self.failure = None
        self._reused = reused
        self._told = told
        self._head_only = method == "HEAD"
        self._upgrade = upgrade
        spare, self._spare_parser = self._spare_parser, None
        # llhttp is at a message boundary after an answer read whole, so its parser serves the next one;
        # an answer to HEAD is fed line by line and leaves it expecting a body, so HEAD gets a fresh one.
        self._parser = spare if spare is not None and method != "HEAD" else httptools.HttpResponseParser(self)
        self.state = HEAD
        if transport.is_closing():
            # Its close is under way (a TLS origin refusing our certificate after the handshake, say):
            # connection_lost will fail the exchange with the reason. Nothing may be written now.
            self._req_done = True
            return
        self._arm(self._first_byte_timeout, _FIRST)
        if isinstance(body, Pipe):
            transport.write(head)
            if upgrade:
                self._tunnel_in = body
                self._req_done = True
            else:
                self._req = body
                self._req_chunked = body.length is None
                body.want(self._pump)
        else:
            if body:
                transport.writelines((head, body))
                self._sent_body = True
            else:
                transport.write(head)
            self._req_done = True

    def start(
        self, head: bytes, body: bytes | Pipe | None, method: str, *, upgrade: bool = False
    ) -> asyncio.Future[Exchange]:
        """`send`, for a coroutine: the future resolves with the answer, or fails with UpstreamError.

        The answer's body is always a Pipe (`Exchange.stream`), whole or not: a coroutine reads it as a stream.

        Cancelling the future abandons the exchange and closes the connection.
        """
        fut: asyncio.Future[Exchange] = self._loop.create_future()
        try:
            self.send(head, body, method, _Settle(fut), upgrade=upgrade)
        except UpstreamError as exc:
            fut.set_exception(exc)
            return fut
        fut.add_done_callback(self._future_done)
        return fut

    def abort(self) -> None:
        """The caller gave up (the client went away): close now; a half-read answer is never reused."""
        if self.state == CLOSED:
            return
        if self.state == IDLE:
            self.close()
            return
        self._die(UpstreamError("aborted", "the exchange was abandoned", **self._facts()))

    def close(self) -> None:
        """Close an idle connection (pool sweep, shutdown); an exchange in progress is aborted."""
        if self.state not in (IDLE, CLOSED):
            self.abort()
            return
        self.state = CLOSED
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # asyncio callbacks ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc
        state = self.state
        if (state == BODY and exc is None and self._close_delimited) or (state == TUNNEL and exc is None):
            # A body without Content-Length or chunking ends where the connection does; so does a tunnel.
            if self._stream is not None:
                self._stream.finish()
            self._end(reusable=False)
        elif state in (HEAD, BODY, TUNNEL):
            if isinstance(exc, ssl.SSLError):
                kind, detail = "tls", str(exc)
            else:
                kind = "reset"
                detail = str(exc) if exc is not None else "origin closed the connection"
            if state == HEAD and not self._answered:
                detail += " before answering"
            self._die(UpstreamError(kind, detail, **self._facts()))
        self.state = CLOSED
        self._cancel_timer()
        if self.owner is not None:
            self.owner.connection_closed(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._req is not None:
            self._pump()

    def data_received(self, data: bytes) -> None:
        self._progress += 1
        state = self.state
        if state == TUNNEL:
            if not self._tunnel_body().feed(data):
                self._pause_reading()
            return
        if state not in (HEAD, BODY):
            # Bytes nobody asked for: the connection is not at a message boundary any more.
            if state == IDLE:
                self.close()
            return
        self._answered = True
        parser = self._parser
        assert parser is not None
        leftover = False
        self._feeding = len(data)
        try:
            if self._head_only and state == HEAD:
                leftover = self._feed_head_only(parser, data)
            else:
                parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._begin_tunnel(data[exc.args[0] :])
            return
        except (httptools.HttpParserError, _Refused) as exc:
            if self._complete:
                # A whole answer, then bytes nobody asked for: keep the answer, drop the connection.
                self._end(reusable=False)
                return
            refused = exc.__context__ if isinstance(exc.__context__, _Refused) else exc
            self._die(UpstreamError("protocol", f"malformed answer: {refused}", **self._facts()))
            return
        if self._complete:
            self._end(reusable=not leftover)
        elif self.state == HEAD:
            self._raw_head += len(data)
            if self._raw_head > MAX_HEAD_BYTES:
                self._die(UpstreamError("protocol", "answer head too large", **self._facts()))
        elif self.state == BODY:
            if self._stream is None:
                self._tell_stream()
            if self._timer_phase != _READ:
                # The head is in and the body is open: from now on, silence is measured by read_timeout.
                self._arm(self._read_timeout, _READ)

    def _feed_head_only(self, parser: httptools.HttpResponseParser, data: bytes) -> bool:
        """Feed an answer to HEAD line by line, stopping at its head; True if bytes follow it.

        llhttp cannot be told that the request was HEAD, so it would take
        the bytes after the head as the body its Content-Length announces.
        A head ends with a line feed, so feeding whole lines stops exactly
        there; answers to HEAD are heads only, a few lines long.
        """
        start, n = 0, len(data)
        while start < n:
            nl = data.find(b"\n", start)
            end = n if nl < 0 else nl + 1
            parser.feed_data(data[start:end])
            start = end
            if self._complete:
                return start < n
        return False

    # llhttp callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:
            raise _Refused("bytes after the complete answer")
        self._headers = []
        self._chunks = []
        self._reason = b""
        self._raw_head = 0

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called per field, so it only counts them; the head's size and framing are judged once it is whole.
        headers = self._headers
        headers.append((name, value))
        if len(headers) > MAX_HEADERS:
            raise _Refused("answer head too large")

    def on_headers_complete(self) -> None:
        headers = self._headers
        # The head came in this read and the ones before it, so it can only be too large if they were;
        # only then is it measured. (A read is bounded, so the fields it held were too.)
        if (
            self._raw_head + self._feeding > MAX_HEAD_BYTES
            and sum(len(name) + len(value) + 4 for name, value in headers) > MAX_HEAD_BYTES
        ):
            raise _Refused("answer head too large")
        parser = self._parser
        assert parser is not None
        status: int = parser.get_status_code()
        if status < 200 and status != 101:
            # 100 Continue, 102, 103: llhttp reports each as a whole message; only the final answer counts.
            self._interim = True
            return
        length: int | None = None
        chunked = False
        for name, value in headers:
            size = len(name)
            if size == 14 and name.lower() == b"content-length":
                length = int(value)  # llhttp has checked it is one number
            elif size == 17 and name.lower() == b"transfer-encoding":
                chunked = value.rstrip().lower().endswith(b"chunked")
        self._length = length
        self._te_chunked = chunked
        keep_alive = bool(parser.should_keep_alive())
        if status == 101:
            if not self._upgrade:
                raise _Refused("101 Switching Protocols to a request that did not ask to upgrade")
            if not parser.should_upgrade():
                raise _Refused("101 Switching Protocols without Upgrade")
            self._length = None
            keep_alive = False
            self.state = TUNNEL
        elif self._head_only or status in (204, 304):
            self._length = 0
            if self._head_only:
                self._complete = True
            self.state = BODY
        else:
            self._close_delimited = self._length is None and not self._te_chunked
            self.state = BODY
        # Told once this read is parsed (`_end`, `_tell_stream`, `_begin_tunnel`): by then it is known
        # whether the whole answer came with its head.
        self._status = status
        self._keep_alive = keep_alive

    def on_body(self, chunk: bytes) -> None:
        stream = self._stream
        if stream is None:
            self._chunks.append(chunk)  # not told yet: at most what one read holds
        elif not stream.feed(chunk):
            self._pause_reading()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.state == TUNNEL:
            return
        if self._stream is not None:
            self._stream.finish()
        self._complete = True

    # request body ---------------------------------------------------------------------
    def _pump(self) -> None:
        """Move what the request pipe holds to the socket, while the socket takes more."""
        if self._pumping:
            return  # reading the pipe resumed its producer, which fed it again: the loop below takes that too
        pipe = self._req
        transport = self.transport
        if pipe is None or transport is None or self.state == CLOSED:
            return
        if pipe.error:
            self._die(UpstreamError("request_body", f"the client's body broke off: {pipe.error}", **self._facts()))
            return
        self._pumping = True
        try:
            while pipe.buffered and not self._write_paused:
                data = pipe.read()
                n = len(data)
                self._sent += n
                self._sent_body = True
                if self._req_chunked:
                    transport.writelines((b"%x\r\n" % n, data, b"\r\n"))
                else:
                    transport.write(data)
        finally:
            self._pumping = False
        if not pipe.done:
            return
        self._req = None
        pipe.on_readable = None
        if self.state == TUNNEL:
            # The client finished its side of the tunnel: pass the half-close on where TCP allows it.
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
            return
        if not pipe.complete:
            self._die(UpstreamError("request_body", "the client's body ended short of its length", **self._facts()))
            return
        if self._req_chunked:
            transport.write(b"0\r\n\r\n")
        self._req_done = True
        if self.state == HEAD and not self._answered:
            self._arm(self._first_byte_timeout, _FIRST)

    def _tell_stream(self) -> None:
        """The head is in and the body is still arriving: tell the answer, its body a Pipe with what came so far."""
        told = self._told
        if told is None:
            return
        self._told = None
        pipe = self._stream = Pipe(self._length)
        pipe.on_drain = self._resume_reading
        exchange = Exchange(self._status, self._reason, self._headers, pipe, self._keep_alive, self._length)
        chunks, self._chunks = self._chunks, []
        paused = False
        for chunk in chunks:
            paused = not pipe.feed(chunk) or paused
        if paused:
            self._pause_reading()
        told(exchange)

    def _begin_tunnel(self, rest: bytes) -> None:
        """After 101, both directions are raw bytes until either side closes; never reused."""
        self._cancel_timer()
        self._parser = None
        self._tell_stream()
        if self.state == CLOSED:
            return  # the caller gave up on being told
        if rest and not self._tunnel_body().feed(rest):
            self._pause_reading()
        pipe = self._tunnel_in
        if pipe is not None:
            self._tunnel_in = None
            self._req = pipe
            self._req_chunked = False
            pipe.want(self._pump)

    # timers -----------------------------------------------------------------------
    def _arm(self, delay: float, phase: int) -> None:
        """Set the deadline; a timer already due no later is kept and re-aims itself when it fires.

        Each exchange arms twice (first byte, then read); moving a deadline later costs
        an attribute write instead of cancelling one timer and scheduling another.
        """
        self._timer_phase = phase
        due = self._loop.time() + delay
        self._due = due
        timer = self._timer
        if timer is not None:
            if self._timer_at <= due:
                return
            timer.cancel()
        self._timer_at = due
        self._timer = self._loop.call_at(due, self._on_timer)

    def _cancel_timer(self) -> None:
        """No deadline now; a pending timer finds nothing to do when it fires."""
        self._timer_phase = 0

    def _on_timer(self) -> None:
        self._timer = None
        if not self._timer_phase:
            return
        if self._loop.time() < self._due:
            self._timer_at = self._due
            self._timer = self._loop.call_at(self._due, self._on_timer)
            return
        state = self.state
        if state == HEAD and not self._answered:
            if not self._req_done:
                # Still uploading: the origin is not late yet, unless it stopped taking the body.
                if self._sent != self._sent_mark or not self._write_paused:
                    self._sent_mark = self._sent
                    self._arm(self._read_timeout, _FIRST)
                    return
                detail = f"the origin took none of the request body for {self._read_timeout:g}s"
                self._die(UpstreamError("write_timeout", detail, **self._facts()))
                return
            detail = f"no answer within {self._first_byte_timeout:g}s"
            self._die(UpstreamError("first_byte_timeout", detail, **self._facts()))
        elif state in (HEAD, BODY):
            if self._progress != self._progress_mark or self._read_paused:
                self._progress_mark = self._progress
                self._arm(self._read_timeout, _READ)
                return
            detail = f"the answer made no progress for {self._read_timeout:g}s"
            self._die(UpstreamError("read_timeout", detail, **self._facts()))

    # endings ---------------------------------------------------------------------------
    def _end(self, reusable: bool) -> None:
        """The answer was read whole: become idle for the pool, or close; then tell it if it was not yet told."""
        self._cancel_timer()
        stream = self._stream
        whole: Exchange | None = None
        told = self._told
        reusable = reusable and self._keep_alive
        if stream is not None:
            stream.on_drain = None
        elif told is not None and self._status:
            # It all came in the read that carried its head: the body is bytes, and no Pipe is needed.
            chunks = self._chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            whole = Exchange(self._status, self._reason, self._headers, body, self._keep_alive, self._length)
        unsent = self._req
        reusable = reusable and self._req_done and self.state == BODY
        spare = self._parser if reusable and not self._head_only else None
        self._clear()
        self._spare_parser = spare
        if unsent is not None:
            # The origin answered before taking the whole body: nobody will read the rest of it.
            unsent.on_readable = None
            unsent.discard()
        if self._read_paused:
            self._resume_reading()
        transport = self.transport
        if not reusable or transport is None or transport.is_closing():
            self.close()
        else:
            self.state = IDLE
            self.idle_since = self._loop.time()
            if self.owner is not None:
                self.owner.connection_idle(self)
        if whole is not None and told is not None:
            told(whole)

    def _die(self, error: UpstreamError) -> None:
        """End the exchange with `error`: the waiting caller or the open body hears it, and the socket is dropped."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.failure = error
        self._cancel_timer()
        told = self._told
        stream = self._stream
        if stream is not None:
            stream.on_drain = None
            stream.fail(f"upstream {error}")
        pipe = self._req
        if pipe is not None:
            pipe.on_readable = None
            if self._sent_body:
                pipe.discard()  # partly sent, so it can never be replayed: let the client's upload drain
        self._clear()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.abort()
        if told is not None:
            told(error)

    def _facts(self) -> dict[str, bool]:
        return {"answered": self._answered, "sent_body": self._sent_body, "reused": self._reused}

    def _future_done(self, fut: asyncio.Future[Exchange]) -> None:
        told = self._told
        if fut.cancelled() and isinstance(told, _Settle) and told.future is fut:
            self.abort()

    def _tunnel_body(self) -> Pipe:
        stream = self._stream
        assert stream is not None
        return stream

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.transport.is_closing():
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()


class _Settle:
    """`start`'s way of being told: the future gets the answer, its body always a Pipe, or the error."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Exchange]) -> None:
        self.future = future

    def __call__(self, outcome: Exchange | UpstreamError) -> None:
        future = self.future
        if future.done():
            return
        if isinstance(outcome, UpstreamError):
            future.set_exception(outcome)
            future.exception()  # whoever awaits it still gets it; nobody awaiting is not a bug worth a log line
        else:
            outcome.stream()
            future.set_result(outcome)

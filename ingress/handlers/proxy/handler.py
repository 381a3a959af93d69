"""A proxy route: cache lookup, then on a miss an origin fetch, relayed as it arrives.

The order is the edge's request lifecycle after the gate: a fresh cache hit
is answered at once from its pre-serialised form (no task, no await, like
a static file). A request that arrived whole and finds a kept-alive
connection to its origin is sent from the request path and answered from
that connection's callback (`_quick`), with no task either. Anything else
becomes a task (`_attempts`) that picks an origin, sends the rewritten head
and streams the body, and retries elsewhere only when that cannot repeat
anything the origin saw; the callback path hands its request to that task
when it needs a new connection or a retry. The answer is relayed through
a Pipe, so a 1 GiB download or an endless event stream passes with bounded
memory; an answer the cache may store is gathered first (`gather`): if it
ends within the object limit it is stored and served like a hit, and if it
outgrows the limit it goes to the client as a stream after all, from its
first byte, never having been held whole. That takes answers of any
framing that says where the body ends: Content-Length, chunked, or a
connection closed cleanly (RFC 9112 §8: complete; a TLS close without
close_notify fails the exchange instead). An event stream is never
gathered: it is meant to be read as it arrives.

On a cached route the origin is told this edge reads Surrogate-Control
(`Surrogate-Capability`), and the Surrogate-Control members the cache
consumed are left out of every answer (`Targeting.downstream`).

Failures map to 502 (the origin failed), 503 (no origin may be tried: all
ejected or unhealthy, or the circuit is open) and 504 (the origin did not
answer in time), each logged once with its reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
import urllib.parse
from collections.abc import Callable

from ingress.clock import Clock
from ingress.config.model import Route
from ingress.handlers.cache import HIT_STALE_IF_ERROR, Lookup, SharedCache, cache_status, primary_key
from ingress.handlers.freshness import Kind, field_values
from ingress.handlers.proxy.backends import Backends, UpstreamRuntime
from ingress.handlers.proxy.headers import Outgoing, declared_length, request_framing, response_headers
from ingress.handlers.proxy.upstream import Exchange, UpstreamConnection, UpstreamError
from ingress.protocol.errorpages import error_response
from ingress.protocol.events import Request, Response
from ingress.protocol.pipe import Pipe
from ingress.protocol.trace import Attempt, TraceContext
from ingress.routing import Outcome
from ingress.telemetry.context import Tracer, new_span_id

log = logging.getLogger("edgeward.proxy")

# RFC 9110 section 9.2.2: a repeat has the same effect, so a failed attempt may be retried elsewhere.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# What each failure is answered with: the origin failed (502), none may be tried (503), or it was too slow (504).
STATUS_FOR = {
    "pool_full": 503,
    "no_origin": 503,
    "closed": 503,
    "first_byte_timeout": 504,
    "write_timeout": 504,
    "connect_timeout": 504,
    "request_body": 400,
}
# Failures that happen before any byte of the request is written: even a POST may go elsewhere.
NOT_SENT = frozenset({"connect", "connect_timeout", "tls", "pool_full", "closed"})
# Failures that count against an origin for passive outlier detection.
ORIGIN_FAULTS = frozenset({"connect", "connect_timeout", "tls", "reset", "first_byte_timeout", "protocol"})
_WS_DROP = frozenset({b"sec-websocket-accept", b"upgrade", b"connection"})
# Client fields left out when the cache revalidates with its own validators, or announces itself.
_VALIDATORS = frozenset({b"if-none-match", b"if-modified-since"})
_CAPABILITY = frozenset({b"surrogate-capability"})
_NONE: frozenset[bytes] = frozenset()


class _Waker:
    """Lets a coroutine wait on a Pipe, which only knows callbacks."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] | None = None

    def __call__(self) -> None:
        future = self.future
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self) -> None:
        self.future = self.loop.create_future()
        await self.future


async def gather(pipe: Pipe, limit: int, loop: asyncio.AbstractEventLoop) -> bytes | None:
    """An answer's whole body if it ends within `limit` bytes; None, with nothing read, once more has arrived.

    Nothing is read before the end is known, so a body that outgrows the
    limit is still whole in the pipe and the client is sent it all. The
    pipe's high-water mark is raised to `limit` meanwhile, so the producer
    pauses (the upstream socket is no longer read) once it holds more: at
    most the limit plus one socket read is held. The mark is put back
    before returning, so a streamed remainder has the pipe's usual
    backpressure. UpstreamError if the body breaks off: never a cut body.
    """
    waker = _Waker(loop)
    pipe.want(waker)
    usual = pipe.high_water
    pipe.set_high_water(max(usual, limit))
    try:
        while True:
            if pipe.error:
                raise UpstreamError("reset", pipe.error, answered=True)
            if pipe.buffered > limit:
                return None
            if pipe.eof:
                return bytes(pipe.read())
            await waker.wait()
    finally:
        pipe.high_water = usual  # lowering it pauses nothing: the next feed decides, as it always does


def _event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    """A text/event-stream answer: meant to be read while it arrives, so never held back to be stored."""
    return any(
        v.split(b";", 1)[0].strip().lower() == b"text/event-stream" for v in field_values(headers, b"content-type")
    )


def _aborter(pipe: Pipe, conn: UpstreamConnection) -> Callable[[], None]:
    """What to do when the client leaves before the answer's end: close that upstream connection.

    Only while the answer is still arriving: once it has ended, the connection
    went back to its pool and may be carrying someone else's exchange.
    """

    def abandon() -> None:
        if not pipe.eof:
            conn.abort()

    return abandon


class _Try:
    """One proxied request on its way to an origin: what the next attempt, a retry and the answer need."""

    __slots__ = (
        "attempt",
        "attempts",
        "body",
        "head",
        "key",
        "last",
        "lookup",
        "method",
        "origin",
        "out",
        "request",
        "request_time",
        "retrying",
        "span_id",
        "started",
        "trace",
        "tried",
        "websocket",
    )

    def __init__(
        self,
        request: Request,
        lookup: Lookup | None,
        trace: TraceContext | None,
        span_id: bytes,
        head: bytes,
        out: Outgoing,
        method: str,
        websocket: bool,
        body: bytes | Pipe | None,
    ) -> None:
        self.request = request
        self.lookup = lookup
        self.trace = trace
        # This attempt's CLIENT span id, and the head that names it as the origin's parent.
        self.span_id = span_id
        self.head = head
        self.out = out
        self.method = method
        self.websocket = websocket
        self.body = body
        self.attempts: list[Attempt] | None = None
        self.key: bytes | None = None
        self.origin: int | None = None  # the origin picked for the next attempt, when already picked
        self.tried: set[int] = set()
        self.attempt = 0
        self.retrying = False
        self.last: tuple[UpstreamError, int] | None = None
        self.request_time = 0.0  # time.time() when the attempt that answered was sent, for the cache's Age
        self.started = 0  # time.time_ns() at the current attempt's start, for its span


class _Answer(asyncio.Future[Response]):
    """The client's wait for an answer `ProxyHandler._quick` started, and how the origin's connection reports it.

    Cancelling it (the client left) stops the exchange at the origin, as
    cancelling the general path's task does.
    """

    __slots__ = ("conn", "handler", "origin", "task", "tr")

    handler: ProxyHandler
    tr: _Try
    origin: int
    conn: UpstreamConnection | None
    task: asyncio.Task[Response] | None

    def told(self, outcome: Exchange | UpstreamError) -> None:
        self.handler._arrived(self, outcome)

    def follow(self, task: asyncio.Task[Response]) -> None:
        """A retry `_attempts` took over has ended: its answer is this one."""
        self.handler.upstream.active -= 1
        if self.done():
            return
        if task.cancelled():
            self.cancel()
            return
        exc = task.exception()
        if exc is not None:
            self.set_exception(exc)
        else:
            self.set_result(task.result())

    def cancel(self, msg: object = None) -> bool:
        cancelled = super().cancel(msg)
        task = self.task
        if task is not None:
            task.cancel(msg)
        conn = self.conn
        if conn is not None:
            conn.abort()  # tells `_arrived`, which finds this future cancelled
        return cancelled


class ProxyHandler:
    def __init__(
        self,
        route: Route,
        backends: Backends,
        clock: Clock,
        extra: list[tuple[bytes, bytes]],
        loop: asyncio.AbstractEventLoop,
        request_id_header: str,
        tracer: Tracer | None = None,
    ) -> None:
        """`tracer` gives each request its trace context for `traceparent` and the upstream spans."""
        proxy = route.proxy
        assert proxy is not None
        self.loop = loop
        self.clock = clock
        self.upstream: UpstreamRuntime = backends.upstreams[proxy.upstream]
        self.rules = backends.rules
        self.cache: SharedCache | None = backends.cache if proxy.cache else None
        # This cache's Surrogate-Capability member, sent with the requests it may store the answers of.
        self.capability = self.cache.targeting.capability if self.cache is not None else None
        self.host = proxy.host.encode("latin-1") if proxy.host else None
        self.strip = proxy.strip_prefix
        self.websocket = proxy.websocket
        # Security headers of the route: added where the origin did not set its own.
        self.extra = extra
        self.extra_names = frozenset(name.lower() for name, _ in extra)
        self.request_id = request_id_header.lower().encode("latin-1")
        self.flights = backends.flights
        self.hash_key = self.upstream.balancer.key_of
        self.least = self.upstream.config.balance == "least_requests"
        self.via = self.rules.via("1.1")
        self.tracer = tracer
        self.name = proxy.upstream
        # "host:port" of each origin, as the CLIENT spans name it.
        self.authorities = [origin.authority.decode("ascii") for origin in self.upstream.origins]

    # the request path -------------------------------------------------------------
    def handle(self, request: Request, path: str) -> Outcome:
        request.upstream = self.name
        cache = self.cache
        if cache is not None and not request.upgrade and request.method in ("GET", "HEAD"):
            now = time.time()
            hit = cache.hit(request, now, self.clock)
            if hit is not None:
                request.cache = "hit"
                return hit
            lookup = cache.lookup(request, now)
            kind = lookup.kind
            if kind is Kind.FRESH:
                assert lookup.entry is not None
                request.cache = "hit"
                return cache.respond(lookup.entry, request, now, self.clock, lookup.status)
            request.cache = "miss"
            if kind is Kind.ONLY_IF_CACHED:
                return error_response(504, [(b"Cache-Status", cache_status(fwd="miss", detail="only-if-cached"))])
            if kind is Kind.STALE_WHILE_REVALIDATE:
                assert lookup.entry is not None
                request.cache = "stale"
                self.loop.create_task(self._revalidate(request, path, lookup))
                return cache.respond(lookup.entry, request, now, self.clock, lookup.status)
            return self.loop.create_task(self._cached(request, path, lookup))
        if cache is not None:
            request.cache = "bypass"
        if request.body.__class__ is bytes and not request.upgrade:
            return self._quick(request, path)
        return self.loop.create_task(self._forward(request, path))

    def _quick(self, request: Request, path: str) -> Outcome:
        """The common exchange without a task: a whole request on an idle connection, answered by callback.

        Most proxied requests arrive whole and find a kept-alive connection,
        and most answers arrive whole with their head. For those this path
        makes no coroutine and no task, so no loop step: the connection's
        callback (`_arrived`) makes the answer and settles the future the
        client connection waits on. A request it cannot serve that way (no
        idle connection to the picked origin, or a failure worth a retry)
        goes on in `_attempts` from where it stands, so both paths decide
        retries, health and failures the same way.
        """
        upstream = self.upstream
        upstream.stats.requests += 1
        t = self._prepare(request, path, None)
        i = self._pick(t)
        if i is None:
            return self._failed(request, t.out, UpstreamError("no_origin", "no healthy origin left"), None)
        upstream.active += 1
        conn = upstream.pools[i].take_idle()
        if conn is None:  # it has to be dialled or waited for: that takes a coroutine
            t.origin = i
            return self.loop.create_task(self._settle(t))
        answer = _Answer(loop=self.loop)
        answer.handler = self
        answer.tr = t
        answer.origin = i
        answer.conn = conn
        answer.task = None
        t.request_time = time.time()
        if t.attempts is not None:
            t.started = time.time_ns()
        try:
            conn.send(t.head, t.body, t.method, answer.told)
        except UpstreamError as exc:
            self._arrived(answer, exc)
        return answer

    def _arrived(self, answer: _Answer, outcome: Exchange | UpstreamError) -> None:
        """What `_quick`'s connection told: the answer made, a retry handed to `_attempts`, or the failure."""
        t = answer.tr
        i = answer.origin
        conn, answer.conn = answer.conn, None
        upstream = self.upstream
        try:
            if isinstance(outcome, UpstreamError):
                if answer.done():
                    pass  # the client left, and its cancel aborted the exchange
                elif self._retry(t, outcome, i):
                    task = answer.task = self.loop.create_task(self._attempts(t))
                    task.add_done_callback(answer.follow)
                    return
                else:
                    answer.set_result(self._failed(t.request, t.out, outcome, i))
            else:
                self._landed(t, i, outcome.status)
                body = outcome.body
                if answer.done():
                    if isinstance(body, Pipe):
                        body.abandon()  # the client left as the head arrived
                else:
                    if isinstance(body, Pipe) and conn is not None:
                        body.on_abandon = _aborter(body, conn)
                    answer.set_result(self._answer(t.request, outcome, t.out, t.websocket))
        except Exception as exc:  # a bug here must not escape into the origin connection's callbacks
            if not answer.done():
                answer.set_exception(exc)
        upstream.active -= 1

    async def _settle(self, t: _Try) -> Response:
        """`_attempts` for a request `_quick` started, which counted it as active."""
        try:
            return await self._attempts(t)
        finally:
            self.upstream.active -= 1

    async def _cached(self, request: Request, path: str, lookup: Lookup) -> Response:
        """A miss or a stale entry: one origin fetch per key however many ask at once (singleflight)."""
        key = primary_key(request)
        flights = self.flights
        waiting = flights.join(key)
        if waiting is not None:
            with contextlib.suppress(Exception):  # the leader's failure is its own; this request tries for itself
                await waiting
            cache = self.cache
            assert cache is not None
            now = time.time()
            again = cache.lookup(request, now)
            if again.kind is Kind.FRESH and again.entry is not None:
                request.cache = "hit"
                return cache.respond(again.entry, request, now, self.clock, again.status + "; collapsed")
            return await self._forward(request, path, lookup)
        try:
            return await self._forward(request, path, lookup)
        finally:
            flights.done(key, None)

    async def _revalidate(self, request: Request, path: str, lookup: Lookup) -> None:
        """stale-while-revalidate: refresh the entry off the client's path; one at a time per key."""
        key = primary_key(request)
        if self.flights.join(key) is not None:
            return  # already being refreshed
        try:
            await self._forward(request, path, lookup)
        except Exception:  # noqa: S110 - a failed refresh leaves the stale entry; the next request retries
            pass
        finally:
            self.flights.done(key, None)

    async def _forward(self, request: Request, path: str, lookup: Lookup | None = None) -> Response:
        upstream = self.upstream
        upstream.stats.requests += 1
        upstream.active += 1
        try:
            return await self._attempts(self._prepare(request, path, lookup))
        finally:
            upstream.active -= 1

    def _prepare(self, request: Request, path: str, lookup: Lookup | None) -> _Try:
        """The request as the origin is sent it, and the state its attempts share."""
        trace = self.tracer.context(request) if self.tracer is not None else None
        span_id = new_span_id()
        head, out, method, websocket = self._head(request, path, lookup, trace, span_id)
        body: bytes | Pipe | None = request.body
        if (request.upgrade and not websocket) or self._bodiless(request):
            body = None  # an upgrade this route does not pass, or a body the cache key cannot see
        t = _Try(request, lookup, trace, span_id, head, out, method, websocket, body)
        # Each try is a CLIENT span of a sampled trace; unsampled requests skip the bookkeeping.
        if trace is not None and trace.sampled:
            t.attempts = request.attempts = []
        if self.hash_key is not None:
            t.key = self.hash_key(request)
        return t

    def _head(
        self, request: Request, path: str, lookup: Lookup | None, trace: TraceContext | None, span_id: bytes
    ) -> tuple[bytes, Outgoing, str, bool]:
        """The serialised request head for the origin, its ids, the method sent, and whether it is a WebSocket."""
        websocket = self.websocket and request.upgrade == b"websocket"
        method = request.method
        peer = request.peer
        rules = self.rules
        # Revalidating on the cache's behalf sends its validators, not the client's (the cache answers the
        # client's); announcing this cache to the origin sends Surrogate-Capability with this cache's member.
        revalidating = lookup is not None and lookup.entry is not None and self.cache is not None
        announcing = lookup is not None and self.capability is not None
        without = _VALIDATORS if revalidating else _NONE
        if announcing:
            without = without | _CAPABILITY
        out = rules.request_headers(request, self.host, peer.remote or peer.client, websocket, trace, span_id, without)
        more: list[bytes] = []
        if websocket and method == "CONNECT":
            # RFC 8441 extended CONNECT arrives as CONNECT with :protocol; the origin speaks HTTP/1.1 Upgrade.
            method = "GET"
            more += (b"sec-websocket-key: ", base64.b64encode(os.urandom(16)), b"\r\n")
            if rules.passed_on(request, b"sec-websocket-version") is None:
                more.append(b"sec-websocket-version: 13\r\n")
        elif not websocket and not request.upgrade and not self._bodiless(request):
            framing = request_framing(method, declared_length(request))
            if framing is not None:
                more += (framing[0], b": ", framing[1], b"\r\n")
        if revalidating:
            assert lookup is not None and lookup.entry is not None and self.cache is not None
            for name, value in self.cache.conditional_headers(lookup.entry):
                more += (name, b": ", value, b"\r\n")
        if announcing:
            assert self.capability is not None
            prior = rules.passed_on(request, b"surrogate-capability")
            more += (b"surrogate-capability: ", prior + b", " + self.capability if prior else self.capability, b"\r\n")
        target = self._target(request, path)
        head = b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method.encode("ascii"), target, out.fields, b"".join(more))
        return head, out, method, websocket

    def _bodiless(self, request: Request) -> bool:
        """A GET or HEAD on a cached route goes upstream without its body.

        The answer is stored under a key that does not include the body, so
        forwarding one would let a client poison the entry ("fat GET"); and a
        background revalidation must not promise a body the client's
        connection has already dropped.
        """
        return self.cache is not None and request.method in ("GET", "HEAD")

    def _target(self, request: Request, path: str) -> bytes:
        raw = request.path
        strip = self.strip
        if strip:
            prefix = strip.encode("latin-1")
            if raw.startswith(prefix):
                raw = raw[len(prefix) :] or b"/"
            else:  # spelt differently (percent-encoded): strip from the normalised path
                rest = path[len(strip) :] if path.startswith(strip) else path
                raw = urllib.parse.quote(rest or "/", safe="/:@!$&'()*+,;=-._~").encode("ascii")
            if not raw.startswith(b"/"):
                raw = b"/" + raw
        return raw + b"?" + request.query if request.query else raw

    def _pick(self, t: _Try) -> int | None:
        """The origin for the next attempt: healthy, not ejected, and not one a retry should avoid."""
        upstream = self.upstream
        skip = upstream.health.unusable(time.monotonic())
        if t.tried:
            skip = skip | t.tried
        return upstream.balancer.pick(t.key, skip, upstream.in_flight() if self.least else ())

    def _retry(self, t: _Try, exc: UpstreamError, i: int) -> bool:
        """Record a failed attempt at origin `i`; True when another attempt may be made, with `t` ready for it."""
        upstream = self.upstream
        if t.attempts is not None:
            t.attempts.append(
                Attempt(t.span_id, t.started, time.time_ns(), self.authorities[i], 0, exc.kind, t.attempt)
            )
        if exc.kind in ORIGIN_FAULTS:
            upstream.health.record_failure(i, time.monotonic())
        replayable = not exc.answered and not exc.sent_body and exc.kind != "pool_full"
        # A non-idempotent request is retried only if the origin cannot have seen it: a
        # reset after the head went out may have followed the origin acting on it.
        idempotent = t.method in IDEMPOTENT or exc.kind in NOT_SENT
        if not (replayable and idempotent and t.attempt < upstream.config.retries and not t.websocket):
            return False
        # The budget bounds requests in retry, not attempts: once admitted, a request may use all its `retries`.
        if not t.retrying and not upstream.retry_allowed():
            upstream.stats.retries_refused += 1
            return False
        t.attempt += 1
        t.last = (exc, i)
        if not (exc.reused and t.method in IDEMPOTENT):
            # A fresh connection failed: try another origin. A reused one may just have been closed
            # by the origin while idle: a new connection to the same origin is the right retry.
            t.tried.add(i)
        upstream.stats.retries += 1
        trace = t.trace
        if trace is not None:
            # The retry is a span of its own: the origin sees it as the parent.
            t.span_id = new_span_id()
            fresh = trace.traceparent(t.span_id)
            t.head = t.head.replace(t.out.traceparent, fresh, 1)
            t.out = t.out._replace(traceparent=fresh)
        if not t.retrying:
            t.retrying = True
            upstream.retrying += 1
        return True

    def _landed(self, t: _Try, i: int, status: int) -> None:
        """An attempt at origin `i` was answered: its span, and the origin's passive health."""
        if t.attempts is not None:
            t.attempts.append(Attempt(t.span_id, t.started, time.time_ns(), self.authorities[i], status, "", t.attempt))
        self.upstream.health.record_response(i, status, time.monotonic())

    async def _attempts(self, t: _Try) -> Response:
        upstream = self.upstream
        request = t.request
        try:
            while True:
                i = t.origin if t.origin is not None else self._pick(t)
                t.origin = None
                if i is None:
                    if t.last is not None:  # every origin that could take a retry has had one: say why it failed
                        return self._failed(request, t.out, t.last[0], t.last[1], t.lookup)
                    return self._failed(request, t.out, UpstreamError("no_origin", "no healthy origin left"), None)
                pool = upstream.pools[i]
                t.request_time = time.time()
                if t.attempts is not None:
                    t.started = time.time_ns()
                try:
                    conn = await pool.acquire()
                    exchange = await conn.start(t.head, t.body, t.method, upgrade=t.websocket)
                except UpstreamError as exc:
                    if self._retry(t, exc, i):
                        continue
                    return self._failed(request, t.out, exc, i, t.lookup)
                body = exchange.stream()
                body.on_abandon = _aborter(body, conn)
                self._landed(t, i, exchange.status)
                try:
                    return await self._relay(t, exchange)
                except BaseException:
                    body.abandon()  # cancelled (the client left) or failed: stop the upstream side
                    raise
        finally:
            if t.retrying:
                t.retrying = False
                upstream.retrying -= 1

    async def _relay(self, t: _Try, exchange: Exchange) -> Response:
        request = t.request
        lookup = t.lookup
        if self.cache is None or lookup is None or request.method not in ("GET", "HEAD"):
            return self._answer(request, exchange, t.out, t.websocket)
        headers, date = response_headers(
            exchange.headers,
            self.via,
            keep_length=exchange.length is not None or request.method == "HEAD",
            extra=self.extra,
        )
        origin_date = [(b"date", date)] if date is not None else []
        return await self._through_cache(request, exchange, headers, origin_date, t.out, lookup, t.request_time)

    def _answer(self, request: Request, exchange: Exchange, out: Outgoing, websocket: bool) -> Response:
        """The origin's answer as the client is sent it, when the cache has no part in it."""
        status = exchange.status
        switching = websocket and status == 101
        body = exchange.body
        length = exchange.length
        cache = self.cache
        # The request id goes on after the cache's fields are cut (`downstream`): it is always last.
        rid = (self.request_id, out.request_id) if self.request_id else None
        headers, _ = response_headers(
            exchange.headers,
            self.via,
            keep_length=not switching and (length is not None or request.method == "HEAD"),
            upgrade=switching,
            request_id=rid if cache is None else None,
            extra=self.extra,
        )
        if switching and request.version != "1.1":
            headers = [(n, v) for n, v in headers if n.lower() not in _WS_DROP]
        if cache is not None:
            if request.method not in ("GET", "HEAD"):
                cache.invalidate(request, status, exchange.headers)
            headers = cache.targeting.downstream(headers)
            if rid is not None:
                headers.append(rid)
        if isinstance(body, Pipe):
            if not (body.eof and not switching and body.complete):
                return Response(status, headers, body)
            body = bytes(body.read())  # the whole answer came with its head: one write of head and body
        if length is None and request.method != "HEAD" and status not in (204, 304):
            headers.append((b"content-length", b"%d" % len(body)))  # it came chunked or close-delimited
        return Response(status, headers, body)

    async def _through_cache(
        self,
        request: Request,
        exchange: Exchange,
        headers: list[tuple[bytes, bytes]],
        origin_date: list[tuple[bytes, bytes]],
        out: Outgoing,
        lookup: Lookup,
        request_time: float,
    ) -> Response:
        cache = self.cache
        assert cache is not None
        status = exchange.status
        pipe = exchange.stream()
        entry = lookup.entry
        if status == 304 and entry is not None:
            request.cache = "revalidated"
            pipe.abandon()
            now = time.time()
            fresh = cache.freshen(entry, exchange.headers, request_time, now)
            return cache.respond(fresh, request, now, self.clock, lookup.status + "; fwd-status=304")
        if status >= 500 and entry is not None and cache.stale_if_error_ok(entry, request, time.time()):
            request.cache = "stale"
            pipe.abandon()
            return cache.respond(entry, request, time.time(), self.clock, HIT_STALE_IF_ERROR)
        length = pipe.length
        if (
            request.method == "GET"
            and (length is None or length <= cache.max_object_bytes)
            and not cache.unstorable_reason(request, status, exchange.headers)
            and not _event_stream(exchange.headers)
        ):
            try:
                body = await gather(pipe, cache.max_object_bytes, self.loop)
            except UpstreamError as exc:  # it broke off before the client was sent a byte: say so, as for no answer
                return self._failed(request, out, exc, None, lookup)
            if body is None:  # it outgrew the object limit: it streams, from its first byte
                return self._not_stored(status, headers, pipe, lookup, out)
            now = time.time()
            stored = cache.store(request, status, [*headers, *origin_date], body, request_time, now)
            if stored is not None:
                return cache.respond(stored, request, now, self.clock, lookup.status + "; stored")
            if length is None and status not in (204, 304):
                headers.append((b"content-length", b"%d" % len(body)))  # it came chunked or close-delimited
            return self._not_stored(status, headers, body, lookup, out)
        return self._not_stored(status, headers, pipe, lookup, out)

    def _not_stored(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes | Pipe, lookup: Lookup, out: Outgoing
    ) -> Response:
        """An answer that went through the cache without being stored: it says so, and carries its request id."""
        cache = self.cache
        assert cache is not None
        headers = cache.targeting.downstream(headers)
        headers.append((b"Cache-Status", cache_status(fwd=lookup.fwd, fwd_status=status)))
        if self.request_id:
            headers.append((self.request_id, out.request_id))
        return Response(status, headers, body)

    def _failed(
        self, request: Request, out: Outgoing, exc: UpstreamError, origin: int | None, lookup: Lookup | None = None
    ) -> Response:
        upstream = self.upstream
        errors = upstream.stats.errors
        errors[exc.kind] = errors.get(exc.kind, 0) + 1
        cache = self.cache
        if cache is not None and lookup is not None and lookup.entry is not None:
            now = time.time()
            if cache.stale_if_error_ok(lookup.entry, request, now):
                request.cache = "stale"
                return cache.respond(lookup.entry, request, now, self.clock, HIT_STALE_IF_ERROR)
        status = STATUS_FOR.get(exc.kind, 502)
        request.error = exc.kind
        where = str(upstream.origins[origin]) if origin is not None else ""
        log.warning(
            "upstream %s%s: %s; answered %d",
            upstream.config.name,
            f" ({where})" if where else "",
            exc,
            status,
            extra={
                "event": "proxy.error",
                "upstream": upstream.config.name,
                "origin": where,
                "reason": exc.kind,
                "status": status,
                "request_id": out.request_id.decode("ascii"),
            },
        )
        answer = error_response(status)
        present = {name.lower() for name, _ in answer.headers}
        extra = [pair for pair in self.extra if pair[0].lower() not in present]
        if self.request_id:
            extra.append((self.request_id, out.request_id))
        return error_response(status, extra)

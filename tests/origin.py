"""A real HTTP/1.1 origin server for proxy tests, and a raw WebSocket client.

`Origin` runs plain asyncio in a daemon thread with its own event loop, bound
to 127.0.0.1 on an ephemeral port (or a given one), and records every request
it receives exactly as it came: the raw head bytes, method, target and headers
in received order and case, how the body was framed, and the body's length and
sha256 (hashed as it streams; the bytes are kept only below 1 MiB).

    with Origin() as o:
        config = {"upstreams": [{"name": "app", "origins": [o.url]}], ...}
        ...
        (req,) = o.wait_for(1)
        assert req.header("x-forwarded-for") == "127.0.0.1"

Behaviours are chosen by path and query parameters (every response carries
`X-Origin-Id` = the origin's name and `X-Origin-Seq` = the request's number
on this origin; any path also takes `h=Name:value`, repeatable, to add
response headers):

    /echo                 200 JSON: what was received (method, target, headers, body length and sha256, ...)
    /bytes?n=N            N bytes of `pattern_bytes`, generated on the fly, with Content-Length
                          (`chunked=1`: chunked; `chunk=SIZE` bytes per write; `delay_ms=T` between writes)
    /upload               reads the whole body, 200 JSON {length, sha256, framing, chunks};
                          `delay_ms=T` sleeps after each read of `chunk=SIZE` (64 KiB) bytes: backpressure
    /sse?events=K&interval_ms=T
                          text/event-stream, chunked, K events (first at once, then one each T ms),
                          each flushed on its own; `Received.events_sent` says how many have left
    /stall?ms=T           reads the request, sends nothing for T ms (forever without `ms`), then 200;
                          `head=1`: sends the head and half the body first, stalls, then the rest
    /reset                reads the request, then RST (SO_LINGER 0) without sending a byte;
                          `after=N`: sends a head with Content-Length N + `missing` (default 1000), N body bytes,
                          waits until the peer has acknowledged them (at most `wait_ms`, default 2000: a RST
                          drops unsent bytes) and RSTs; `fin=1` closes cleanly (FIN) instead
    /status?code=C        that status with a small body; `close=1` closes after it;
                          `consume=0` answers without reading the request body (and closes)
    /cache?cc=..&etag=..&lm=..&vary=..&body=..&expires=..&age=..&ctype=..&status=..
                          a response with those headers; `lm` and `expires` are HTTP-dates, or integers
                          (seconds from now, e.g. lm=-3600); honours If-None-Match / If-Modified-Since with
                          304; `X-Origin-Count` = how often this exact target was requested
    /slow?ms=T            waits T ms then answers like /cache (same parameters): singleflight tests
    /ws                   WebSocket (RFC 6455) echo: text and binary messages come back unmasked; pings get
                          pongs; a close is answered and the connection closed; the text `__close__` makes
                          the origin start the close (1000)
    /health               200, or 503 while `o.healthy` is False
    anything else         404 (or a route added with `o.add_route`)

Requests with `Expect: 100-continue` get `100 Continue` before their body is
read. Keep-alive follows HTTP/1.1 rules; `Origin(idle_timeout=S)` closes
connections idle for S seconds (stale pooled connections).

The module also has the test side of WebSocket (`WSClient`, `ws_accept`,
`encode_frame`, `parse_frame`) over a plain or TLS socket, to test h1
WebSocket through the edge.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import functools
import hashlib
import inspect
import json
import os
import random
import socket
import ssl
import struct
import sys
import termios
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

KEEP_BODY_BELOW = 1 << 20  # body bytes are kept only for bodies smaller than this
MAX_HEAD = 64 * 1024
READ_SIZE = 64 * 1024

# --- deterministic content -------------------------------------------------------------------------------------

# A seeded random block whose length is a prime, so the pattern never lines up with power-of-two chunk sizes:
# a dropped, repeated or reordered chunk changes the sha256.
PATTERN_PERIOD = 1_048_573
_PATTERN = random.Random(20240611).randbytes(PATTERN_PERIOD)
_PATTERN2 = _PATTERN + _PATTERN


def pattern_bytes(offset: int, length: int) -> bytes:
    """`length` bytes of the /bytes content starting at `offset`."""
    out = bytearray()
    while length > 0:
        start = offset % PATTERN_PERIOD
        take = min(length, PATTERN_PERIOD)
        out += _PATTERN2[start : start + take]
        offset += take
        length -= take
    return bytes(out)


def pattern_chunks(n: int, chunk: int = READ_SIZE) -> Iterator[bytes]:
    """The first `n` bytes of the pattern, `chunk` bytes at a time (at most PATTERN_PERIOD)."""
    chunk = max(1, min(chunk, PATTERN_PERIOD))
    offset = 0
    while offset < n:
        take = min(chunk, n - offset)
        start = offset % PATTERN_PERIOD
        yield _PATTERN2[start : start + take]
        offset += take


@functools.lru_cache(maxsize=64)
def pattern_sha256(n: int) -> str:
    """Hex sha256 of what `/bytes?n=N` sends (the first `n` bytes of the pattern)."""
    h = hashlib.sha256()
    for piece in pattern_chunks(n, PATTERN_PERIOD):
        h.update(piece)
    return h.hexdigest()


# --- what the origin records ------------------------------------------------------------------------------------


@dataclass
class Received:
    """One request as the origin received it. Updated by the origin's thread while the exchange goes on."""

    seq: int  # 1-based, over the origin's life (not reset by `clear`)
    conn_id: int  # 1-based connection number
    conn_seq: int  # 1-based position of this request on its connection
    peer: tuple[str, int]
    raw_head: bytes  # request line + header lines + the blank line, as received
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]  # received order and case; values without surrounding whitespace
    path: str = ""
    query: dict[str, list[str]] = field(default_factory=dict)
    framing: str = "none"  # "none", "content-length" or "chunked"
    content_length: int | None = None  # as declared
    body_length: int = 0  # bytes read so far; final once `complete`
    body_sha256: str = ""  # set once `complete`
    body: bytes | None = None  # the body if complete and smaller than 1 MiB
    chunks: int = 0  # data chunks of a chunked body
    chunk_extensions: list[str] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = False  # the whole body was read
    status: int | None = None  # status sent (101 for WebSocket)
    responded: bool = False  # the whole response was sent
    aborted: bool = False  # the client went away (or the origin was killed) before the exchange finished
    error: str = ""  # why the origin rejected the request, if it did
    events_sent: int = 0  # /sse events written so far
    ws_messages: int = 0  # /ws messages echoed
    ws_close_code: int | None = None  # close code the client sent
    t_head: float = 0.0  # time.monotonic() when the head was parsed
    t_complete: float = 0.0  # when the body was fully read
    t_responded: float = 0.0  # when the response was fully written

    def header(self, name: str) -> str | None:
        """The first value of `name` (case-insensitive), or None."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        low = name.lower()
        return [v for n, v in self.headers if n.lower() == low]

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def int_param(self, name: str, default: int | None = None) -> int | None:
        value = self.param(name)
        return default if value is None or value == "" else int(value)


class _BadRequest(Exception):
    pass


class _Wire:
    """A read buffer over a StreamReader, so that bytes read ahead are never lost."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buf = bytearray()

    async def fill(self) -> bool:
        data = await self.reader.read(READ_SIZE)
        if not data:
            return False
        self.buf += data
        return True

    async def read_head(self) -> bytes | None:
        """Through the blank line; None on EOF before any byte. Leading empty lines are skipped (RFC 9112 2.2)."""
        while True:
            while self.buf[:2] == b"\r\n":
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buf[: end + 4])
                del self.buf[: end + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise _BadRequest("head too large")
            if not await self.fill():
                if self.buf:
                    raise EOFError("connection closed inside a request head")
                return None

    async def read_line(self, limit: int = 8192) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[: end + 1])
                del self.buf[: end + 1]
                return line
            if len(self.buf) > limit:
                raise _BadRequest("line too long")
            if not await self.fill():
                raise EOFError("connection closed inside a chunked body")

    async def read_upto(self, n: int) -> bytes:
        if not self.buf and not await self.fill():
            raise EOFError("connection closed inside a body")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self.fill():
                raise EOFError("connection closed inside a body")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


@dataclass
class _Conn:
    id: int
    wire: _Wire
    writer: asyncio.StreamWriter
    peer: tuple[str, int]
    requests: int = 0
    must_close: bool = False
    current: Received | None = None


class _BodySink:
    def __init__(self, rec: Received) -> None:
        self.rec = rec
        self.hash = hashlib.sha256()
        self.kept: bytearray | None = bytearray()

    def feed(self, data: bytes) -> None:
        self.hash.update(data)
        self.rec.body_length += len(data)
        if self.kept is not None:
            if len(self.kept) + len(data) < KEEP_BODY_BELOW:
                self.kept += data
            else:
                self.kept = None

    def finish(self) -> None:
        self.rec.body_sha256 = self.hash.hexdigest()
        self.rec.body = bytes(self.kept) if self.kept is not None else None
        self.rec.t_complete = time.monotonic()
        self.rec.complete = True


Reply = tuple[int, list[tuple[str, str]], bytes]  # status, headers, body
Handler = Callable[[Received], Reply | Awaitable[Reply]]

# --- the origin -------------------------------------------------------------------------------------------------


class Origin:
    """An HTTP/1.1 origin in a background thread; see the module docstring for its paths."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        name: str | None = None,
        tls: ssl.SSLContext | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.idle_timeout = idle_timeout
        self._name = name
        self.healthy = True
        self._cond = threading.Condition()
        self._records: list[Received] = []
        self._seq = 0
        self._conn_count = 0
        self._open = 0
        self._in_flight = 0
        self._peak_in_flight = 0
        self._path_counts: Counter[str] = Counter()
        self._target_counts: Counter[str] = Counter()
        self._routes: dict[str, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle

    def start(self) -> Origin:
        if self._thread is not None:
            raise RuntimeError("origin already started")
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=f"origin-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("origin loop did not start")
        self._call(self._listen())
        return self

    def _run(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(ready.set)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _call(self, coro: Awaitable[Any], timeout: float = 10.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        sock = socket.create_server((self.host, self.port), backlog=512)  # sets SO_REUSEADDR
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._serve_conn, sock=sock, ssl=self.tls)

    def stop(self) -> None:
        """Close everything and end the thread. Idempotent."""
        if self._thread is None or self._loop is None:
            return
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                self._call(self._shutdown(rst=False), timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._thread = None

    def kill(self) -> None:
        """Like a killed process: close the listening socket and RST every connection. `revive()` undoes it."""
        self._call(self._shutdown(rst=True))

    def revive(self) -> None:
        """Listen again, on the same port."""
        if self._server is not None:
            raise RuntimeError("origin is listening")
        self._call(self._listen())

    async def _shutdown(self, rst: bool) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            _abort(transport, rst=rst)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    def __enter__(self) -> Origin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses

    @property
    def name(self) -> str:
        return self._name or f"origin-{self.port}"

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, as upstream `origins` take it."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def url_for(self, target: str) -> str:
        return self.url + target

    @property
    def listening(self) -> bool:
        return self._server is not None

    # -- records (thread-safe)

    @property
    def requests(self) -> list[Received]:
        """Every request received so far, in order (the objects are live: the origin updates them)."""
        with self._cond:
            return list(self._records)

    @property
    def last(self) -> Received:
        with self._cond:
            return self._records[-1]

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        with self._cond:
            return self._conn_count

    @property
    def open_connections(self) -> int:
        with self._cond:
            return self._open

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """Most requests being handled at once (head received, response not yet sent)."""
        with self._cond:
            return self._peak_in_flight

    @property
    def path_counts(self) -> dict[str, int]:
        with self._cond:
            return dict(self._path_counts)

    @property
    def target_counts(self) -> dict[str, int]:
        with self._cond:
            return dict(self._target_counts)

    def count_path(self, path: str) -> int:
        """Requests whose path (target without the query) is `path`."""
        with self._cond:
            return self._path_counts[path]

    def count_target(self, target: str) -> int:
        """Requests whose full target (path and query, as received) is `target`."""
        with self._cond:
            return self._target_counts[target]

    def clear(self) -> None:
        """Forget the records, counters and peak (not the connection count nor sequence numbers)."""
        with self._cond:
            self._records.clear()
            self._path_counts.clear()
            self._target_counts.clear()
            self._peak_in_flight = self._in_flight

    def wait_for(self, n: int, timeout: float = 10.0, path: str | None = None, complete: bool = True) -> list[Received]:
        """Wait until `n` requests (to `path`, if given) arrived and, with `complete`, their bodies were read.

        Returns the matching requests (at least `n`); raises AssertionError on timeout.
        """

        def matching() -> list[Received]:
            return [r for r in self._records if (path is None or r.path == path) and (r.complete or not complete)]

        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= n, timeout):
                have = [(r.method, r.target, r.complete) for r in self._records]
                raise AssertionError(f"origin got {len(matching())} of {n} requests in {timeout}s: {have}")
            return matching()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
        """Wait until `predicate()` (evaluated whenever the origin records progress, and every 50 ms)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"origin: not within {timeout}s: {what}")
                self._cond.wait(min(left, 0.05))

    def add_route(self, path: str, handler: Handler) -> None:
        """Serve `path` with `handler(received) -> (status, headers, body)` (may be async); the body is read first."""
        self._routes[path] = handler

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- connections

    async def _serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._transports.add(writer.transport)
        peer = writer.get_extra_info("peername") or ("", 0)
        with self._cond:
            self._conn_count += 1
            self._open += 1
            conn = _Conn(self._conn_count, _Wire(reader), writer, (peer[0], peer[1]))
            self._cond.notify_all()
        try:
            while await self._one_request(conn):
                pass
        except (ConnectionError, EOFError, ssl.SSLError, asyncio.CancelledError):
            pass
        except Exception:
            traceback.print_exc(file=sys.stderr)
        finally:
            with self._cond:
                self._open -= 1
                self._cond.notify_all()
            self._transports.discard(writer.transport)
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.transport.close()

    async def _one_request(self, conn: _Conn) -> bool:
        """Serve one request; True to keep the connection open for the next."""
        try:
            if self.idle_timeout is not None and conn.requests > 0:
                head = await asyncio.wait_for(conn.wire.read_head(), self.idle_timeout)
            else:
                head = await conn.wire.read_head()
        except TimeoutError:
            return False
        except _BadRequest as e:
            await self._reject(conn, None, 431, str(e))
            return False
        if head is None:
            return False
        conn.requests += 1
        try:
            rec = self._parse(conn, head)
        except _BadRequest as e:
            await self._reject(conn, None, 400, str(e))
            return False
        with self._cond:
            self._seq += 1
            rec.seq = self._seq
            self._records.append(rec)
            self._path_counts[rec.path] += 1
            self._target_counts[rec.target] += 1
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            conn.current = rec
            self._cond.notify_all()
        try:
            await self._dispatch(conn, rec)
        except _BadRequest as e:
            rec.error = str(e)
            if rec.status is None:
                await self._reject(conn, rec, 400, str(e))
            return False
        except BaseException:
            if not rec.responded:
                rec.aborted = True
            raise
        finally:
            with self._cond:
                if conn.current is rec:
                    conn.current = None
                    self._in_flight -= 1
                self._cond.notify_all()
        return not conn.must_close

    def _parse(self, conn: _Conn, head: bytes) -> Received:
        text = head.decode("latin-1")
        lines = text[:-4].split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(f"bad request line {lines[0]!r}")
        method, target, version = parts
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise _BadRequest(f"bad header line {line!r}")
            headers.append((name, value.strip(" \t")))
        split = urlsplit(target)
        rec = Received(
            seq=0,
            conn_id=conn.id,
            conn_seq=conn.requests,
            peer=conn.peer,
            raw_head=head,
            method=method,
            target=target,
            version=version,
            headers=headers,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            t_head=time.monotonic(),
        )
        te = [t.strip().lower() for v in rec.header_all("transfer-encoding") for t in v.split(",") if t.strip()]
        lengths = {v.strip() for v in rec.header_all("content-length")}
        if te:
            if te[-1] != "chunked":
                raise _BadRequest("transfer-encoding without chunked last")
            rec.framing = "chunked"
        elif lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise _BadRequest(f"bad content-length {lengths}")
            rec.framing = "content-length"
            rec.content_length = int(next(iter(lengths)))
        connection = {t.strip().lower() for v in rec.header_all("connection") for t in v.split(",")}
        keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        if not keep:
            conn.must_close = True
        return rec

    async def _read_body(self, conn: _Conn, rec: Received, delay: float = 0.0, chunk: int = READ_SIZE) -> None:
        if rec.complete:
            return
        sink = _BodySink(rec)
        wire = conn.wire
        if rec.framing == "content-length":
            assert rec.content_length is not None
            left = rec.content_length
            while left > 0:
                data = await wire.read_upto(min(left, chunk))
                sink.feed(data)
                left -= len(data)
                self._notify()
                if delay:
                    await asyncio.sleep(delay)
        elif rec.framing == "chunked":
            while True:
                line = await wire.read_line()
                if not line.endswith(b"\r\n"):
                    raise _BadRequest(f"chunk size line without CRLF: {line!r}")
                size_text, _, ext = line[:-2].decode("latin-1").partition(";")
                size_text = size_text.strip(" \t")
                if not size_text or any(c not in "0123456789abcdefABCDEF" for c in size_text):
                    raise _BadRequest(f"bad chunk size {line!r}")
                if ext:
                    rec.chunk_extensions.append(ext)
                size = int(size_text, 16)
                if size == 0:
                    break
                rec.chunks += 1
                while size > 0:
                    data = await wire.read_upto(min(size, chunk))
                    sink.feed(data)
                    size -= len(data)
                    self._notify()
                    if delay:
                        await asyncio.sleep(delay)
                if await wire.read_exact(2) != b"\r\n":
                    raise _BadRequest("chunk data not followed by CRLF")
            while True:
                line = await wire.read_line()
                if line == b"\r\n":
                    break
                name, _, value = line.decode("latin-1").rstrip("\r\n").partition(":")
                rec.trailers.append((name, value.strip(" \t")))
        sink.finish()
        self._notify()

    # -- responses

    def _head_bytes(self, conn: _Conn, rec: Received | None, status: int, headers: list[tuple[str, str]]) -> bytes:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Status"
        out = [f"HTTP/1.1 {status} {reason}", f"Date: {formatdate(usegmt=True)}", f"X-Origin-Id: {self.name}"]
        if rec is not None:
            out.append(f"X-Origin-Seq: {rec.seq}")
            for extra in rec.query.get("h", []):
                hname, _, hvalue = extra.partition(":")
                headers = [*headers, (hname.strip(), hvalue.strip())]
        names = {n.lower() for n, _ in headers}
        if status >= 200 and status != 101 and (conn.must_close or rec is None) and "connection" not in names:
            headers = [*headers, ("Connection", "close")]
        out += [f"{n}: {v}" for n, v in headers]
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")

    async def _send(
        self,
        conn: _Conn,
        rec: Received | None,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        close: bool = False,
    ) -> None:
        """A whole response with Content-Length (none for 1xx, 204, 304; HEAD gets the head only)."""
        headers = list(headers or [])
        if close:
            conn.must_close = True
        bodyless = status < 200 or status in (204, 304)
        if not bodyless and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
            headers.append(("Content-Length", str(len(body))))
        data = self._head_bytes(conn, rec, status, headers)
        if not bodyless and (rec is None or rec.method != "HEAD"):
            data += body
        if rec is not None:
            rec.status = status
        conn.writer.write(data)
        await conn.writer.drain()
        if rec is not None:
            self._responded(rec)

    async def _send_head(self, conn: _Conn, rec: Received, status: int, headers: list[tuple[str, str]]) -> None:
        rec.status = status
        conn.writer.write(self._head_bytes(conn, rec, status, headers))
        await conn.writer.drain()

    async def _write(self, conn: _Conn, data: bytes, chunked: bool = False) -> None:
        if chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        conn.writer.write(data)
        await conn.writer.drain()

    def _responded(self, rec: Received) -> None:
        rec.t_responded = time.monotonic()
        rec.responded = True
        self._notify()

    async def _reject(self, conn: _Conn, rec: Received | None, status: int, why: str) -> None:
        if rec is not None:
            rec.error = why
        with contextlib.suppress(ConnectionError):
            await self._send(conn, rec, status, [("Content-Type", "text/plain")], why.encode() + b"\n", close=True)

    async def _sleep_or_eof(self, conn: _Conn, seconds: float | None) -> bool:
        """Sleep (forever with None); True if the client closed its side meanwhile (read-ahead bytes are kept)."""

        async def eof() -> None:
            while await conn.wire.fill():
                pass

        try:
            await asyncio.wait_for(eof(), seconds)
        except TimeoutError:
            return False
        return True

    # -- behaviours

    async def _dispatch(self, conn: _Conn, rec: Received) -> None:
        early = rec.path == "/status" and rec.param("consume") == "0"
        if rec.framing != "none" and not early and any(v.lower() == "100-continue" for v in rec.header_all("expect")):
            conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await conn.writer.drain()
        if rec.path == "/upload":
            await self._read_body(
                conn, rec, (rec.int_param("delay_ms") or 0) / 1000, rec.int_param("chunk") or READ_SIZE
            )
        elif early:
            if rec.framing != "none":
                conn.must_close = True
        else:
            await self._read_body(conn, rec)
        custom = self._routes.get(rec.path)
        if custom is not None:
            result = custom(rec)
            if inspect.isawaitable(result):
                result = await result
            status, headers, body = result  # type: ignore[misc]
            await self._send(conn, rec, status, headers, body)
            return
        handler = {
            "/echo": self._h_echo,
            "/bytes": self._h_bytes,
            "/upload": self._h_upload,
            "/sse": self._h_sse,
            "/stall": self._h_stall,
            "/reset": self._h_reset,
            "/status": self._h_status,
            "/cache": self._h_cache,
            "/slow": self._h_slow,
            "/ws": self._h_ws,
            "/health": self._h_health,
        }.get(rec.path)
        if handler is None:
            await self._send(conn, rec, 404, [("Content-Type", "text/plain")], b"not found\n")
            return
        await handler(conn, rec)

    def _describe(self, rec: Received) -> dict[str, Any]:
        return {
            "origin": self.name,
            "seq": rec.seq,
            "connection": rec.conn_id,
            "conn_seq": rec.conn_seq,
            "peer": list(rec.peer),
            "method": rec.method,
            "target": rec.target,
            "version": rec.version,
            "path": rec.path,
            "query": rec.query,
            "headers": [list(h) for h in rec.headers],
            "framing": rec.framing,
            "content_length": rec.content_length,
            "chunks": rec.chunks,
            "trailers": [list(t) for t in rec.trailers],
            "body_length": rec.body_length,
            "body_sha256": rec.body_sha256,
        }

    async def _h_echo(self, conn: _Conn, rec: Received) -> None:
        body = json.dumps(self._describe(rec), indent=1).encode()
        await self._send(conn, rec, 200, [("Content-Type", "application/json")], body)

    async def _h_bytes(self, conn: _Conn, rec: Received) -> None:
        n = rec.int_param("n", 0) or 0
        chunked = rec.param("chunked") == "1"
        delay = (rec.int_param("delay_ms") or 0) / 1000
        framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(n))
        await self._send_head(conn, rec, 200, [("Content-Type", "application/octet-stream"), framing])
        if rec.method != "HEAD":
            for i, piece in enumerate(pattern_chunks(n, rec.int_param("chunk") or READ_SIZE)):
                if delay and i:
                    await asyncio.sleep(delay)
                await self._write(conn, piece, chunked)
            if chunked:
                await self._write(conn, b"0\r\n\r\n")
        self._responded(rec)

    async def _h_upload(self, conn: _Conn, rec: Received) -> None:
        body = {
            "length": rec.body_length,
            "sha256": rec.body_sha256,
            "framing": rec.framing,
            "chunks": rec.chunks,
            "trailers": [list(t) for t in rec.trailers],
        }
        await self._send(conn, rec, 200, [("Content-Type", "application/json")], json.dumps(body).encode())

    async def _h_sse(self, conn: _Conn, rec: Received) -> None:
        events = rec.int_param("events", 5) or 0
        interval = (rec.int_param("interval_ms", 100) or 0) / 1000
        headers = [
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-cache"),
            ("Transfer-Encoding", "chunked"),
        ]
        await self._send_head(conn, rec, 200, headers)
        for i in range(events):
            if i and await self._sleep_or_eof(conn, interval):
                rec.aborted = conn.must_close = True
                return
            await self._write(conn, f"id: {i}\ndata: event {i} t={time.monotonic():.6f}\n\n".encode(), chunked=True)
            rec.events_sent = i + 1
            self._notify()
        await self._write(conn, b"0\r\n\r\n")
        self._responded(rec)

    async def _h_stall(self, conn: _Conn, rec: Received) -> None:
        ms = rec.int_param("ms")
        seconds = None if ms is None else ms / 1000
        body = b"0123456789abcdef"
        if rec.param("head") == "1":
            await self._send_head(conn, rec, 200, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            await self._write(conn, body[:8])
            if await self._sleep_or_eof(conn, seconds):
                rec.aborted = conn.must_close = True
                return
            await self._write(conn, body[8:])
            self._responded(rec)
            return
        if await self._sleep_or_eof(conn, seconds):
            rec.aborted = conn.must_close = True
            return
        await self._send(conn, rec, 200, [("Content-Type", "text/plain")], body)

    async def _h_reset(self, conn: _Conn, rec: Received) -> None:
        after = rec.int_param("after")
        conn.must_close = True
        if after is not None:
            missing = rec.int_param("missing", 1000) or 1
            headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(after + missing))]
            await self._send_head(conn, rec, 200, headers)
            if after:
                await self._write(conn, pattern_bytes(0, after))
            await _wait_sent(conn.writer.transport, (rec.int_param("wait_ms", 2000) or 0) / 1000)
        _abort(conn.writer.transport, rst=rec.param("fin") != "1")

    async def _h_status(self, conn: _Conn, rec: Received) -> None:
        code = rec.int_param("code", 200) or 200
        await self._send(
            conn,
            rec,
            code,
            [("Content-Type", "text/plain")],
            f"status {code}\n".encode(),
            close=rec.param("close") == "1",
        )

    async def _h_cache(self, conn: _Conn, rec: Received) -> None:
        now = time.time()
        count = self.count_target(rec.target)
        headers: list[tuple[str, str]] = [("Content-Type", rec.param("ctype", "text/plain") or "text/plain")]
        etag = rec.param("etag")
        lm = _http_date(rec.param("lm"), now)
        for name, value in (
            ("Cache-Control", rec.param("cc")),
            ("ETag", etag),
            ("Last-Modified", lm),
            ("Vary", rec.param("vary")),
            ("Expires", _http_date(rec.param("expires"), now)),
            ("Age", rec.param("age")),
        ):
            if value is not None:
                headers.append((name, value))
        headers.append(("X-Origin-Count", str(count)))
        if _not_modified(rec, etag, lm):
            await self._send(conn, rec, 304, headers[1:])  # no Content-Type
            return
        body_param = rec.param("body")
        body = body_param.encode() if body_param is not None else f"{rec.target} #{count}\n".encode()
        await self._send(conn, rec, rec.int_param("status", 200) or 200, headers, body)

    async def _h_slow(self, conn: _Conn, rec: Received) -> None:
        if await self._sleep_or_eof(conn, (rec.int_param("ms", 1000) or 0) / 1000):
            rec.aborted = conn.must_close = True
            return
        await self._h_cache(conn, rec)

    async def _h_health(self, conn: _Conn, rec: Received) -> None:
        if self.healthy:
            await self._send(conn, rec, 200, [("Content-Type", "text/plain")], b"ok\n")
        else:
            await self._send(conn, rec, 503, [("Content-Type", "text/plain")], b"unhealthy\n")

    async def _h_ws(self, conn: _Conn, rec: Received) -> None:
        upgrade = {t.strip().lower() for v in rec.header_all("upgrade") for t in v.split(",")}
        connection = {t.strip().lower() for v in rec.header_all("connection") for t in v.split(",")}
        key = rec.header("sec-websocket-key")
        if rec.method != "GET" or "websocket" not in upgrade or "upgrade" not in connection or not key:
            await self._send(conn, rec, 400, [("Content-Type", "text/plain")], b"not a websocket upgrade\n")
            return
        if rec.header("sec-websocket-version") != "13":
            await self._send(conn, rec, 426, [("Sec-WebSocket-Version", "13")], b"")
            return
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", ws_accept(key))]
        offered = [p.strip() for v in rec.header_all("sec-websocket-protocol") for p in v.split(",") if p.strip()]
        if offered:
            headers.append(("Sec-WebSocket-Protocol", offered[0]))
        await self._send(conn, rec, 101, headers)
        conn.must_close = True
        fragments: list[bytes] = []
        first_opcode = 0
        while True:
            frame = await self._ws_frame(conn)
            if frame is None:
                return
            if not frame.masked:
                await self._write(conn, encode_frame(OP_CLOSE, struct.pack("!H", 1002), mask=False))
                return
            if frame.opcode == OP_CLOSE:
                rec.ws_close_code = struct.unpack("!H", frame.payload[:2])[0] if len(frame.payload) >= 2 else None
                self._notify()
                await self._write(conn, encode_frame(OP_CLOSE, frame.payload[:2], mask=False))
                return
            if frame.opcode == OP_PING:
                await self._write(conn, encode_frame(OP_PONG, frame.payload, mask=False))
                continue
            if frame.opcode == OP_PONG:
                continue
            if frame.opcode != OP_CONT:
                first_opcode = frame.opcode
            fragments.append(frame.payload)
            if not frame.fin:
                continue
            message, fragments = b"".join(fragments), []
            if first_opcode == OP_TEXT and message == b"__close__":
                await self._write(conn, encode_frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye", mask=False))
                with contextlib.suppress(TimeoutError, EOFError):
                    await asyncio.wait_for(self._ws_frame(conn), 2)
                return
            await self._write(conn, encode_frame(first_opcode, message, mask=False))
            rec.ws_messages += 1
            self._notify()

    async def _ws_frame(self, conn: _Conn) -> WSFrame | None:
        while True:
            got = parse_frame(conn.wire.buf)
            if got is not None:
                frame, used = got
                del conn.wire.buf[:used]
                return frame
            if not await conn.wire.fill():
                return None


def _abort(transport: asyncio.BaseTransport, rst: bool) -> None:
    """Close now; with `rst`, SO_LINGER 0 makes the kernel send RST instead of FIN."""
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if rst and isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()


async def _wait_sent(transport: asyncio.BaseTransport, limit: float) -> None:
    """Wait until the kernel has no unacknowledged bytes for this socket (Linux SIOCOUTQ), at most `limit` s."""
    sock = transport.get_extra_info("socket")
    deadline = time.monotonic() + limit
    while sock is not None and time.monotonic() < deadline:
        try:
            queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return
        if queued == 0:
            return
        await asyncio.sleep(0.005)


def _http_date(value: str | None, now: float) -> str | None:
    """An HTTP-date from a query value: an integer is seconds from now, anything else is taken as is."""
    if value is None:
        return None
    try:
        return formatdate(now + int(value), usegmt=True)
    except ValueError:
        return value


def _not_modified(rec: Received, etag: str | None, last_modified: str | None) -> bool:
    if rec.method not in ("GET", "HEAD"):
        return False
    inm = rec.header_all("if-none-match")
    if inm:
        if etag is None:
            return False
        tags = [t.strip() for v in inm for t in v.split(",")]
        return "*" in tags or _weak(etag) in {_weak(t) for t in tags}
    ims = rec.header("if-modified-since")
    if ims and last_modified:
        try:
            return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
    return False


def _weak(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


# --- WebSocket framing (both sides) and the test-side client ----------------------------------------------------

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def ws_accept(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


@dataclass
class WSFrame:
    opcode: int
    payload: bytes
    fin: bool = True
    masked: bool = False
    rsv: int = 0

    @property
    def text(self) -> str:
        return self.payload.decode()

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if self.opcode == OP_CLOSE and len(self.payload) >= 2 else None


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(
    opcode: int, payload: bytes, *, mask: bool, fin: bool = True, rsv: int = 0, mask_key: bytes | None = None
) -> bytes:
    """One frame; clients must mask (`mask=True`), servers must not."""
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, mbit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mbit | 127, n)
    if mask:
        key = mask_key if mask_key is not None else os.urandom(4)
        return head + key + _mask(payload, key)
    return head + payload


def parse_frame(buf: bytes | bytearray) -> tuple[WSFrame, int] | None:
    """The first whole frame in `buf` (unmasked) and the bytes it took, or None if more bytes are needed."""
    if len(buf) < 2:
        return None
    first, second = buf[0], buf[1]
    n = second & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack("!H", buf[2:4])[0]
        pos = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack("!Q", buf[2:10])[0]
        pos = 10
    masked = bool(second & 0x80)
    key = b""
    if masked:
        if len(buf) < pos + 4:
            return None
        key = bytes(buf[pos : pos + 4])
        pos += 4
    if len(buf) < pos + n:
        return None
    payload = bytes(buf[pos : pos + n])
    if masked:
        payload = _mask(payload, key)
    return WSFrame(first & 0x0F, payload, bool(first & 0x80), masked, (first >> 4) & 0x7), pos + n


class WSHandshakeError(Exception):
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(f"websocket handshake answered {status}: {headers} {body[:200]!r}")
        self.status = status
        self.headers = headers
        self.body = body


class WSClient:
    """A blocking RFC 6455 client over a connected socket (plain or TLS): handshake, masked frames out, frames in."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self.buf = bytearray(leftover)
        self.status = 0
        self.headers: list[tuple[str, str]] = []

    @classmethod
    def connect(
        cls,
        sock: socket.socket,
        host: str,
        path: str = "/ws",
        headers: Iterable[tuple[str, str]] = (),
        protocols: Iterable[str] = (),
        timeout: float = 5.0,
    ) -> WSClient:
        """Send the upgrade request and check the 101 and its Sec-WebSocket-Accept; raises WSHandshakeError."""
        sock.settimeout(timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        protocols = list(protocols)
        if protocols:
            lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
        lines += [f"{n}: {v}" for n, v in headers]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        client = cls(sock)
        head = client._read_until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        client.status = int(status_line.split(" ")[1])
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                client.headers.append((name, value.strip()))
        if client.status != 101:
            raise WSHandshakeError(client.status, client.headers, bytes(client.buf))
        if client.header("sec-websocket-accept") != ws_accept(key):
            raise WSHandshakeError(client.status, client.headers, b"bad Sec-WebSocket-Accept")
        return client

    def header(self, name: str) -> str | None:
        low = name.lower()
        return next((v for n, v in self.headers if n.lower() == low), None)

    def _recv(self) -> None:
        data = self.sock.recv(READ_SIZE)
        if not data:
            raise EOFError("websocket connection closed")
        self.buf += data

    def _read_until(self, marker: bytes) -> bytes:
        while (end := self.buf.find(marker)) < 0:
            self._recv()
        out = bytes(self.buf[:end])
        del self.buf[: end + len(marker)]
        return out

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0) -> None:
        self.sock.sendall(encode_frame(opcode, payload, mask=mask, fin=fin, rsv=rsv))

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode())

    def send_binary(self, data: bytes) -> None:
        self.send_frame(OP_BINARY, data)

    def ping(self, data: bytes = b"") -> None:
        self.send_frame(OP_PING, data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (read the answer with `recv_frame`)."""
        self.send_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode())

    def recv_frame(self, timeout: float | None = 5.0) -> WSFrame:
        self.sock.settimeout(timeout)
        while (got := parse_frame(self.buf)) is None:
            self._recv()
        frame, used = got
        del self.buf[:used]
        return frame

    def recv_message(self, timeout: float | None = 5.0) -> WSFrame:
        """The next data message (fragments joined), or a close frame; pings are answered, pongs skipped."""
        parts: list[bytes] = []
        opcode = 0
        while True:
            frame = self.recv_frame(timeout)
            if frame.opcode == OP_PING:
                self.send_frame(OP_PONG, frame.payload)
                continue
            if frame.opcode == OP_PONG:
                continue
            if frame.opcode == OP_CLOSE:
                return frame
            if frame.opcode != OP_CONT:
                opcode = frame.opcode
            parts.append(frame.payload)
            if frame.fin:
                return WSFrame(opcode, b"".join(parts), True, frame.masked)

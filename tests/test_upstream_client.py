"""The upstream HTTP/1.1 client against real origins on 127.0.0.1: pooling, framing, backpressure, timeouts, TLS.

Each origin is a small asyncio server written in the test, so a test can
make it misbehave exactly as needed (stall, reset mid-body, refuse a client
certificate). Everything runs on uvloop, as the server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from ingress.config.upstream import Upstream
from ingress.errors import TLSMaterialError
from ingress.handlers.proxy.pool import OriginPool
from ingress.handlers.proxy.upstream import Exchange, Origin, UpstreamConnection, UpstreamError
from ingress.protocol.pipe import HIGH_WATER, Pipe
from ingress.tls.origin import origin_context
from tests.pki import CA, Issued

T = TypeVar("T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MiB = 1 << 20


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    return uvloop.run(asyncio.wait_for(coro, timeout))


def config(**overrides: Any) -> Upstream:
    return Upstream(name="t", origins=("http://127.0.0.1:1",), **overrides)


async def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)
    return server, server.sockets[0].getsockname()[1]


async def pool_for(port: int, scheme: str = "http", **overrides: Any) -> OriginPool:
    origin = Origin.parse(f"{scheme}://127.0.0.1:{port}")
    return OriginPool(origin, config(**overrides), asyncio.get_running_loop())


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    length = re.search(rb"\r\ncontent-length: *(\d+)", lower)
    if length:
        return head, await reader.readexactly(int(length.group(1)))
    if b"\r\ntransfer-encoding: chunked" in lower:
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readexactly(2)
        return head, b"".join(parts)
    return head, b""


def request(method: str = "GET", path: str = "/", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: origin\r\n{extra}\r\n".encode()


async def read_all(pipe: Pipe) -> bytes:
    """The whole body, or RuntimeError with the pipe's error."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    parts: list[bytes] = []

    def reader() -> None:
        parts.append(bytes(pipe.read()))
        if done.done():
            return
        if pipe.error:
            done.set_exception(RuntimeError(pipe.error))
        elif pipe.done:
            done.set_result(None)

    pipe.want(reader)
    await done
    return b"".join(parts)


async def fetch(pool: OriginPool, head: bytes | None = None, method: str = "GET") -> tuple[Exchange, bytes]:
    conn = await pool.acquire()
    exchange = await conn.start(head or request(method), None, method)
    return exchange, await read_all(exchange.body)


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes) -> None:
    """A keep-alive origin giving the same answer to every request."""
    try:
        while True:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


# Origin -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "scheme", "host", "port", "authority"),
    [
        ("http://127.0.0.1:9000", "http", "127.0.0.1", 9000, b"127.0.0.1:9000"),
        ("HTTPS://LocalHost", "https", "localhost", 443, b"localhost:443"),
        ("http://localhost/", "http", "localhost", 80, b"localhost:80"),
        ("https://[::1]:8443", "https", "::1", 8443, b"[::1]:8443"),
    ],
)
def test_origin_parses(text: str, scheme: str, host: str, port: int, authority: bytes) -> None:
    origin = Origin.parse(text)
    assert (origin.scheme, origin.host, origin.port, origin.authority) == (scheme, host, port, authority)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("127.0.0.1:9000", "http:// or https://"),
        ("ftp://127.0.0.1", "http:// or https://"),
        ("http://127.0.0.1:9000/path", "no path"),
        ("http://user@127.0.0.1", "no path"),
        ("http://", "no host"),
        ("http://127.0.0.1:0", "port"),
        ("http://127.0.0.1:99999", "port"),
        ("http://127.0.0.1:", "port"),
        ("http://::1:80", "brackets"),
        ("http://[::1", "unclosed"),
        ("http://[nothost]:80", "not an IP address"),
        ("http://bad_host!:80", "not an IP address"),
        ("http://origin.example:80", "not an IP address"),
    ],
)
def test_origin_refuses_bad_input(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        Origin.parse(text)


# framing and reuse --------------------------------------------------------------------------------------
def test_keep_alive_reuses_one_connection() -> None:
    async def main() -> None:
        server, port = await serve(lambda r, w: answer_each(r, w, ok(b"hello")))
        pool = await pool_for(port)
        for _ in range(10):
            exchange, body = await fetch(pool)
            assert (exchange.status, exchange.reason, body) == (200, b"OK", b"hello")
            assert exchange.body.complete and exchange.keep_alive
        assert (pool.opened_total, pool.reused_total, pool.idle, pool.active) == (1, 9, 1, 0)
        conn = await pool.acquire()
        exchange = await conn.start(request(), None, "GET")
        await read_all(exchange.body)
        pool.release(conn)  # started, so back by itself already: a late release changes nothing
        assert (pool.idle, pool.active) == (1, 0)
        other = await pool.acquire()
        assert other is conn
        exchange = await other.start(request(), None, "GET")
        pool.release(conn)  # nor does it touch the exchange the next borrower started
        assert await read_all(exchange.body) == b"hello"
        assert (pool.idle, pool.active, pool.opened_total) == (1, 0, 1)
        pool.close()
        server.close()

    run(main())


def test_headers_keep_their_case_and_order() -> None:
    answer = b"HTTP/1.1 201 Made It\r\nX-Trace: a\r\nset-cookie: 1\r\nSet-Cookie: 2\r\nContent-Length: 0\r\n\r\n"

    async def main() -> None:
        server, port = await serve(lambda r, w: answer_each(r, w, answer))
        exchange, body = await fetch(await pool_for(port))
        assert (exchange.status, exchange.reason, body) == (201, b"Made It", b"")
        assert exchange.headers == [
            (b"X-Trace", b"a"),
            (b"set-cookie", b"1"),
            (b"Set-Cookie", b"2"),
            (b"Content-Length", b"0"),
        ]
        server.close()

    run(main())


def test_chunked_answer_is_unframed_and_reused() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"

    async def main() -> None:
        server, port = await serve(lambda r, w: answer_each(r, w, answer))
        pool = await pool_for(port)
        for _ in range(3):
            exchange, body = await fetch(pool)
            assert body == b"hello world"
            assert exchange.body.length is None and exchange.body.complete
        assert pool.opened_total == 1
        server.close()

    run(main())


def test_content_length_body_in_many_reads() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload))
        for i in range(0, len(payload), 1000):
            writer.write(payload[i : i + 1000])
            await writer.drain()
        await reader.read()

    async def main() -> None:
        server, port = await serve(handler)
        exchange, body = await fetch(await pool_for(port))
        assert body == payload
        assert exchange.body.length == len(payload) and exchange.body.complete
        server.close()

    run(main())


def test_close_delimited_answer_ends_with_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        exchange, body = await fetch(pool)
        assert body == b"until the end"
        assert exchange.body.complete and not exchange.keep_alive
        await asyncio.sleep(0.05)
        assert (pool.idle, pool.active) == (0, 0)
        server.close()

    run(main())


def test_answers_without_a_body() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",  # to HEAD: the length is the GET's
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n" + ok(b"after interim"),
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        await reader.read()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        exchange, body = await fetch(pool, method="HEAD")
        assert (exchange.status, body, exchange.headers[0][1]) == (200, b"", b"100")
        for status, expect in [(204, b""), (304, b""), (200, b"after interim")]:
            exchange, body = await fetch(pool)
            assert (exchange.status, body) == (status, expect)
            assert exchange.body.complete
        assert pool.opened_total == 1
        server.close()

    run(main())


def test_bytes_after_the_answer_drop_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"fine") + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
        await reader.read()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        exchange, body = await fetch(pool)
        assert body == b"fine" and exchange.body.complete
        await asyncio.sleep(0.05)
        assert (pool.idle, pool.active) == (0, 0)  # never handed to the next request with "stale" waiting
        server.close()

    run(main())


def test_bytes_after_a_head_answer_drop_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nbody!")  # a body to HEAD: broken origin
        await reader.read()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        exchange, body = await fetch(pool, method="HEAD")
        assert (exchange.status, body) == (200, b"")
        await asyncio.sleep(0.05)
        assert (pool.idle, pool.active) == (0, 0)
        server.close()

    run(main())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["cl-and-te", "two-lengths", "garbage", "huge-head", "unasked-101"],
)
def test_malformed_answers_are_protocol_errors(answer: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await reader.read()

    async def main() -> None:
        server, port = await serve(handler)
        with pytest.raises(UpstreamError) as caught:
            await fetch(await pool_for(port))
        assert caught.value.kind == "protocol" and caught.value.answered
        server.close()

    run(main())


# send: the callback form ------------------------------------------------------------------------------------
class Told:
    """What `send` tells, and what the connection and pool looked like at that moment."""

    def __init__(self, pool: OriginPool, conn: UpstreamConnection) -> None:
        self.pool = pool
        self.conn = conn
        self.outcomes: list[Exchange | UpstreamError] = []
        self.idle_then: list[int] = []
        self.arrived = asyncio.Event()

    def __call__(self, outcome: Exchange | UpstreamError) -> None:
        self.outcomes.append(outcome)
        self.idle_then.append(self.pool.idle)
        self.arrived.set()


def test_send_tells_a_whole_answer_as_bytes_once_the_connection_is_idle_again() -> None:
    async def main() -> None:
        async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    head, _ = await read_request(reader)
                    answer = ok(b"hello")
                    writer.write(answer[: answer.index(b"\r\n\r\n") + 4] if head.startswith(b"HEAD") else answer)
                    await writer.drain()

        server, port = await serve(origin)
        pool = await pool_for(port)
        for method, body in (("GET", b"hello"), ("HEAD", b"")):
            conn = await pool.acquire()
            told = Told(pool, conn)
            conn.send(request(method), None, method, told)
            assert told.outcomes == []  # never from inside send
            await asyncio.wait_for(told.arrived.wait(), 5)
            await asyncio.sleep(0.05)  # nothing more is told
            (exchange,) = told.outcomes
            assert isinstance(exchange, Exchange)
            assert (exchange.status, exchange.body, exchange.keep_alive) == (200, body, True)
            assert exchange.length == (5 if method == "GET" else 0)
            assert told.idle_then == [1]  # back in the pool before the caller heard of it
        assert (pool.opened_total, pool.reused_total) == (1, 1)
        pool.close()
        server.close()

    run(main())


def test_send_tells_an_answer_still_arriving_as_a_pipe_with_what_came_so_far() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
            await writer.drain()
            await release.wait()
            writer.write(b"-last")
            await writer.drain()
            await read_request(reader)

        server, port = await serve(origin)
        pool = await pool_for(port)
        conn = await pool.acquire()
        told = Told(pool, conn)
        conn.send(request(), None, "GET", told)
        await asyncio.wait_for(told.arrived.wait(), 5)
        (exchange,) = told.outcomes
        assert isinstance(exchange, Exchange) and isinstance(exchange.body, Pipe)
        assert (exchange.status, exchange.length, exchange.body.length) == (200, 10, 10)
        assert told.idle_then == [0]  # still busy: the body is on its way
        assert bytes(exchange.body.read()) == b"first"
        release.set()
        assert await read_all(exchange.body) == b"-last"
        assert exchange.body.complete and pool.idle == 1
        pool.close()
        server.close()

    run(main())


def test_send_on_a_closed_connection_raises_and_a_failure_is_told() -> None:
    async def main() -> None:
        async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.transport.abort()  # no answer: a reset before the first byte

        server, port = await serve(origin)
        pool = await pool_for(port)
        conn = await pool.acquire()
        told = Told(pool, conn)
        conn.send(request(), None, "GET", told)
        await asyncio.wait_for(told.arrived.wait(), 5)
        (failure,) = told.outcomes
        assert isinstance(failure, UpstreamError)
        assert (failure.kind, failure.answered, failure.reused) == ("reset", False, False)
        with pytest.raises(UpstreamError, match="connection closed before the request") as raised:
            conn.send(request(), None, "GET", told)
        assert raised.value.kind == "reset" and raised.value.reused
        assert len(told.outcomes) == 1
        pool.close()
        server.close()

    run(main())


# request bodies -----------------------------------------------------------------------------------------
def feeder(pipe: Pipe, total: int, conn_box: list[UpstreamConnection]) -> tuple[Callable[[], None], dict[str, int]]:
    """A producer feeding `total` bytes as fast as the pipe lets it, tracking the most ever buffered."""
    chunk = b"x" * 65536
    seen = {"fed": 0, "pipe": 0, "socket": 0}

    def produce() -> None:
        while seen["fed"] < total:
            more = pipe.feed(chunk)
            seen["fed"] += len(chunk)
            seen["pipe"] = max(seen["pipe"], pipe.buffered)
            if conn_box and conn_box[0].transport is not None:
                seen["socket"] = max(seen["socket"], conn_box[0].transport.get_write_buffer_size())
            if not more:
                return  # on_drain calls again, from inside the consumer's read
        pipe.finish()

    pipe.on_drain = produce
    return produce, seen


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_request_body_streams_with_bounded_buffering(chunked: bool) -> None:
    total = 64 * MiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await read_request(reader)
        writer.write(ok(b"%d" % len(body)))
        await writer.drain()
        await reader.read()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        conn = await pool.acquire()
        pipe = Pipe(None if chunked else total)
        produce, seen = feeder(pipe, total, [conn])
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
        future = conn.start(request("POST", extra=framing + "\r\n"), pipe, "POST")
        produce()
        exchange = await future
        assert await read_all(exchange.body) == b"%d" % total
        assert seen["pipe"] <= 2 * HIGH_WATER
        assert seen["socket"] <= 2 * HIGH_WATER + 65536
        assert pipe.read_total == total
        await asyncio.sleep(0)
        assert pool.idle == 1  # sent whole and answered whole: reusable
        server.close()

    run(main())


def test_request_body_that_breaks_off_aborts_the_exchange() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        conn = await pool.acquire()
        pipe = Pipe(1000)
        future = conn.start(request("POST", extra="Content-Length: 1000\r\n"), pipe, "POST")
        pipe.feed(b"x" * 10)
        await asyncio.sleep(0.01)
        pipe.fail("client went away")
        with pytest.raises(UpstreamError) as caught:
            await future
        assert caught.value.kind == "request_body" and caught.value.sent_body and not caught.value.answered
        await asyncio.sleep(0.01)
        assert pool.active == 0
        server.close()

    run(main())


def test_origin_that_stops_reading_the_body_is_a_write_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)  # never reads

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port, first_byte_timeout=0.3, read_timeout=0.3)
        conn = await pool.acquire()
        pipe = Pipe(None)
        produce, _ = feeder(pipe, 256 * MiB, [conn])
        future = conn.start(request("POST", extra="Transfer-Encoding: chunked\r\n"), pipe, "POST")
        produce()
        with pytest.raises(UpstreamError) as caught:
            await future
        assert caught.value.kind == "write_timeout" and not caught.value.answered
        server.close()

    run(main())


def test_early_answer_drops_the_rest_of_the_body_and_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        conn = await pool.acquire()
        pipe = Pipe(10 * MiB)
        exchange = await conn.start(request("POST", extra=f"Content-Length: {10 * MiB}\r\n"), pipe, "POST")
        assert exchange.status == 413
        assert await read_all(exchange.body) == b""
        assert pipe.discarding  # the client's upload is drained, not left paused forever
        await asyncio.sleep(0.01)
        assert (pool.idle, pool.active) == (0, 0)
        server.close()

    run(main())


# answer bodies ------------------------------------------------------------------------------------------
def test_slow_consumer_holds_the_origin_back() -> None:
    total = 64 * MiB
    sent = [0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        chunk = b"y" * MiB
        while sent[0] < total:
            writer.write(chunk)
            await writer.drain()
            sent[0] += len(chunk)
        await reader.read()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port, read_timeout=0.2)
        conn = await pool.acquire()
        exchange = await conn.start(request(), None, "GET")
        body = exchange.body
        # Nobody reads for longer than read_timeout: our own backpressure is not the origin's silence.
        await asyncio.sleep(0.6)
        stalled = sent[0]
        await asyncio.sleep(0.3)
        assert sent[0] == stalled < total
        assert body.buffered <= 2 * HIGH_WATER
        assert not body.error
        received = 0
        most = 0
        while not body.done:
            most = max(most, body.buffered)
            received += len(body.read(64 * 1024))
            await asyncio.sleep(0)
        assert received == total and body.complete
        assert most <= 2 * HIGH_WATER
        await asyncio.sleep(0)
        assert pool.idle == 1
        server.close()

    run(main())


def test_origin_reset_mid_body_fails_the_pipe() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"z" * 1000)
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        conn = await pool.acquire()
        exchange = await conn.start(request(), None, "GET")
        with pytest.raises(RuntimeError, match="reset"):
            await read_all(exchange.body)
        assert exchange.body.error and not exchange.body.eof and not exchange.body.complete
        assert conn.failure is not None and conn.failure.kind == "reset" and conn.failure.answered
        await asyncio.sleep(0.01)
        assert (pool.idle, pool.active) == (0, 0)
        server.close()

    run(main())


def test_origin_closing_short_of_the_length_fails_the_pipe() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        conn = await (await pool_for(port)).acquire()
        exchange = await conn.start(request(), None, "GET")
        with pytest.raises(RuntimeError):
            await read_all(exchange.body)
        assert not exchange.body.complete
        server.close()

    run(main())


# failures and timeouts -------------------------------------------------------------------------------------
def test_connection_refused_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main() -> None:
        pool = await pool_for(port)
        with pytest.raises(UpstreamError) as caught:
            await pool.acquire()
        assert caught.value.kind == "connect" and not caught.value.answered
        assert pool.total == 0

    run(main())


def test_connect_timeout() -> None:
    # A loopback listener that never accepts, with its accept queue full: Linux drops further
    # SYNs (tcp_abort_on_overflow is 0), so the connect hangs without leaving 127.0.0.1.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)

    async def main() -> None:
        pool = OriginPool(
            Origin.parse(f"http://127.0.0.1:{port}"), config(connect_timeout=0.3), asyncio.get_running_loop()
        )
        with pytest.raises(UpstreamError) as caught:
            await pool.acquire()
        assert caught.value.kind == "connect_timeout"
        assert pool.total == 0

    try:
        run(main())
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_stalled_origin_is_a_first_byte_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port, first_byte_timeout=0.2)
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamError) as caught:
            await fetch(pool)
        assert 0.15 < asyncio.get_running_loop().time() - started < 1.0
        assert caught.value.kind == "first_byte_timeout" and caught.value.retryable
        await asyncio.sleep(0.01)
        assert pool.total == 0
        server.close()

    run(main())


def test_silent_body_is_a_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await asyncio.sleep(5)

    async def main() -> None:
        server, port = await serve(handler)
        conn = await (await pool_for(port, read_timeout=0.2)).acquire()
        exchange = await conn.start(request(), None, "GET")
        with pytest.raises(RuntimeError, match="read_timeout"):
            await read_all(exchange.body)
        assert conn.failure is not None and conn.failure.kind == "read_timeout" and conn.failure.answered
        server.close()

    run(main())


def test_failure_on_a_reused_connection_says_so() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"first"))
        await writer.drain()
        await read_request(reader)
        writer.close()  # the keep-alive race: closed as the second request arrived

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        await fetch(pool)
        with pytest.raises(UpstreamError) as caught:
            await fetch(pool)
        assert caught.value.kind == "reset" and caught.value.reused and caught.value.retryable
        _, body = await fetch(pool)  # the caller's retry gets a fresh connection
        assert body == b"first"
        assert pool.opened_total == 2
        server.close()

    run(main())


def test_abort_closes_a_half_read_answer() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await reader.read()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        conn = await pool.acquire()
        exchange = await conn.start(request(), None, "GET")
        conn.abort()
        assert exchange.body.error and not exchange.body.complete
        await asyncio.sleep(0.01)
        assert (pool.idle, pool.active, pool.total) == (0, 0, 0)
        server.close()

    run(main())


def test_cancelled_caller_abandons_the_exchange() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        conn = await pool.acquire()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.start(request(), None, "GET"), 0.05)
        await asyncio.sleep(0.01)
        assert pool.total == 0
        server.close()

    run(main())


# the pool --------------------------------------------------------------------------------------------------
def test_max_connections_queue_and_circuit_breaker() -> None:
    release = asyncio.Event

    async def main() -> None:
        go = release()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    await read_request(reader)
                    await go.wait()
                    writer.write(ok(b"done"))
                    await writer.drain()
            except asyncio.IncompleteReadError:
                writer.close()

        server, port = await serve(handler)
        pool = await pool_for(port, max_connections=2, max_pending=1)
        first = asyncio.create_task(fetch(pool))
        second = asyncio.create_task(fetch(pool))
        await asyncio.sleep(0.05)
        assert (pool.active, pool.total) == (2, 2)
        third = asyncio.create_task(fetch(pool))
        await asyncio.sleep(0.01)
        assert pool.pending == 1 and pool.in_flight == 3
        with pytest.raises(UpstreamError) as caught:
            await pool.acquire()
        assert caught.value.kind == "pool_full" and caught.value.retryable
        go.set()
        for task in (first, second, third):
            assert (await task)[1] == b"done"
        assert (pool.opened_total, pool.reused_total, pool.pending) == (2, 1, 0)
        assert pool.idle == 2
        server.close()

    run(main())


def test_waiter_gets_a_slot_freed_by_a_closed_connection_and_cancelled_waiters_pass_theirs_on() -> None:
    async def main() -> None:
        server, port = await serve(lambda r, w: answer_each(r, w, ok(b"x")))
        pool = await pool_for(port, max_connections=1, max_pending=5)
        held = await pool.acquire()
        cancelled = asyncio.create_task(pool.acquire())
        waiting = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0.01)
        assert pool.pending == 2
        cancelled.cancel()
        held.abort()  # frees the slot
        conn = await waiting
        assert conn is not held and conn.usable
        assert (pool.total, pool.pending, pool.opened_total) == (1, 0, 2)
        pool.release(conn)
        assert pool.idle == 1
        server.close()

    run(main())


def test_max_pending_zero_fails_at_once() -> None:
    async def main() -> None:
        server, port = await serve(lambda r, w: answer_each(r, w, ok(b"x")))
        pool = await pool_for(port, max_connections=1, max_pending=0)
        await pool.acquire()
        with pytest.raises(UpstreamError, match="pool_full"):
            await pool.acquire()
        server.close()

    run(main())


def test_idle_connections_close_after_idle_timeout() -> None:
    closed = asyncio.Event

    async def main() -> None:
        seen_close = closed()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await answer_each(reader, writer, ok(b"x"))
            seen_close.set()

        server, port = await serve(handler)
        pool = await pool_for(port, idle_timeout=0.1)
        await fetch(pool)
        assert pool.idle == 1
        await asyncio.wait_for(seen_close.wait(), 1)
        assert pool.idle == 0 and pool.total == 0
        await fetch(pool)
        assert pool.opened_total == 2
        server.close()

    run(main())


def test_idle_connection_closed_by_the_origin_leaves_the_pool() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok(b"bye"))
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        await fetch(pool)
        await asyncio.sleep(0.05)
        assert (pool.idle, pool.total) == (0, 0)
        await fetch(pool)
        assert (pool.opened_total, pool.reused_total) == (2, 0)
        server.close()

    run(main())


def test_max_idle_bounds_what_is_kept() -> None:
    async def main() -> None:
        server, port = await serve(lambda r, w: answer_each(r, w, ok(b"x")))
        pool = await pool_for(port, max_idle=1)
        await asyncio.gather(*(fetch(pool) for _ in range(3)))
        assert pool.idle == 1 and pool.opened_total == 3
        server.close()

    run(main())


def test_close_fails_waiters_and_lets_exchanges_finish() -> None:
    async def main() -> None:
        go = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            await go.wait()
            writer.write(ok(b"finished"))
            await writer.drain()
            await reader.read()

        server, port = await serve(handler)
        pool = await pool_for(port, max_connections=1)
        busy = asyncio.create_task(fetch(pool))
        await asyncio.sleep(0.05)
        waiter = asyncio.create_task(pool.acquire())
        await asyncio.sleep(0.01)
        pool.close()
        with pytest.raises(UpstreamError, match="closed"):
            await waiter
        go.set()
        assert (await busy)[1] == b"finished"
        await asyncio.sleep(0.01)
        assert pool.total == 0
        with pytest.raises(UpstreamError, match="closed"):
            await pool.acquire()
        server.close()

    run(main())


def test_probe_reads_the_status_and_keeps_the_connection() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, _ = await read_request(reader)
                seen.append(head)
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown")
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port, max_connections=1, max_pending=0)
        assert await pool.probe("/healthz", "api.internal", 1.0) == 503
        assert await pool.probe("/healthz", "", 1.0) == 503
        assert pool.opened_total == 1
        assert seen[0].startswith(b"GET /healthz HTTP/1.1\r\nHost: api.internal\r\n")
        assert f"Host: 127.0.0.1:{port}\r\n".encode() in seen[1]
        held = await pool.acquire()
        assert await pool.probe("/healthz", "", 1.0) == 503  # a full pool still lets the probe through
        pool.release(held)
        await asyncio.sleep(0.01)
        assert pool.total == 1
        with pytest.raises(ValueError, match="path"):
            await pool.probe("healthz\r\n", "", 1.0)
        server.close()

    run(main())


def test_probe_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        with pytest.raises(UpstreamError) as caught:
            await pool.probe("/", "", 0.1)
        assert caught.value.kind == "first_byte_timeout"
        await asyncio.sleep(0.01)
        assert pool.total == 0
        server.close()

    run(main())


# upgrade -----------------------------------------------------------------------------------------------------
def test_101_makes_a_raw_tunnel() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        assert b"Upgrade: echo" in head
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhi!")
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        pool = await pool_for(port)
        conn = await pool.acquire()
        tunnel = Pipe(None)
        tunnel.feed(b"not before the 101 ")
        exchange = await conn.start(
            request(extra="Connection: Upgrade\r\nUpgrade: echo\r\n"), tunnel, "GET", upgrade=True
        )
        assert exchange.status == 101 and not exchange.keep_alive
        tunnel.feed(b"hello tunnel")
        tunnel.finish()
        assert await read_all(exchange.body) == b"hi!NOT BEFORE THE 101 HELLO TUNNEL"
        assert exchange.body.complete
        await asyncio.sleep(0.01)
        assert (pool.idle, pool.total) == (0, 0)
        server.close()

    run(main())


def test_refused_upgrade_is_an_ordinary_answer() -> None:
    async def main() -> None:
        server, port = await serve(lambda r, w: answer_each(r, w, ok(b"no upgrade here")))
        pool = await pool_for(port)
        conn = await pool.acquire()
        tunnel = Pipe(None)
        exchange = await conn.start(
            request(extra="Connection: Upgrade\r\nUpgrade: echo\r\n"), tunnel, "GET", upgrade=True
        )
        assert await read_all(exchange.body) == b"no upgrade here"
        assert tunnel.read_total == 0 and tunnel.on_readable is None
        assert pool.idle == 1
        server.close()

    run(main())


# TLS ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def origin_cert(ca: CA) -> Issued:
    return ca.issue("origin", ["127.0.0.1", "localhost"])


def server_tls(cert: Issued, client_ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert, cert.key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


async def tls_pool(port: int, **overrides: Any) -> OriginPool:
    cfg = config(**overrides)
    return OriginPool(Origin.parse(f"https://127.0.0.1:{port}"), cfg, asyncio.get_running_loop(), origin_context(cfg))


def test_https_origin_verified_with_the_configured_ca(ca: CA, origin_cert: Issued) -> None:
    async def main() -> None:
        server, port = await serve(lambda r, w: answer_each(r, w, ok(b"secure")), server_tls(origin_cert))
        pool = await tls_pool(port, ca=str(ca.pem))
        for _ in range(3):
            _, body = await fetch(pool)
            assert body == b"secure"
        conn = await pool.acquire()
        exchange = await conn.start(request("POST", extra="Content-Length: 5\r\n"), b"hello", "POST")
        assert await read_all(exchange.body) == b"secure"
        assert pool.opened_total == 1
        conn = await pool.acquire()
        assert conn.transport is not None
        ssl_object = conn.transport.get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() == "http/1.1"
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        pool.release(conn)
        server.close()

    run(main())


def test_server_name_is_what_the_certificate_must_carry(ca: CA) -> None:
    named = ca.issue("named-origin", ["payments.internal"])

    async def main() -> None:
        server, port = await serve(lambda r, w: answer_each(r, w, ok(b"named")), server_tls(named))
        pool = await tls_pool(port, ca=str(ca.pem), server_name="payments.internal")
        assert (await fetch(pool))[1] == b"named"
        with pytest.raises(UpstreamError) as caught:
            await (await tls_pool(port, ca=str(ca.pem))).acquire()  # dialled as 127.0.0.1: wrong name
        assert caught.value.kind == "tls" and not caught.value.answered
        server.close()

    run(main())


def test_https_origin_from_another_ca_fails_tls(tmp_path: Path, origin_cert: Issued) -> None:
    other = CA(tmp_path / "other", name="another CA")

    async def main() -> None:
        server, port = await serve(lambda r, w: answer_each(r, w, ok(b"x")), server_tls(origin_cert))
        pool = await tls_pool(port, ca=str(other.pem))
        with pytest.raises(UpstreamError) as caught:
            await pool.acquire()
        assert caught.value.kind == "tls" and "certificate verify failed" in str(caught.value)
        assert pool.total == 0
        insecure = await tls_pool(port, ca=str(other.pem), insecure_skip_verify=True)
        assert (await fetch(insecure))[1] == b"x"
        server.close()

    run(main())


def test_mutual_tls_to_the_origin(ca: CA, origin_cert: Issued) -> None:
    client = ca.issue("proxy-client", ["edgeward-proxy"], client=True)
    peers: list[Any] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peercert"))
        await answer_each(reader, writer, ok(b"mutual"))

    async def main() -> None:
        server, port = await serve(handler, server_tls(origin_cert, client_ca=ca.pem))
        pool = await tls_pool(port, ca=str(ca.pem), client_cert=str(client.cert), client_key=str(client.key))
        assert (await fetch(pool))[1] == b"mutual"
        assert peers[0]["subject"] == ((("commonName", "edgeward-proxy"),),)
        server.close()

    run(main())


def refusing_origin(ctx: ssl.SSLContext) -> int:
    """An origin on a thread that refuses the handshake with OpenSSL's alert, as nginx would.

    (An asyncio origin on uvloop closes without sending the alert; see AlertingSSLObject.)
    """
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_one() -> None:
        sock, _ = listener.accept()
        tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with contextlib.suppress(ssl.SSLError, OSError):
            tls.do_handshake()
        time.sleep(0.5)  # keep the socket open: closing it with the request unread would reset the alert away
        tls.close()
        listener.close()

    threading.Thread(target=serve_one, daemon=True).start()
    return int(listener.getsockname()[1])


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_origin_refusing_our_missing_client_cert_is_a_tls_error(
    ca: CA, origin_cert: Issued, version: ssl.TLSVersion
) -> None:
    ctx = server_tls(origin_cert, client_ca=ca.pem)
    ctx.maximum_version = version
    port = refusing_origin(ctx)

    async def main() -> None:
        pool = await tls_pool(port, ca=str(ca.pem))
        with pytest.raises(UpstreamError) as caught:
            await fetch(pool)  # TLS 1.3: the refusal arrives after the client's side of the handshake is done
        assert caught.value.kind == "tls" and not caught.value.answered

    run(main())


def test_origin_context_errors_name_the_key_and_the_file(tmp_path: Path, ca: CA) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TLSMaterialError, match=r"upstreams\[t\]\.ca: CA file .*missing\.pem does not exist"):
        origin_context(config(ca=str(missing)))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(TLSMaterialError, match=r"upstreams\[t\]\.ca: .*holds no PEM certificate"):
        origin_context(config(ca=str(junk)))
    client = ca.issue("mismatch-client", ["c"], client=True)
    other = ca.issue("mismatch-other", ["o"], client=True)
    with pytest.raises(TLSMaterialError, match=r"upstreams\[t\]\.client_cert/client_key: .*does not match"):
        origin_context(config(client_cert=str(client.cert), client_key=str(other.key)))
    with pytest.raises(TLSMaterialError, match=r"client_key is set without"):
        origin_context(config(client_key=str(client.key)))


def test_origin_context_defaults_are_strict() -> None:
    ctx = origin_context(config())
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    unsafe = origin_context(config(insecure_skip_verify=True))
    assert unsafe.verify_mode == ssl.CERT_NONE and not unsafe.check_hostname

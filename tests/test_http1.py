"""HTTP/1.1 on the wire: framing, limits, timeouts and keep-alive, over plain TCP and TLS.

Most tests speak raw bytes through `Wire`, which reads exactly one response at
a time (body by Content-Length), so keep-alive and pipelining can be checked
response by response and "the server closed the connection" means recv()
returned b"". A few tests repeat the same checks with curl and httpx.
"""

from __future__ import annotations

import hashlib
import re
import select
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import base_config
from tests.pki import CA, Issued
from tests.server import Server

HELLO = b"hello world\n"
KIB_BIN = bytes(range(256)) * 4
BIG_BIN = bytes(range(256)) * 4096 * 2
IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
    r"\d{2}:\d{2}:\d{2} GMT$"
)


def digest(data: bytes) -> str:
    """Compare large bodies by hash so a mismatch does not print megabytes."""
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()}"


# --- a tiny raw HTTP/1.1 client --------------------------------------------------------------------------------


@dataclass
class Reply:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class Wire:
    """A connected socket with a read buffer: send raw bytes, read whole responses one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_slowly(self, chunks: list[bytes], delay: float = 0.05) -> None:
        """Send chunk by chunk; stop early once the server has answered (so no RST eats its answer)."""
        for chunk in chunks:
            if self.readable():
                return
            try:
                self.sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                return
            time.sleep(delay)

    def readable(self) -> bool:
        """True once the server has sent something or closed; buffers what arrived (TLS records may be tickets)."""
        if self.buf:
            return True
        pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
        if not pending and not select.select([self.sock], [], [], 0)[0]:
            return False
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # only a TLS record without application data (e.g. a session ticket)
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(timeout)
        self.buf += data
        return True  # data, or b"" for EOF

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed; unparsed bytes: {self.buf[:200]!r}")
        self.buf += data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, head: bool = False, timeout: float = 5.0) -> Reply:
        """One response; `head=True` when it answers a HEAD request (no body follows)."""
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        block, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = block.decode("latin-1").split("\r\n")
        version, status, reason = [*lines[0].split(" ", 2), ""][:3]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        reply = Reply(version, int(status), reason, headers, b"")
        length = reply.header("Content-Length")
        if head or reply.status in (204, 304) or reply.status < 200:
            return reply
        assert reply.header("Transfer-Encoding") is None, "server sent a chunked response"
        if length is not None:
            reply.body = self._take(int(length))
        else:
            reply.body = self.read_until_close(timeout)
        return reply

    def read_until_close(self, timeout: float = 5.0) -> bytes:
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                out, self.buf = self.buf, b""
                return out
            self.buf += data

    def assert_closed(self, timeout: float = 3.0) -> float:
        """The server closed the connection (recv returns b"") with nothing more sent; returns seconds waited."""
        assert self.buf == b"", f"unexpected bytes: {self.buf[:200]!r}"
        self.sock.settimeout(timeout)
        start = time.monotonic()
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""  # a reset is a close too; it only happens if the peer had unread data
        except TimeoutError:
            pytest.fail(f"connection still open after {timeout}s")
        assert data == b"", f"expected the connection to be closed, got {data[:200]!r}"
        return time.monotonic() - start

    def assert_open(self) -> None:
        """Nothing arrives and the connection is not closed (checked with a short wait)."""
        assert self.buf == b"", f"unexpected bytes: {self.buf[:200]!r}"
        self.sock.settimeout(0.2)
        try:
            data = self.sock.recv(1)
        except TimeoutError:
            return
        pytest.fail(f"connection unexpectedly closed or sent data: {data!r}")

    def close(self) -> None:
        self.sock.close()


def request(
    path: str = "/",
    method: str = "GET",
    host: str | None = "localhost",
    version: str = "HTTP/1.1",
    headers: tuple[str, ...] = (),
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {path} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines.extend(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- fixtures -------------------------------------------------------------------------------------------------


LISTENERS = ("http", "https")


def open_wire(srv: Server, listener: str, client_tls: ssl.SSLContext, timeout: float = 5.0) -> Wire:
    """A Wire to `listener` of `srv` (TLS with SNI `localhost` on https)."""
    sock = socket.create_connection(srv.address(listener), timeout=timeout)
    if listener == "https":
        sock = client_tls.wrap_socket(sock, server_hostname="localhost")
    return Wire(sock)


@pytest.fixture(params=LISTENERS)
def listener(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect(listener: str, client_tls: ssl.SSLContext) -> Iterator[Callable[..., Wire]]:
    """connect(server) -> Wire to the parametrised listener; closed at teardown."""
    opened: list[Wire] = []

    def _connect(srv: Server, timeout: float = 5.0) -> Wire:
        wire = open_wire(srv, listener, client_tls, timeout)
        opened.append(wire)
        return wire

    yield _connect
    for wire in opened:
        wire.close()


@pytest.fixture
def conn(server: Server, connect: Callable[..., Wire]) -> Wire:
    return connect(server)


@pytest.fixture
def custom(start_server: Callable[..., Server], site: Path, localhost_cert: Issued) -> Callable[..., Server]:
    """custom(limits={...}, server={...}) -> a started server with those config overrides."""

    def _start(**overrides: Any) -> Server:
        return start_server(base_config(site, localhost_cert, **overrides))

    return _start


# --- keep-alive and pipelining ----------------------------------------------------------------------------------


def test_keep_alive_three_sequential_requests(conn: Wire) -> None:
    for path, body in (("/hello.txt", HELLO), ("/index.html", b"<h1>home</h1>\n"), ("/1k.bin", KIB_BIN)):
        conn.send(request(path))
        reply = conn.read_response()
        assert reply.status == 200
        assert reply.body == body
        assert reply.header("Connection") is None
    conn.assert_open()


def test_pipelining_three_requests_in_one_write(conn: Wire) -> None:
    conn.send(request("/hello.txt") + request("/sub/") + request("/1k.bin"))
    replies = [conn.read_response() for _ in range(3)]
    assert [r.status for r in replies] == [200, 200, 200]
    assert [r.body for r in replies] == [HELLO, b"<h1>sub</h1>\n", KIB_BIN]
    conn.assert_open()


def test_pipelined_burst_ending_in_a_partial_request(conn: Wire) -> None:
    """600 pipelined requests (~26 KB, more than max_header_bytes in total) and the start of one more, in one
    write: the header size limit applies to each request's head, not to everything that arrived in one read."""
    one = request("/hello.txt")
    conn.send(one * 600 + one[:20])
    for i in range(600):
        reply = conn.read_response()
        assert (reply.status, reply.body) == (200, HELLO), i
    conn.assert_open()  # fails with the bytes of an unsolicited 431 if the partial head was mis-measured
    conn.send(one[20:])
    assert conn.read_response().body == HELLO


def test_request_body_then_partial_next_request_in_one_write(conn: Wire) -> None:
    """A 20 KB request body is not part of the next request's head."""
    body = b"x" * 20000
    follow = request("/1k.bin")
    conn.send(request("/hello.txt", method="POST", headers=(f"Content-Length: {len(body)}",), body=body) + follow[:20])
    assert conn.read_response().status == 405
    conn.assert_open()
    conn.send(follow[20:])
    assert conn.read_response().body == KIB_BIN


def test_pipelining_behind_a_streamed_file(conn: Wire) -> None:
    """Requests queued behind a streamed (sendfile/mmap) body are answered, in order, once it is complete."""
    conn.send(request("/big.bin") + request("/hello.txt") + request("/1k.bin", method="HEAD") + request("/missing"))
    big = conn.read_response()
    assert big.status == 200
    assert digest(big.body) == digest(BIG_BIN)
    hello = conn.read_response()
    assert (hello.status, hello.body) == (200, HELLO)
    head = conn.read_response(head=True)
    assert (head.status, head.header("Content-Length")) == (200, "1024")
    missing = conn.read_response()
    assert missing.status == 404
    conn.assert_open()


def test_request_after_a_streamed_file_on_the_same_connection(conn: Wire) -> None:
    """Sequential, not pipelined: a large (sendfile/mmap) response must not wedge the connection."""
    for _ in range(2):
        conn.send(request("/big.bin"))
        big = conn.read_response()
        assert (big.status, digest(big.body)) == (200, digest(BIG_BIN))
        conn.send(request("/hello.txt"))
        hello = conn.read_response(timeout=3.0)
        assert (hello.status, hello.body) == (200, HELLO)


def test_httpx_request_after_a_streamed_file(server: Server, listener: str, client_tls: ssl.SSLContext) -> None:
    with httpx.Client(verify=client_tls, timeout=3.0) as client:
        big = client.get(server.url(listener, "/big.bin"))
        assert (big.status_code, digest(big.content)) == (200, digest(BIG_BIN))
        hello = client.get(server.url(listener, "/hello.txt"))
        assert (hello.status_code, hello.content) == (200, HELLO)


def test_pipelined_request_after_connection_close_is_not_answered(conn: Wire) -> None:
    conn.send(request("/hello.txt", headers=("Connection: close",)) + request("/1k.bin"))
    reply = conn.read_response()
    assert (reply.status, reply.body, reply.header("Connection")) == (200, HELLO, "close")
    conn.assert_closed()


def test_nothing_queued_behind_a_closing_file_response_is_answered(
    custom: Callable[..., Server], connect: Callable[..., Wire], site: Path
) -> None:
    """A closing response whose file goes out at once must still end the connection.

    With nothing inlined every file is streamed. The third request waits behind the
    first; the second closes the connection, and its small file is sent in one go,
    from inside the loop that answers the queue.
    """
    srv = custom(routes=[{"path": "/", "static": {"root": str(site), "inline_max_bytes": 0}}])
    conn = connect(srv)
    conn.send(request("/big.bin") + request("/1k.bin", headers=("Connection: close",)) + request("/hello.txt"))
    big = conn.read_response()
    assert (big.status, digest(big.body)) == (200, digest(BIG_BIN))
    closing = conn.read_response()
    assert (closing.status, closing.body, closing.header("Connection")) == (200, KIB_BIN, "close")
    conn.assert_closed()


def test_chunked_request_body_then_next_request(conn: Wire) -> None:
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    conn.send(request("/hello.txt", method="POST", headers=("Transfer-Encoding: chunked",), body=body))
    reply = conn.read_response()
    assert reply.status == 405
    assert reply.header("Allow") == "GET, HEAD, OPTIONS"
    assert reply.header("Connection") is None
    conn.send(request("/hello.txt"))
    reply = conn.read_response()
    assert (reply.status, reply.body) == (200, HELLO)


def test_content_length_request_body_then_next_request(conn: Wire) -> None:
    conn.send(request("/", method="POST", headers=("Content-Length: 5",), body=b"abcde") + request("/hello.txt"))
    reply = conn.read_response()
    assert (reply.status, reply.header("Allow")) == (405, "GET, HEAD, OPTIONS")
    reply = conn.read_response()
    assert (reply.status, reply.body) == (200, HELLO)


# --- methods ----------------------------------------------------------------------------------------------------


def test_head_has_full_length_and_no_body(conn: Wire) -> None:
    for path, size in (("/hello.txt", len(HELLO)), ("/big.bin", len(BIG_BIN))):
        # HEAD then GET pipelined: any stray body bytes after the HEAD would corrupt the second response.
        conn.send(request(path, method="HEAD") + request("/hello.txt"))
        head = conn.read_response(head=True)
        assert head.status == 200
        assert head.header("Content-Length") == str(size)
        assert head.header("ETag")
        assert head.header("Last-Modified")
        follow = conn.read_response()
        assert (follow.status, follow.body) == (200, HELLO)
    for path, status in (("/missing", 404), ("/sub", 301), ("/%2e%2e/x", 400)):
        conn.send(request(path, method="HEAD") + request("/hello.txt"))
        head = conn.read_response(head=True)
        assert head.status == status, path
        assert int(head.header("Content-Length") or 0) > 0
        follow = conn.read_response()
        assert (follow.status, follow.body) == (200, HELLO), path


@pytest.mark.parametrize("target", ["/hello.txt", "*"], ids=["route", "asterisk"])
def test_options(conn: Wire, target: str) -> None:
    conn.send(request(target, method="OPTIONS") + request("/hello.txt"))
    reply = conn.read_response()
    assert reply.status == 204
    assert reply.header("Allow") == "GET, HEAD, OPTIONS"
    # RFC 9110 §8.6: a server MUST NOT send Content-Length in a 204 response.
    assert reply.header("Content-Length") is None
    follow = conn.read_response()
    assert (follow.status, follow.body) == (200, HELLO)


def test_asterisk_target_with_get_is_400(conn: Wire) -> None:
    conn.send(request("*"))
    assert conn.read_response().status == 400


def test_disallowed_methods_get_405_with_allow(conn: Wire) -> None:
    for method in ("DELETE", "PUT", "PATCH", "POST", "TRACE", "PROPFIND"):
        conn.send(request("/hello.txt", method=method, headers=("Content-Length: 0",)))
        reply = conn.read_response()
        assert (reply.status, reply.header("Allow")) == (405, "GET, HEAD, OPTIONS"), method
    conn.send(request("/hello.txt"))
    assert conn.read_response().status == 200


def test_date_header_is_imf_fixdate_and_current(conn: Wire) -> None:
    conn.send(request("/hello.txt") + request("/missing"))
    for reply in (conn.read_response(), conn.read_response()):
        dates = reply.all("Date")
        assert len(dates) == 1
        assert IMF_FIXDATE.match(dates[0]), dates[0]
        assert abs(parsedate_to_datetime(dates[0]).timestamp() - time.time()) < 5


@pytest.mark.parametrize(
    ("setting", "expected"),
    [(None, ["edgeward"]), ("test-edge/2.0", ["test-edge/2.0"]), ("", [])],
    ids=["default", "custom", "empty"],
)
def test_server_header(
    custom: Callable[..., Server], connect: Callable[..., Wire], setting: str | None, expected: list[str]
) -> None:
    settings: dict[str, Any] = {"drain_timeout": 5.0}
    if setting is not None:
        settings["server_header"] = setting
    srv = custom(server=settings)
    wire = connect(srv)
    wire.send(request("/hello.txt") + request("/missing") + request("/hello.txt", method="HEAD"))
    for reply in (wire.read_response(), wire.read_response(), wire.read_response(head=True)):
        assert reply.all("Server") == expected


# --- framing errors: answered once, then the connection is closed ------------------------------------------------

FRAMING_ERRORS: list[tuple[str, bytes, int]] = [
    (
        "cl-and-te",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te-and-cl",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("duplicate-cl-different", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    ("duplicate-cl-same", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na", 400),
    ("cl-3x", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3x\r\n\r\nabc", 400),
    ("cl-negative", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    ("cl-list", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\na", 400),
    ("cl-overflow", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
    (
        "chunk-size-overflow",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
        400,
    ),
    ("cl-plus", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\na", 400),
    ("bad-chunk-size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    (
        "chunk-longer-than-size",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
        400,
    ),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("header-name-space", b"GET / HTTP/1.1\r\nHost: x\r\nX A: a\r\n\r\n", 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n", 400),
    ("header-name-control-char", b"GET / HTTP/1.1\r\nHost: x\r\nX-\x01A: a\r\n\r\n", 400),
    ("header-value-control-char", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400),
    ("header-value-nul", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    ("header-value-bare-cr", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    ("header-value-del", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n", 400),
    ("missing-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    ("two-hosts-same-value", b"GET / HTTP/1.1\r\nHost: x\r\nhost: x\r\n\r\n", 400),
    ("bare-lf", b"GET / HTTP/1.1\nHost: x\n\n", 400),
    ("bad-version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    ("connect", b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 400),
    ("te-gzip", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ("te-gzip-chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
]


def test_framing_errors_are_answered_then_closed(server: Server, connect: Callable[..., Wire]) -> None:
    """Each malformed request on its own connection: one response with the status, Connection: close, then EOF."""
    failures = []
    for ident, raw, status in FRAMING_ERRORS:
        wire = connect(server)
        try:
            wire.send(raw)
            reply = wire.read_response()
            assert reply.status == status, f"status {reply.status}, expected {status}"
            assert reply.header("Connection") == "close", "no Connection: close"
            wire.assert_closed()
        except (AssertionError, OSError, EOFError, pytest.fail.Exception) as exc:
            failures.append(f"{ident}: {exc}")
        finally:
            wire.close()
    assert not failures, "\n".join(failures)


def test_framing_error_after_a_good_request_on_the_same_connection(conn: Wire) -> None:
    conn.send(request("/hello.txt"))
    assert conn.read_response().body == HELLO
    conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert conn.read_response().status == 400
    conn.assert_closed()


def test_smuggled_request_is_never_answered(conn: Wire) -> None:
    """CL.TE: the bytes after the rejected request must not be parsed as a second request."""
    smuggled = b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    conn.send(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body) + body
    )
    assert conn.read_response().status == 400
    conn.assert_closed()


def test_upgrade_request_gets_exactly_one_response(conn: Wire) -> None:
    """Upgrade is not supported; the request may be refused or served, but answered exactly once."""
    conn.send(request("/hello.txt", headers=("Connection: Upgrade", "Upgrade: websocket")))
    reply = conn.read_response()
    assert reply.status in (200, 400)
    if reply.status == 200:
        assert reply.body == HELLO
        # Served as plain HTTP/1.1: no second, unsolicited response may follow.
        conn.assert_open()
        conn.send(request("/1k.bin"))
        follow = conn.read_response()
        assert (follow.status, follow.body) == (200, KIB_BIN)
    else:
        conn.assert_closed()


def test_pipelined_upgrade_requests_are_each_answered_once(conn: Wire) -> None:
    upgrade = ("Connection: Upgrade, keep-alive", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA")
    conn.send(request("/hello.txt", headers=upgrade) + request("/1k.bin", headers=upgrade) + request("/sub/"))
    replies = [conn.read_response() for _ in range(3)]
    assert [(r.status, r.body) for r in replies] == [(200, HELLO), (200, KIB_BIN), (200, b"<h1>sub</h1>\n")]
    assert all(r.version == "HTTP/1.1" for r in replies)
    conn.assert_open()


def test_curl_h2c_upgrade_attempt_gets_http11(server: Server) -> None:
    out = subprocess.run(
        ["curl", "-sv", "--http2", server.url("http", "/hello.txt"), server.url("http", "/1k.bin")],
        capture_output=True,
        timeout=15,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == HELLO + KIB_BIN
    assert b"Upgrade: h2c" in out.stderr
    assert b"< HTTP/1.1 200 OK" in out.stderr


# --- size limits --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("same_name", [False, True], ids=["distinct-names", "repeated-name"])
def test_too_many_header_fields_gets_431(
    custom: Callable[..., Server], connect: Callable[..., Wire], same_name: bool
) -> None:
    srv = custom(limits={"max_header_count": 20})
    ok = connect(srv)
    ok.send(request("/hello.txt", headers=tuple(f"X-H{i}: {i}" for i in range(15))))
    assert ok.read_response().status == 200
    wire = connect(srv)
    fields = tuple(f"X-H{0 if same_name else i}: {i}" for i in range(40))
    wire.send(request("/hello.txt", headers=fields))
    reply = wire.read_response()
    assert reply.status == 431
    wire.assert_closed()


def test_header_block_too_large_gets_431(custom: Callable[..., Server], connect: Callable[..., Wire]) -> None:
    srv = custom(limits={"max_header_bytes": 4096})
    ok = connect(srv)
    ok.send(request("/hello.txt", headers=tuple(f"X-H{i}: {'v' * 500}" for i in range(5))))
    assert ok.read_response().status == 200
    wire = connect(srv)
    wire.send(request("/hello.txt", headers=tuple(f"X-H{i}: {'v' * 500}" for i in range(12))))
    reply = wire.read_response()
    assert reply.status == 431
    wire.assert_closed()


def test_one_enormous_header_value_sent_in_chunks_gets_431(
    custom: Callable[..., Server], connect: Callable[..., Wire]
) -> None:
    """A single field larger than max_header_bytes, still arriving, must be cut off at the limit (not buffered)."""
    srv = custom(limits={"max_header_bytes": 4096})
    wire = connect(srv)
    start = time.monotonic()
    wire.send_slowly([b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-Big: "] + [b"a" * 2048] * 16)
    reply = wire.read_response(timeout=3.0)
    assert reply.status == 431
    assert time.monotonic() - start < 3.5
    wire.assert_closed()


def test_one_enormous_header_value_completed_gets_431(
    custom: Callable[..., Server], connect: Callable[..., Wire]
) -> None:
    srv = custom(limits={"max_header_bytes": 4096})
    wire = connect(srv)
    wire.send(request("/hello.txt", headers=("X-Big: " + "a" * 8192,)))
    assert wire.read_response().status == 431
    wire.assert_closed()


def test_uri_too_long_gets_414(custom: Callable[..., Server], connect: Callable[..., Wire]) -> None:
    srv = custom(limits={"max_uri_bytes": 1024})
    ok = connect(srv)
    ok.send(request("/hello.txt?" + "q" * 900))
    assert ok.read_response().status == 200
    wire = connect(srv)
    wire.send(request("/hello.txt?" + "q" * 1100))
    reply = wire.read_response()
    assert reply.status == 414
    wire.assert_closed()


def test_content_length_over_limit_gets_413_before_the_body(
    custom: Callable[..., Server], connect: Callable[..., Wire]
) -> None:
    srv = custom(limits={"max_body_bytes": 1024})
    wire = connect(srv)
    # Only the head is sent: the answer must not wait for a body that never comes.
    wire.send(request("/hello.txt", method="POST", headers=("Content-Length: 4096",)))
    reply = wire.read_response(timeout=3.0)
    assert reply.status == 413
    wire.assert_closed()


def test_content_length_within_limit_is_read(custom: Callable[..., Server], connect: Callable[..., Wire]) -> None:
    srv = custom(limits={"max_body_bytes": 1024})
    wire = connect(srv)
    wire.send(request("/hello.txt", method="POST", headers=("Content-Length: 1024",), body=b"b" * 1024))
    assert wire.read_response().status == 405
    wire.send(request("/hello.txt"))
    assert wire.read_response().body == HELLO


def test_chunked_body_over_limit_gets_413(custom: Callable[..., Server], connect: Callable[..., Wire]) -> None:
    srv = custom(limits={"max_body_bytes": 1024})
    wire = connect(srv)
    head = request("/hello.txt", method="POST", headers=("Transfer-Encoding: chunked",))
    wire.send(head + b"200\r\n" + b"c" * 512 + b"\r\n")
    wire.send_slowly([b"400\r\n" + b"c" * 1024 + b"\r\n", b"0\r\n\r\n"])
    reply = wire.read_response(timeout=3.0)
    assert reply.status == 413
    wire.assert_closed()


# --- timeouts -----------------------------------------------------------------------------------------------------


def test_timeouts(custom: Callable[..., Server], client_tls: ssl.SSLContext) -> None:
    """Five connections per listener at once, on a server with 1 s timeouts (swept once a second, so ~2 s):

    - a partial request line, and a head that trickles in (progress inside a head does not
      restart its deadline): 408, Connection: close, then EOF;
    - a body that stops short of its Content-Length: 408 then EOF;
    - a connection that never sends anything: closed (silently, or with a 408);
    - an idle keep-alive connection after one response: closed without another response.
    """
    srv = custom(limits={"header_timeout": 1, "body_timeout": 1, "idle_timeout": 1})
    names = ("slow request line", "slow head", "slow body", "silent", "idle")
    wires = {(listener, name): open_wire(srv, listener, client_tls) for listener in LISTENERS for name in names}
    try:
        for listener in LISTENERS:
            wires[listener, "idle"].send(request("/hello.txt"))
            assert wires[listener, "idle"].read_response().status == 200
        start = time.monotonic()
        for listener in LISTENERS:
            wires[listener, "slow request line"].send(b"GET /hel")
            wires[listener, "slow head"].send(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n")
            wires[listener, "slow body"].send(
                request("/hello.txt", method="POST", headers=("Content-Length: 10",), body=b"abc")
            )
        for _ in range(3):
            time.sleep(0.3)
            for listener in LISTENERS:
                wires[listener, "slow head"].send(b"X-Trickle: 1\r\n")
        for (listener, name), wire in wires.items():
            if name == "silent":
                data = wire.read_until_close(timeout=4.0)
                # Closing silently is preferred (browsers preconnect); a 408 is tolerated.
                assert data == b"" or data.startswith(b"HTTP/1.1 408 "), (listener, data[:200])
            elif name == "idle":
                wire.assert_closed(timeout=4.0)
            else:
                reply = wire.read_response(timeout=4.0)
                assert (reply.status, reply.header("Connection")) == (408, "close"), (listener, name)
                wire.assert_closed()
            elapsed = time.monotonic() - start
            assert elapsed < 3.5, f"{listener} {name}: closed only after {elapsed:.1f}s"
    finally:
        for wire in wires.values():
            wire.close()


def test_progress_keeps_a_keep_alive_connection_open(custom: Callable[..., Server], client_tls: ssl.SSLContext) -> None:
    """A request every 0.35 s for 2.1 s (longer than the 1 s idle timeout plus a sweep): the idle timeout
    counts from the last response, not from the first."""
    srv = custom(limits={"idle_timeout": 1})
    wires = [open_wire(srv, listener, client_tls) for listener in LISTENERS]
    try:
        for _ in range(7):
            for wire in wires:
                wire.send(request("/hello.txt"))
                assert wire.read_response().body == HELLO
            time.sleep(0.35)
    finally:
        for wire in wires:
            wire.close()


def test_max_requests_per_connection(custom: Callable[..., Server], connect: Callable[..., Wire]) -> None:
    srv = custom(limits={"max_requests_per_connection": 2})
    wire = connect(srv)
    wire.send(request("/hello.txt"))
    first = wire.read_response()
    assert (first.status, first.header("Connection")) == (200, None)
    wire.send(request("/hello.txt"))
    second = wire.read_response()
    assert (second.status, second.body, second.header("Connection")) == (200, HELLO, "close")
    wire.assert_closed()


def test_max_requests_per_connection_when_pipelined(
    custom: Callable[..., Server], connect: Callable[..., Wire]
) -> None:
    srv = custom(limits={"max_requests_per_connection": 2})
    wire = connect(srv)
    wire.send(request("/hello.txt") + request("/1k.bin") + request("/index.html"))
    assert wire.read_response().header("Connection") is None
    second = wire.read_response()
    assert (second.body, second.header("Connection")) == (KIB_BIN, "close")
    wire.assert_closed()


# --- HTTP/1.0 -----------------------------------------------------------------------------------------------------


def test_http10_without_keep_alive_closes(conn: Wire) -> None:
    conn.send(request("/hello.txt", host=None, version="HTTP/1.0"))
    reply = conn.read_response()
    assert (reply.status, reply.body) == (200, HELLO)
    assert reply.header("Connection") == "close"
    conn.assert_closed()


def test_http10_with_keep_alive_stays_open(conn: Wire) -> None:
    conn.send(request("/hello.txt", host=None, version="HTTP/1.0", headers=("Connection: keep-alive",)))
    reply = conn.read_response()
    assert (reply.status, reply.body) == (200, HELLO)
    assert reply.header("Connection") == "keep-alive"
    conn.assert_open()
    conn.send(request("/1k.bin", host=None, version="HTTP/1.0", headers=("Connection: keep-alive",)))
    again = conn.read_response()
    assert (again.status, again.body, again.header("Connection")) == (200, KIB_BIN, "keep-alive")
    conn.send(request("/big.bin", host=None, version="HTTP/1.0", headers=("Connection: keep-alive",)))
    big = conn.read_response()
    assert (big.status, digest(big.body), big.header("Connection")) == (200, digest(BIG_BIN), "keep-alive")
    conn.assert_open()


def test_http11_connection_close_closes(conn: Wire) -> None:
    conn.send(request("/big.bin", headers=("Connection: close",)))
    reply = conn.read_response()
    assert (reply.status, digest(reply.body), reply.header("Connection")) == (200, digest(BIG_BIN), "close")
    conn.assert_closed()


# --- plain HTTP to HTTPS redirect, with the ACME challenge path left on plain HTTP ---------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redirect_server(start_server: Callable[..., Server], site: Path, tmp_path: Path, localhost_cert: Issued) -> Server:
    acme = tmp_path / "acme"
    (acme / ".well-known" / "acme-challenge").mkdir(parents=True)
    (acme / ".well-known" / "acme-challenge" / "token-abc").write_text("token-abc.thumbprint")
    # The redirect names the HTTPS port, so it is chosen before the server binds it; a port taken by
    # something else in between makes the server refuse to start, and another is tried.
    for attempt in range(3):
        https_port = _free_port()
        config = base_config(
            site,
            localhost_cert,
            routes=[
                {"path": "/.well-known/acme-challenge/", "listeners": ["http"], "static": {"root": str(acme)}},
                {"path": "/", "listeners": ["http"], "redirect": {"scheme": "https", "port": https_port}},
                {"path": "/", "listeners": ["https"], "static": {"root": str(site)}},
            ],
        )
        config["listeners"][0]["address"] = f"127.0.0.1:{https_port}"
        try:
            return start_server(config)
        except RuntimeError as exc:
            if attempt == 2 or "Address already in use" not in str(exc):
                raise
    raise AssertionError("unreachable")


def _plain(srv: Server) -> Wire:
    return Wire(socket.create_connection(srv.address("http"), timeout=5))


def test_redirect_to_https_keeps_path_and_query(redirect_server: Server) -> None:
    port = redirect_server.address("https")[1]
    wire = _plain(redirect_server)
    cases = [
        ("example.com", "/docs/page?a=1&b=%20x", f"https://example.com:{port}/docs/page?a=1&b=%20x"),
        ("Example.COM:8080", "/", f"https://example.com:{port}/"),
        ("127.0.0.1:80", "/a%20b/c", f"https://127.0.0.1:{port}/a%20b/c"),
        ("[::1]:8080", "/x?y", f"https://[::1]:{port}/x?y"),
    ]
    try:
        for host, target, location in cases:
            wire.send(request(target, host=host))
            reply = wire.read_response()
            assert reply.status == 308, (host, target)
            assert reply.header("Location") == location
    finally:
        wire.close()


def test_acme_challenge_is_served_over_plain_http(redirect_server: Server) -> None:
    wire = _plain(redirect_server)
    try:
        wire.send(request("/.well-known/acme-challenge/token-abc", host="example.com"))
        reply = wire.read_response()
        assert (reply.status, reply.body) == (200, b"token-abc.thumbprint")
        assert reply.header("Location") is None
        wire.send(request("/.well-known/acme-challenge/unknown", host="example.com"))
        assert wire.read_response().status == 404
    finally:
        wire.close()


JUNK_HOSTS = [
    "evil.example/path",
    "evil.example?x=1",
    "evil.example#frag",
    "user@evil.example",
    "evil.example:port",
    "evil example",
    '"><script>alert(1)</script>',
    "evil.example:99999999",
    "%65vil.example",
    "evil.example\\x",
]


def test_redirect_refuses_junk_host(redirect_server: Server) -> None:
    """A Host that is not a plain name or address gets 400, never a Location built from it."""
    failures = []
    for host in JUNK_HOSTS:
        wire = _plain(redirect_server)
        try:
            wire.send(request("/x", host=host))
            reply = wire.read_response()
            if reply.status != 400 or reply.header("Location") is not None or b"evil" in reply.body:
                failures.append(f"{host!r} -> {reply.status} Location={reply.header('Location')!r}")
        finally:
            wire.close()
    assert not failures, "\n".join(failures)


def test_redirect_followed_by_curl_and_httpx(redirect_server: Server, ca: CA, client_tls: ssl.SSLContext) -> None:
    url = redirect_server.url("http", "/hello.txt?v=1")
    cmd = ["curl", "-sS", "--http1.1", "-L", "--cacert", str(ca.pem), "-w", "\n%{http_code} %{url_effective}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True)
    https_url = redirect_server.url("https", "/hello.txt?v=1")
    assert out.stdout == f"hello world\n\n200 {https_url}"
    with httpx.Client(verify=client_tls, follow_redirects=True) as client:
        r = client.get(url)
    assert r.status_code == 200
    assert r.content == HELLO
    assert [h.status_code for h in r.history] == [308]
    assert str(r.url) == https_url


# --- real clients -------------------------------------------------------------------------------------------------


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["curl", "-sv", "--http1.1", *args], capture_output=True, timeout=15, check=False)
    return subprocess.CompletedProcess(out.args, out.returncode, out.stdout.decode("latin-1"), out.stderr.decode())


def test_curl_reuses_one_connection(server: Server, listener: str, ca: CA) -> None:
    out = _curl("--cacert", str(ca.pem), server.url(listener, "/hello.txt"), server.url(listener, "/1k.bin"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.encode("latin-1") == HELLO + KIB_BIN
    assert "Re-using existing connection" in out.stderr
    assert out.stderr.count("Connected to") == 1


def test_curl_head_and_options(server: Server, listener: str, ca: CA) -> None:
    head = _curl("--cacert", str(ca.pem), "-I", server.url(listener, "/big.bin"))
    assert head.returncode == 0, head.stderr
    assert "< HTTP/1.1 200 OK" in head.stderr
    assert f"< Content-Length: {len(BIG_BIN)}" in head.stderr
    options = _curl("--cacert", str(ca.pem), "-X", "OPTIONS", server.url(listener, "/hello.txt"))
    assert options.returncode == 0, options.stderr
    assert "< HTTP/1.1 204 No Content" in options.stderr
    assert "< Allow: GET, HEAD, OPTIONS" in options.stderr
    assert options.stdout == ""


def test_curl_chunked_upload_gets_405(server: Server, listener: str, ca: CA) -> None:
    out = _curl(
        "--cacert",
        str(ca.pem),
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "payload",
        server.url(listener, "/hello.txt"),
    )
    assert out.returncode == 0, out.stderr
    assert "< HTTP/1.1 405 Method Not Allowed" in out.stderr
    assert "< Allow: GET, HEAD, OPTIONS" in out.stderr


def test_curl_http10(server: Server, listener: str, ca: CA) -> None:
    out = subprocess.run(
        ["curl", "-sv", "--http1.0", "--cacert", str(ca.pem), server.url(listener, "/hello.txt")],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello world\n"
    assert "< Connection: close" in out.stderr


def test_httpx_keep_alive_methods_and_limits(
    custom: Callable[..., Server], listener: str, client_tls: ssl.SSLContext
) -> None:
    srv = custom(limits={"max_header_bytes": 4096, "max_body_bytes": 1024})
    with httpx.Client(verify=client_tls, http1=True, timeout=5.0) as client:
        streams = set()
        for path, body in (("/hello.txt", HELLO), ("/1k.bin", KIB_BIN), ("/index.html", b"<h1>home</h1>\n")):
            r = client.get(srv.url(listener, path))
            assert (r.status_code, r.content, r.http_version) == (200, body, "HTTP/1.1")
            streams.add(id(r.extensions["network_stream"]))
        assert len(streams) == 1, "httpx opened more than one connection"
        r = client.delete(srv.url(listener, "/hello.txt"))
        assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD, OPTIONS")
        r = client.options(srv.url(listener, "/hello.txt"))
        assert (r.status_code, r.headers["allow"]) == (204, "GET, HEAD, OPTIONS")
        r = client.head(srv.url(listener, "/big.bin"))
        assert (r.status_code, r.headers["content-length"], r.content) == (200, str(len(BIG_BIN)), b"")
        r = client.post(srv.url(listener, "/hello.txt"), content=b"x" * 2048)
        assert r.status_code == 413
        r = client.get(srv.url(listener, "/hello.txt"), headers={"X-Big": "a" * 8192})
        assert r.status_code == 431
        r = client.get(srv.url(listener, "/hello.txt"))
        assert (r.status_code, r.content) == (200, HELLO)
        assert r.headers["server"] == "edgeward"
        assert IMF_FIXDATE.match(r.headers["date"])

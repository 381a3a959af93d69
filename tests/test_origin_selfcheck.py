"""The test origin (tests/origin.py) does what proxy tests rely on: checked here directly, without the edge."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.origin import OP_BINARY, OP_CLOSE, OP_TEXT, Origin, WSClient, pattern_bytes, pattern_sha256
from tests.pki import Issued


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


def raw(origin: Origin, data: bytes, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", origin.port), timeout=timeout)
    sock.sendall(data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_echo_records_the_exact_head(origin: Origin) -> None:
    head = (
        b"POST /echo?x=1&x=2 HTTP/1.1\r\n"
        b"Host: example.test\r\n"
        b"x-lower: a\r\n"
        b"X-UPPER:   spaced value  \r\n"
        b"X-Dup: 1\r\n"
        b"x-dup: 2\r\n"
        b"Content-Length: 5\r\n"
        b"Connection: close\r\n\r\n"
    )
    with raw(origin, head + b"hello") as sock:
        reply = read_all(sock)
    rec = origin.wait_for(1)[0]
    assert rec.raw_head == head
    assert rec.method == "POST" and rec.target == "/echo?x=1&x=2" and rec.path == "/echo"
    assert rec.query == {"x": ["1", "2"]}
    assert rec.headers == [
        ("Host", "example.test"),
        ("x-lower", "a"),
        ("X-UPPER", "spaced value"),
        ("X-Dup", "1"),
        ("x-dup", "2"),
        ("Content-Length", "5"),
        ("Connection", "close"),
    ]
    assert rec.header_all("x-dup") == ["1", "2"]
    assert rec.framing == "content-length" and rec.body == b"hello"
    assert rec.body_sha256 == hashlib.sha256(b"hello").hexdigest()
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK"
    assert b"\r\nConnection: close\r\n" in rest
    echoed = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert echoed["headers"][2] == ["X-UPPER", "spaced value"]
    assert echoed["body_length"] == 5 and echoed["framing"] == "content-length"


def test_bytes_match_the_pattern_both_framings(origin: Origin) -> None:
    n = 3 * 1024 * 1024 + 17
    with httpx.Client() as client:
        plain = client.get(origin.url_for(f"/bytes?n={n}"))
        chunked = client.get(origin.url_for(f"/bytes?n={n}&chunked=1&chunk=5000"))
        head = client.head(origin.url_for("/bytes?n=10"))
    assert plain.headers["content-length"] == str(n)
    assert hashlib.sha256(plain.content).hexdigest() == pattern_sha256(n)
    assert chunked.headers["transfer-encoding"] == "chunked" and "content-length" not in chunked.headers
    assert hashlib.sha256(chunked.content).hexdigest() == pattern_sha256(n)
    assert plain.content[1000:1100] == pattern_bytes(1000, 100)
    assert head.headers["content-length"] == "10" and head.content == b""
    assert origin.connections == 1  # keep-alive across the three


def test_chunked_upload_with_extensions_and_trailers(origin: Origin) -> None:
    body = (
        b"POST /upload HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"1\r\n \r\n"
        b"5\r\nworld\r\n"
        b"0\r\nX-Trailer: yes\r\n\r\n"
    )
    with raw(origin, body + b"GET /health HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n") as sock:
        reply = read_all(sock)
    upload, health = origin.wait_for(2)
    assert upload.framing == "chunked" and upload.chunks == 3 and upload.body == b"hello world"
    assert upload.chunk_extensions == ["name=value"] and upload.trailers == [("X-Trailer", "yes")]
    assert health.path == "/health" and health.conn_id == upload.conn_id
    first = reply.split(b"\r\n\r\n", 2)[1]
    assert json.loads(first.split(b"HTTP/1.1")[0])["sha256"] == hashlib.sha256(b"hello world").hexdigest()


def test_streamed_upload_is_hashed_not_kept(origin: Origin) -> None:
    piece = b"0123456789abcdef" * 4096  # 64 KiB
    r = httpx.post(origin.url_for("/upload"), content=(piece for _ in range(32)))  # 2 MiB, chunked
    expected = hashlib.sha256(piece * 32).hexdigest()
    assert r.json()["length"] == 2 * 1024 * 1024 and r.json()["sha256"] == expected
    rec = origin.last
    assert rec.framing == "chunked" and rec.body is None and rec.body_sha256 == expected


def test_upload_delay_applies_backpressure(origin: Origin) -> None:
    r = httpx.post(origin.url_for("/upload?delay_ms=40&chunk=1000"), content=b"x" * 5000)
    assert r.json()["length"] == 5000
    rec = origin.last
    assert rec.t_complete - rec.t_head >= 0.15


def test_expect_100_continue(origin: Origin) -> None:
    with raw(origin, b"PUT /echo HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n") as sock:
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abc")
        assert b"HTTP/1.1 200 OK" in sock.recv(65536)
    assert origin.wait_for(1)[0].body == b"abc"


def test_reset_after_some_bytes(origin: Origin) -> None:
    sock = raw(origin, b"GET /reset?after=300000 HTTP/1.1\r\nHost: o\r\n\r\n")
    time.sleep(0.2)  # a slow reader still gets all N bytes: the origin waits for them to be acknowledged
    got = b""
    with pytest.raises(ConnectionResetError), sock:
        while chunk := sock.recv(65536):
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"Content-Length: 301000" in head
    assert body == pattern_bytes(0, 300000)


def test_reset_before_any_byte_and_fin(origin: Origin) -> None:
    sock = raw(origin, b"GET /reset HTTP/1.1\r\nHost: o\r\n\r\n")
    with pytest.raises(ConnectionResetError), sock:
        sock.recv(100)
    with raw(origin, b"GET /reset?after=10&fin=1 HTTP/1.1\r\nHost: o\r\n\r\n") as sock:
        got = read_all(sock)  # clean EOF, short body
    assert got.endswith(b"\r\n\r\n" + pattern_bytes(0, 10))
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(origin.url_for("/reset?after=10&fin=1"))


def test_websocket_echo(origin: Origin) -> None:
    with socket.create_connection(("127.0.0.1", origin.port)) as sock:
        ws = WSClient.connect(sock, f"127.0.0.1:{origin.port}", protocols=["chat", "other"])
        assert ws.status == 101 and ws.header("sec-websocket-protocol") == "chat"
        ws.send_text("héllo")
        assert ws.recv_message().text == "héllo"
        big = bytes(range(256)) * 256  # 64 KiB: 64-bit length
        ws.send_binary(big)
        msg = ws.recv_message()
        assert msg.opcode == OP_BINARY and msg.payload == big and not msg.masked
        ws.send_frame(OP_TEXT, b"frag", fin=False)
        ws.send_frame(0, b"mented")
        assert ws.recv_message().text == "fragmented"
        ws.ping(b"p")
        assert ws.recv_frame().payload == b"p"
        ws.close(4000, "done")
        reply = ws.recv_frame()
        assert reply.opcode == OP_CLOSE and reply.close_code == 4000
    rec = origin.wait_for(1)[0]
    origin.wait_until(lambda: rec.ws_close_code == 4000, 5)
    assert rec.status == 101 and rec.ws_messages == 3


def test_websocket_origin_initiated_close_and_bad_upgrade(origin: Origin) -> None:
    with socket.create_connection(("127.0.0.1", origin.port)) as sock:
        ws = WSClient.connect(sock, "o")
        ws.send_text("__close__")
        frame = ws.recv_frame()
        assert frame.opcode == OP_CLOSE and frame.close_code == 1000
        ws.close(1000)
    assert httpx.get(origin.url_for("/ws")).status_code == 400


def test_websocket_over_tls(localhost_cert: Issued, client_tls: ssl.SSLContext) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(localhost_cert.cert, localhost_cert.key)
    with Origin(tls=server_ctx) as o:
        assert o.url.startswith("https://127.0.0.1:")
        assert httpx.get(o.url_for("/health"), verify=client_tls).text == "ok\n"
        with client_tls.wrap_socket(socket.create_connection(("127.0.0.1", o.port)), server_hostname="localhost") as s:
            ws = WSClient.connect(s, "localhost")
            ws.send_text("over tls")
            assert ws.recv_message().text == "over tls"


def test_sse_events_are_flushed_one_by_one(origin: Origin) -> None:
    arrivals: list[tuple[float, int]] = []
    with httpx.stream("GET", origin.url_for("/sse?events=4&interval_ms=150")) as r:
        assert r.headers["content-type"] == "text/event-stream"
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append((time.monotonic(), origin.last.events_sent))
    assert len(arrivals) == 4
    assert arrivals[0][1] < 4  # the first event arrived before the last was sent
    assert arrivals[-1][0] - arrivals[0][0] >= 0.4


def test_stall_then_answer_and_client_abort(origin: Origin) -> None:
    start = time.monotonic()
    assert httpx.get(origin.url_for("/stall?ms=300")).status_code == 200
    assert time.monotonic() - start >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(origin.url_for("/stall"), timeout=0.3)
    origin.wait_until(lambda: origin.requests[-1].aborted, 5, "stall noticed the client left")
    with raw(origin, b"GET /stall?ms=5000&head=1 HTTP/1.1\r\nHost: o\r\n\r\n") as sock:
        time.sleep(0.2)
        assert sock.recv(65536).endswith(b"\r\n\r\n01234567")


def test_cache_validators_and_counts(origin: Origin) -> None:
    target = "/cache?cc=max-age%3D60&etag=%22v1%22&lm=-3600&vary=Accept"
    with httpx.Client() as client:
        first = client.get(origin.url_for(target))
        assert first.headers["cache-control"] == "max-age=60" and first.headers["etag"] == '"v1"'
        assert first.headers["vary"] == "Accept" and first.headers["x-origin-count"] == "1"
        inm = client.get(origin.url_for(target), headers={"If-None-Match": 'W/"v1", "x"'})
        assert inm.status_code == 304 and inm.content == b"" and inm.headers["x-origin-count"] == "2"
        ims = client.get(origin.url_for(target), headers={"If-Modified-Since": first.headers["last-modified"]})
        assert ims.status_code == 304
        miss = client.get(origin.url_for(target), headers={"If-None-Match": '"v2"'})
        assert miss.status_code == 200 and miss.text == f"{target} #4\n"
        other = client.get(origin.url_for("/cache?body=fixed&status=404"))
        assert other.status_code == 404 and other.text == "fixed"
    assert origin.count_target(target) == 4 and origin.count_path("/cache") == 5


def test_slow_counts_concurrency(origin: Origin) -> None:
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: httpx.get(origin.url_for("/slow?ms=300&cc=max-age%3D5")), range(4)))
    assert all(r.status_code == 200 and r.headers["cache-control"] == "max-age=5" for r in replies)
    assert origin.count_target("/slow?ms=300&cc=max-age%3D5") == 4 and origin.peak_in_flight == 4


def test_status_health_404_and_extra_headers(origin: Origin) -> None:
    with httpx.Client() as client:
        r = client.get(origin.url_for("/status?code=503&h=X-A%3A%201&h=Connection%3A%20X-A"))
        assert r.status_code == 503 and r.headers["x-a"] == "1" and r.headers["connection"] == "X-A"
        assert client.get(origin.url_for("/status?code=204")).content == b""
        assert client.get(origin.url_for("/health")).status_code == 200
        origin.healthy = False
        assert client.get(origin.url_for("/health")).status_code == 503
        assert client.get(origin.url_for("/nope")).status_code == 404
    assert origin.count_path("/health") == 2


def test_early_answer_without_reading_the_body(origin: Origin) -> None:
    with raw(origin, b"POST /status?code=413&consume=0 HTTP/1.1\r\nHost: o\r\nContent-Length: 100000\r\n\r\n") as s:
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in reply
    assert not origin.last.complete


def test_kill_and_revive_on_the_same_port(origin: Origin) -> None:
    port = origin.port
    held = threading.Event()

    def hold() -> None:
        with pytest.raises(httpx.TransportError):
            held.set()
            httpx.get(origin.url_for("/stall"), timeout=5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(2)
    origin.wait_for(1, path="/stall")
    origin.kill()
    t.join(5)
    assert not t.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    origin.revive()
    assert origin.port == port and httpx.get(origin.url_for("/health")).status_code == 200
    assert origin.requests[0].aborted


def test_idle_timeout_closes_kept_alive_connections() -> None:
    with Origin(idle_timeout=0.2) as o, raw(o, b"GET /health HTTP/1.1\r\nHost: o\r\n\r\n") as sock:
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert sock.recv(100) == b""
        assert 0.1 < time.monotonic() - start < 2


def test_custom_route(origin: Origin) -> None:
    origin.add_route("/custom", lambda rec: (201, [("X-Body", str(rec.body_length))], b"made"))
    r = httpx.post(origin.url_for("/custom"), content=b"12345")
    assert r.status_code == 201 and r.headers["x-body"] == "5" and r.text == "made"

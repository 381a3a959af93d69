"""HTTP/2 against the real server: ALPN and h2c, SETTINGS, flow control, header rules, limits, floods, drain.

Real clients (nghttp, h2load, curl) check that the server interoperates; `tests.h2client.H2Client`
speaks raw frames where a test needs to send or see one exact frame: a GOAWAY's code and last
stream, a header block h2 clients refuse to build, a flood. Limits are configured small so every
flood and timeout is reached in a second or two (the worker sweeps once a second).
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.conftest import base_config
from tests.h2client import (
    CANCEL,
    ENABLE_PUSH,
    ENHANCE_YOUR_CALM,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    H2Client,
    h2_context,
)
from tests.pki import CA, Issued
from tests.server import Server, wait_for

StartServer = Callable[..., Server]
Connect = Callable[..., H2Client]

HELLO = b"hello world\n"
KIB_BIN = bytes(range(256)) * 4
BIG_BIN = bytes(range(256)) * 4096 * 2
GET_HELLO = [(":method", "GET"), (":scheme", "https"), (":path", "/hello.txt"), (":authority", "localhost")]


def digest(data: bytes) -> str:
    """Compare large bodies by hash so a mismatch does not print megabytes."""
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()}"


def h2_config(
    root: Path,
    cert: Issued,
    http2: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    h2c: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """base_config with HTTP/3 off (these tests are about TCP) and the given [http2] and [limits]."""
    config = base_config(root, cert, **overrides)
    config["listeners"][0]["quic"] = {"enabled": False}
    if h2c:
        config["listeners"][1]["h2c"] = True
    if http2:
        config["http2"] = http2
    if limits:
        config["limits"] = limits
    return config


# --- fixtures ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def ctx(ca: CA) -> ssl.SSLContext:
    return h2_context(ca.pem)


@pytest.fixture
def connect(ctx: ssl.SSLContext) -> Iterator[Connect]:
    """connect(server, **H2Client options) -> a raw HTTP/2 client over TLS to the https listener; closed at teardown."""
    opened: list[H2Client] = []

    def _connect(srv: Server, **kw: Any) -> H2Client:
        client = H2Client.tls(srv.address("https"), ctx, **kw)
        opened.append(client)
        return client

    yield _connect
    for client in opened:
        client.close()


@pytest.fixture
def custom(start_server: StartServer, site: Path, localhost_cert: Issued) -> Callable[..., Server]:
    """custom(http2={...}, limits={...}, h2c=..., server={...}) -> a started server with those settings."""

    def _start(**kw: Any) -> Server:
        return start_server(h2_config(site, localhost_cert, **kw))

    return _start


@pytest.fixture
def h2_server(custom: Callable[..., Server]) -> Server:
    return custom()


# --- observing the server ---------------------------------------------------------------------------------------------


def metrics(srv: Server) -> str:
    with urllib.request.urlopen(srv.admin_url("/metrics"), timeout=5) as r:
        body: bytes = r.read()
    return body.decode()


def metric_sum(srv: Server, name: str, **labels: str) -> int:
    """The sum of `name` over every worker, for series carrying all of `labels`."""
    total = 0
    for line in metrics(srv).splitlines():
        m = re.match(rf"^{name}\{{([^}}]*)\}} (\d+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1).split(",") for k, v in labels.items()):
            total += int(m.group(2))
    return total


def floods(srv: Server, kind: str) -> int:
    return metric_sum(srv, "edgeward_http2_floods_total", kind=kind)


@dataclass
class Nghttp:
    returncode: int
    output: str
    headers: dict[str, str]
    data_bytes: int  # DATA payload the verbose log shows received
    body: bytes  # from a second, quiet run (nghttp writes bodies and its log to the same stdout)


def nghttp(target: str, *args: str) -> Nghttp:
    """`nghttp -v -n` for the frames and headers of one URL, then plain `nghttp` for its body."""
    proc = subprocess.run(["nghttp", "-v", "-n", *args, target], capture_output=True, timeout=30, check=False)
    out = proc.stdout.decode("latin-1") + proc.stderr.decode("latin-1")
    headers = dict(re.findall(r"^\[[^\]]*\] recv \(stream_id=\d+\) (:?[^:\s]+): (.*)$", out, re.M))
    data_bytes = sum(int(n) for n in re.findall(r"recv DATA frame <length=(\d+)", out))
    quiet = subprocess.run(["nghttp", *args, target], capture_output=True, timeout=30, check=False)
    assert quiet.returncode == proc.returncode, quiet.stderr
    return Nghttp(proc.returncode, out, headers, data_bytes, quiet.stdout)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["curl", "-sv", *args], capture_output=True, timeout=30, check=False)
    return subprocess.CompletedProcess(out.args, out.returncode, out.stdout.decode("latin-1"), out.stderr.decode())


# --- 1. ALPN h2 with real clients -------------------------------------------------------------------------------------


def test_nghttp_get_files_byte_exact(h2_server: Server) -> None:
    for path, want in (("/hello.txt", HELLO), ("/1k.bin", KIB_BIN), ("/big.bin", BIG_BIN)):
        got = nghttp(h2_server.url("https", path))
        assert got.returncode == 0, got.output[-2000:]
        assert "The negotiated protocol: h2" in got.output
        assert got.headers[":status"] == "200"
        assert got.headers["content-length"] == str(len(want))
        assert digest(got.body) == digest(want), path


def test_nghttp_head_has_length_and_no_data(h2_server: Server) -> None:
    got = nghttp(h2_server.url("https", "/big.bin"), "-H", ":method: HEAD")
    assert got.returncode == 0, got.output[-2000:]
    assert got.headers[":status"] == "200"
    assert got.headers["content-length"] == str(len(BIG_BIN))
    assert "recv DATA frame" not in got.output
    # The response head itself ends the stream.
    assert re.search(r"recv HEADERS frame <[^>]*flags=0x05", got.output), got.output[-2000:]


def test_nghttp_404_304_and_range(h2_server: Server) -> None:
    missing = nghttp(h2_server.url("https", "/missing.txt"))
    assert missing.headers[":status"] == "404"

    first = nghttp(h2_server.url("https", "/hello.txt"))
    etag = first.headers["etag"]
    cached = nghttp(h2_server.url("https", "/hello.txt"), "-H", f"if-none-match: {etag}")
    assert cached.headers[":status"] == "304"
    assert cached.headers["etag"] == etag
    assert cached.data_bytes == 0
    assert "recv DATA frame" not in cached.output

    ranged = nghttp(h2_server.url("https", "/big.bin"), "-H", "range: bytes=100000-1099999")
    assert ranged.headers[":status"] == "206"
    assert ranged.headers["content-range"] == f"bytes 100000-1099999/{len(BIG_BIN)}"
    assert ranged.headers["content-length"] == "1000000"
    assert digest(ranged.body) == digest(BIG_BIN[100000:1100000])


def test_curl_http2_over_tls(h2_server: Server, ca: CA) -> None:
    out = curl("--http2", "--cacert", str(ca.pem), h2_server.url("https", "/hello.txt"))
    assert out.returncode == 0, out.stderr
    assert "< HTTP/2 200" in out.stderr
    assert out.stdout.encode("latin-1") == HELLO


def test_h2load_all_succeed(h2_server: Server) -> None:
    out = subprocess.run(
        ["h2load", "-n", "2000", "-c", "4", "-m", "10", h2_server.url("https", "/hello.txt")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Application protocol: h2" in out.stdout
    assert re.search(r"requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed", out.stdout), out.stdout
    assert "status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx" in out.stdout, out.stdout


# --- 2. h2c prior knowledge -------------------------------------------------------------------------------------------


def test_h2c_prior_knowledge_and_http11_on_one_listener(custom: Callable[..., Server]) -> None:
    srv = custom(h2c=True)
    h2c = curl("--http2-prior-knowledge", srv.url("http", "/hello.txt"))
    assert h2c.returncode == 0, h2c.stderr
    assert "< HTTP/2 200" in h2c.stderr
    assert h2c.stdout.encode("latin-1") == HELLO

    got = nghttp(srv.url("http", "/big.bin"))
    assert got.returncode == 0, got.output[-2000:]
    assert got.headers[":status"] == "200"
    assert digest(got.body) == digest(BIG_BIN)

    h1 = curl("--http1.1", srv.url("http", "/hello.txt"))
    assert h1.returncode == 0, h1.stderr
    assert "< HTTP/1.1 200" in h1.stderr
    assert h1.stdout.encode("latin-1") == HELLO

    raw = H2Client.plain(srv.address("http"))
    try:
        reply = raw.get("/1k.bin", scheme="http")
        assert (reply.status, reply.body) == (200, KIB_BIN)
    finally:
        raw.close()


def test_preface_without_h2c_gets_http11_400(h2_server: Server) -> None:
    with socket.create_connection(h2_server.address("http"), timeout=5) as sock:
        sock.sendall(PREFACE + SettingsFrame(0).serialize())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 "), data[:200]
    # Nothing crashed: HTTP/1.1 on that listener and h2 on the TLS one still work.
    h1 = curl("--http1.1", h2_server.url("http", "/hello.txt"))
    assert (h1.returncode, h1.stdout.encode("latin-1")) == (0, HELLO), h1.stderr
    refused = curl("--http2-prior-knowledge", h2_server.url("http", "/hello.txt"))
    assert refused.returncode != 0


# --- 3. SETTINGS and stream limits ------------------------------------------------------------------------------------


def test_first_frame_is_settings_from_config(custom: Callable[..., Server], connect: Connect) -> None:
    srv = custom(
        http2={"max_concurrent_streams": 7, "initial_window_size": 131072, "max_frame_size": 32768},
        limits={"max_header_bytes": 4096},
    )
    client = connect(srv)
    client.read_until(lambda: len(client.frames) >= 2, what="SETTINGS")
    first = client.frames[0]
    assert isinstance(first, SettingsFrame)
    assert "ACK" not in first.flags
    assert first.settings[MAX_CONCURRENT_STREAMS] == 7
    assert first.settings[INITIAL_WINDOW_SIZE] == 131072
    assert first.settings[MAX_FRAME_SIZE] == 32768
    assert first.settings[MAX_HEADER_LIST_SIZE] == 4096
    assert first.settings[ENABLE_PUSH] == 0
    # The connection window is raised to four streams' windows, so one slow upload cannot block the rest.
    second = client.frames[1]
    assert isinstance(second, WindowUpdateFrame)
    assert (second.stream_id, second.window_increment) == (0, 4 * 131072 - 65535)
    assert client.get("/hello.txt").body == HELLO


def test_streams_beyond_max_concurrent_streams(custom: Callable[..., Server], connect: Connect) -> None:
    """The server treats the excess stream as a connection error: GOAWAY(PROTOCOL_ERROR) naming the last one it took."""
    srv = custom(http2={"max_concurrent_streams": 3})
    client = connect(srv)
    client.read_until(lambda: bool(client.server_settings), what="SETTINGS")
    assert client.server_settings[MAX_CONCURRENT_STREAMS] == 3
    open_ids = []
    for _ in range(3):  # requests whose bodies never finish keep their streams open
        sid = client.new_stream()
        client.send_headers(sid, client.request_fields("/hello.txt"), end_stream=False)
        open_ids.append(sid)
    extra = client.new_stream()
    client.send_headers(extra, client.request_fields("/hello.txt"))
    goaway = client.expect_goaway()
    assert (goaway.error_code, goaway.last_stream_id) == (PROTOCOL_ERROR, open_ids[-1])
    client.expect_closed()
    assert client.received(HeadersFrame) == []
    # Within the limit is fine, on a new connection.
    fresh = connect(srv)
    sids = [fresh.request("/hello.txt") for _ in range(3)]
    assert [fresh.response(s).status for s in sids] == [200, 200, 200]


# --- 4. flow control and backpressure ---------------------------------------------------------------------------------


def test_small_window_gets_exactly_the_window(custom: Callable[..., Server], connect: Connect) -> None:
    srv = custom(http2={"window_stall_timeout": 10.0})
    client = connect(srv, settings={INITIAL_WINDOW_SIZE: 16384}, auto_window=False)
    sid = client.request("/big.bin")
    stream = client.stream(sid)
    client.read_until(lambda: len(stream.data) >= 16384, what="the first window")
    client.read_for(1.0)  # anything beyond the window would arrive now
    assert len(stream.data) == 16384
    assert not stream.ended
    assert stream.status == 200
    # Open the windows: the rest follows, byte-exact.
    client.auto_window = True
    client.send(WindowUpdateFrame(0, 1 << 20), WindowUpdateFrame(sid, 1 << 20))
    client.response(sid, timeout=10)
    assert digest(stream.body) == digest(BIG_BIN)


def test_nghttp_small_windows_byte_exact(h2_server: Server) -> None:
    got = nghttp(h2_server.url("https", "/big.bin"), "-w", "14", "-W", "15")
    assert got.returncode == 0, got.output[-2000:]
    assert "[SETTINGS_INITIAL_WINDOW_SIZE(0x04):16383]" in got.output
    assert got.output.count("send WINDOW_UPDATE frame") > 50
    assert digest(got.body) == digest(BIG_BIN)


def test_stalled_stream_does_not_block_another(custom: Callable[..., Server], connect: Connect) -> None:
    srv = custom(http2={"window_stall_timeout": 10.0})
    client = connect(srv, settings={INITIAL_WINDOW_SIZE: 16384})
    stalled = client.request("/big.bin")
    client.hold.add(stalled)  # never credited: stuck at zero once its first window is spent
    moving = client.request("/big.bin")
    client.response(moving, timeout=10)
    assert digest(client.stream(moving).body) == digest(BIG_BIN)
    assert len(client.stream(stalled).data) == 16384
    assert not client.stream(stalled).finished
    # The stalled one resumes when credited.
    client.hold.clear()
    client.window_update(stalled, 1 << 21)
    client.response(stalled, timeout=10)
    assert digest(client.stream(stalled).body) == digest(BIG_BIN)


# --- 5. zero-window stall ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [0, 16384], ids=["zero-from-the-start", "after-one-window"])
def test_zero_window_stall_gets_enhance_your_calm(custom: Callable[..., Server], connect: Connect, window: int) -> None:
    """A client that never opens its window: GOAWAY(ENHANCE_YOUR_CALM) about window_stall_timeout later.

    The second case is the common slow-read attack: take the first window, then never send WINDOW_UPDATE.
    """
    srv = custom(http2={"window_stall_timeout": 1.0})
    before = floods(srv, "window_stall")
    client = connect(srv, settings={INITIAL_WINDOW_SIZE: window}, auto_window=False)
    sid = client.request("/big.bin")
    client.read_until(lambda: bool(client.stream(sid).headers), what="the response head")
    client.read_until(lambda: len(client.stream(sid).data) == window, what="the first window")
    start = time.monotonic()
    goaway = client.expect_goaway(timeout=5)
    took = time.monotonic() - start
    assert (goaway.error_code, goaway.last_stream_id) == (ENHANCE_YOUR_CALM, sid)
    assert took <= 3.5, f"GOAWAY after {took:.2f}s"
    client.expect_closed()
    assert len(client.stream(sid).data) == window
    assert floods(srv, "window_stall") == before + 1


# --- 6. PING and RST_STREAM -------------------------------------------------------------------------------------------


def test_ping_is_acked_with_the_same_bytes(h2_server: Server, connect: Connect) -> None:
    client = connect(h2_server)
    client.ping(b"\x01edge\xfe\x00z")
    client.read_until(lambda: bool(client.ping_acks), what="PING ACK")
    assert client.ping_acks == [b"\x01edge\xfe\x00z"]
    acks = [f for f in client.received(PingFrame) if "ACK" in f.flags]
    assert len(acks) == 1
    assert acks[0].stream_id == 0


def test_rst_stream_mid_download_keeps_the_connection(h2_server: Server, connect: Connect) -> None:
    client = connect(h2_server)
    sid = client.request("/big.bin")
    client.read_until(lambda: len(client.stream(sid).data) >= 100_000, what="part of big.bin")
    client.rst(sid, CANCEL)
    reply = client.get("/hello.txt")
    assert (reply.status, reply.body) == (200, HELLO)
    client.read_for(0.5)
    cancelled = client.stream(sid)
    assert not cancelled.ended
    assert len(cancelled.data) < len(BIG_BIN)
    assert cancelled.body == BIG_BIN[: len(cancelled.data)]
    reply = client.get("/1k.bin")
    assert (reply.status, reply.body) == (200, KIB_BIN)
    assert client.goaway is None


def test_headers_and_rst_stream_in_one_write(h2_server: Server, connect: Connect) -> None:
    """A stream the client cancels in the same packet that opened it is dropped; the connection goes on."""
    client = connect(h2_server)
    client.read_until(lambda: bool(client.server_settings), what="SETTINGS")
    sid = client.new_stream()
    client.send(*client.headers_frames(sid, client.encode(GET_HELLO)), RstStreamFrame(sid, CANCEL))
    client.read_for(0.3)
    assert not client.eof, "the server dropped the connection"
    assert client.goaway is None
    reply = client.get("/hello.txt")
    assert (reply.status, reply.body) == (200, HELLO)


# --- 7. trailers ------------------------------------------------------------------------------------------------------


def test_request_with_body_and_trailers_is_answered(h2_server: Server, connect: Connect) -> None:
    client = connect(h2_server)
    sid = client.new_stream()
    client.send(
        *client.headers_frames(sid, client.encode(GET_HELLO), end_stream=False),
        DataFrame(sid, b"some body"),
        *client.headers_frames(sid, client.encode([("x-checksum", "abc123")]), end_stream=True),
    )
    reply = client.response(sid)
    assert (reply.status, reply.body) == (200, HELLO)
    assert client.get("/1k.bin").body == KIB_BIN


def test_nghttp_upload_with_trailer_is_answered(h2_server: Server, tmp_path: Path) -> None:
    """nghttp uploads with POST, which the static route does not allow: a 405 once the trailer ends the stream."""
    payload = tmp_path / "payload"
    payload.write_bytes(b"x" * 100)
    got = nghttp(h2_server.url("https", "/hello.txt"), "-d", str(payload), "--trailer", "x-sum: 1")
    assert "x-sum: 1" in got.output  # the trailer really went out
    assert got.headers[":status"] == "405"
    assert got.headers["allow"] == "GET, HEAD, OPTIONS"


# --- 8. header validation (RFC 9113 §8.2, §8.3) -----------------------------------------------------------------------

BAD_HEADERS: dict[str, list[tuple[str, str]]] = {
    "uppercase-name": [*GET_HELLO, ("X-Upper", "1")],
    "connection": [*GET_HELLO, ("connection", "keep-alive")],
    "keep-alive": [*GET_HELLO, ("keep-alive", "timeout=5")],
    "transfer-encoding": [*GET_HELLO, ("transfer-encoding", "chunked")],
    "upgrade": [*GET_HELLO, ("upgrade", "h2c")],
    "te-gzip": [*GET_HELLO, ("te", "gzip")],
    "missing-path": [(":method", "GET"), (":scheme", "https"), (":authority", "localhost")],
    "unknown-pseudo": [*GET_HELLO, (":foo", "bar")],
    "pseudo-after-regular": [(":method", "GET"), (":scheme", "https"), ("accept", "*/*"), (":path", "/hello.txt")],
    "duplicate-method": [*GET_HELLO, (":method", "GET")],
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_malformed_header_block_is_a_connection_error(h2_server: Server, connect: Connect, case: str) -> None:
    """h2 validates the block and the server ends the connection: GOAWAY(PROTOCOL_ERROR), never a response."""
    errors_before = metric_sum(h2_server, "edgeward_protocol_errors_total")
    client = connect(h2_server)
    client.read_until(lambda: bool(client.server_settings), what="SETTINGS")
    sid = client.new_stream()
    client.send_headers(sid, BAD_HEADERS[case])
    goaway = client.expect_goaway()
    assert (goaway.error_code, goaway.last_stream_id) == (PROTOCOL_ERROR, sid)
    client.expect_closed()
    assert client.received(HeadersFrame) == []
    assert client.received(RstStreamFrame) == []
    assert metric_sum(h2_server, "edgeward_protocol_errors_total") == errors_before + 1
    fresh = connect(h2_server)
    assert fresh.get("/hello.txt").body == HELLO


# --- 9. request limits ------------------------------------------------------------------------------------------------

LIMITS = {"max_uri_bytes": 64, "max_header_count": 10, "max_body_bytes": 1024, "max_header_bytes": 2048}


@pytest.fixture
def limited(custom: Callable[..., Server]) -> Server:
    return custom(limits=LIMITS)


def test_uri_too_long_gets_414(limited: Server, connect: Connect) -> None:
    client = connect(limited)
    reply = client.get("/hello.txt?" + "q" * 80)
    assert reply.status == 414
    assert client.get("/hello.txt?" + "q" * 40).body == HELLO  # the same connection goes on


def test_too_many_headers_gets_431(limited: Server, connect: Connect) -> None:
    client = connect(limited)
    assert client.get("/hello.txt", headers=[(f"x-h{i}", "v") for i in range(10)]).status == 200
    reply = client.get("/hello.txt", headers=[(f"x-h{i}", "v") for i in range(11)])
    assert reply.status == 431
    big = client.get("/hello.txt", headers=[("x-big", "v" * 2100)])
    assert big.status == 431
    assert client.get("/hello.txt").body == HELLO


def test_content_length_over_limit_gets_413(limited: Server, connect: Connect) -> None:
    client = connect(limited)
    sid = client.new_stream()
    client.send_headers(sid, [*GET_HELLO, ("content-length", "2048")], end_stream=False)
    reply = client.response(sid)
    assert reply.status == 413
    client.read_until(lambda: reply.reset is not None, what="RST_STREAM after the 413")
    assert reply.reset == NO_ERROR  # "stop sending", after a complete response (RFC 9113 §8.1)
    assert client.get("/hello.txt").body == HELLO


def test_body_over_limit_without_length_gets_413(limited: Server, connect: Connect) -> None:
    client = connect(limited)
    sid = client.new_stream()
    client.send_headers(sid, GET_HELLO, end_stream=False)
    client.send(DataFrame(sid, b"a" * 1000), DataFrame(sid, b"b" * 1000))
    reply = client.response(sid)
    assert reply.status == 413
    assert client.get("/hello.txt").body == HELLO


def test_body_within_limit_is_read(limited: Server, connect: Connect) -> None:
    client = connect(limited)
    sid = client.request("/hello.txt", headers=[("content-length", "1024")], body=b"z" * 1024)
    reply = client.response(sid)
    assert (reply.status, reply.body) == (200, HELLO)


@pytest.mark.parametrize(("length", "body"), [("10", b"12345"), ("5", b"1234567890")], ids=["short", "long"])
def test_content_length_mismatch_is_a_connection_error(
    limited: Server, connect: Connect, length: str, body: bytes
) -> None:
    """A malformed request (RFC 9113 §8.1.1); h2 ends the connection, which §5.4.1 allows. Nothing is answered."""
    client = connect(limited)
    sid = client.request("/hello.txt", headers=[("content-length", length)], body=body)
    goaway = client.expect_goaway()
    assert (goaway.error_code, goaway.last_stream_id) == (PROTOCOL_ERROR, sid)
    assert client.stream(sid).headers == []  # nothing was answered
    assert connect(limited).get("/hello.txt").body == HELLO


def test_authority_and_host_disagree_is_a_connection_error(limited: Server, connect: Connect) -> None:
    """Host must match :authority (RFC 9113 §8.3.1); h2's validation ends the connection, never routes it."""
    client = connect(limited)
    sid = client.request("/hello.txt", headers=[("host", "elsewhere.test")])
    goaway = client.expect_goaway()
    assert (goaway.error_code, goaway.last_stream_id) == (PROTOCOL_ERROR, sid)
    assert client.stream(sid).headers == []  # nothing was answered
    assert connect(limited).get("/hello.txt", headers=[("host", "localhost")]).body == HELLO


# --- 10. floods -------------------------------------------------------------------------------------------------------

FLOOD_LIMITS = {
    "max_resets_per_second": 5,
    "max_continuation_frames": 4,
    "max_settings_per_second": 5,
    "max_pings_per_second": 5,
    "max_empty_frames_per_second": 5,
}


@pytest.fixture
def flood_server(custom: Callable[..., Server]) -> Server:
    return custom(http2=FLOOD_LIMITS, limits={"max_header_bytes": 1024})


def rapid_reset(c: H2Client) -> None:
    frames: list[Frame] = []
    for _ in range(20):
        sid = c.new_stream()
        frames += [*c.headers_frames(sid, c.encode(GET_HELLO)), RstStreamFrame(sid, CANCEL)]
    c.send(*frames)


def continuation_flood(c: H2Client) -> None:
    sid = c.new_stream()
    block = c.encode([*GET_HELLO, ("x-pad", "p" * 200)])
    pieces = [block[i : i + 16] for i in range(0, 16 * 11, 16)]
    assert len(pieces) == 11
    c.send(HeadersFrame(sid, pieces[0]), *[ContinuationFrame(sid, p) for p in pieces[1:]])


def settings_flood(c: H2Client) -> None:
    c.send(*[SettingsFrame(0, {INITIAL_WINDOW_SIZE: 65535}) for _ in range(10)])


def ping_flood(c: H2Client) -> None:
    c.send(*[PingFrame(0, b"%08d" % i) for i in range(10)])


def empty_frames_flood(c: H2Client) -> None:
    sid = c.new_stream()
    c.send(*c.headers_frames(sid, c.encode(GET_HELLO), end_stream=False), *[DataFrame(sid, b"") for _ in range(10)])


def hpack_bomb(c: H2Client) -> None:
    # One request puts a 900-byte field in the server's dynamic table (and is answered: it is within the limits)...
    big = ("x-bomb", "a" * 900)
    assert c.get("/hello.txt", headers=[big]).status == 200
    # ...then a few dozen bytes reference it 30 times: 28 KB decoded, far past 2 x max_header_bytes.
    block = c.encode([*GET_HELLO, *[big] * 30])
    assert len(block) < 100
    c.send(*c.headers_frames(c.new_stream(), block))


FLOODS: dict[str, Callable[[H2Client], None]] = {
    "rapid_reset": rapid_reset,
    "continuation": continuation_flood,
    "settings": settings_flood,
    "ping": ping_flood,
    "empty_frames": empty_frames_flood,
    "hpack_bomb": hpack_bomb,
}


@pytest.mark.parametrize("kind", list(FLOODS))
def test_flood_gets_enhance_your_calm(flood_server: Server, connect: Connect, kind: str) -> None:
    before = floods(flood_server, kind)
    good = connect(flood_server)
    assert good.get("/hello.txt").body == HELLO
    bad = connect(flood_server)
    bad.read_until(lambda: bool(bad.server_settings), what="SETTINGS")
    FLOODS[kind](bad)
    goaway = bad.expect_goaway()
    assert goaway.error_code == ENHANCE_YOUR_CALM
    bad.expect_closed()
    wait_for(lambda: floods(flood_server, kind) == before + 1, 3.0, f"flood metric {kind} counted")
    # The well-behaved connection opened before the flood is untouched.
    for _ in range(3):
        reply = good.get("/hello.txt")
        assert (reply.status, reply.body) == (200, HELLO)
    assert good.goaway is None


def test_below_flood_limits_nothing_happens(flood_server: Server, connect: Connect) -> None:
    """The same frames, at the limit, in one second: no GOAWAY; the next second starts a new count."""
    client = connect(flood_server)
    client.read_until(lambda: bool(client.server_settings), what="SETTINGS")
    client.send(*[PingFrame(0, b"%08d" % i) for i in range(5)])
    client.read_until(lambda: len(client.ping_acks) == 5, what="five PING ACKs")
    time.sleep(2.1)  # at least one sweep clears the per-second counters
    client.send(*[PingFrame(0, b"%08d" % i) for i in range(5)])
    client.read_until(lambda: len(client.ping_acks) == 10, what="five more PING ACKs")
    assert client.get("/hello.txt").body == HELLO
    assert client.goaway is None
    assert floods(flood_server, "ping") == 0


# --- 11. graceful drain -----------------------------------------------------------------------------------------------


def test_drain_finishes_the_stream_in_flight(custom: Callable[..., Server], connect: Connect) -> None:
    srv = custom(server={"drain_timeout": 10.0})
    client = connect(srv, auto_window=False)
    sid = client.request("/big.bin")
    # A slow reader: it has taken one window (64 KiB) and not asked for more.
    client.read_until(lambda: len(client.stream(sid).data) == 65535, what="the first window")
    srv.signal(signal.SIGTERM)
    goaway = client.expect_goaway()
    assert (goaway.error_code, goaway.last_stream_id) == (NO_ERROR, sid)
    # A stream opened after the GOAWAY is refused, and is safe to retry elsewhere.
    late = client.request("/hello.txt")
    assert client.response(late).reset == REFUSED_STREAM
    assert client.stream(late).headers == []
    # The one in flight still completes, a window at a time.
    client.auto_window = True
    client.send(WindowUpdateFrame(0, 65535), WindowUpdateFrame(sid, 65535))
    reply = client.response(sid, timeout=10)
    assert reply.status == 200
    assert digest(reply.body) == digest(BIG_BIN)
    client.expect_closed(timeout=3)
    client.close()  # answers the server's close_notify, as any client does
    assert srv.wait(5) == 0, srv.log()


def test_drain_closes_an_idle_connection(h2_server: Server, connect: Connect) -> None:
    """An idle connection gets GOAWAY(NO_ERROR) naming the last stream answered, then is closed after the grace."""
    client = connect(h2_server)
    assert client.get("/hello.txt").status == 200
    h2_server.signal(signal.SIGTERM)
    goaway = client.expect_goaway()
    assert (goaway.error_code, goaway.last_stream_id) == (NO_ERROR, 1)
    took = client.expect_closed(timeout=3)
    assert took <= 2.0, f"closed {took:.2f}s after the GOAWAY"
    client.close()
    assert h2_server.wait(5) == 0, h2_server.log()


def test_idle_timeout_sends_goaway_then_closes(custom: Callable[..., Server], connect: Connect) -> None:
    srv = custom(limits={"idle_timeout": 1.0})
    client = connect(srv)
    assert client.get("/hello.txt").status == 200
    start = time.monotonic()
    goaway = client.expect_goaway(timeout=5)
    took = time.monotonic() - start
    assert (goaway.error_code, goaway.last_stream_id) == (NO_ERROR, 1)
    assert 0.5 <= took <= 3.5, f"GOAWAY after {took:.2f}s idle"
    client.expect_closed(timeout=1)


# --- 12. access log ---------------------------------------------------------------------------------------------------


def test_access_log_records_http2(custom: Callable[..., Server], connect: Connect, tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    srv = custom(h2c=True, access_log={"enabled": True, "path": str(log_path), "flush_interval": 0.1})
    client = connect(srv)
    assert client.get("/hello.txt").status == 200
    missing = client.get("/missing")
    assert missing.status == 404
    assert client.get("/big.bin", method="HEAD").status == 200
    h2c = curl("--http2-prior-knowledge", srv.url("http", "/1k.bin"))
    assert h2c.returncode == 0, h2c.stderr

    def records() -> list[dict[str, Any]]:
        if not log_path.exists():
            return []
        return [json.loads(line) for line in log_path.read_text().splitlines() if line]

    wait_for(lambda: len(records()) >= 4, 3.0, "four access log records")
    recs = records()
    assert len(recs) == 4
    assert {r["protocol"] for r in recs} == {"HTTP/2"}
    tls = [(r["method"], r["path"], r["status"], r["bytes"], r["tls"], r["sni"]) for r in recs[:3]]
    assert tls == [
        ("GET", "/hello.txt", 200, len(HELLO), "TLSv1.3", "localhost"),
        ("GET", "/missing", 404, len(missing.body), "TLSv1.3", "localhost"),
        ("HEAD", "/big.bin", 200, 0, "TLSv1.3", "localhost"),
    ]
    plain = recs[3]
    assert (plain["method"], plain["path"], plain["status"], plain["bytes"], plain["tls"]) == (
        "GET",
        "/1k.bin",
        200,
        len(KIB_BIN),
        "",
    )
    assert plain["client"] == "127.0.0.1"


def test_h2c_connection_that_never_decides_is_closed_at_the_header_timeout(
    start_server: Callable[..., Server], site: Path, localhost_cert: Issued
) -> None:
    """Before its first bytes show which protocol it speaks, an h2c connection still has a deadline."""
    server = start_server(h2_config(site, localhost_cert, h2c=True, limits={"header_timeout": 1.0}))
    host, port = server.address("http")
    silent = socket.create_connection((host, port), timeout=10)
    partial = socket.create_connection((host, port), timeout=10)
    try:
        partial.sendall(PREFACE[:8])  # could still be either protocol
        started = time.monotonic()
        assert silent.recv(1) == b""  # closed by the server, not by our timeout
        assert partial.recv(1) == b""
        assert time.monotonic() - started < 5.0
    finally:
        silent.close()
        partial.close()

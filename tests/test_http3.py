"""HTTP/3 over QUIC against the real server, on the UDP port of the HTTPS listener.

Three clients, none of them sharing code with the server's request handling:
aioquic's sans-IO QuicConnection and H3Connection driven by a small client
here (fine-grained checks: 0-RTT, tickets, rebinding, GOAWAY, resets),
ngtcp2's `gtlsclient` (key update, NAT rebinding, resumption from a session
file, Retry, transport parameters) and curl_cffi's libcurl (what a browser
stack sees, and Alt-Svc on HTTP/1.1 and HTTP/2). Everything talks to
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aioquic._buffer import Buffer, BufferReadError
from aioquic.h3.connection import ErrorCode, FrameType, H3Connection, H3Stream
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamDataReceived, StreamReset
from aioquic.quic.logger import QuicLogger
from aioquic.tls import SessionTicket
from curl_cffi import requests as curl
from curl_cffi.const import CurlHttpVersion

from tests.conftest import base_config
from tests.pki import CA, Issued, write_atomic
from tests.program import PROGRAMS
from tests.server import Server, events, wait_for

StartServer = Callable[..., Server]
LOCAL = "127.0.0.1"
HELLO = b"hello world\n"
H3_NO_ERROR = int(ErrorCode.H3_NO_ERROR)
H3_REQUEST_REJECTED = int(ErrorCode.H3_REQUEST_REJECTED)
H3_MESSAGE_ERROR = int(ErrorCode.H3_MESSAGE_ERROR)
# curl's CURL_HTTP_VERSION_* values as reported in Response.http_version
CURL_HTTP11, CURL_HTTP2, CURL_HTTP3 = 2, 3, 30


# --------------------------------------------------------------------------- server helpers


def quic_port(server: Server, listener: str = "https") -> int:
    return int(server.state["quic"][listener].rpartition(":")[2])


def quic_events(server: Server) -> dict[str, int]:
    """The server's edgeward_quic_events_total counters, by kind."""
    text = httpx.get(server.admin_url("/metrics"), timeout=5).text
    return {m[0]: int(m[1]) for m in re.findall(r'edgeward_quic_events_total\{[^}]*kind="(\w+)"\} (\d+)', text)}


def quic_open(server: Server) -> int:
    text = httpx.get(server.admin_url("/metrics"), timeout=5).text
    found = re.search(r'edgeward_quic_connections_open\{listener="https"\} (\d+)', text)
    assert found, text
    return int(found.group(1))


def run(coro: Coroutine[Any, Any, Any], timeout: float = 90) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# --------------------------------------------------------------------------- an aioquic client


class Recorder(H3Connection):
    """aioquic's H3Connection, which exempts HEAD responses from its content-length check.

    RFC 9114 section 4.1.2 says the check does not apply to responses without content.
    """

    def __init__(self, quic: QuicConnection) -> None:
        super().__init__(quic)
        self.head_streams: set[int] = set()

    def _check_content_length(self, stream: H3Stream) -> None:
        if stream.stream_id not in self.head_streams:
            super()._check_content_length(stream)


class ControlStream:
    """The server's control stream, read beside aioquic, which skips GOAWAY without reporting it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.goaways: list[int] = []

    def feed(self, data: bytes) -> None:
        self.data += data
        buf = Buffer(data=bytes(self.data))
        if buf.pull_uint_var() != 0:  # not the control stream (QPACK encoder or decoder)
            return
        self.goaways.clear()
        try:
            while not buf.eof():
                frame_type, length = buf.pull_uint_var(), buf.pull_uint_var()
                payload = buf.pull_bytes(length)
                if frame_type == FrameType.GOAWAY:
                    self.goaways.append(Buffer(data=payload).pull_uint_var())
        except BufferReadError:
            pass  # a frame still arriving


@dataclass
class Reply:
    done: asyncio.Future[None]
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    reset: int | None = None  # the error code, when the server reset the stream


class Client(asyncio.DatagramProtocol):
    """An HTTP/3 client on its own UDP socket, which `rebind` can swap for another."""

    def __init__(self, quic: QuicConnection) -> None:
        self.loop = asyncio.get_running_loop()
        self.quic = quic
        self.h3: Recorder
        self.transport: asyncio.DatagramTransport
        self.replies: dict[int, Reply] = {}
        self.handshake: HandshakeCompleted | None = None
        self.connected: asyncio.Future[None] = self.loop.create_future()
        self.terminated: asyncio.Future[ConnectionTerminated] = self.loop.create_future()
        self.timer: asyncio.TimerHandle | None = None
        self.server_streams: dict[int, ControlStream] = {}

    @property
    def goaways(self) -> list[int]:
        return [g for stream in self.server_streams.values() for g in stream.goaways]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.quic.receive_datagram(data, addr, now=self.loop.time())
        self._process()
        self.transmit()

    def transmit(self) -> None:
        for data, addr in self.quic.datagrams_to_send(now=self.loop.time()):
            self.transport.sendto(data, addr)
        if self.timer is not None:
            self.timer.cancel()
        at = self.quic.get_timer()
        self.timer = self.loop.call_at(at, self._on_timer) if at is not None else None

    def _on_timer(self) -> None:
        self.timer = None
        self.quic.handle_timer(now=self.loop.time())
        self._process()
        self.transmit()

    def _process(self) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.handshake = event
                if not self.connected.done():
                    self.connected.set_result(None)
            elif isinstance(event, ConnectionTerminated):
                if not self.terminated.done():
                    self.terminated.set_result(event)
                if not self.connected.done():
                    self.connected.set_exception(ConnectionError(event.reason_phrase))
                for reply in self.replies.values():
                    if not reply.done.done():
                        reply.done.set_exception(ConnectionError(event.reason_phrase))
            elif isinstance(event, StreamDataReceived) and event.stream_id % 4 == 3:  # server-opened, one-way
                self.server_streams.setdefault(event.stream_id, ControlStream()).feed(event.data)
            elif isinstance(event, StreamReset) and event.stream_id in self.replies:
                reply = self.replies[event.stream_id]
                reply.reset = event.error_code
                if not reply.done.done():
                    reply.done.set_result(None)
            for h3_event in self.h3.handle_event(event):
                if not isinstance(h3_event, HeadersReceived | DataReceived):
                    continue
                reply = self.replies[h3_event.stream_id]
                if isinstance(h3_event, HeadersReceived):
                    reply.headers = dict(h3_event.headers)
                    reply.status = int(reply.headers[b":status"])
                else:
                    reply.body += h3_event.data
                if h3_event.stream_ended and not reply.done.done():
                    reply.done.set_result(None)

    def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
        fields: list[tuple[bytes, bytes]] | None = None,
        end: bool = True,
    ) -> Reply:
        """Send a request now; `fields` replaces the pseudo-headers (to send bad ones); end=False leaves it open."""
        stream_id = self.quic.get_next_available_stream_id()
        if method == "HEAD":
            self.h3.head_streams.add(stream_id)
        if fields is None:
            fields = [
                (b":method", method.encode()),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
            ]
        self.h3.send_headers(stream_id, [*fields, *(headers or [])], end_stream=end and not body)
        if body:
            self.h3.send_data(stream_id, body, end_stream=end)
        reply = Reply(self.loop.create_future())
        self.replies[stream_id] = reply
        self.transmit()
        return reply

    async def get(self, path: str, timeout: float = 20, method: str = "GET", **kwargs: Any) -> Reply:
        reply = self.request(method, path, **kwargs)
        await asyncio.wait_for(asyncio.shield(reply.done), timeout)
        return reply

    async def rebind(self) -> int:
        """Move to a new local port, as a NAT does: same connection IDs, new 4-tuple. Returns the new port."""
        old = self.transport
        sock = udp_socket()
        client = self

        class Forward(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                client.datagram_received(data, addr)

        self.transport, _ = await self.loop.create_datagram_endpoint(Forward, sock=sock)
        old.close()  # anything the server still sends to the old port is lost
        return int(sock.getsockname()[1])

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.transport.is_closing():
            return
        self.quic.close()
        for data, addr in self.quic.datagrams_to_send(now=self.loop.time()):
            self.transport.sendto(data, addr)
        self.transport.close()


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCAL, 0))
    return sock


@asynccontextmanager
async def connect(
    port: int,
    cafile: Path,
    server_name: str = "localhost",
    ticket: SessionTicket | None = None,
    tickets: list[SessionTicket] | None = None,
    handshake: bool = True,
    logger: QuicLogger | None = None,
    idle_timeout: float = 30.0,
) -> AsyncIterator[Client]:
    """A client connected to 127.0.0.1:`port`; with handshake=False, requests sent first go out as 0-RTT."""
    loop = asyncio.get_running_loop()
    config = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name=server_name, idle_timeout=idle_timeout, quic_logger=logger
    )
    config.load_verify_locations(cafile=str(cafile))
    config.session_ticket = ticket
    quic = QuicConnection(configuration=config, session_ticket_handler=tickets.append if tickets is not None else None)
    _, client = await loop.create_datagram_endpoint(lambda: Client(quic), sock=udp_socket())
    quic.connect((LOCAL, port), now=loop.time())
    client.h3 = Recorder(quic)  # after connect(): a ticket's transport parameters let its streams open in 0-RTT
    try:
        if handshake:
            client.transmit()
            await asyncio.wait_for(asyncio.shield(client.connected), 10)
        yield client
    finally:
        client.close()


async def fetch_ticket(port: int, cafile: Path) -> SessionTicket:
    tickets: list[SessionTicket] = []
    async with connect(port, cafile, tickets=tickets) as client:
        assert (await client.get("/hello.txt")).status == 200
        for _ in range(200):
            if tickets:
                break
            await asyncio.sleep(0.01)
    assert tickets, "the server issued no session ticket"
    return tickets[-1]


async def handshake_ok(port: int, cafile: Path, server_name: str) -> bool:
    try:
        async with connect(port, cafile, server_name=server_name) as client:
            return (await client.get("/hello.txt")).body == HELLO
    except (ConnectionError, TimeoutError):
        return False


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def h3_server(start_server: StartServer, site: Path, localhost_cert: Issued) -> Server:
    return start_server(base_config(site, localhost_cert))


def test_udp_port_is_the_tcp_port(h3_server: Server) -> None:
    assert quic_port(h3_server) == h3_server.address("https")[1]
    assert set(h3_server.state["quic"]) == {"https"}  # the plain listener has no QUIC


def test_udp_port_taken_refuses_to_start(start_server: StartServer, site: Path, localhost_cert: Issued) -> None:
    with udp_socket() as taken:
        port = taken.getsockname()[1]
        config = base_config(site, localhost_cert)
        config["listeners"][0]["address"] = f"{LOCAL}:{port}"
        with pytest.raises(RuntimeError, match=r"cannot bind https at .*: Address already in use \(UDP, for HTTP/3\)"):
            start_server(config)


# --------------------------------------------------------------------------- responses over aioquic


@pytest.mark.parametrize("program", PROGRAMS, indirect=True)  # aioquic compiled into the executable too
def test_get_head_and_404(h3_server: Server, ca: CA) -> None:
    async def scenario() -> None:
        async with connect(quic_port(h3_server), ca.pem) as client:
            assert client.handshake is not None and client.handshake.alpn_protocol == "h3"
            got = await client.get("/hello.txt")
            assert (got.status, bytes(got.body)) == (200, HELLO)
            assert got.headers[b"content-length"] == b"12"
            assert got.headers[b"server"] == b"edgeward"
            assert got.headers[b"date"].endswith(b" GMT")
            assert got.headers[b"strict-transport-security"].startswith(b"max-age=")
            assert got.headers[b"alt-svc"] == b'h3=":%d"; ma=86400' % quic_port(h3_server)
            head = await client.get("/hello.txt", method="HEAD")
            assert (head.status, bytes(head.body), head.headers[b"content-length"]) == (200, b"", b"12")
            missing = await client.get("/nope.txt")
            assert missing.status == 404
            assert missing.body.startswith(b"404")
            options = await client.get("*", method="OPTIONS")
            assert (options.status, options.headers[b"allow"]) == (204, b"GET, HEAD, OPTIONS")

    run(scenario())


@pytest.mark.parametrize("program", PROGRAMS, indirect=True)
def test_large_files_are_byte_exact_and_multiplexed(h3_server: Server, site: Path, ca: CA) -> None:
    expected = (site / "big.bin").read_bytes()

    async def scenario() -> None:
        async with connect(quic_port(h3_server), ca.pem) as client:
            replies = [client.request("GET", "/big.bin") for _ in range(3)]
            await asyncio.wait_for(asyncio.gather(*(r.done for r in replies)), 60)
            for reply in replies:
                assert reply.status == 200
                assert reply.headers[b"content-length"] == b"%d" % len(expected)
                assert hashlib.sha256(reply.body).digest() == hashlib.sha256(expected).digest()

    run(scenario())


def test_conditional_and_ranges(h3_server: Server, site: Path, ca: CA) -> None:
    big = (site / "big.bin").read_bytes()

    async def scenario() -> None:
        async with connect(quic_port(h3_server), ca.pem) as client:
            first = await client.get("/hello.txt")
            etag = first.headers[b"etag"]
            cached = await client.get("/hello.txt", headers=[(b"if-none-match", etag)])
            assert (cached.status, bytes(cached.body), cached.headers[b"etag"]) == (304, b"", etag)
            # A range of a file sent from disk (not held in memory): offsets into the file.
            part = await client.get("/big.bin", headers=[(b"range", b"bytes=1000000-1999999")])
            assert part.status == 206
            assert part.headers[b"content-range"] == b"bytes 1000000-1999999/%d" % len(big)
            assert bytes(part.body) == big[1000000:2000000]
            # Several ranges: multipart, file slices interleaved with part headers held in memory.
            multi = await client.get("/big.bin", headers=[(b"range", b"bytes=0-9,2000000-2000009")])
            assert multi.status == 206
            assert multi.headers[b"content-type"].startswith(b"multipart/byteranges; boundary=")
            assert len(multi.body) == int(multi.headers[b"content-length"])
            assert big[0:10] in multi.body and big[2000000:2000010] in multi.body

    run(scenario())


def test_limits_and_malformed_requests(start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA) -> None:
    limits = {"max_uri_bytes": 64, "max_header_count": 10, "max_body_bytes": 1024}
    server = start_server(base_config(site, localhost_cert, limits=limits))
    port = quic_port(server)

    def pseudo(*skip: bytes) -> list[tuple[bytes, bytes]]:
        full = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"), (b":path", b"/")]
        return [f for f in full if f[0] not in skip]

    async def scenario() -> None:
        async with connect(port, ca.pem) as client:
            assert (await client.get("/" + "a" * 100)).status == 414
            many = [(b"x-h%d" % i, b"v") for i in range(20)]
            assert (await client.get("/hello.txt", headers=many)).status == 431
            # Refused on the declared length alone, before any of the body is sent.
            length = [(b"content-length", b"5000")]
            declared = await client.get("/hello.txt", method="POST", headers=length, end=False)
            assert declared.status == 413
            streamed = await client.get("/hello.txt", method="POST", body=b"x" * 5000)
            assert streamed.status == 413
            # RFC 9114 section 4.3.1: :scheme and :path are mandatory outside CONNECT. A missing
            # :scheme is this server's to catch: a 400 on the stream.
            assert (await client.get("", fields=pseudo(b":scheme"))).status == 400
            # The connection survived all of the above.
            assert (await client.get("/hello.txt")).body == HELLO
        # Malformed messages aioquic catches end the connection (RFC 9114 section 8 allows it for any stream error).
        for bad in ([*pseudo(b":path")], [*pseudo(), (b"X-Upper", b"1")]):
            async with connect(port, ca.pem) as client:
                client.request("GET", "", fields=bad)
                closed = await asyncio.wait_for(client.terminated, 10)
                assert closed.error_code == H3_MESSAGE_ERROR, closed

    run(scenario())


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)
    assert found, status
    return int(found.group(1)) * 1024


def test_file_bodies_are_read_as_the_peer_acknowledges(
    start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA
) -> None:
    """A 512 MiB file to a peer that stops reading costs the worker a window, not the file; then send_timeout."""
    with open(site / "sparse.bin", "wb") as fh:
        fh.truncate(512 << 20)  # no disk blocks, but every byte read from it is real memory
    server = start_server(base_config(site, localhost_cert, limits={"send_timeout": 2.0}))
    worker = server.state["workers"][0]

    async def scenario() -> int:
        async with connect(quic_port(server), ca.pem) as client:
            before = await asyncio.to_thread(rss, worker)
            download = client.request("GET", "/sparse.bin")
            while len(download.body) < 1 << 20:
                await asyncio.sleep(0.005)
            client.transport.close()  # the peer goes silent: no more acknowledgements
            await asyncio.sleep(1.0)
            return await asyncio.to_thread(rss, worker) - before

    grew = run(scenario())
    assert grew < 64 << 20, f"worker grew by {grew >> 20} MiB"
    wait_for(lambda: quic_open(server) == 0, 8.0, "stalled connection closed by send_timeout")


def test_access_log_records_http3(start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA) -> None:
    log = site.parent / "access.log"
    config = base_config(site, localhost_cert, access_log={"enabled": True, "path": str(log), "flush_interval": 0.1})
    server = start_server(config)

    async def scenario() -> None:
        async with connect(quic_port(server), ca.pem) as client:
            assert (await client.get("/hello.txt")).status == 200

    run(scenario())
    wait_for(lambda: log.exists() and "HTTP/3" in log.read_text(), 5.0, "access log written")
    record = json.loads(next(line for line in log.read_text().splitlines() if "HTTP/3" in line))
    assert record["method"] == "GET" and record["path"] == "/hello.txt"
    assert (record["status"], record["bytes"], record["protocol"]) == (200, 12, "HTTP/3")
    assert (record["tls"], record["sni"], record["client"]) == ("TLSv1.3", "localhost", LOCAL)


def test_reload_reaches_open_quic_connections(
    start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA
) -> None:
    config = base_config(site, localhost_cert)
    server = start_server(config)

    async def scenario() -> None:
        async with connect(quic_port(server), ca.pem) as client:
            assert b"cache-control" not in (await client.get("/hello.txt")).headers
            changed = {**config, "routes": [{"path": "/", "static": {"root": str(site), "cache_control": "max-age=7"}}]}
            server.write_config(changed)
            server.signal(signal.SIGHUP)
            await asyncio.to_thread(wait_for, lambda: events(server, "config.reloaded"), 5.0, "reloaded")
            assert (await client.get("/hello.txt")).headers[b"cache-control"] == b"max-age=7"
            # Turning HTTP/3 off would need the UDP socket the supervisor bound at start: refused.
            off = {
                **changed,
                "listeners": [{**config["listeners"][0], "quic": {"enabled": False}}, config["listeners"][1]],
            }
            server.write_config(off)
            server.signal(signal.SIGHUP)
            await asyncio.to_thread(wait_for, lambda: events(server, "config.reload_refused"), 5.0, "refused")
            assert (
                "listeners[0].quic.enabled: turning HTTP/3 on or off needs a restart"
                in (events(server, "config.reload_refused")[0]["msg"])
            )
            assert (await client.get("/hello.txt")).body == HELLO

    run(scenario())


def test_request_cancelled_with_its_headers(h3_server: Server, site: Path, ca: CA) -> None:
    """STOP_SENDING in the same packet as the request: nothing to answer, and nothing breaks."""
    expected = (site / "big.bin").read_bytes()

    async def scenario() -> None:
        async with connect(quic_port(h3_server), ca.pem) as client:
            for path in ("/hello.txt", "/big.bin"):
                stream_id = client.quic.get_next_available_stream_id()
                client.h3.send_headers(stream_id, [
                    (b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
                    (b":path", path.encode()),
                ], end_stream=True)  # fmt: skip
                client.quic.stop_stream(stream_id, int(ErrorCode.H3_REQUEST_CANCELLED))
                client.transmit()
            # A download cancelled half-way stops being sent; the connection carries on.
            download = client.request("GET", "/big.bin")
            while len(download.body) < 256 * 1024:
                await asyncio.sleep(0.005)
            client.quic.stop_stream(client.quic.get_next_available_stream_id() - 4, int(ErrorCode.H3_REQUEST_CANCELLED))
            client.transmit()
            assert (await client.get("/big.bin")).body == expected
            assert (await client.get("/hello.txt")).body == HELLO

    run(scenario())
    assert "Traceback" not in h3_server.log(), h3_server.log()[-3000:]


# --------------------------------------------------------------------------- tickets, 0-RTT, resumption


def test_0rtt_runs_safe_methods_early_and_answers_425_to_others(h3_server: Server, ca: CA) -> None:
    port = quic_port(h3_server)

    async def scenario() -> None:
        ticket = await fetch_ticket(port, ca.pem)
        assert ticket.max_early_data_size  # the server offers 0-RTT
        async with connect(port, ca.pem, ticket=ticket, handshake=False) as client:
            get = client.request("GET", "/hello.txt")
            post = client.request("POST", "/hello.txt", body=b"payload")
            await asyncio.wait_for(asyncio.gather(get.done, post.done, client.connected), 20)
            assert client.handshake is not None
            assert client.handshake.session_resumed and client.handshake.early_data_accepted
            assert (get.status, bytes(get.body)) == (200, HELLO)
            assert post.status == 425
            # Once the handshake is complete the same request reaches routing (GET and HEAD only here).
            assert (await client.get("/hello.txt", method="POST", body=b"payload")).status == 405

    run(scenario())
    counts = quic_events(h3_server)
    assert counts.get("early_data") == 1, counts
    assert counts.get("too_early") == 1, counts


def test_session_tickets_resume_once(h3_server: Server, ca: CA) -> None:
    port = quic_port(h3_server)

    async def scenario() -> None:
        ticket = await fetch_ticket(port, ca.pem)
        async with connect(port, ca.pem, ticket=ticket) as client:
            assert client.handshake is not None and client.handshake.session_resumed
            assert (await client.get("/hello.txt")).body == HELLO
        # Single use: a replayed ClientHello gets a full handshake, so its 0-RTT data is never run twice.
        async with connect(port, ca.pem, ticket=ticket) as client:
            assert client.handshake is not None and not client.handshake.session_resumed
            assert (await client.get("/hello.txt")).body == HELLO

    run(scenario())
    counts = quic_events(h3_server)
    assert counts.get("resumed") == 1, counts
    assert counts.get("handshakes") == 3, counts


def test_early_data_disabled(start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA) -> None:
    config = base_config(site, localhost_cert)
    config["listeners"][0]["quic"] = {"early_data": False}
    server = start_server(config)
    port = quic_port(server)

    async def scenario() -> None:
        ticket = await fetch_ticket(port, ca.pem)
        assert ticket.max_early_data_size is None  # clients are told not to try
        async with connect(port, ca.pem, ticket=ticket, handshake=False) as client:
            get = client.request("GET", "/hello.txt")  # held until the handshake completes
            await asyncio.wait_for(asyncio.gather(get.done, client.connected), 20)
            assert client.handshake is not None
            assert client.handshake.session_resumed and not client.handshake.early_data_accepted
            assert get.body == HELLO

    run(scenario())
    counts = quic_events(server)
    assert counts.get("resumed") == 1 and "early_data" not in counts, counts


# --------------------------------------------------------------------------- addresses: Retry, rebinding, migration


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "no-retry"])
def test_retry(start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA, retry: bool) -> None:
    config = base_config(site, localhost_cert)
    config["listeners"][0]["quic"] = {"retry": retry}
    server = start_server(config)
    logger = QuicLogger()

    async def scenario() -> None:
        async with connect(quic_port(server), ca.pem, logger=logger) as client:
            assert (await client.get("/hello.txt")).body == HELLO

    run(scenario())
    retries = [
        e
        for trace in logger.to_dict()["traces"]
        for e in trace["events"]
        if e["name"] == "transport:packet_received" and e["data"]["header"]["packet_type"] == "retry"
    ]
    assert len(retries) == (1 if retry else 0)
    assert quic_events(server).get("retry", 0) == (1 if retry else 0)


@pytest.mark.parametrize("new_cid", [False, True], ids=["nat-rebinding", "migration"])
def test_address_change_keeps_the_connection(h3_server: Server, site: Path, ca: CA, new_cid: bool) -> None:
    """NAT rebinding: same connection ID from a new port; migration: a new connection ID as well."""
    big = (site / "big.bin").read_bytes()

    async def scenario() -> None:
        async with connect(quic_port(h3_server), ca.pem) as client:
            first = client.transport.get_extra_info("sockname")[1]
            assert (await client.get("/hello.txt")).body == HELLO
            download = client.request("GET", "/big.bin")
            while len(download.body) < 256 * 1024:
                await asyncio.sleep(0.005)
            assert not download.done.done()
            port = await client.rebind()
            assert port != first
            if new_cid:
                client.quic.change_connection_id()
            # A client that only downloads may have nothing to send after the move, and the server
            # keeps sending to the old port until it hears from the new one: a PING (as a keep-alive
            # would) is ack-eliciting, so it is retransmitted until the server has seen the new port.
            client.quic.send_ping(1)
            client.transmit()
            await asyncio.wait_for(asyncio.shield(download.done), 30)
            assert bytes(download.body) == big  # its tail could only reach the new port
            assert (await client.get("/hello.txt")).body == HELLO

    run(scenario())


# --------------------------------------------------------------------------- lifecycle: GOAWAY, idle timeout


def test_sigterm_sends_goaway_and_finishes_the_download(
    start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA
) -> None:
    huge = bytes(range(256)) * 4096 * 24  # 24 MiB: still downloading when the signal lands
    (site / "huge.bin").write_bytes(huge)
    server = start_server(base_config(site, localhost_cert, server={"drain_timeout": 30.0}))

    async def scenario() -> None:
        async with connect(quic_port(server), ca.pem) as client:
            download = client.request("GET", "/huge.bin")
            while len(download.body) < 1 << 20:
                await asyncio.sleep(0.005)
            server.signal(signal.SIGTERM)
            while not client.goaways:
                await asyncio.sleep(0.005)
            received_at_goaway = len(download.body)
            assert client.goaways == [4]  # stream 0 is processed, nothing from 4 on
            late = client.request("GET", "/hello.txt")  # stream 4: refused, safe to retry elsewhere
            await asyncio.wait_for(asyncio.shield(download.done), 60)
            assert received_at_goaway < len(huge)
            assert hashlib.sha256(download.body).digest() == hashlib.sha256(huge).digest()
            await asyncio.wait_for(asyncio.shield(late.done), 10)
            assert late.reset == H3_REQUEST_REJECTED
            closed = await asyncio.wait_for(client.terminated, 15)
            assert closed.error_code == H3_NO_ERROR

    run(scenario())
    assert server.wait(30) == 0


def test_sigterm_closes_an_idle_connection_after_the_grace(h3_server: Server, ca: CA) -> None:
    async def scenario() -> float:
        async with connect(quic_port(h3_server), ca.pem) as client:
            assert (await client.get("/hello.txt")).body == HELLO
            start = time.monotonic()
            h3_server.signal(signal.SIGTERM)
            closed = await asyncio.wait_for(client.terminated, 10)
            assert client.goaways == [4]
            assert closed.error_code == H3_NO_ERROR
            return time.monotonic() - start

    took = run(scenario())
    assert 0.4 <= took <= 3.0, took  # drain_idle_grace is 0.5 s
    assert h3_server.wait(10) == 0


def test_handshake_timeout(start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA) -> None:
    """A client that sends its first flight and nothing more is dropped after limits.handshake_timeout."""
    server = start_server(base_config(site, localhost_cert, limits={"handshake_timeout": 1.0}))
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="localhost")
    quic = QuicConnection(configuration=config)
    quic.connect((LOCAL, quic_port(server)), now=time.monotonic())
    with udp_socket() as sock:
        for data, addr in quic.datagrams_to_send(now=time.monotonic()):
            sock.sendto(data, addr)
        wait_for(lambda: quic_open(server) == 1, 5.0, "half-open connection seen")
        took = wait_for(lambda: quic_open(server) == 0, 5.0, "half-open connection dropped")
    assert took <= 3.0, took


def test_garbage_datagrams_are_dropped(h3_server: Server, ca: CA) -> None:
    """Random bytes shaped like QUIC packets (long and short headers, Initials, unknown versions) harm nothing."""
    port = quic_port(h3_server)
    rng = random.Random(1234)
    with udp_socket() as sock:
        for i in range(300):
            size = rng.choice([1, 20, 1199, 1200, 1350])
            body = rng.randbytes(size)
            if i % 3 == 0:  # a long-header Initial of version 1 with an 8-byte connection ID, then garbage
                body = (b"\xc3\x00\x00\x00\x01\x08" + rng.randbytes(8) + b"\x00" + body)[:size]
            elif i % 3 == 1:  # an unknown version: answered with Version Negotiation when large enough
                body = (b"\xc3\x1a\x2a\x3a\x4a\x08" + rng.randbytes(8) + b"\x00" + body)[:size]
            sock.sendto(body, (LOCAL, port))
    assert run(handshake_ok(port, ca.pem, "localhost"))
    assert "Traceback" not in h3_server.log(), h3_server.log()[-3000:]


def test_file_truncated_while_served_resets_the_stream(h3_server: Server, site: Path, ca: CA) -> None:
    big = site / "big.bin"
    expected = big.read_bytes()

    async def scenario() -> None:
        async with connect(quic_port(h3_server), ca.pem) as client:
            assert (await client.get("/big.bin")).body == expected  # now cached, with its length
            with open(big, "r+b") as fh:
                fh.truncate(1000)
            cut = await client.get("/big.bin")
            # Within the cache's revalidation tick the old length is still promised: the stream is cut,
            # never padded or left hanging. After it, the new length is served.
            assert cut.reset == int(ErrorCode.H3_INTERNAL_ERROR) or cut.body == expected[:1000], cut.status
            for _ in range(40):
                again = await client.get("/big.bin")
                if again.reset is None and again.body == expected[:1000]:
                    break
                await asyncio.sleep(0.1)
            assert (again.status, bytes(again.body)) == (200, expected[:1000])

    run(scenario())
    assert "worker.restart" not in h3_server.log()


def test_idle_timeout_closes_the_connection(
    start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA
) -> None:
    config = base_config(site, localhost_cert)
    config["listeners"][0]["quic"] = {"idle_timeout": 1.0}
    server = start_server(config)

    async def scenario() -> float:
        async with connect(quic_port(server), ca.pem, idle_timeout=60.0) as client:
            assert (await client.get("/hello.txt")).body == HELLO
            assert await asyncio.to_thread(quic_open, server) == 1
            start = time.monotonic()
            closed = await asyncio.wait_for(client.terminated, 10)
            # The client asked for 60 s; the 1 s it timed out after came from the server's transport parameters.
            assert closed.reason_phrase == "Idle timeout"
            return time.monotonic() - start

    took = run(scenario())
    assert 0.8 <= took <= 4.0, took
    wait_for(lambda: quic_open(server) == 0, 5.0, "server forgot the idle connection")


# --------------------------------------------------------------------------- certificates


def test_sni_chooses_the_certificate_and_sees_hot_reload(
    start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA, tmp_path: Path
) -> None:
    other_ca = CA(tmp_path / "other-pki", name="other CA")
    other = other_ca.issue("other", ["other.test"])
    config = base_config(site, localhost_cert)
    config["listeners"][0]["tls"]["certs"].append({"cert": str(other.cert), "key": str(other.key)})
    server = start_server(config)
    port = quic_port(server)

    # Each name verifies only against its own CA: the server must have picked by SNI.
    assert run(handshake_ok(port, ca.pem, "localhost"))
    assert run(handshake_ok(port, other_ca.pem, "other.test"))
    assert not run(handshake_ok(port, ca.pem, "other.test"))

    rotated_ca = CA(tmp_path / "rotated-pki", name="rotated CA")
    rotated = rotated_ca.issue("other", ["other.test"])
    write_atomic(other.key, rotated.key.read_bytes())
    write_atomic(other.cert, rotated.cert.read_bytes())
    wait_for(lambda: run(handshake_ok(port, rotated_ca.pem, "other.test")), 10.0, "rotated certificate served")
    assert run(handshake_ok(port, ca.pem, "localhost"))


# --------------------------------------------------------------------------- process model


def test_only_worker_0_serves_quic_and_survives_its_restart(
    start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA
) -> None:
    server = start_server(base_config(site, localhost_cert), workers=2)
    port = quic_port(server)
    pids = list(server.state["workers"])

    def inodes(pid: int) -> set[str]:
        fds = Path(f"/proc/{pid}/fd")
        return {str(fd.readlink()) for fd in fds.iterdir() if fd.is_symlink()}

    def udp_inode() -> str:
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[1].rpartition(":")[2], 16) == port:
                return f"socket:[{cols[9]}]"
        raise AssertionError("no UDP socket on the port")

    sock = udp_inode()
    assert sock in inodes(pids[0]) and sock not in inodes(pids[1])
    assert run(handshake_ok(port, ca.pem, "localhost"))

    os.kill(pids[0], signal.SIGKILL)
    wait_for(lambda: server.refresh_state()["workers"][0] not in (0, pids[0]), 10.0, "worker 0 restarted")
    assert udp_inode() == sock  # the supervisor's socket, not a new bind
    wait_for(lambda: run(handshake_ok(port, ca.pem, "localhost")), 10.0, "QUIC served again")


# --------------------------------------------------------------------------- curl_cffi (libcurl with HTTP/3)


def test_curl_http3_get_and_large_body(h3_server: Server, site: Path, ca: CA) -> None:
    base = f"https://{LOCAL}:{quic_port(h3_server)}"
    small = curl.get(base + "/hello.txt", http_version=CurlHttpVersion.V3ONLY, verify=str(ca.pem), timeout=20)
    assert (small.status_code, small.http_version, small.content) == (200, CURL_HTTP3, HELLO)
    big = curl.get(base + "/big.bin", http_version=CurlHttpVersion.V3ONLY, verify=str(ca.pem), timeout=60)
    assert big.http_version == CURL_HTTP3
    assert big.content == (site / "big.bin").read_bytes()


@pytest.mark.parametrize(
    ("version", "reported"),
    [(CurlHttpVersion.V1_1, CURL_HTTP11), (CurlHttpVersion.V2TLS, CURL_HTTP2)],
    ids=["http1.1", "http2"],
)
def test_alt_svc_on_tcp_responses(h3_server: Server, ca: CA, version: CurlHttpVersion, reported: int) -> None:
    host, port = h3_server.address("https")
    got = curl.get(f"https://{host}:{port}/hello.txt", http_version=version, verify=str(ca.pem), timeout=20)
    assert (got.status_code, got.http_version) == (200, reported)
    assert got.headers["alt-svc"] == f'h3=":{quic_port(h3_server)}"; ma=86400'


def test_no_quic_no_alt_svc(start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA) -> None:
    config = base_config(site, localhost_cert)
    config["listeners"][0]["quic"] = {"enabled": False}
    server = start_server(config)
    assert server.state["quic"] == {}
    host, port = server.address("https")
    got = curl.get(f"https://{host}:{port}/hello.txt", verify=str(ca.pem), timeout=20)
    assert got.status_code == 200 and "alt-svc" not in got.headers
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOCAL, port))  # nothing holds the UDP port


# --------------------------------------------------------------------------- gtlsclient (ngtcp2 + GnuTLS)


def gtlsclient(port: int, *paths: str, args: tuple[str, ...] = (), timeout: float = 60) -> str:
    """Run ngtcp2's client against 127.0.0.1:`port`; returns its log, which names every frame it sent and got."""
    uris = [f"https://localhost:{port}{p}" for p in paths]
    cmd = ["gtlsclient", "--exit-on-all-streams-close", "--no-quic-dump", "--no-http-dump", *args, LOCAL, str(port)]
    proc = subprocess.run([*cmd, *uris], capture_output=True, timeout=timeout, check=False)
    log = proc.stdout.decode("latin-1") + proc.stderr.decode("latin-1")
    assert proc.returncode == 0, log[-4000:]
    return log


def statuses(log: str) -> list[int]:
    return [int(s) for s in re.findall(r"^http: stream 0x[0-9a-f]+ \[:status: (\d+)\]$", log, re.M)]


def test_gtlsclient_get_and_large_body(h3_server: Server, site: Path, tmp_path: Path) -> None:
    out = tmp_path / "dl"
    out.mkdir()
    log = gtlsclient(quic_port(h3_server), "/hello.txt", "/big.bin", args=(f"--download={out}",))
    assert statuses(log) == [200, 200]
    assert "Negotiated ALPN is h3" in log
    assert (out / "hello.txt").read_bytes() == HELLO
    assert (out / "big.bin").read_bytes() == (site / "big.bin").read_bytes()


def test_gtlsclient_key_update(h3_server: Server, site: Path, tmp_path: Path) -> None:
    out = tmp_path / "dl"
    out.mkdir()
    log = gtlsclient(quic_port(h3_server), "/big.bin", args=(f"--download={out}", "--key-update=20ms"))
    assert "Initiate key update" in log
    assert "key update confirmed" in log  # the server answered in the new key phase
    assert (out / "big.bin").read_bytes() == (site / "big.bin").read_bytes()


def test_gtlsclient_nat_rebinding(
    start_server: StartServer, site: Path, localhost_cert: Issued, tmp_path: Path
) -> None:
    """The client moves to a new port mid-upload without telling the server (no path validation of its own).

    ngtcp2's client only sends after a rebinding if it has data of its own, hence an upload: the server
    answers 405 (the route serves GET and HEAD) only once the whole body has arrived, across the move.
    """
    server = start_server(base_config(site, localhost_cert, limits={"max_body_bytes": 4 << 20}))
    upload = tmp_path / "upload.bin"
    upload.write_bytes(bytes(range(256)) * 4096 * 2)  # 2 MiB: still uploading when the port changes
    args = ("-m", "POST", f"--data={upload}", "--change-local-addr=20ms", "--nat-rebinding")
    log = gtlsclient(quic_port(server), "/hello.txt", args=args)
    moved = re.search(r"^Local address is now \[127\.0\.0\.1\]:(\d+)$", log, re.M)
    assert moved, log[-4000:]
    after = log[moved.end() :]
    assert "PATH_CHALLENGE" in after  # the server validated the new path
    assert f"Received packet: local=[127.0.0.1]:{moved.group(1)} remote=[127.0.0.1]:{quic_port(server)}" in after
    assert statuses(log) == [405]  # not 413: every byte of the body arrived


def test_gtlsclient_resumes_with_a_session_file(h3_server: Server, tmp_path: Path) -> None:
    port = quic_port(h3_server)
    files = (f"--session-file={tmp_path / 'session'}", f"--tp-file={tmp_path / 'tp'}")
    first = gtlsclient(port, "/hello.txt", args=files)
    assert statuses(first) == [200]
    assert (tmp_path / "session").stat().st_size > 0
    second = gtlsclient(port, "/hello.txt", args=files)
    assert statuses(second) == [200]
    assert re.search(r"frm tx \d+ 0RTT STREAM\(0x0b\) id=0x0 fin=1", second)  # the request went out as 0-RTT
    assert "Early data was rejected" not in second
    counts = quic_events(h3_server)
    assert counts.get("resumed") == 1 and counts.get("early_data") == 1, counts


def test_gtlsclient_sees_retry_and_transport_parameters(
    start_server: StartServer, site: Path, localhost_cert: Issued
) -> None:
    config = base_config(site, localhost_cert)
    config["listeners"][0]["quic"] = {"retry": True, "max_streams": 7, "idle_timeout": 5.0}
    server = start_server(config)
    log = gtlsclient(quic_port(server), "/hello.txt")
    assert statuses(log) == [200]
    assert re.search(r"pkt rx pkn=\d+ dcid=\S+ scid=\S+ .*type=Retry", log)
    assert "transport_parameters initial_max_streams_bidi=7" in log
    assert "transport_parameters max_idle_timeout=5000" in log

"""PROXY protocol listeners and per-address connection caps, against the real server.

The parser is tested byte by byte here too, but the point of these tests is
the socket handling: the header is read off the socket exactly, so TLS and
HTTP bytes sent in the same segment are left intact; only listed balancers
are believed; and the address a header names is the one the access log,
and the connection cap, see.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hyperframe.frame import SettingsFrame

from ingress.errors import ProtocolError
from ingress.protocol.proxy import V1_MAX, V2_MAX, ProxyHeader, parse_proxy_header, v1_header, v2_header
from tests.conftest import base_config
from tests.h2client import H2Client, h2_context
from tests.pki import CA, Issued
from tests.server import Server, wait_for

StartServer = Callable[..., Server]
LOCAL = "127.0.0.1"
BALANCERS = ["127.0.0.0/8", "::1"]

# --------------------------------------------------------------------------- the parser


def test_v1_tcp4_and_tcp6() -> None:
    line = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n"
    assert parse_proxy_header(line + b"GET /", "v1") == ProxyHeader(len(line), "203.0.113.7", 1)
    line6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\n"
    assert parse_proxy_header(line6 + b"\x16\x03\x01", "any") == ProxyHeader(len(line6), "2001:db8::7", 1)
    mapped = b"PROXY TCP6 ::ffff:203.0.113.7 ::1 1 2\r\n"
    assert parse_proxy_header(mapped) == ProxyHeader(len(mapped), "203.0.113.7", 1)


def test_v1_unknown_uses_the_socket_address() -> None:
    assert parse_proxy_header(b"PROXY UNKNOWN\r\n") == ProxyHeader(15, "", 1)
    line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"
    assert parse_proxy_header(line) == ProxyHeader(len(line), "", 1)


def test_v1_needs_more_only_while_every_byte_is_header() -> None:
    line = v1_header("203.0.113.7", "10.0.0.1", 1234, 443)
    for i in range(len(line)):
        assert parse_proxy_header(line[:i], "v1") is None, line[:i]
    assert parse_proxy_header(line) == ProxyHeader(len(line), "203.0.113.7", 1)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "expected a PROXY protocol header"),
        (b"\x16\x03\x01\x02\x00", "expected a PROXY protocol header"),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2\n", "bare LF"),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 1\r\n", "must be 'PROXY TCP4|TCP6"),
        (b"PROXY TCP5 203.0.113.7 10.0.0.1 1 2\r\n", "must be 'PROXY TCP4|TCP6"),
        (b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n", "not TCP4"),
        (b"PROXY TCP6 203.0.113.7 ::1 1 2\r\n", "not TCP6"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "zone id"),
        (b"PROXY TCP4 203.0.113.07 10.0.0.1 1 2\r\n", "not TCP4"),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 1 65536\r\n", "from 0 to 65535"),
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 -1 2\r\n", "from 0 to 65535"),
        (b"PROXY  TCP4 203.0.113.7 10.0.0.1 1 2\r\n", "must be 'PROXY TCP4|TCP6"),
        (b"PROXY" + b"x" * 200, "'PROXY '"),
        (b"PROXY " + b"x" * 200, f"no CRLF within {V1_MAX} bytes"),
        (b"PROXY\r\n", "'PROXY '"),
    ],
)
def test_v1_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_proxy_header(data)
    assert reason in info.value.reason


def test_v2_tcp4_tcp6_with_tlvs() -> None:
    tlv = b"\x05\x00\x04abcd"  # PP2_TYPE_UNIQUE_ID, skipped
    header = v2_header("203.0.113.7", "10.0.0.1", 1234, 443, tlv)
    assert parse_proxy_header(header + b"\x16\x03\x01", "v2") == ProxyHeader(len(header), "203.0.113.7", 2)
    header6 = v2_header("2001:db8::7", "2001:db8::1", 1234, 443)
    assert parse_proxy_header(header6, "any") == ProxyHeader(len(header6), "2001:db8::7", 2)
    for i in range(len(header)):
        assert parse_proxy_header(header[:i]) is None


def test_v2_local_unix_udp_and_unspec_use_the_socket_address() -> None:
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    local = sig + b"\x20\x00\x00\x00"
    assert parse_proxy_header(local) == ProxyHeader(16, "", 2)
    local_with_addresses = sig + b"\x20\x11\x00\x0c" + bytes(12)
    assert parse_proxy_header(local_with_addresses) == ProxyHeader(28, "", 2)
    udp = sig + b"\x21\x12\x00\x0c" + bytes(12)
    assert parse_proxy_header(udp) == ProxyHeader(28, "", 2)
    unix = sig + b"\x21\x31\x00\xd8" + bytes(216)
    assert parse_proxy_header(unix) == ProxyHeader(232, "", 2)
    unspec = sig + b"\x21\x00\x00\x00"
    assert parse_proxy_header(unspec) == ProxyHeader(16, "", 2)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\r\n\r\n\x00\r\nQUIX\n", "signature"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x0c", "version 1 is not 2"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c", "command 2"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x13\x00\x0c", "0x13 is not defined"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x08", "too short"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x0c", "too short"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff", f"longer than the {V2_MAX}"),
    ],
)
def test_v2_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_proxy_header(data)
    assert reason in info.value.reason


def test_versions_are_enforced() -> None:
    with pytest.raises(ProtocolError, match="v1"):
        parse_proxy_header(v2_header("203.0.113.7", "10.0.0.1", 1, 2), "v1")
    with pytest.raises(ProtocolError, match="v2"):
        parse_proxy_header(v1_header("203.0.113.7", "10.0.0.1", 1, 2), "v2")


# --------------------------------------------------------------------------- the server


@dataclass
class Edge:
    server: Server
    log: Path

    def port(self, listener: str) -> int:
        return self.server.address(listener)[1]

    def records(self) -> list[dict[str, Any]]:
        """Access-log records of the listeners under test (not the admin listener's /metrics)."""
        if not self.log.exists():
            return []
        found = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [r for r in found if r["path"] != "/metrics"]

    def wait_records(self, count: int) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.records()) >= count, 5.0, f"{count} access-log records")
        return self.records()

    def metric(self, name: str, **labels: str) -> int:
        with socket.create_connection(_admin(self.server), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            text = _read_all(s).decode()
        want = "".join(f',{k}="{v}"' for k, v in labels.items())
        found = re.search(r"^" + re.escape(name) + r'\{worker="0"' + re.escape(want) + r"\} (\d+)$", text, re.M)
        assert found, (name, labels, text)
        return int(found.group(1))


def _admin(server: Server) -> tuple[str, int]:
    host, _, port = server.state["admin"].rpartition(":")
    return host, int(port)


def _read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    out = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


def proxy_config(site: Path, cert: Issued, log: Path, **overrides: Any) -> dict[str, Any]:
    config = base_config(site, cert, access_log={"enabled": True, "path": str(log), "flush_interval": 0.05})
    https, http = config["listeners"]
    https.update(proxy_protocol="any", proxy_from=BALANCERS, quic={"enabled": False})
    http.update(proxy_protocol="any", proxy_from=BALANCERS)
    config["listeners"].append(
        {"name": "elsewhere", "address": "127.0.0.1:0", "proxy_protocol": "v2", "proxy_from": ["192.0.2.0/24"]}
    )
    config["limits"] = {"handshake_timeout": 0.5}
    config.update(overrides)
    return config


@pytest.fixture
def edge(start_server: StartServer, site: Path, localhost_cert: Issued) -> Edge:
    log = site.parent / "access.log"
    return Edge(start_server(proxy_config(site, localhost_cert, log)), log)


GET = b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
KEEP = b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\n\r\n"


def response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with Content-Length, read off a blocking socket."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def tls_client(ca: CA, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.pem))
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def closed_without_answer(sock: socket.socket, timeout: float = 3.0) -> bool:
    """True when the server closes (FIN or RST) without sending a byte."""
    try:
        return _read_all(sock, timeout) == b""
    except TimeoutError:
        return False


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "5", *args], capture_output=True, timeout=10, check=False)


def curl_clientip() -> bool:
    """curl 8.2 added --haproxy-clientip (the address the v1 header names); older curls send their own."""
    return b"--haproxy-clientip" in subprocess.run(["curl", "--help", "all"], capture_output=True, check=False).stdout


def test_curl_v1_over_plain_http(edge: Edge) -> None:
    claimed = ["--haproxy-clientip", "203.0.113.7"] if curl_clientip() else []
    out = curl("--haproxy-protocol", *claimed, f"http://{LOCAL}:{edge.port('http')}/hello.txt")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello world\n"
    (record,) = edge.wait_records(1)
    assert record["client"] == ("203.0.113.7" if claimed else LOCAL)
    assert record["protocol"] == "HTTP/1.1" and record["status"] == 200


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_curl_v1_over_https(edge: Edge, ca: CA, version: str) -> None:
    port = edge.port("https")
    claimed = ["--haproxy-clientip", "203.0.113.7"] if curl_clientip() else []
    out = curl(
        "--haproxy-protocol",
        *claimed,
        version,
        "--cacert",
        str(ca.pem),
        "--resolve",
        f"localhost:{port}:{LOCAL}",
        f"https://localhost:{port}/hello.txt",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello world\n"
    (record,) = edge.wait_records(1)
    assert record["protocol"] == ("HTTP/2" if version == "--http2" else "HTTP/1.1")
    assert record["client"] == ("203.0.113.7" if claimed else LOCAL)
    assert record["tls"].startswith("TLSv1.")


def test_v1_header_and_request_in_one_segment(edge: Edge) -> None:
    port = edge.port("http")
    with socket.create_connection((LOCAL, port), timeout=5) as sock:
        sock.sendall(v1_header("203.0.113.7", LOCAL, 40000, port) + GET)
        assert response(sock) == (200, b"hello world\n")
    (record,) = edge.wait_records(1)
    assert record["client"] == "203.0.113.7"


def test_v2_header_then_tls_http11(edge: Edge, ca: CA) -> None:
    port = edge.port("https")
    raw = socket.create_connection((LOCAL, port), timeout=5)
    raw.sendall(v2_header("2001:db8::7", "2001:db8::1", 40000, 443, b"\x05\x00\x02id"))
    with tls_client(ca).wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(GET)
        assert response(sock) == (200, b"hello world\n")
    (record,) = edge.wait_records(1)
    assert record["client"] == "2001:db8::7"
    assert record["protocol"] == "HTTP/1.1" and record["sni"] == "localhost"


def test_v2_header_then_tls_http2(edge: Edge, ca: CA) -> None:
    port = edge.port("https")
    raw = socket.create_connection((LOCAL, port), timeout=5)
    raw.sendall(v2_header("198.51.100.20", LOCAL, 40000, port))
    sock = h2_context(ca.pem).wrap_socket(raw, server_hostname="localhost")
    client = H2Client(sock)
    try:
        stream = client.get("/hello.txt")
        assert (stream.status, stream.body) == (200, b"hello world\n")
    finally:
        client.close()
    (record,) = edge.wait_records(1)
    assert (record["client"], record["protocol"]) == ("198.51.100.20", "HTTP/2")


def test_header_dribbled_byte_by_byte(edge: Edge, ca: CA) -> None:
    """Every partial read consumes only header bytes; the TLS stream after it is untouched."""
    port = edge.port("https")
    raw = socket.create_connection((LOCAL, port), timeout=5)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in v1_header("203.0.113.9", LOCAL, 40000, port):
        raw.send(bytes([byte]))
        time.sleep(0.002)
    with tls_client(ca).wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(GET)
        assert response(sock) == (200, b"hello world\n")
    (record,) = edge.wait_records(1)
    assert record["client"] == "203.0.113.9"


def test_local_command_is_the_balancer_itself(edge: Edge) -> None:
    port = edge.port("http")
    with socket.create_connection((LOCAL, port), timeout=5) as sock:
        sock.sendall(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00" + GET)
        assert response(sock)[0] == 200
    (record,) = edge.wait_records(1)
    assert record["client"] == LOCAL


def test_malformed_header_closes_and_counts(edge: Edge, ca: CA) -> None:
    port = edge.port("http")
    with socket.create_connection((LOCAL, port), timeout=5) as sock:
        sock.sendall(GET)  # no header at all
        assert closed_without_answer(sock)
    raw = socket.create_connection((LOCAL, edge.port("https")), timeout=5)
    with pytest.raises((ssl.SSLError, ConnectionError)):  # a ClientHello is not a header either
        tls_client(ca).wrap_socket(raw, server_hostname="localhost")
    raw.close()
    with socket.create_connection((LOCAL, port), timeout=5) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 nonsense 1 2\r\n" + GET)
        assert closed_without_answer(sock)
    with socket.create_connection((LOCAL, port), timeout=5) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113")  # cut short
    wait_for(lambda: edge.metric("edgeward_proxy_protocol_errors_total", reason="truncated") == 1, 3, "truncated")
    assert edge.metric("edgeward_proxy_protocol_errors_total", reason="malformed") == 3
    assert edge.records() == []


def test_peer_not_in_proxy_from_is_refused(edge: Edge) -> None:
    port = edge.port("elsewhere")
    with socket.create_connection((LOCAL, port), timeout=5) as sock:
        sock.sendall(v2_header("203.0.113.7", LOCAL, 1, port) + GET)
        assert closed_without_answer(sock)
    assert edge.metric("edgeward_connections_refused_total", reason="proxy_from") == 1
    assert edge.metric("edgeward_proxy_protocol_errors_total", reason="malformed") == 0


def test_header_timeout(edge: Edge) -> None:
    port = edge.port("http")
    with socket.create_connection((LOCAL, port), timeout=5) as idle, socket.create_connection((LOCAL, port)) as half:
        half.sendall(b"PROXY TCP4 ")
        start = time.monotonic()
        assert closed_without_answer(idle)
        assert closed_without_answer(half)
        assert 0.3 < time.monotonic() - start < 3.0
    assert edge.metric("edgeward_proxy_protocol_errors_total", reason="timeout") == 2


def test_health_check_connect_and_close_is_not_an_error(edge: Edge) -> None:
    for _ in range(3):
        socket.create_connection((LOCAL, edge.port("http")), timeout=5).close()
    with socket.create_connection((LOCAL, edge.port("http")), timeout=5) as sock:  # still serving
        sock.sendall(v1_header("203.0.113.7", LOCAL, 1, 2) + GET)
        assert response(sock)[0] == 200
    assert sum(edge.metric("edgeward_proxy_protocol_errors_total", reason=r) for r in ("malformed", "truncated")) == 0


def test_drain_finishes_a_connection_still_sending_its_header(edge: Edge) -> None:
    port = edge.port("http")
    with socket.create_connection((LOCAL, port), timeout=5) as sock:
        line = v1_header("203.0.113.7", LOCAL, 1, port)
        sock.sendall(line[:10])
        time.sleep(0.1)
        edge.server.signal(signal.SIGTERM)
        time.sleep(0.1)
        sock.sendall(line[10:] + KEEP)
        status, body = response(sock)
        assert (status, body) == (200, b"hello world\n")
    assert edge.server.wait(5) == 0
    (record,) = edge.records()
    assert record["client"] == "203.0.113.7"


def test_reload_changes_who_may_send_headers(edge: Edge) -> None:
    port = edge.port("http")
    keep = socket.create_connection((LOCAL, port), timeout=5)
    keep.sendall(v1_header("203.0.113.7", LOCAL, 1, port) + KEEP)
    assert response(keep)[0] == 200
    config = edge.server.config
    config["listeners"][1]["proxy_from"] = ["192.0.2.0/24"]
    edge.server.write_config(config)
    edge.server.signal(signal.SIGHUP)

    def refused() -> bool:
        with socket.create_connection((LOCAL, port), timeout=5) as sock:
            sock.sendall(v1_header("203.0.113.7", LOCAL, 1, port) + GET)
            return closed_without_answer(sock)

    wait_for(refused, 5, "the new proxy_from applies")
    keep.sendall(KEEP)  # the connection already set up keeps being served
    assert response(keep)[0] == 200
    keep.close()


# --------------------------------------------------------------------------- connection caps


@pytest.fixture
def capped(start_server: StartServer, site: Path, localhost_cert: Issued) -> Edge:
    log = site.parent / "access.log"
    config = proxy_config(site, localhost_cert, log, policy={"network": {"max_connections_per_ip": 2}})
    config["listeners"].append({"name": "direct", "address": "127.0.0.1:0"})
    return Edge(start_server(config), log)


def test_cap_refuses_the_connection_over_it(capped: Edge) -> None:
    port = capped.port("direct")
    held = [socket.create_connection((LOCAL, port), timeout=5) for _ in range(2)]
    for sock in held:
        sock.sendall(KEEP)
        assert response(sock)[0] == 200
    with socket.create_connection((LOCAL, port), timeout=5) as third:
        third.sendall(KEEP)
        assert closed_without_answer(third)
    assert capped.metric("edgeward_connections_refused_total", reason="per_ip_cap") == 1
    # Closing one frees its place: the count goes down when a connection ends.
    held.pop().close()

    def admitted() -> bool:
        with socket.create_connection((LOCAL, port), timeout=5) as sock:
            sock.sendall(GET)
            return _read_all(sock).startswith(b"HTTP/1.1 200")

    wait_for(admitted, 3, "a place frees up")
    held[0].sendall(KEEP)
    assert response(held[0])[0] == 200
    held[0].close()


def test_cap_counts_the_address_the_header_names(capped: Edge, ca: CA) -> None:
    """Behind a balancer every connection comes from its address; the cap is per real client."""
    port = capped.port("http")

    def connect(client: str) -> socket.socket:
        sock = socket.create_connection((LOCAL, port), timeout=5)
        sock.sendall(v1_header(client, LOCAL, 1, port) + KEEP)
        return sock

    held = [connect("203.0.113.7"), connect("203.0.113.7"), connect("203.0.113.8"), connect("203.0.113.8")]
    for sock in held:
        assert response(sock)[0] == 200
    over = connect("203.0.113.7")
    assert closed_without_answer(over)
    over.close()
    # HTTP/2 over TLS is counted the same way.
    tls_port = capped.port("https")
    raw = socket.create_connection((LOCAL, tls_port), timeout=5)
    raw.sendall(v2_header("203.0.113.8", LOCAL, 1, tls_port))
    try:
        refused = H2Client(h2_context(ca.pem).wrap_socket(raw, server_hostname="localhost"))
        refused.expect_closed(3)
        assert not refused.received(SettingsFrame)  # closed before HTTP/2 began
    except (ssl.SSLError, ConnectionError):
        pass  # the close overtook the handshake's last flight or the preface
    raw.close()
    raw = socket.create_connection((LOCAL, tls_port), timeout=5)
    raw.sendall(v2_header("203.0.113.9", LOCAL, 1, tls_port))
    client = H2Client(h2_context(ca.pem).wrap_socket(raw, server_hostname="localhost"))
    assert client.get("/hello.txt").status == 200
    client.close()
    assert capped.metric("edgeward_connections_refused_total", reason="per_ip_cap") == 2
    for sock in held:
        sock.close()

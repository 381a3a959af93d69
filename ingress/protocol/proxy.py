"""The PROXY protocol header (HAProxy, versions 1 and 2), sans-IO.

An L4 balancer that terminates nothing but TCP puts this header before the
first byte of the client's stream, TLS ClientHello included, to say whom
the connection is really from. `parse_proxy_header` looks at the bytes
received so far and says one of three things: the header is complete (its
length and the client address), more bytes are needed, or this is not a
valid header (ProtocolError). "Need more" is only ever answered when every
byte seen so far belongs to the header, so the caller may consume them;
that is what lets it read the header off the socket without ever taking a
byte of what follows. Specification: haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from ingress.errors import ProtocolError

Accept = Literal["v1", "v2", "any"]

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included (section 2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
# v2 allows 64 KiB of addresses and TLVs; balancers send tens to a few hundred bytes
# (addresses, an id, TLS facts), so anything longer is refused before it is buffered.
V2_MAX = V2_FIXED + 2048
MAX_HEADER = max(V1_MAX, V2_MAX)

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_TCP4, _UDP4, _TCP6, _UDP6, _UNIX_STREAM, _UNIX_DGRAM, _UNSPEC = 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x00
_ADDRESS_BYTES = {_TCP4: 12, _UDP4: 12, _TCP6: 36, _UDP6: 36, _UNIX_STREAM: 216, _UNIX_DGRAM: 216, _UNSPEC: 0}


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header: `length` bytes to consume, and whom the connection is from.

    `client` is "" when the header names no TCP client: a v2 LOCAL command
    (the balancer's own health check), a v1 UNKNOWN, or a UDP, UNIX or
    unspecified family. The connection's own socket address applies then.
    """

    length: int
    client: str
    version: int


def parse_proxy_header(data: bytes, accept: Accept = "any") -> ProxyHeader | None:
    """A complete header, or None when every byte of `data` is header and more are needed.

    Raises ProtocolError (status hint 400; nothing is answered, the caller
    closes) with the reason when `data` cannot start a header `accept` allows.
    """
    if not data:
        return None
    if data[0] == 0x0D and accept != "v1":  # "\r": only v2 starts so
        return _parse_v2(data)
    if data[0] == 0x50 and accept != "v2":  # "P"
        return _parse_v1(data)
    wanted = {"v1": "a v1 (PROXY ...) header", "v2": "a v2 (binary) header", "any": "a PROXY protocol header"}[accept]
    raise ProtocolError(400, f"expected {wanted} before anything else; got {data[:8]!r}")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    """`PROXY TCP4|TCP6 src dst sport dport\\r\\n`, or `PROXY UNKNOWN ...\\r\\n` (section 2.1)."""
    head = data[: len(V1_PREFIX)]
    if not V1_PREFIX.startswith(head):
        raise ProtocolError(400, f"v1 header must start with 'PROXY '; got {head!r}")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if b"\n" in data[:V1_MAX]:
            raise ProtocolError(400, "v1 header line ends with a bare LF; CRLF is required")
        if len(data) >= V1_MAX:
            raise ProtocolError(400, f"v1 header has no CRLF within {V1_MAX} bytes")
        return None
    if end < len(V1_PREFIX):
        raise ProtocolError(400, "v1 header is cut short by CRLF")
    fields = data[len(V1_PREFIX) : end].split(b" ")
    length = end + 2
    if fields[0] == b"UNKNOWN":
        return ProxyHeader(length, "", 1)  # the rest of the line is to be ignored (section 2.1)
    if fields[0] not in (b"TCP4", b"TCP6") or len(fields) != 5:
        raise ProtocolError(400, "v1 header must be 'PROXY TCP4|TCP6 <src> <dst> <sport> <dport>' or 'PROXY UNKNOWN'")
    family = ipaddress.IPv4Address if fields[0] == b"TCP4" else ipaddress.IPv6Address
    try:
        src = family(fields[1].decode("ascii"))
        family(fields[2].decode("ascii"))
    except ValueError as exc:
        raise ProtocolError(400, f"v1 header address is not {fields[0].decode()}: {exc}") from None
    if any(b"%" in field for field in fields[1:3]):
        raise ProtocolError(400, "v1 header address has a zone id")
    for port in fields[3:5]:
        if not (port.isdigit() and len(port) <= 5 and int(port) <= 65535):
            raise ProtocolError(400, f"v1 header port {port!r} is not a number from 0 to 65535")
    return ProxyHeader(length, _canonical(src), 1)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    """The 16-byte fixed part, then addresses and TLVs (section 2.2); TLVs are skipped."""
    signature = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(signature):
        raise ProtocolError(400, "v2 header signature mismatch")
    if len(data) < V2_FIXED:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProtocolError(400, f"v2 header version {version} is not 2")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProtocolError(400, f"v2 header command {command} is neither LOCAL (0) nor PROXY (1)")
    family = data[13]
    needed = _ADDRESS_BYTES.get(family)
    if needed is None:
        raise ProtocolError(400, f"v2 header address family/protocol 0x{family:02x} is not defined")
    length = V2_FIXED + int.from_bytes(data[14:16], "big")
    if length > V2_MAX:
        raise ProtocolError(400, f"v2 header of {length} bytes is longer than the {V2_MAX} accepted")
    if command == _V2_PROXY and length - V2_FIXED < needed:
        raise ProtocolError(400, f"v2 header length {length - V2_FIXED} is too short for its {needed} address bytes")
    if len(data) < length:
        return None
    if command == _V2_LOCAL:
        return ProxyHeader(length, "", 2)  # the balancer speaking for itself: the socket address is right
    if family == _TCP4:
        return ProxyHeader(length, _canonical(ipaddress.IPv4Address(data[16:20])), 2)
    if family == _TCP6:
        return ProxyHeader(length, _canonical(ipaddress.IPv6Address(data[16:32])), 2)
    return ProxyHeader(length, "", 2)  # UDP, UNIX or UNSPEC: no TCP client address to believe


def _canonical(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """One spelling per client: an IPv4-mapped IPv6 source is the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def v1_header(client: str, server: str, client_port: int, server_port: int) -> bytes:
    """A v1 header, for tests and tools that stand in for a balancer."""
    family = "TCP6" if ":" in client else "TCP4"
    return f"PROXY {family} {client} {server} {client_port} {server_port}\r\n".encode("ascii")


def v2_header(client: str, server: str, client_port: int, server_port: int, tlvs: bytes = b"") -> bytes:
    """A v2 PROXY-command header over TCP, for tests and tools that stand in for a balancer."""
    src, dst = ipaddress.ip_address(client), ipaddress.ip_address(server)
    family = _TCP6 if src.version == 6 else _TCP4
    body = src.packed + dst.packed + client_port.to_bytes(2, "big") + server_port.to_bytes(2, "big") + tlvs
    return V2_SIGNATURE + bytes([0x20 | _V2_PROXY, family]) + len(body).to_bytes(2, "big") + body

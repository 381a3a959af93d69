"""A request head from HTTP/2 or HTTP/3 field lists, held to the HTTP/1.1 limits.

h2 and aioquic already enforce the framing rules of their versions
(pseudo-header order and presence, lower-case names, no connection-specific
fields), so a request that reaches this point is well formed. What they do
not know are the edge's own limits; applying them here, once, gives every
version the same 414, 431 and 413 answers as HTTP/1.1.
"""

from __future__ import annotations

from ingress.config.model import Limits
from ingress.errors import ProtocolError
from ingress.protocol.events import Request

_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT")}
_HOSTS: dict[bytes, str] = {}


def request_from_fields(fields: list[tuple[bytes, bytes]], limits: Limits, version: str) -> Request:
    """Map pseudo-headers to a Request; raise ProtocolError carrying the status to answer."""
    method = path = scheme = authority = protocol = b""
    headers: dict[bytes, bytes] = {}
    size = count = 0
    for name, value in fields:
        if name[0] == 58:  # b":"
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":scheme":
                scheme = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":  # RFC 8441 extended CONNECT; h2 allows it only on CONNECT
                protocol = value
            continue
        size += len(name) + len(value) + 4
        count += 1
        if name in headers:
            if name == b"host":
                raise ProtocolError(400, "more than one Host field")
            # RFC 9113 §8.2.3: cookie crumbs are rejoined with "; ".
            headers[name] += (b"; " if name == b"cookie" else b", ") + value
        else:
            headers[name] = value
    if len(path) > limits.max_uri_bytes:
        raise ProtocolError(414, "request target too long")
    if size + len(path) > limits.max_header_bytes or count > limits.max_header_count:
        raise ProtocolError(431, "request header fields too large")
    host = authority or headers.get(b"host", b"")
    if authority and b"host" in headers and headers[b"host"] != authority:
        raise ProtocolError(400, ":authority and Host disagree")
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit():
            raise ProtocolError(400, "malformed content-length")
        if int(length) > limits.max_body_bytes:
            raise ProtocolError(413, "request body larger than the limit")
    path, _, query = path.partition(b"?")
    if path != b"*" and not path.startswith(b"/"):
        raise ProtocolError(400, "request target must be origin-form")
    request = Request(
        _METHODS.get(method) or method.decode("ascii"),
        path,
        query,
        headers,
        _HOSTS.get(host) or _host_text(host),
        version,
        True,
        scheme.decode("ascii"),
    )
    if protocol:
        request.upgrade = protocol.lower()
    return request


def _host_text(host: bytes) -> str:
    text = host.decode("latin-1").lower()
    if len(_HOSTS) < 1024:
        _HOSTS[host] = text
    return text


# Fields that describe one hop of an HTTP/1.1 connection; RFC 9113 §8.2.2 forbids them in HTTP/2 and 3.
HOP_FIELDS = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})


def response_fields(
    status: int, headers: list[tuple[bytes, bytes]], date: bytes, server: bytes
) -> list[tuple[bytes, bytes]]:
    """Lower-cased response fields with Date and Server, minus hop-by-hop ones."""
    fields = [(b":status", STATUS_TEXT.get(status) or b"%d" % status), (b"date", date)]
    if server:
        fields.append((b"server", server))
    for name, value in headers:
        lower = name.lower()
        if lower not in HOP_FIELDS:
            fields.append((lower, value))
    return fields


STATUS_TEXT = {code: b"%d" % code for code in range(100, 600)}

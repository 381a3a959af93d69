"""The version-neutral vocabulary between protocols and everything after them.

Routing, handlers and telemetry only ever see these types, so they are
written once for HTTP/1.1 and reused by later protocol versions. A Response
may carry `wire`, the HTTP/1.1 head pre-serialised by a handler that reuses
it across requests, followed by the body when the body is bytes (a FileBody
is sent after it); other protocols ignore it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ingress.protocol.pipe import Pipe
from ingress.protocol.trace import Attempt, TraceContext

if TYPE_CHECKING:
    # For annotations only: protocol/ must not import tls/ (they are siblings below routing),
    # and the connection, not the protocol parser, attaches the identity.
    from ingress.policy.waf.verdict import Verdict
    from ingress.tls.identity import ClientIdentity


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is at the other end of a connection, learnt once when it is set up.

    The same facts on every protocol version, so access logs (and later
    telemetry and policy) read them in one shape.
    """

    client: str = ""
    tls: str = ""
    sni: str = ""
    identity: ClientIdentity | None = None
    # The socket's own address when `client` was taken from a trusted proxy's forwarding headers;
    # "" when `client` is the socket's. The next hop's forwarding chain names this node.
    remote: str = ""

    @property
    def client_cert(self) -> str:
        return self.identity.sha256 if self.identity is not None else ""


ANONYMOUS = Peer()


@dataclass(frozen=True, slots=True)
class Decision:
    """What the access policy decided about one request, and why.

    `outcome` is one of a small fixed set (allowed, denied_ip, denied_mtls,
    denied_jwt, denied_rbac, rate_limited, denied_waf) so it can label
    metrics; `reason` says which check decided (e.g. "expired", "no grant
    for DELETE") and is for logs and audit only, never for the client.
    `waf` is what the request firewall found: the reason for denied_waf, or
    (in shadow mode) a match reported on a request that was let through.
    """

    outcome: str
    reason: str
    rule: str = ""
    subject: str = ""
    # The roles an allowed request was granted with, sorted, for the X-Auth-Roles header upstream.
    roles: tuple[str, ...] = ()
    waf: Verdict | None = None


class Request:
    __slots__ = (
        "attempts",
        "body",
        "cache",
        "decision",
        "error",
        "headers",
        "host",
        "keep_alive",
        "method",
        "path",
        "peer",
        "query",
        "route",
        "scheme",
        "trace",
        "upgrade",
        "upstream",
        "version",
    )

    def __init__(
        self,
        method: str,
        path: bytes,
        query: bytes,
        headers: dict[bytes, bytes],
        host: str,
        version: str,
        keep_alive: bool,
        scheme: str,
        body: bytes | Pipe = b"",
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.host = host
        self.version = version
        self.keep_alive = keep_alive
        self.scheme = scheme
        # Bytes when the body arrived whole with the head (or there is none); a Pipe when it is
        # still arriving, which a handler that wants it reads and any other leaves to be discarded.
        self.body = body
        # The protocol a client asked to switch to (HTTP/1.1 Upgrade, HTTP/2 extended CONNECT's
        # :protocol), lower-cased; b"" for an ordinary request.
        self.upgrade = b""
        # Who sent it (address, TLS, verified client certificate): the connection's, set by the connection.
        self.peer = ANONYMOUS
        # What the access policy decided and why, for logs and telemetry; None when no policy ran.
        self.decision: Decision | None = None
        # What telemetry reports about it, filled in as the request goes: the matched route's path
        # prefix (set by the pipeline), its trace context (made on first use by the tracer), and for a
        # proxied request the upstream pool, the cache's verdict, each origin attempt and, for an
        # answer the edge made itself, why.
        self.route = ""
        self.trace: TraceContext | None = None
        self.upstream = ""
        self.cache = ""
        self.attempts: list[Attempt] | None = None
        self.error = ""


class FileSource:
    """An open file shared by every response that sends it.

    The static cache keeps one per file, so sending it costs no open() or
    stat(); it is closed when the cache and the last sender let go of it.
    The read-only mapping is made on first use by a TLS sender. `live`
    counts open sources so the cache can stay within its descriptor budget.
    """

    __slots__ = ("_map", "fd", "size")

    live = 0

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._map: memoryview | None = None
        FileSource.live += 1

    def view(self) -> memoryview:
        if self._map is None:
            self._map = (
                memoryview(mmap.mmap(self.fd, self.size, access=mmap.ACCESS_READ)) if self.size else memoryview(b"")
            )
        return self._map

    def __del__(self) -> None:
        FileSource.live -= 1
        with contextlib.suppress(OSError):
            os.close(self.fd)


@dataclass(frozen=True, slots=True)
class FileBody:
    """Parts of a file to send: bytes are sent as is, (offset, length) from the file."""

    source: FileSource
    parts: tuple[bytes | tuple[int, int], ...]
    length: int


class Response:
    __slots__ = ("body", "encoded", "headers", "status", "wire")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes | FileBody | Pipe = b"",
        wire: bytes | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.wire = wire
        # (clock tick, header block) memo of a protocol that encodes fields once per
        # reused Response, such as HTTP/2's literal HPACK block; Date makes it per tick.
        self.encoded: tuple[int, bytes] | None = None

    @property
    def body_length(self) -> int:
        """Bytes of body; for a streamed body, what has passed so far."""
        body = self.body
        if isinstance(body, bytes):
            return len(body)
        if isinstance(body, Pipe):
            return body.read_total
        return body.length

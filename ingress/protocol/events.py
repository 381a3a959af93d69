"""The version-neutral vocabulary between protocols and everything after them.

Routing, handlers and telemetry only ever see these types, so they are
written once for HTTP/1.1 and reused by later protocol versions. A Response
may carry `wire`, the complete HTTP/1.1 message pre-serialised by a handler
that can reuse it across requests; other protocols ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass


class Request:
    __slots__ = (
        "body",
        "headers",
        "host",
        "keep_alive",
        "method",
        "path",
        "query",
        "scheme",
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
        body: bytes = b"",
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.host = host
        self.version = version
        self.keep_alive = keep_alive
        self.scheme = scheme
        self.body = body


@dataclass(frozen=True, slots=True)
class FileBody:
    """Parts of a file to send: bytes are sent as is, (offset, length) from the file.

    The path is opened at send time; `identity` (inode, mtime_ns, size) lets the
    sender refuse a file that was replaced after the headers were built.
    """

    path: str
    identity: tuple[int, int, int]
    parts: tuple[bytes | tuple[int, int], ...]
    length: int


class Response:
    __slots__ = ("body", "headers", "status", "wire")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes | FileBody = b"",
        wire: bytes | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.wire = wire

    @property
    def body_length(self) -> int:
        body = self.body
        return len(body) if isinstance(body, bytes) else body.length

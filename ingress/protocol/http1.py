"""HTTP/1.1 request parsing and response serialisation, sans I/O.

llhttp (through httptools) already rejects the classic smuggling shapes:
Content-Length with Transfer-Encoding, duplicate or malformed
Content-Length, bad chunk sizes, obs-fold, and invalid header bytes. This
layer adds the limits llhttp does not know (sizes, counts, Host rules,
unsupported transfer codings) and turns each failure into a ProtocolError
with the status to answer.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Protocol

import httptools

from ingress.config.model import Limits
from ingress.errors import ProtocolError
from ingress.protocol.events import Request

IDLE, HEAD, BODY = 0, 1, 2

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_REASONS[425] = b"Too Early"


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))


def serialize_head(
    status: int,
    headers: list[tuple[bytes, bytes]],
    preamble: bytes,
    close: bool,
) -> bytes:
    """Status line, `preamble` (Date and Server lines), headers, and Connection if closing."""
    parts = [status_line(status), preamble]
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class RequestSink(Protocol):
    def request_received(self, request: Request) -> None: ...


class RequestParser:
    """Feeds bytes to llhttp and hands each complete, valid request to a sink."""

    __slots__ = (
        "_body",
        "_body_size",
        "_head_bytes",
        "_headers",
        "_limits",
        "_parser",
        "_sink",
        "_url",
        "error",
        "scheme",
        "state",
    )

    def __init__(self, sink: RequestSink, limits: Limits, scheme: str) -> None:
        self._sink = sink
        self._limits = limits
        self.scheme = scheme
        self._parser = httptools.HttpRequestParser(self)
        self.state = IDLE
        self.error: ProtocolError | None = None
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0

    def feed(self, data: bytes) -> None:
        """Parse `data`; raise ProtocolError (with the status to answer) on bad input."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise ProtocolError(400, "protocol upgrade is not supported here") from None
        except httptools.HttpParserError as exc:
            if self.error is not None:
                raise self.error from None
            raise ProtocolError(400, f"malformed request: {exc}") from None
        if self.state == HEAD and self._head_bytes + len(self._url) > self._limits.max_header_bytes:
            # Backstop for a single field still being buffered inside llhttp.
            raise ProtocolError(431, "request header fields too large")

    def _fail(self, status: int, reason: str) -> None:
        self.error = ProtocolError(status, reason)
        raise self.error

    # llhttp callbacks ---------------------------------------------------
    def on_message_begin(self) -> None:
        self.state = HEAD
        self._url = b""
        self._headers = {}
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_uri_bytes:
            self._fail(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        self._head_bytes += len(name) + len(value) + 4
        if len(headers) >= self._limits.max_header_count:
            self._fail(431, "too many header fields")
        if self._head_bytes + len(self._url) > self._limits.max_header_bytes:
            self._fail(431, "request header fields too large")
        key = name.lower()
        prior = headers.get(key)
        if prior is None:
            headers[key] = value
        elif key == b"host":
            self._fail(400, "more than one Host header")
        else:
            headers[key] = prior + (b"; " if key == b"cookie" else b", ") + value

    def on_headers_complete(self) -> None:
        parser, headers = self._parser, self._headers
        if parser.get_http_version() == "1.1" and b"host" not in headers:
            self._fail(400, "HTTP/1.1 request without Host")
        te = headers.get(b"transfer-encoding")
        if te is not None and te.strip().lower() != b"chunked":
            self._fail(501, "only the chunked transfer coding is supported")
        cl = headers.get(b"content-length")
        if cl is not None and int(cl) > self._limits.max_body_bytes:
            self._fail(413, "request body larger than the limit")
        self.state = BODY
        self._body = []
        self._body_size = 0

    def on_body(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size > self._limits.max_body_bytes:
            self._fail(413, "request body larger than the limit")
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        parser = self._parser
        url = self._url
        headers = self._headers
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
            host = headers.get(b"host", b"")
        elif url == b"*":
            path, query, host = url, b"", headers.get(b"host", b"")
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._fail(400, "invalid request target")
            if parsed.schema not in (b"http", b"https") or not parsed.host:
                self._fail(400, "request target must be origin-form or absolute http(s) URL")
            path, query = parsed.path or b"/", parsed.query or b""
            host = parsed.host + (b":%d" % parsed.port if parsed.port else b"")
        if b"#" in path:
            self._fail(400, "fragment in request target")
        self.state = IDLE
        body = b"".join(self._body) if self._body else b""
        self._body = []
        self._sink.request_received(
            Request(
                parser.get_method().decode("ascii"),
                path,
                query,
                headers,
                host.decode("latin-1").lower(),
                parser.get_http_version(),
                parser.should_keep_alive(),
                self.scheme,
                body,
            )
        )

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
from typing import NoReturn, Protocol

import httptools

from ingress.config.model import Limits
from ingress.errors import ProtocolError
from ingress.protocol.events import Request
from ingress.protocol.pipe import Pipe

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
        parts += (name, b": ", value, b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class RequestSink(Protocol):
    def request_received(self, request: Request) -> None: ...

    def streams(self, request: Request) -> bool:
        """Whether this request's body goes to its handler as it arrives (see `Site.streams`)."""


class RequestParser:
    """Feeds bytes to llhttp and hands each complete, valid request to a sink."""

    __slots__ = (
        "_body",
        "_body_size",
        "_completed",
        "_head_bytes",
        "_headers",
        "_limits",
        "_max_head",
        "_merged",
        "_parser",
        "_pipe",
        "_raw_head",
        "_request_at_head",
        "_sink",
        "_tunnelling",
        "_url",
        "error",
        "scheme",
        "state",
    )

    def __init__(self, sink: RequestSink, limits: Limits, scheme: str) -> None:
        self._sink = sink
        self._limits = limits
        self._max_head = limits.max_header_bytes
        self.scheme = scheme
        self._parser = httptools.HttpRequestParser(self)
        self.state = IDLE
        self.error: ProtocolError | None = None
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._head_bytes = 0
        self._raw_head = 0
        self._merged = 0
        self._completed = 0
        self._body: list[bytes] = []
        self._body_size = 0
        # The body of the request being received, when it streams to a handler instead of being gathered.
        self._pipe: Pipe | None = None
        # A request built when its head completed, waiting for its body to be gathered.
        self._request_at_head: Request | None = None
        # An upgrade request went to the site with a tunnel pipe; what follows its head is the connection's.
        self._tunnelling = False

    @property
    def pipe(self) -> Pipe | None:
        """The request body still arriving (or the tunnel of an upgrade), if any."""
        return self._pipe

    def feed(self, data: bytes) -> bytes | None:
        """Parse `data`; raise ProtocolError (with the status to answer) on bad input.

        Returns None, or after a request asking to upgrade, the bytes that followed its head.
        """
        completed = self._completed
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops after a request that asks to switch protocols. What follows
            # is the tunnel's if the site switches (101), or the next request if it
            # answers as plain HTTP/1.1 (RFC 9110 lets it ignore Upgrade); the
            # connection decides once it has the answer, so it gets the bytes.
            self.state = IDLE
            rest = data[exc.args[0] :]
            if self._tunnelling:
                self._tunnelling = False
                return rest
            # Not a streamed upgrade: it was answered as plain HTTP/1.1 (RFC 9110 lets a
            # server ignore Upgrade) and httptools has resumed; parse what follows.
            return self.feed(rest) if rest else None
        except httptools.HttpParserError as exc:
            if self.error is not None:
                raise self.error from None
            raise ProtocolError(400, f"malformed request: {exc}") from None
        if self.state == HEAD:
            # Head still incomplete: bound what has arrived so far, including a single
            # field that llhttp is still accumulating and has not reported yet. When this
            # read also finished earlier requests, only the tail is this head and its
            # length is unknown; it is counted from the next read on.
            if self._completed == completed:
                self._raw_head += len(data)
                if self._raw_head > self._max_head:
                    self._fail(431, "request header fields too large")
            self._check_head()
        return None

    def _fail(self, status: int, reason: str) -> NoReturn:
        self.error = ProtocolError(status, reason)
        raise self.error

    # llhttp callbacks ---------------------------------------------------
    def on_message_begin(self) -> None:
        self.state = HEAD
        self._url = b""
        self._headers = {}
        self._head_bytes = 0
        self._raw_head = 0
        self._merged = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_uri_bytes:
            self._fail(414, "request target too long")

    def _check_head(self) -> None:
        if self._head_bytes + len(self._url) > self._max_head:
            self._fail(431, "request header fields too large")
        if len(self._headers) + self._merged > self._limits.max_header_count:
            self._fail(431, "too many header fields")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Limits are checked once per head (and per feed while it is incomplete), not per field.
        self._head_bytes += len(name) + len(value) + 4
        key = name.lower()
        headers = self._headers
        if key in headers:
            self._merge(key, value)
        else:
            headers[key] = value

    def _merge(self, key: bytes, value: bytes) -> None:
        if key == b"host":
            self._fail(400, "more than one Host header")
        self._merged += 1
        self._headers[key] += (b"; " if key == b"cookie" else b", ") + value

    def on_headers_complete(self) -> None:
        headers = self._headers
        self._check_head()
        if b"host" not in headers and self._parser.get_http_version() == "1.1":
            self._fail(400, "HTTP/1.1 request without Host")
        te = headers.get(b"transfer-encoding")
        if te is not None and te.strip().lower() != b"chunked":
            self._fail(501, "only the chunked transfer coding is supported")
        cl = headers.get(b"content-length")
        length = int(cl) if cl is not None else None
        if length is not None and length > self._limits.max_body_bytes:
            self._fail(413, "request body larger than the limit")
        self.state = BODY
        if self._body:
            self._body = []
        self._body_size = 0
        upgrade = self._parser.should_upgrade()
        if upgrade or te is not None or length:
            request = self._request()
            if upgrade:
                request.upgrade = headers.get(b"upgrade", b"").strip().lower()
            if self._sink.streams(request):
                # The body (or, after an upgrade, the tunnel) streams: the request goes to the
                # site now and its bytes follow through the pipe, so nothing is held whole.
                self._pipe = Pipe(None if upgrade else length)
                self._tunnelling = upgrade
                request.body = self._pipe
                self._sink.request_received(request)
            else:
                self._request_at_head = request

    def on_body(self, chunk: bytes) -> None:
        self._body_size += len(chunk)
        if self._body_size > self._limits.max_body_bytes:
            if self._pipe is not None:
                self._pipe.fail("request body larger than the limit")
            self._fail(413, "request body larger than the limit")
        if self._pipe is not None:
            self._pipe.feed(chunk)
        else:
            self._body.append(chunk)

    def on_message_complete(self) -> None:
        self.state = IDLE
        self._completed += 1
        pipe = self._pipe
        if pipe is not None:
            self._pipe = None
            if pipe.length is not None or not self._parser.should_upgrade():
                pipe.finish()
            return
        request = self._request_at_head
        if request is not None:
            self._request_at_head = None
            if self._body:
                request.body = b"".join(self._body)
        else:
            request = self._request()
        self._sink.request_received(request)

    def _request(self) -> Request:
        parser = self._parser
        url = self._url
        headers = self._headers
        if url[0] == 47:  # b"/": origin-form, the common case
            path, _, query = url.partition(b"?")
            host = headers.get(b"host", b"")
        elif url == b"*":
            path, query, host = url, b"", headers.get(b"host", b"")
        else:
            path, query, host = self._absolute_form(url)
        if path.find(b"#") >= 0:  # not `in`: see routing.normalize_path
            self._fail(400, "fragment in request target")
        body = b"".join(self._body) if self._body else b""
        method = parser.get_method()
        return Request(
            _METHODS.get(method) or method.decode("ascii"),
            path,
            query,
            headers,
            _HOSTS.get(host) or _host_text(host),
            parser.get_http_version(),
            parser.should_keep_alive(),
            self.scheme,
            body,
        )

    def _absolute_form(self, url: bytes) -> tuple[bytes, bytes, bytes]:
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            self._fail(400, "invalid request target")
        if parsed.schema not in (b"http", b"https") or not parsed.host:
            self._fail(400, "request target must be origin-form or absolute http(s) URL")
        host = parsed.host if b":" not in parsed.host else b"[" + parsed.host + b"]"  # llhttp drops IPv6 brackets
        host += b":%d" % parsed.port if parsed.port else b""
        return parsed.path or b"/", parsed.query or b"", host


# Interned decodings: the same few methods and hosts arrive on every request.
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
_HOSTS: dict[bytes, str] = {}


def _host_text(host: bytes) -> str:
    text = host.decode("latin-1").lower()
    if len(_HOSTS) < 1024:
        _HOSTS[host] = text
    return text

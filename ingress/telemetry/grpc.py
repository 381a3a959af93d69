"""OTLP/gRPC over `h2` and a blocking socket: one unary Export call per batch.

grpcio is not a runtime dependency: it brings its own threads, its own
event loop and a C core whose fork handling does not suit a pre-forking
server. A unary call is small enough to speak directly: HEADERS, one
length-prefixed message in DATA frames (as far as the peer's flow-control
windows allow), then the response's HEADERS, DATA and trailers, whose
`grpc-status` decides. The connection is kept for the next export of the
same signal; `grpc://` is HTTP/2 with prior knowledge, `grpcs://` is TLS
with ALPN `h2`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from hpack.struct import NeverIndexedHeaderTuple

if TYPE_CHECKING:
    from hpack.struct import Header

from ingress.telemetry.transports import (
    CLOSED,
    KEY,
    RETRYABLE_HTTP,
    SIGNALS,
    USER_AGENT,
    OTLPSettingsError,
    Result,
    Signal,
    authority,
    checked_headers,
    client_context,
    failure_of,
    parse_endpoint,
    partial_success,
    shown,
)

_SERVICES = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
# OTLP/gRPC §Failures lists CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS as
# retryable; RESOURCE_EXHAUSTED is retried too (a collector shedding load), after the backoff.
RETRYABLE_GRPC = frozenset({1, 4, 8, 10, 11, 14, 15})
_CODE_NAMES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
# gRPC's mapping of RST_STREAM codes to statuses (doc/PROTOCOL-HTTP2.md): REFUSED_STREAM means "not processed".
_RESET_STATUS = {7: 14, 8: 1, 11: 8}
MAX_RESPONSE = 1 << 20
_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, ssl.SSLEOFError)
FLUSH_BYTES = 256 * 1024


class _Unprocessed(Exception):
    """The collector closed the connection or refused the stream before handling this call."""


class _NoHTTP2(Exception):
    """A TLS collector that did not select `h2`: it is not a gRPC endpoint (or a proxy strips ALPN)."""


@dataclass
class _Call:
    stream_id: int
    headers: dict[bytes, bytes] = field(default_factory=dict)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None


class _Connection:
    __slots__ = ("h2", "live", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.live = True

    def flush(self) -> None:
        out = self.h2.data_to_send()
        if out:
            self.sock.sendall(out)


class GrpcTransport:
    """OTLP/gRPC to `grpc://host:port` or `grpcs://host:port`, one HTTP/2 connection per signal."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        ca: str = "",
        cert: str = "",
        key: str = "",
        timeout: float = 5.0,
    ) -> None:
        self._endpoint = parse_endpoint(endpoint)
        if self._endpoint.scheme not in ("grpc", "grpcs"):
            raise OTLPSettingsError(f"{KEY}.endpoint", "OTLP/gRPC needs a grpc:// or grpcs:// endpoint")
        self.shown = shown(self._endpoint)
        self._header_names = tuple(sorted(headers))
        self._timeout = timeout
        self._tls = client_context(ca, cert, key, ["h2"]) if self._endpoint.tls else None
        scheme = b"https" if self._endpoint.tls else b"http"
        self._fixed = [
            (b":method", b"POST"),
            (b":scheme", scheme),
            (b":path", b""),  # replaced per signal
            (b":authority", authority(self._endpoint).encode("ascii")),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", USER_AGENT.encode("ascii")),
        ]
        # Never indexed (RFC 7541 §7.1.3): configured headers are credentials; hpack also redacts them in its debug log.
        self._extra = [
            NeverIndexedHeaderTuple(k.lower().encode("ascii"), v.encode("ascii"))
            for k, v in checked_headers(headers).items()
        ]
        self._conns: dict[Signal, _Connection] = {}
        self._locks = {s: threading.Lock() for s in SIGNALS}
        self._closed = threading.Event()  # set by close(), from the loop thread

    def __repr__(self) -> str:
        return f"GrpcTransport({self.shown!r}, headers={list(self._header_names)!r})"

    def export(self, signal: Signal, payload: bytes) -> Result:
        deadline = time.monotonic() + self._timeout
        with self._locks[signal]:
            for attempt in (0, 1):
                if self._closed.is_set():
                    return CLOSED
                conn = self._conns.get(signal)
                if conn is not None and not _still_open(conn):
                    self._discard(signal)
                    conn = None
                reused = conn is not None
                try:
                    if conn is None:
                        conn = self._conns[signal] = self._connect(deadline)
                    return self._call(signal, conn, payload, deadline)
                except _Unprocessed as exc:
                    self._discard(signal)
                    if not (reused and attempt == 0):
                        return Result(False, "connection_reset", True, detail=str(exc))
                except _STALE as exc:
                    # A kept connection the collector had closed (it restarted, or an idle timeout): send again.
                    self._discard(signal)
                    if not (reused and attempt == 0):
                        return failure_of(exc)
                except _NoHTTP2:
                    self._discard(signal)
                    return Result(False, "tls_alpn", False, detail="the collector did not agree to HTTP/2 (ALPN h2)")
                except h2.exceptions.H2Error as exc:
                    self._discard(signal)
                    return Result(False, "protocol_error", False, detail=f"HTTP/2: {type(exc).__name__}")
                except Exception as exc:
                    self._discard(signal)
                    return failure_of(exc)
                finally:
                    if conn is not None and not conn.live:
                        self._discard(signal)
                    if conn is not None and self._closed.is_set():  # closed while this export ran
                        conn.sock.close()
        return Result(False, "connection_reset", True)  # not reached: the second round always returns

    def close(self) -> None:
        """Close every connection for good; a blocked export in another thread fails at once, not at its timeout."""
        self._closed.set()
        for signal in SIGNALS:
            self._discard(signal)

    def _discard(self, signal: Signal) -> None:
        conn = self._conns.pop(signal, None)
        if conn is None:
            return
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        conn.sock.close()

    def _connect(self, deadline: float) -> _Connection:
        e = self._endpoint
        sock = socket.create_connection((e.host, e.port), timeout=_remaining(deadline))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock.settimeout(_remaining(deadline))
                sock = self._tls.wrap_socket(sock, server_hostname=e.host)
                if sock.selected_alpn_protocol() != "h2":
                    raise _NoHTTP2
            conn = _Connection(sock)
            conn.h2.initiate_connection()
            sock.settimeout(_remaining(deadline))
            conn.flush()
        except BaseException:
            sock.close()
            raise
        return conn

    def _call(self, signal: Signal, conn: _Connection, payload: bytes, deadline: float) -> Result:
        c = conn.h2
        try:
            stream_id = c.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            raise _Unprocessed("stream ids used up") from None
        call = _Call(stream_id)
        conn.sock.settimeout(_remaining(deadline))
        headers = list(self._fixed)
        headers[2] = (b":path", _SERVICES[signal].encode("ascii"))
        # The collector gives up when we do; gRPC's unit "m" is milliseconds, at most 8 digits.
        headers.append((b"grpc-timeout", f"{min(99_999_999, max(1, int(_remaining(deadline) * 1000)))}m".encode()))
        headers += self._extra
        c.send_headers(stream_id, headers)
        message = memoryview(b"\x00" + len(payload).to_bytes(4, "big") + payload)
        sent = unsent = 0
        while sent < len(message) and not call.ended:
            window = min(c.local_flow_control_window(stream_id), c.max_outbound_frame_size, len(message) - sent)
            if window <= 0:
                conn.flush()
                self._receive(conn, call, deadline)
                continue
            c.send_data(stream_id, message[sent : sent + window].tobytes(), end_stream=sent + window == len(message))
            sent += window
            unsent += window
            if unsent >= FLUSH_BYTES:  # a large batch goes out as it is framed, not all at once at the end
                conn.sock.settimeout(_remaining(deadline))
                conn.flush()
                unsent = 0
        if sent < len(message):
            # The collector answered before taking the whole request (an error): end our half too, or the
            # stream would stay open on this connection, which is kept.
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                c.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        conn.sock.settimeout(_remaining(deadline))
        conn.flush()
        while not call.ended:
            self._receive(conn, call, deadline)
        return self._result(signal, call)

    def _receive(self, conn: _Connection, call: _Call, deadline: float) -> None:
        conn.sock.settimeout(_remaining(deadline))
        data = conn.sock.recv(65536)
        if not data:
            conn.live = False
            if not call.headers:
                raise _Unprocessed("connection closed by the collector")
            raise ConnectionResetError
        try:
            events = conn.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            if conn.h2.state_machine.state != h2.connection.ConnectionState.CLOSED:
                raise
            # A frame after GOAWAY (gRPC's graceful shutdown sends a PING after it) that h2 refuses in
            # the closed state: the connection is over, the call's fate unknown. Sent again once if reused.
            conn.live = False
            raise ConnectionResetError from None
        for event in events:
            if isinstance(event, h2.events.ConnectionTerminated):
                conn.live = False
                if not call.ended:
                    last = event.last_stream_id
                    if last is not None and last < call.stream_id:
                        raise _Unprocessed("the collector is going away (GOAWAY)")
                    raise ConnectionResetError
            if getattr(event, "stream_id", None) != call.stream_id:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                call.headers = _fields(event.headers)
            elif isinstance(event, h2.events.TrailersReceived):
                call.trailers = _fields(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                call.data += event.data
                conn.h2.acknowledge_received_data(event.flow_controlled_length, call.stream_id)
                if len(call.data) > MAX_RESPONSE:
                    conn.live = False
                    raise h2.exceptions.ProtocolError("response too large")
            elif isinstance(event, h2.events.StreamEnded):
                call.ended = True
            elif isinstance(event, h2.events.StreamReset):
                call.ended = True
                call.reset = int(event.error_code) if event.error_code is not None else 0
                if call.reset == 7 and not call.headers:  # REFUSED_STREAM: not processed, safe to send again
                    raise _Unprocessed("the collector refused the stream")
        conn.flush()  # SETTINGS and PING acks, WINDOW_UPDATEs

    def _result(self, signal: Signal, call: _Call) -> Result:
        if call.reset is not None and not call.trailers and b"grpc-status" not in call.headers:
            code = _RESET_STATUS.get(call.reset, 13)
            return _status_failure(code, f"stream reset by the collector (HTTP/2 error {call.reset})")
        status = call.headers.get(b":status", b"")
        if status != b"200":
            http_status = int(status) if status.isdigit() else 0
            return Result(
                False,
                f"http_{http_status}",
                retryable=http_status in RETRYABLE_HTTP,
                answered=True,
                detail=f"HTTP {http_status} instead of a gRPC response",
            )
        fields = call.trailers or call.headers  # a "trailers-only" answer carries grpc-status in its headers
        raw = fields.get(b"grpc-status")
        if raw is None or not raw.isdigit():
            return Result(False, "protocol_error", False, answered=True, detail="response without grpc-status")
        code = int(raw)
        if code != 0:
            message = urllib.parse.unquote(fields.get(b"grpc-message", b"").decode("ascii", "replace"))
            return _status_failure(code, message)
        body = bytes(call.data)
        rejected, message = 0, ""
        if len(body) >= 5 and body[0] == 0:
            rejected, message = partial_success(signal, body[5 : 5 + int.from_bytes(body[1:5], "big")])
        return Result(True, answered=True, rejected=rejected, detail=message)


def _still_open(conn: _Connection) -> bool:
    """Whether a kept connection can carry the next call: reads what the collector sent while it sat idle.

    A collector that restarted or timed the connection out has sent
    GOAWAY or closed it; finding that out before sending spares a failed
    call. Nothing to read means nothing happened.
    """
    sock = conn.sock
    try:
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if not pending:
            poller = select.poll()  # not select(): a busy worker's descriptors pass FD_SETSIZE
            poller.register(sock, select.POLLIN)
            if not poller.poll(0):
                return True
        sock.settimeout(0.0)
        data = sock.recv(65536)
    except (ssl.SSLWantReadError, BlockingIOError):
        return True
    except OSError:
        return False
    if not data:
        return False
    try:
        events = conn.h2.receive_data(data)
    except h2.exceptions.H2Error:
        return False
    if any(isinstance(event, h2.events.ConnectionTerminated) for event in events):
        return False
    return conn.h2.state_machine.state != h2.connection.ConnectionState.CLOSED


def _status_failure(code: int, message: str) -> Result:
    name = _CODE_NAMES.get(code, str(code))
    detail = f"gRPC {name}: {message}" if message else f"gRPC {name}"
    return Result(False, f"grpc_{code}", retryable=code in RETRYABLE_GRPC, answered=True, detail=detail[:200])


def _fields(headers: list[Header]) -> dict[bytes, bytes]:
    """Header names and values as bytes (the connection is configured not to decode them)."""
    out: dict[bytes, bytes] = {}
    for name, value in headers:
        key = name if isinstance(name, bytes) else str(name).encode("latin-1")
        out[key] = value if isinstance(value, bytes) else str(value).encode("latin-1")
    return out


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left

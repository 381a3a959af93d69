"""Moving encoded OTLP batches to a collector: what every transport shares, and OTLP/HTTP.

A transport is blocking on purpose. It runs in an executor thread, one
export at a time per signal, so plain `http.client` (and, for gRPC, `h2`
over a plain socket) is all it needs: no second event loop, no client
library with its own threads. The event loop only ever sees a `Result`.

A transport never raises out of `export`: every failure becomes a
`Result` whose `reason` is a short label (`connect_refused`, `timeout`,
`http_503`, `grpc_14`) that the exporter counts drops under. Header values
are secrets (API keys): they are validated here so that neither
`http.client` nor `h2` can ever put one into an exception message, and
nothing here formats them into a message, a log line or a repr.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import re
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cryptography import x509
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

import ingress
from ingress.config.telemetry_semantics import Endpoint
from ingress.config.telemetry_semantics import parse_endpoint as config_endpoint
from ingress.errors import EdgewardError, TLSMaterialError
from ingress.tls.contexts import INTERMEDIATE_CIPHERS
from ingress.tls.material import load_pair

Signal = Literal["traces", "metrics", "logs"]
SIGNALS: tuple[Signal, ...] = ("traces", "metrics", "logs")

USER_AGENT = f"edgeward/{ingress.__version__}"
KEY = "telemetry.otlp"
MAX_RESPONSE = 64 * 1024  # an Export*ServiceResponse is a few bytes; more is not worth reading
# OTLP/HTTP §Failures: these statuses mean "try again later"; every other non-2xx drops the batch.
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Set by the transport itself, or meaningless to forward (hop-by-hop); a configured one would break framing.
_RESERVED_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "content-type",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
    }
)
# The response classes' base (protobuf's Message) is untyped, so the table is too.
_RESPONSES: dict[str, tuple[Any, str]] = {
    "traces": (ExportTraceServiceResponse, "rejected_spans"),
    "metrics": (ExportMetricsServiceResponse, "rejected_data_points"),
    "logs": (ExportLogsServiceResponse, "rejected_log_records"),
}


class OTLPSettingsError(EdgewardError):
    """`[telemetry.otlp]` settings that cannot be used; `path` is the config key, the message says the fix."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True, slots=True)
class Result:
    """How one export went, as the exporter needs it to count and to decide on backing off."""

    ok: bool
    reason: str = ""  # the drop reason on failure: connect_refused, timeout, tls_verify, http_503, grpc_14, ...
    retryable: bool = False  # the same batch may be accepted later (network failure, 503, UNAVAILABLE, ...)
    answered: bool = False  # the collector answered; refusing this batch does not make it "down"
    retry_after: float | None = None  # seconds the collector asked us to wait
    rejected: int = 0  # items of an accepted batch that the collector reported rejecting (partial_success)
    detail: str = ""  # for the log: a status line or error text, never a header value


CLOSED = Result(False, "shutdown", detail="the transport is closed")


class Transport(Protocol):
    """Sends one encoded Export*ServiceRequest; blocking, called from one executor thread per signal at a time."""

    shown: str  # the endpoint as logs may show it

    def export(self, signal: Signal, payload: bytes) -> Result: ...

    def close(self) -> None: ...


def parse_endpoint(text: str) -> Endpoint:
    """The collector URL as config's one endpoint parser reads it, or OTLPSettingsError naming the key."""
    path = f"{KEY}.endpoint"
    if not text:
        raise OTLPSettingsError(
            path, "no collector URL; set one (e.g. http://127.0.0.1:4318 or grpc://127.0.0.1:4317) or leave it off"
        )
    if "@" in text.partition("://")[2].partition("/")[0]:
        # Said here, without the URL: its userinfo is a credential.
        raise OTLPSettingsError(path, f"credentials in the URL are refused; put them in {KEY}.headers instead")
    try:
        return config_endpoint(text)
    except ValueError as exc:
        raise OTLPSettingsError(path, str(exc)) from None


def authority(endpoint: Endpoint) -> str:
    """`host:port` as :authority and logs write it (IPv6 in brackets)."""
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{host}:{endpoint.port}"


def shown(endpoint: Endpoint) -> str:
    return f"{endpoint.scheme}://{authority(endpoint)}{endpoint.path}"


def header_problems(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """(config key, message) for each unusable header; never quotes a value."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in headers.items():
        at = f"{KEY}.headers.{name}" if _TOKEN.match(name) else f"{KEY}.headers"
        if not _TOKEN.match(name):
            out.append((at, f"{name!r} is not a header name; use letters, digits and -"))
            continue
        lower = name.lower()
        if lower in seen:
            out.append((at, f"{name!r} is given twice (header names ignore case)"))
        seen.add(lower)
        if lower in _RESERVED_HEADERS or lower.startswith(":"):
            out.append((at, f"{name!r} is set by the exporter itself; remove it"))
        if any(not (" " <= ch <= "~" or ch == "\t") for ch in value):
            out.append((at, "the value holds a control or non-ASCII character; give a printable ASCII value"))
        elif value != value.strip(" \t"):
            out.append((at, "the value starts or ends with whitespace; remove it"))
    return out


def checked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    problems = header_problems(headers)
    if problems:
        raise OTLPSettingsError(*problems[0])
    return dict(headers)


def client_context(ca: str, cert: str, key: str, alpn: list[str]) -> ssl.SSLContext:
    """A verifying client context (against `ca`, else the system's CAs), with the client pair if given.

    Files are parsed with `cryptography` first, so a wrong file is reported
    by its config key and path when the config is loaded, not as an
    OpenSSL error string at the first export.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(alpn)
    if ca:
        ctx.load_verify_locations(cadata=_read_ca(ca))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert:
        try:
            load_pair(cert, key or cert)
            ctx.load_cert_chain(cert, key or cert)
        except TLSMaterialError as exc:
            raise OTLPSettingsError(f"{KEY}.cert", f"{exc}; give the client certificate and its key") from None
        except (OSError, ssl.SSLError) as exc:
            raise OTLPSettingsError(f"{KEY}.cert", f"{cert}, {key or cert}: {exc}") from None
    elif key:
        raise OTLPSettingsError(f"{KEY}.key", f"is set without {KEY}.cert; give the client certificate too")
    return ctx


def _read_ca(path: str) -> str:
    at = f"{KEY}.ca"
    try:
        with open(path, "rb") as fh:
            pem = fh.read()
    except FileNotFoundError:
        raise OTLPSettingsError(
            at, f"CA file {path} does not exist; give the CA that issued the collector's certificate"
        ) from None
    except OSError as exc:
        raise OTLPSettingsError(
            at, f"CA file {path} cannot be read ({exc.strerror}); let the server user read it"
        ) from None
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise OTLPSettingsError(at, f"CA file {path} holds no PEM certificate") from None
    return pem.decode("ascii", "replace")


def partial_success(signal: Signal, body: bytes) -> tuple[int, str]:
    """(rejected items, the collector's message) from an Export*ServiceResponse; (0, "") if there is none."""
    if not body:
        return 0, ""
    cls, field = _RESPONSES[signal]
    try:
        answer = cls.FromString(body)
    except Exception:  # protobuf's DecodeError; the batch was accepted whatever the body says
        return 0, "unreadable response body"
    status = answer.partial_success
    rejected = max(0, int(getattr(status, field)))
    return rejected, str(status.error_message)[:200]


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def failure_of(exc: BaseException) -> Result:
    """The Result for an exception from the network or TLS; its detail never holds request data."""
    name = type(exc).__name__
    if isinstance(exc, ConnectionRefusedError):
        return Result(False, "connect_refused", True, detail="connection refused")
    if isinstance(exc, TimeoutError):
        return Result(False, "timeout", True, detail="timed out")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Result(False, "tls_verify", False, detail=f"certificate not trusted: {exc.verify_message}")
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return Result(False, "connection_reset", True, detail="TLS connection closed")
    if isinstance(exc, ssl.SSLError):
        return Result(False, "tls", False, detail=f"TLS: {exc.reason or name}")
    if isinstance(exc, socket.gaierror):
        return Result(False, "dns", True, detail=f"name not resolved: {exc.strerror}")
    if isinstance(exc, ConnectionError | http.client.RemoteDisconnected):
        return Result(False, "connection_reset", True, detail="connection closed by the collector")
    if isinstance(exc, OSError):
        return Result(False, "network", True, detail=exc.strerror or name)
    if isinstance(exc, http.client.HTTPException):
        return Result(False, "protocol_error", False, detail=f"bad HTTP response ({name})")
    return Result(False, "error", False, detail=name)


# A reused keep-alive connection the collector had already closed: the batch never reached it, send it again.
_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, ssl.SSLEOFError)


class HttpTransport:
    """OTLP/HTTP with protobuf bodies: POST {endpoint}/v1/{signal}, one keep-alive connection per signal."""

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
        if self._endpoint.scheme not in ("http", "https"):
            raise OTLPSettingsError(f"{KEY}.endpoint", "OTLP/HTTP needs an http:// or https:// endpoint")
        self.shown = shown(self._endpoint)
        self._header_names = tuple(sorted(headers))
        self._headers = {
            **checked_headers(headers),
            "Content-Type": "application/x-protobuf",
            "User-Agent": USER_AGENT,
        }
        self._timeout = timeout
        self._tls = client_context(ca, cert, key, ["http/1.1"]) if self._endpoint.tls else None
        self._paths = {s: f"{self._endpoint.path}/v1/{s}" for s in SIGNALS}
        self._conns: dict[Signal, http.client.HTTPConnection] = {}
        self._locks = {s: threading.Lock() for s in SIGNALS}
        self._closed = threading.Event()  # set by close(), from the loop thread

    def __repr__(self) -> str:
        return f"HttpTransport({self.shown!r}, headers={list(self._header_names)!r})"

    def export(self, signal: Signal, payload: bytes) -> Result:
        deadline = time.monotonic() + self._timeout
        with self._locks[signal]:
            for attempt in (0, 1):
                if self._closed.is_set():
                    return CLOSED
                conn = self._conns.get(signal)
                if conn is None:
                    conn = self._conns[signal] = self._open()
                reused = conn.sock is not None
                try:
                    return self._post(signal, conn, payload, deadline)
                except Exception as exc:
                    self._discard(signal)
                    if not (reused and attempt == 0 and isinstance(exc, _STALE)):
                        return failure_of(exc)
                finally:
                    if self._closed.is_set():  # closed while this export ran: the connection may have been made since
                        conn.close()
        return failure_of(ConnectionResetError())  # not reached: the second round always returns

    def close(self) -> None:
        """Close every connection for good; a blocked export in another thread fails at once, not at its timeout."""
        self._closed.set()
        for signal in SIGNALS:
            self._discard(signal)

    def _open(self) -> http.client.HTTPConnection:
        e = self._endpoint
        if self._tls is not None:
            return http.client.HTTPSConnection(e.host, e.port, timeout=self._timeout, context=self._tls)
        return http.client.HTTPConnection(e.host, e.port, timeout=self._timeout)

    def _discard(self, signal: Signal) -> None:
        conn = self._conns.pop(signal, None)
        if conn is None:
            return
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        conn.close()

    def _post(self, signal: Signal, conn: http.client.HTTPConnection, payload: bytes, deadline: float) -> Result:
        if conn.sock is None:
            conn.timeout = _remaining(deadline)
            conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(_remaining(deadline))
        conn.request("POST", self._paths[signal], body=payload, headers=self._headers)
        conn.sock.settimeout(_remaining(deadline))
        resp = conn.getresponse()
        body = resp.read(MAX_RESPONSE)
        if not resp.isclosed():  # a body larger than any Export response: do not read on, do not reuse
            self._discard(signal)
        status = resp.status
        if 200 <= status < 300:
            rejected, message = partial_success(signal, body)
            return Result(True, answered=True, rejected=rejected, detail=message)
        return Result(
            False,
            f"http_{status}",
            retryable=status in RETRYABLE_HTTP,
            answered=True,
            retry_after=retry_after(resp.getheader("Retry-After")),
            detail=f"HTTP {status} {resp.reason}"[:200],
        )


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left

"""Real OTLP receivers for tests: OTLP/HTTP (protobuf) on http.server, OTLP/gRPC on grpcio.

Both decode what arrives with opentelemetry-proto and keep every request
(raw body, headers, the decoded Export*ServiceRequest), so a test can
assert on the bytes sent as well as on spans and attributes. Both bind
127.0.0.1 (an ephemeral port unless told one, so a test can start a
collector where an exporter has been failing to connect), run in daemon
threads, and stop themselves when their `with` block ends.

Behaviour can be changed while running (plain attributes):
  mode: "normal" answers 200 / OK; "slow" answers after `delay` seconds;
        "failing" answers `status` (HTTP, default 503, with `retry_after`)
        or `grpc_status` (gRPC, default UNAVAILABLE).
  rejected / message: a partial_success in every accepted answer.

    with OTLPHttpReceiver() as collector:
        ... export to collector.endpoint ...
        spans = collector.wait_for_spans(10)
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

Signal = Literal["traces", "metrics", "logs"]
Mode = Literal["normal", "slow", "failing"]

HTTP_PATHS: dict[str, Signal] = {"/v1/traces": "traces", "/v1/metrics": "metrics", "/v1/logs": "logs"}
GRPC_SERVICES: dict[str, Signal] = {
    "opentelemetry.proto.collector.trace.v1.TraceService": "traces",
    "opentelemetry.proto.collector.metrics.v1.MetricsService": "metrics",
    "opentelemetry.proto.collector.logs.v1.LogsService": "logs",
}
REQUESTS: dict[Signal, Any] = {
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
}
RESPONSES: dict[Signal, tuple[Any, str]] = {
    "traces": (ExportTraceServiceResponse, "rejected_spans"),
    "metrics": (ExportMetricsServiceResponse, "rejected_data_points"),
    "logs": (ExportLogsServiceResponse, "rejected_log_records"),
}


@dataclass(frozen=True)
class Received:
    signal: Signal
    body: bytes  # exactly the bytes of the request message
    headers: dict[str, str]  # lower-case names (HTTP headers, or gRPC metadata)
    request: Any  # the decoded Export{Trace,Metrics,Logs}ServiceRequest
    peer: str  # the client's address and port: equal for requests on one connection
    at: float  # time.monotonic() when it arrived


def items_of(signal: Signal, request: Any) -> int:
    """Spans, data points or log records in a decoded request, as OTLP counts them."""
    if signal == "traces":
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    if signal == "logs":
        return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
    total = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                total += len(getattr(metric, kind).data_points) if kind else 0
    return total


class Receiver:
    """What both receivers share: the store of received requests, waiting on it, and the behaviour knobs."""

    def __init__(
        self,
        *,
        mode: Mode = "normal",
        delay: float = 0.0,
        status: int = 503,
        retry_after: str | None = None,
        grpc_status: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        rejected: int = 0,
        message: str = "",
    ) -> None:
        self.mode: Mode = mode
        self.delay = delay
        self.status = status
        self.retry_after = retry_after
        self.grpc_status = grpc_status
        self.rejected = rejected
        self.message = message
        self.received: list[Received] = []
        self.attempts: list[float] = []  # monotonic arrival time of every request, answered or failed
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self.port = 0

    # -- lifecycle (each receiver implements these) -------------------------------------------------
    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def start(self) -> Receiver:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests read ----------------------------------------------------------------------------
    def requests(self, signal: Signal | None = None) -> list[Received]:
        with self._cond:
            return [r for r in self.received if signal is None or r.signal == signal]

    def spans(self) -> list[Any]:
        return [
            span
            for r in self.requests("traces")
            for rs in r.request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def log_records(self) -> list[Any]:
        return [
            record
            for r in self.requests("logs")
            for rl in r.request.resource_logs
            for sl in rl.scope_logs
            for record in sl.log_records
        ]

    def metrics(self) -> list[Any]:
        return [
            metric
            for r in self.requests("metrics")
            for rm in r.request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        ]

    def item_count(self, signal: Signal) -> int:
        return sum(items_of(signal, r.request) for r in self.requests(signal))

    def wait_for_spans(self, n: int, timeout: float = 10.0) -> list[Any]:
        """At least `n` spans, waiting up to `timeout` seconds; AssertionError saying how many came."""
        self._wait(lambda: self._items("traces") >= n, timeout, f"{n} spans")
        return self.spans()

    def wait_for_requests(self, n: int, signal: Signal | None = None, timeout: float = 10.0) -> list[Received]:
        self._wait(lambda: len(self._unlocked_requests(signal)) >= n, timeout, f"{n} requests")
        return self.requests(signal)

    def wait_for_attempts(self, n: int, timeout: float = 10.0) -> list[float]:
        self._wait(lambda: len(self.attempts) >= n, timeout, f"{n} attempts")
        with self._cond:
            return list(self.attempts)

    # -- what the servers call --------------------------------------------------------------------
    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                got = f"{self._items('traces')} spans in {len(self.received)} requests, {len(self.attempts)} attempts"
                raise AssertionError(f"waited {timeout}s for {what}; got {got}")

    def _unlocked_requests(self, signal: Signal | None) -> list[Received]:
        return [r for r in self.received if signal is None or r.signal == signal]

    def _items(self, signal: Signal) -> int:
        return sum(items_of(signal, r.request) for r in self._unlocked_requests(signal))

    def _arrived(self) -> Mode:
        """Note an attempt, sleep if slow (waking early when stopped); the mode to answer in."""
        with self._cond:
            self.attempts.append(time.monotonic())
            self._cond.notify_all()
        mode = self.mode
        if mode == "slow":
            self._stopping.wait(self.delay)
        return mode

    def _record(self, signal: Signal, body: bytes, headers: dict[str, str], peer: str) -> bytes:
        """Decode and keep a request (ValueError if it is not the signal's message); the answer's bytes."""
        try:
            request = REQUESTS[signal].FromString(body)
        except Exception as exc:
            raise ValueError(f"not an {REQUESTS[signal].__name__}: {exc}") from None
        with self._cond:
            self.received.append(Received(signal, body, headers, request, peer, time.monotonic()))
            self._cond.notify_all()
        cls, field = RESPONSES[signal]
        answer = cls()
        if self.rejected or self.message:
            setattr(answer.partial_success, field, self.rejected)
            answer.partial_success.error_message = self.message
        return bytes(answer.SerializeToString())


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    receiver: OTLPHttpReceiver

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.receiver.tls is not None:
            # The handshake happens on the handler thread's first read, so a bad client cannot stall accept().
            sock = self.receiver.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.receiver._track(sock)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that go away (or fail the handshake) are part of the tests


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as collectors do
    server: _HTTPServer
    timeout = 30

    def do_POST(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        signal = HTTP_PATHS.get(self.path.removeprefix(receiver.prefix))
        if signal is None:
            self._answer(404, b"no such OTLP path", "text/plain")
            return
        mode = receiver._arrived()
        if mode == "failing":
            extra = {"Retry-After": receiver.retry_after} if receiver.retry_after is not None else {}
            self._answer(receiver.status, b"", "application/x-protobuf", extra)
            return
        if self.headers.get("Content-Type") != "application/x-protobuf":
            self._answer(415, b"want application/x-protobuf", "text/plain")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            answer = receiver._record(signal, body, headers, f"{self.client_address[0]}:{self.client_address[1]}")
        except ValueError as exc:
            self._answer(400, str(exc).encode(), "text/plain")
            return
        self._answer(200, answer, "application/x-protobuf")

    def _answer(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class OTLPHttpReceiver(Receiver):
    """OTLP/HTTP protobuf at http(s)://127.0.0.1:{port}{prefix}/v1/{traces,metrics,logs}."""

    def __init__(self, *, port: int = 0, tls: ssl.SSLContext | None = None, prefix: str = "", **behaviour: Any) -> None:
        super().__init__(**behaviour)
        self.tls = tls
        self.prefix = prefix
        self._want_port = port
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{self.prefix}"

    def start(self) -> OTLPHttpReceiver:
        server = _HTTPServer(("127.0.0.1", self._want_port), _Handler)
        server.receiver = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and cut every open connection, as a collector that dies does."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _track(self, sock: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(sock)

    def __enter__(self) -> OTLPHttpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OTLPGrpcReceiver(Receiver):
    """OTLP/gRPC on grpcio at grpc(s)://127.0.0.1:{port}; requests are kept as the raw bytes that arrived."""

    def __init__(
        self,
        *,
        port: int = 0,
        tls: tuple[bytes, bytes] | None = None,  # (key PEM, certificate chain PEM)
        client_ca: bytes | None = None,  # require a client certificate from this CA
        **behaviour: Any,
    ) -> None:
        super().__init__(**behaviour)
        self.tls = tls
        self.client_ca = client_ca
        self._want_port = port
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://127.0.0.1:{self.port}"

    def start(self) -> OTLPGrpcReceiver:
        # SO_REUSEPORT (grpc's default) would let a second receiver share a port a test expects to be free.
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="otlp-grpc"),
            options=[("grpc.so_reuseport", 0)],
        )
        handlers = [
            grpc.method_handlers_generic_handler(
                service, {"Export": grpc.unary_unary_rpc_method_handler(self._handler(signal))}
            )
            for service, signal in GRPC_SERVICES.items()
        ]
        server.add_generic_rpc_handlers(handlers)
        address = f"127.0.0.1:{self._want_port}"
        if self.tls is None:
            port = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [self.tls], root_certificates=self.client_ca, require_client_auth=self.client_ca is not None
            )
            port = server.add_secure_port(address, credentials)
        if not port:
            raise OSError(f"gRPC receiver could not bind {address}")
        self.port = port
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.stop(grace=0).wait(5)
            self._server = None

    def _handler(self, signal: Signal) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def export(body: bytes, context: grpc.ServicerContext) -> bytes:
            mode = self._arrived()
            if mode == "failing":
                context.abort(self.grpc_status, "test receiver is failing")
            headers = {k.lower(): v if isinstance(v, str) else v.decode() for k, v in context.invocation_metadata()}
            try:
                return self._record(signal, body, headers, context.peer())
            except ValueError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                raise

        return export

    def __enter__(self) -> OTLPGrpcReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

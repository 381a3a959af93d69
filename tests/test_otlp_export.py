"""OTLP export against real receivers: OTLP/HTTP (http.server) and OTLP/gRPC (grpcio) on 127.0.0.1.

Each test runs the exporter on uvloop, as a worker does, with its
transport in the loop's executor, and checks what the receiver decoded
(with opentelemetry-proto) as well as the exporter's counters. Most tests
run over both transports. Collectors that fail, are down, are slow or
sit behind TLS are real ones set to behave so; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import types
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import uvloop
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs, SeverityNumber
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from ingress.config.model import Config
from ingress.config.telemetry import OTLP, Telemetry
from ingress.errors import ConfigError
from ingress.telemetry.export import Exporter, otlp_file_problems, transport_for
from tests.otlp_receiver import OTLPGrpcReceiver, OTLPHttpReceiver, Receiver, Signal
from tests.pki import CA, Issued
from tests.ports import refusing_socket

T = TypeVar("T")
SECRET = "Bearer s3cr3t-T0KEN-never-logged"


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    return uvloop.run(asyncio.wait_for(coro, timeout))


# -- payloads: real OTLP messages, as the encoders produce them --------------------------------------


def resource() -> Resource:
    return Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="edgeward-test"))])


def trace_request(n: int, first: int = 0, pad: int = 0) -> bytes:
    spans = [
        Span(
            trace_id=(i + 1).to_bytes(16, "big"),
            span_id=(i + 1).to_bytes(8, "big"),
            name=f"GET /item/{i}",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=1_700_000_000_000_000_000 + i,
            end_time_unix_nano=1_700_000_000_000_100_000 + i,
            attributes=[KeyValue(key="pad", value=AnyValue(string_value="x" * pad))] if pad else [],
        )
        for i in range(first, first + n)
    ]
    scope = ScopeSpans(scope=InstrumentationScope(name="edgeward"), spans=spans)
    message = ExportTraceServiceRequest(resource_spans=[ResourceSpans(resource=resource(), scope_spans=[scope])])
    return bytes(message.SerializeToString())


def metrics_request(n: int) -> bytes:
    points = [NumberDataPoint(as_int=i, time_unix_nano=1_700_000_000_000_000_000) for i in range(n)]
    metric = Metric(name="edgeward.test", unit="1", gauge=Gauge(data_points=points))
    scope = ScopeMetrics(scope=InstrumentationScope(name="edgeward"), metrics=[metric])
    message = ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(resource=resource(), scope_metrics=[scope])]
    )
    return bytes(message.SerializeToString())


def logs_request(n: int) -> bytes:
    records = [
        LogRecord(body=AnyValue(string_value=f"event {i}"), severity_number=SeverityNumber.SEVERITY_NUMBER_INFO)
        for i in range(n)
    ]
    scope = ScopeLogs(scope=InstrumentationScope(name="edgeward"), log_records=records)
    message = ExportLogsServiceRequest(resource_logs=[ResourceLogs(resource=resource(), scope_logs=[scope])])
    return bytes(message.SerializeToString())


PAYLOADS: dict[Signal, Callable[[int], bytes]] = {
    "traces": trace_request,
    "metrics": metrics_request,
    "logs": logs_request,
}


# -- receivers and exporters --------------------------------------------------------------------------


@pytest.fixture(params=["http", "grpc"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def receiver(kind: str, **options: Any) -> Receiver:
    if kind == "http":
        return OTLPHttpReceiver(**options)
    if "status" in options:  # a permanent refusal, in gRPC terms
        options.pop("status")
        options["grpc_status"] = grpc.StatusCode.INVALID_ARGUMENT
    return OTLPGrpcReceiver(**options)


def tls_receiver(kind: str, cert: Issued, client_ca: Path | None = None, **options: Any) -> Receiver:
    if kind == "http":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(str(client_ca))
        return OTLPHttpReceiver(tls=ctx, **options)
    pair = (cert.key.read_bytes(), cert.cert.read_bytes())
    return OTLPGrpcReceiver(tls=pair, client_ca=client_ca.read_bytes() if client_ca else None, **options)


def settings(endpoint: str, **options: Any) -> OTLP:
    headers = options.pop("headers", {})
    return OTLP(endpoint=endpoint, headers=types.MappingProxyType(dict(headers)), **options)


def exporter(
    endpoint: str, signal: Any = "traces", capacity: int = 1000, first_backoff: float = 0.05, **options: Any
) -> Exporter:
    transport = transport_for(settings(endpoint, **options), "edge.toml")
    return Exporter(asyncio.get_running_loop(), transport, signal, capacity, first_backoff=first_backoff)


async def until(ready: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def drained(exp: Exporter, timeout: float = 10.0) -> None:
    await until(lambda: exp.queued_items == 0, timeout, f"the queue to empty ({exp!r})")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self) -> list[str]:
        return [str(getattr(r, "event", "")) for r in self.records]

    def text(self) -> str:
        return "\n".join(r.getMessage() + json.dumps(vars(r), default=str) for r in self.records)


@pytest.fixture
def telemetry_log() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("edgeward.telemetry")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


# -- it arrives ---------------------------------------------------------------------------------------


def test_every_signal_arrives_byte_identical_with_headers_on_one_connection(kind: str) -> None:
    async def main(collector: Receiver) -> None:
        headers = {"X-Api-Key": "k-123", "x-tenant": "bank"}
        for signal, make in PAYLOADS.items():
            exp = exporter(collector.endpoint, signal, headers=headers)
            first, second = make(5), make(7)
            assert exp.offer(first, 5)
            await drained(exp)
            assert exp.offer(second, 7)
            await drained(exp)
            assert (exp.exported_items, exp.dropped_items, exp.failed_exports) == (12, {}, 0)
            got = collector.requests(signal)
            assert [r.body for r in got] == [first, second]  # byte-identical, in order
            assert got[0].peer == got[1].peer  # the connection was kept for the second export
            assert collector.item_count(signal) == 12
            assert got[0].headers["x-api-key"] == "k-123" and got[0].headers["x-tenant"] == "bank"
            assert "edgeward/" in got[0].headers.get("user-agent", "")
            await exp.close(1)

    with receiver(kind) as collector:
        run(main(collector))
    spans = collector.spans()
    assert [s.name for s in spans][:3] == ["GET /item/0", "GET /item/1", "GET /item/2"]
    assert spans[0].kind == Span.SPAN_KIND_SERVER and spans[0].trace_id == (1).to_bytes(16, "big")
    assert len(collector.log_records()) == 12 and collector.metrics()[0].name == "edgeward.test"
    if kind == "http":
        assert {r.headers["content-type"] for r in collector.requests()} == {"application/x-protobuf"}


def test_a_large_batch_arrives_whole_through_flow_control(kind: str) -> None:
    """2 MiB is 32 times HTTP/2's initial window: the gRPC transport must wait for WINDOW_UPDATEs."""
    payload = trace_request(2000, pad=1000)
    assert len(payload) > 2 * 1024 * 1024

    async def main(collector: Receiver) -> None:
        exp = exporter(collector.endpoint, capacity=10_000)
        assert exp.offer(payload, 2000)
        await drained(exp)
        assert exp.exported_items == 2000 and not exp.dropped_items
        await exp.close(1)

    with receiver(kind) as collector:
        run(main(collector))
    assert collector.requests()[0].body == payload


def test_partial_success_counts_the_rejected_items(kind: str) -> None:
    async def main(collector: Receiver) -> None:
        exp = exporter(collector.endpoint)
        exp.offer(trace_request(10), 10)
        await drained(exp)
        assert exp.exported_items == 7
        assert exp.dropped_items == {"rejected": 3}
        assert exp.failed_exports == 0 and not exp.down
        await exp.close(1)

    with receiver(kind, rejected=3, message="3 spans had no name") as collector:
        run(main(collector))


# -- the collector fails --------------------------------------------------------------------------------


def test_a_retryable_failure_backs_off_retries_once_then_drops(kind: str, telemetry_log: Records) -> None:
    reason = "http_503" if kind == "http" else "grpc_14"

    async def main(collector: Receiver) -> None:
        exp = exporter(collector.endpoint, first_backoff=0.4)
        assert exp.offer(trace_request(10), 10)
        await until(lambda: exp.failed_exports == 1, what="the first failure")
        assert exp.room() == 0 and exp.down  # backing off: the caller can skip encoding
        assert exp.queued_items == 10  # the batch waits for its one retry
        assert not exp.offer(trace_request(4), 4)  # refused while backing off, and counted
        await drained(exp)
        assert exp.failed_exports == 2 and exp.exported_items == 0
        assert exp.dropped_items == {reason: 10, "collector_unavailable": 4}
        await exp.close(1)

    with receiver(kind, mode="failing") as collector:
        run(main(collector))
        attempts = collector.attempts
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 0.19  # the retry waited for the backoff (0.2 to 0.4 s with jitter)
    assert telemetry_log.events().count("telemetry.export_failed") == 1  # once per state change, not per batch
    failed = next(r for r in telemetry_log.records if getattr(r, "event", "") == "telemetry.export_failed")
    assert failed.reason == reason and failed.signal == "traces"  # type: ignore[attr-defined]


def test_a_permanent_refusal_drops_at_once_without_backing_off(kind: str) -> None:
    reason = "http_400" if kind == "http" else "grpc_3"

    async def main(collector: Receiver) -> None:
        exp = exporter(collector.endpoint, capacity=100, first_backoff=5.0)
        exp.offer(trace_request(10), 10)
        await drained(exp)
        assert exp.dropped_items == {reason: 10} and exp.failed_exports == 1
        assert exp.room() == 100  # the collector answered: it is not down, only this batch was refused
        collector.mode = "normal"
        exp.offer(trace_request(5), 5)
        await drained(exp)
        assert exp.exported_items == 5 and not exp.down
        await exp.close(1)

    with receiver(kind, mode="failing", status=400) as collector:
        run(main(collector))
    assert len(collector.attempts) == 2  # no retry of the refused batch


def test_retry_after_is_honoured() -> None:
    async def main(collector: Receiver) -> None:
        exp = exporter(collector.endpoint, first_backoff=0.05)
        exp.offer(trace_request(3), 3)
        await until(lambda: exp.failed_exports == 1)
        await asyncio.sleep(0.5)
        assert exp.room() == 0  # the 50 ms backoff is long over; Retry-After: 1 is not
        await drained(exp)
        assert exp.dropped_items == {"http_429": 3}
        await exp.close(1)

    with OTLPHttpReceiver(mode="failing", status=429, retry_after="1") as collector:
        run(main(collector))
    first, second = collector.attempts
    assert second - first >= 0.95


def test_a_collector_that_is_down_is_counted_then_recovers_on_the_same_port(kind: str, telemetry_log: Records) -> None:
    holder = refusing_socket()
    port = holder.getsockname()[1]
    scheme = "http" if kind == "http" else "grpc"

    async def main() -> Receiver:
        exp = exporter(f"{scheme}://127.0.0.1:{port}", capacity=100, first_backoff=0.3)
        assert exp.offer(trace_request(10), 10)
        await until(lambda: exp.failed_exports == 1, what="connect refused")
        assert exp.room() == 0
        exp.drop(6)  # the caller skipped encoding 6 spans because room() was 0
        assert not exp.offer(trace_request(2), 2)
        await drained(exp)  # the one retry fails too
        assert exp.dropped_items == {"connect_refused": 10, "collector_unavailable": 8}
        assert exp.failed_exports == 2
        holder.close()
        collector = receiver(kind, port=port).start()
        try:
            await until(lambda: exp.room() > 0, what="the backoff to end")
            assert exp.offer(trace_request(5, first=100), 5)
            await drained(exp)
            assert exp.exported_items == 5 and not exp.down
            await exp.close(1)
        finally:
            collector.stop()
        return collector

    with holder:  # closed early by main(), or here if it failed before
        collector = run(main())
    assert [s.name for s in collector.spans()] == [f"GET /item/{i}" for i in range(100, 105)]
    events = telemetry_log.events()
    assert events.count("telemetry.export_failed") == 1 and events.count("telemetry.export_recovered") == 1
    recovered = next(r for r in telemetry_log.records if getattr(r, "event", "") == "telemetry.export_recovered")
    assert recovered.dropped_while_down == 18  # type: ignore[attr-defined]


def test_a_restarted_collector_is_reconnected_to_without_losing_a_batch(kind: str) -> None:
    """The kept-alive connection dies with the old collector; the next export reconnects and sends again."""

    async def main() -> None:
        first = receiver(kind).start()
        exp = exporter(first.endpoint)
        exp.offer(trace_request(3), 3)
        await drained(exp)
        first.stop()
        second = receiver(kind, port=first.port).start()
        try:
            exp.offer(trace_request(4, first=3), 4)
            await drained(exp)
            assert exp.exported_items == 7 and exp.failed_exports == 0 and not exp.dropped_items
            assert second.item_count("traces") == 4
            await exp.close(1)
        finally:
            second.stop()

    run(main())


def test_an_export_that_takes_too_long_is_a_timeout(kind: str) -> None:
    async def main(collector: Receiver) -> None:
        exp = exporter(collector.endpoint, timeout=0.3)
        t0 = time.monotonic()
        exp.offer(trace_request(5), 5)
        await drained(exp)
        # gRPC carries our deadline (grpc-timeout): the collector may give up first, with DEADLINE_EXCEEDED.
        assert exp.dropped_items in ({"timeout": 5}, {"grpc_4": 5} if kind == "grpc" else {})
        assert exp.failed_exports == 2
        assert time.monotonic() - t0 < 2.0  # two 0.3 s tries and a short backoff, not the collector's 3 s
        await exp.close(1)

    with receiver(kind, mode="slow", delay=3.0) as collector:
        run(main(collector))


# -- a slow collector never slows the loop ---------------------------------------------------------------


def test_a_slow_collector_fills_the_queue_drops_are_counted_and_the_loop_keeps_time(kind: str) -> None:
    async def main(collector: Receiver) -> None:
        loop = asyncio.get_running_loop()
        exp = exporter(collector.endpoint, capacity=300, timeout=5.0)
        late: list[float] = []
        beating = True

        def beat(expected: float) -> None:
            late.append(loop.time() - expected)
            if beating:
                loop.call_later(0.01, beat, loop.time() + 0.01)

        loop.call_later(0.01, beat, loop.time() + 0.01)
        offers: list[float] = []
        for i in range(4):
            t0 = time.perf_counter()
            accepted = exp.offer(trace_request(100, first=i * 100), 100)
            offers.append(time.perf_counter() - t0)
            assert accepted == (i < 3)  # the fourth does not fit behind the slow one in flight
        assert exp.dropped_items == {"queue_full": 100} and exp.room() == 0
        # Waited for off the loop: blocking here would be a stall of the test's own making.
        await asyncio.to_thread(collector.wait_for_attempts, 1)
        started = loop.time()
        collector.mode = "normal"  # the export already in flight stays slow
        await drained(exp, timeout=10)
        assert loop.time() - started >= 1.5  # the 2 s export really was in flight all along
        beating = False
        assert exp.exported_items == 300 and exp.dropped_items == {"queue_full": 100}
        # Queueing is bookkeeping; the first offer also hands the export to the executor (whose first
        # use starts its thread), still far from anything a request would notice.
        assert max(offers[1:]) < 0.005 and offers[0] < 0.05, offers
        assert len(late) > 100
        assert max(late) < 0.1, f"the loop stalled for {max(late):.3f}s while an export was in flight"
        await exp.close(1)

    with receiver(kind, mode="slow", delay=2.0) as collector:
        run(main(collector))
    assert collector.item_count("traces") == 300


# -- TLS ------------------------------------------------------------------------------------------------


def test_tls_collector_verified_against_the_configured_ca(kind: str, ca: CA, localhost_cert: Issued) -> None:
    async def main(collector: Receiver) -> None:
        trusted = exporter(collector.endpoint, ca=str(ca.pem))
        trusted.offer(trace_request(3), 3)
        await drained(trusted)
        assert trusted.exported_items == 3, trusted.dropped_items
        await trusted.close(1)
        untrusted = exporter(collector.endpoint)  # the system CAs do not know the test CA
        untrusted.offer(trace_request(2), 2)
        await drained(untrusted)
        assert untrusted.dropped_items == {"tls_verify": 2}
        await untrusted.close(1)

    with tls_receiver(kind, localhost_cert) as collector:
        assert collector.endpoint.startswith(("https://", "grpcs://"))
        run(main(collector))
    assert collector.item_count("traces") == 3


def test_mutual_tls_to_the_collector(kind: str, ca: CA, localhost_cert: Issued) -> None:
    client = ca.issue("edge-otlp-client", ["edge-otlp-client"], client=True)

    async def main(collector: Receiver) -> None:
        with_cert = exporter(collector.endpoint, ca=str(ca.pem), cert=str(client.cert), key=str(client.key))
        with_cert.offer(trace_request(3), 3)
        await drained(with_cert)
        assert with_cert.exported_items == 3, with_cert.dropped_items
        await with_cert.close(1)
        without = exporter(collector.endpoint, ca=str(ca.pem))
        without.offer(trace_request(2), 2)
        await drained(without)
        assert without.exported_items == 0 and sum(without.dropped_items.values()) == 2
        await without.close(1)

    with tls_receiver(kind, localhost_cert, client_ca=ca.pem) as collector:
        run(main(collector))
    assert collector.item_count("traces") == 3


# -- shutdown -------------------------------------------------------------------------------------------


def test_close_flushes_what_is_queued(kind: str) -> None:
    async def main(collector: Receiver) -> None:
        exp = exporter(collector.endpoint)
        for i in range(3):
            assert exp.offer(trace_request(10, first=i * 10), 10)
        await exp.close(5)
        assert exp.exported_items == 30 and exp.queued_items == 0 and not exp.dropped_items
        assert exp.room() == 0 and not exp.offer(trace_request(1), 1)
        assert exp.dropped_items == {"shutdown": 1}

    with receiver(kind, mode="slow", delay=0.2) as collector:
        run(main(collector))
    assert collector.item_count("traces") == 30


def test_close_gives_up_at_its_timeout_and_frees_the_export_thread(kind: str) -> None:
    async def main(collector: Receiver) -> None:
        exp = exporter(collector.endpoint, timeout=30)
        exp.offer(trace_request(10), 10)
        exp.offer(trace_request(5), 5)
        collector.wait_for_attempts(1)
        t0 = time.monotonic()
        await exp.close(0.3)
        assert time.monotonic() - t0 < 1.0
        assert exp.dropped_items == {"shutdown": 15} and exp.queued_items == 0

    with receiver(kind, mode="slow", delay=20) as collector:
        t0 = time.monotonic()
        run(main(collector))
        # uvloop.run waits for the default executor: the blocked export was woken by closing its socket.
        assert time.monotonic() - t0 < 5


# -- secrets and settings -------------------------------------------------------------------------------


def test_header_values_never_appear_in_reprs_logs_or_counters(kind: str, telemetry_log: Records) -> None:
    async def main(collector: Receiver) -> tuple[str, str]:
        exp = exporter(collector.endpoint, headers={"Authorization": SECRET})
        exp.offer(trace_request(2), 2)
        await drained(exp)
        collector.mode = "normal"
        await until(lambda: exp.room() > 0)
        exp.offer(trace_request(2), 2)
        await drained(exp)
        await exp.close(1)
        return repr(exp), repr(exp.transport)

    with receiver(kind, mode="failing") as collector:
        shown = run(main(collector))
    assert collector.requests()[0].headers["authorization"] == SECRET  # it was sent ...
    assert "Authorization" in shown[1]  # ... and its name may be shown ...
    everything = "\n".join([*shown, telemetry_log.text(), repr(settings("http://x:1", headers={"a": SECRET}))])
    assert "s3cr3t" not in everything  # ... but never its value
    assert {"telemetry.export_failed", "telemetry.export_recovered"} <= set(telemetry_log.events())


@pytest.mark.parametrize(
    "endpoint",
    [
        "",
        "ftp://collector:21",
        "collector:4318",
        "http://user:hunter2@collector:4318",
        "http://collector:99999",
        "http://collector:4318/?x=1",
        "grpc://collector:4317/v1/traces",
        "https://",
    ],
)
def test_a_bad_endpoint_is_a_config_error_naming_the_key(endpoint: str) -> None:
    with pytest.raises(ConfigError) as info:
        transport_for(settings(endpoint), "edge.toml")
    (problem,) = info.value.problems
    assert (problem.source, problem.path) == ("edge.toml", "telemetry.otlp.endpoint")
    assert problem.message and "hunter2" not in str(info.value)  # a password in the URL is not echoed


def test_endpoints_are_read_as_config_reads_them() -> None:
    """Ports default to OTLP's (4318 for OTLP/HTTP, 4317 for gRPC), as the config check assumes."""
    assert transport_for(settings("http://collector"), "").shown == "http://collector:4318"
    assert transport_for(settings("https://otel.bank/otlp/"), "").shown == "https://otel.bank:4318/otlp"
    assert transport_for(settings("grpc://[::1]"), "").shown == "grpc://[::1]:4317"


def test_bad_headers_and_tls_files_are_reported_without_values(tmp_path: Path, ca: CA) -> None:
    cases = {
        "X-Key": ("line\r\nInjected: " + SECRET, "control or non-ASCII"),
        "bad name": ("v", "not a header name"),
        "Content-Type": ("text/plain", "set by the exporter"),
        "x-pad": (" " + SECRET, "whitespace"),
        "x-utf8": ("caf\u00e9 " + SECRET, "non-ASCII"),
    }
    for name, (value, says) in cases.items():
        with pytest.raises(ConfigError) as info:
            transport_for(settings("grpc://127.0.0.1:4317", headers={name: value}), "edge.toml")
        (problem,) = info.value.problems
        assert problem.path.startswith("telemetry.otlp.headers") and says in problem.message, problem
        assert "s3cr3t" not in str(info.value)

    def tls(**files: str) -> Config:
        otlp = settings("https://127.0.0.1:4318", **files)
        return Config(listeners=(), telemetry=Telemetry(otlp=otlp), source="edge.toml")

    assert otlp_file_problems(tls(ca=str(ca.pem))) == []
    (problem,) = otlp_file_problems(tls(ca=str(tmp_path / "nope.pem")))
    assert problem.path == "telemetry.otlp.ca" and "does not exist" in problem.message
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    (problem,) = otlp_file_problems(tls(ca=str(not_pem)))
    assert problem.path == "telemetry.otlp.ca" and "holds no PEM certificate" in problem.message
    (problem,) = otlp_file_problems(tls(cert=str(not_pem), key=str(not_pem)))
    assert problem.path == "telemetry.otlp.cert" and str(not_pem) in problem.message
    (problem,) = otlp_file_problems(tls(key=str(not_pem)))
    assert problem.path == "telemetry.otlp.key"
    with pytest.raises(ConfigError, match=r"telemetry\.otlp\.ca: CA file .* holds no PEM certificate"):
        transport_for(settings("grpcs://127.0.0.1:4317", ca=str(not_pem)), "edge.toml")
    plain = Config(listeners=(), telemetry=Telemetry(otlp=settings("http://127.0.0.1:4318")), source="edge.toml")
    assert otlp_file_problems(plain) == []  # no TLS, no files to load


def test_offers_that_can_never_fit_and_caller_drops_are_counted() -> None:
    async def main(collector: Receiver) -> None:
        exp = exporter(collector.endpoint, capacity=64)
        assert exp.room() == 64
        assert not exp.offer(trace_request(65), 65)  # larger than the whole queue
        exp.drop(3)
        exp.drop(2, "encoder_error")
        assert exp.dropped_items == {"queue_full": 68, "encoder_error": 2}
        assert exp.offer(trace_request(64), 64) and exp.room() == 0  # in flight still counts against the bound
        await drained(exp)
        assert exp.room() == 64 and exp.exported_items == 64
        await exp.close(1)

    with OTLPHttpReceiver() as collector:
        run(main(collector))

"""Telemetry benchmarks (issue 6): what a span per request, exported over OTLP, costs edgeward.

    .venv/bin/python bench/telemetry.py --rounds 5 --duration 6 --json bench/results/telemetry.json

Cells, each run once per round on a fresh edgeward process (one worker on
CPU 0), interleaved in this order every round. The load generator is
``wrk -t1 -c50 --latency`` (HTTP/1.1 over TLS, keep-alive, GET /1k.bin from a
``[routes.static]`` route) on CPU 1. ``[access_log] enabled = false`` in every
cell, and an admin listener on a loopback port serves ``/metrics``:

``telemetry_off``
    ``[telemetry.tracing] enabled = false`` and no collector: nothing is
    recorded per request (the baseline).
``spans_otlp``
    tracing on, ``sample_ratio = 1.0``, ``[telemetry.otlp] endpoint =
    "http://127.0.0.1:PORT"`` (metrics and logs export off, everything else
    at its default) pointing at the local OTLP/HTTP receiver below. Targets:
    >= 0.8x ``telemetry_off`` in req/s and in requests per server CPU-second.
``spans_collector_down``
    the same, but PORT is a closed port (connection refused). Same targets,
    and the dropped spans must be counted.
``spans_otlp_grpc``
    as ``spans_otlp`` over OTLP/gRPC (``grpc://``) to a grpcio receiver in the
    same receiver process; reported against the same 0.8x, not judged (the
    issue's targets name OTLP/HTTP).

The receiver (``telemetry.py receiver``, started by the harness, pinned to
the load core CPU 1 next to wrk) is deliberately cheap: an asyncio/uvloop
HTTP/1.1 server that reads each ``POST /v1/traces`` body, counts requests and
bytes, keeps the body and answers 200 with an empty ``application/x-protobuf``
body. The kept bodies' spans are counted (walking three levels of the
protobuf wire format, without decoding a span) when the harness reads the
stats, after the load has stopped, so that walking them does not take the
load core from wrk mid-measurement. Only the first few requests are decoded in full with
``opentelemetry-proto``, to check that they carry SERVER spans with
``http.request.method`` GET, ``url.path`` /1k.bin and
``http.response.status_code`` 200. Its CPU is counted as load-core CPU.

After each measurement the harness waits for the exporter to settle and
reads ``edgeward_telemetry_exported_total{signal="traces"}`` and
``edgeward_telemetry_dropped_total{signal="traces",reason}`` (or the
span-specific ``edgeward_telemetry_spans_*`` names) from the admin
``/metrics``. No number is filled in when: in ``spans_otlp`` fewer spans were
exported (or received) than 95 % of wrk's completed requests (that would be a
benchmark of dropping), or a decoded span lacks the expected attributes; in
``spans_collector_down`` fewer than 95 % were counted as dropped; in
``telemetry_off`` any span was exported; or wrk saw a non-2xx answer or > 1 %
socket errors, or the 1 KiB file did not come back intact before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from certs import make_certs  # noqa: E402
from interleaved import (  # noqa: E402
    CellResult,
    Measurement,
    check_wrk,
    common_meta,
    first_line,
    fmt,
    foreign_cpu,
    load_warnings,
    note_busy_before,
    on_signal,
    paired_ratios,
    ratio,
    run_rounds,
    scratch_dir,
    target_status,
)
from run import (  # noqa: E402
    DEFAULT_INGRESS,
    FOREIGN_THRESHOLD,
    SERVER_CPU,
    log,
    make_www,
    pin_self_to_client_cpu,
    raise_nofile,
)
from servers import (  # noqa: E402
    BenchEnv,
    Edgeward,
    Mode,
    RunningServer,
    ServerError,
    cpu_seconds,
    free_port,
)
from workloads import (  # noqa: E402
    CLIENT_CPU,
    WARMUP_SECONDS,
    ServerCpu,
    WorkloadError,
    _preflight,
    _wrk,
)

PATH = "/1k.bin"
WRK_CONNECTIONS = 50
TARGET = 0.80
ACCOUNTED = 0.95
"""Share of wrk's completed requests that must show up as exported spans
(``spans_otlp``) or as counted drops (``spans_collector_down``)."""
DECODE_FIRST = 3
"""Export requests the receiver decodes in full (the rest it only counts)."""
SETTLE_MAX = 20.0
SETTLE_STABLE = 3.0
"""After wrk stops, the exporter counters are read until they account for
every request sent, or stop moving for SETTLE_STABLE s, or SETTLE_MAX s pass."""
TRACES = "/v1/traces"
GRPC_TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
EXPORTED = "edgeward_telemetry_spans_exported_total"
DROPPED = "edgeward_telemetry_spans_dropped_total"
EXPORTED_BY_SIGNAL = "edgeward_telemetry_exported_total"
DROPPED_BY_SIGNAL = "edgeward_telemetry_dropped_total"
CELLS = ("telemetry_off", "spans_otlp", "spans_collector_down", "spans_otlp_grpc")
DEFAULT_CELLS = CELLS
COMPARED = ("spans_otlp", "spans_collector_down", "spans_otlp_grpc")
JUDGED = ("spans_otlp", "spans_collector_down")

PROTO_VERSION = "import importlib.metadata as m; print(m.version('opentelemetry-proto'))"

Collector = Literal["none", "http", "grpc", "closed"]


# --------------------------------------------------------------------------
# The receiver (its own process: `telemetry.py receiver --port N`)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    b = buf[i]
    if b < 0x80:
        return b, i + 1
    value, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes, start: int, end: int, number: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each length-delimited field *number* in buf[start:end]; other fields skipped."""
    i = start
    while i < end:
        tag, i = _varint(buf, i)
        wire = tag & 7
        if wire == 2:
            n, i = _varint(buf, i)
            if tag >> 3 == number:
                yield i, i + n
            i += n
        elif wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire} at {i}")
    if i != end:
        raise ValueError("field runs past its message")


def count_spans(body: bytes) -> int:
    """Spans in an ExportTraceServiceRequest: resource_spans(1) > scope_spans(2) > spans(2), nothing decoded."""
    n = 0
    for rs in _fields(body, 0, len(body), 1):
        for ss in _fields(body, rs[0], rs[1], 2):
            for _ in _fields(body, ss[0], ss[1], 2):
                n += 1
    return n


def decode_check(body: bytes, path: str) -> dict[str, Any]:
    """Decode one export request in full and check its spans: SERVER, GET, url.path, 200, real ids."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    def value(v: Any) -> Any:
        kind = v.WhichOneof("value")
        return getattr(v, kind) if kind else None

    req = ExportTraceServiceRequest.FromString(body)
    spans, matched = 0, 0
    other_paths: dict[str, int] = {}
    bad: list[dict[str, Any]] = []
    resource: dict[str, Any] = {}
    scopes: set[str] = set()
    first: dict[str, Any] | None = None
    for rs in req.resource_spans:
        resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            scopes.add(f"{ss.scope.name} {ss.scope.version}")
            for s in ss.spans:
                spans += 1
                attrs = {kv.key: value(kv.value) for kv in s.attributes}
                if first is None:
                    first = {"name": s.name, "kind": s.kind, "attributes": attrs}
                if attrs.get("url.path") != path:
                    p = str(attrs.get("url.path"))
                    other_paths[p] = other_paths.get(p, 0) + 1
                    continue
                ok = (
                    s.kind == 2
                    and attrs.get("http.request.method") == "GET"
                    and attrs.get("http.response.status_code") == 200
                    and len(s.trace_id) == 16
                    and any(s.trace_id)
                    and len(s.span_id) == 8
                    and s.end_time_unix_nano >= s.start_time_unix_nano > 0
                )
                if ok:
                    matched += 1
                elif len(bad) < 3:
                    bad.append({"name": s.name, "kind": s.kind, "attributes": attrs})
    return {
        "bytes": len(body),
        "spans": spans,
        "spans_wire_count": count_spans(body),
        "matched": matched,
        "bad": bad,
        "other_paths": other_paths,
        "resource": resource,
        "scopes": sorted(scopes),
        "first_span": first,
    }


@dataclass
class ReceiverStats:
    """What the receiver saw; shared by its HTTP loop and the gRPC threads."""

    path: str
    decode_first: int
    requests: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # body bytes per path
    spans: int = 0
    connections: int = 0
    errors: list[str] = field(default_factory=list)
    decoded: list[dict[str, Any]] = field(default_factory=list)
    bodies: list[tuple[str, bytes]] = field(default_factory=list)  # not yet walked (see `export`)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def export(self, key: str, body: bytes) -> None:
        """Keep the body; it is walked when the stats are read, after the load has stopped.

        Walking 2,048 spans takes about 1.4 ms of Python. Done on arrival, that ran at normal
        priority on the load core in the middle of the measurement and held wrk up, which a
        collector on another host would not.
        """
        with self.lock:
            self.requests[key] = self.requests.get(key, 0) + 1
            self.sizes[key] = self.sizes.get(key, 0) + len(body)
            self.bodies.append((key, body))

    def _walk(self) -> None:
        """Count (and, for the first few, decode) the bodies kept since the last call."""
        with self.lock:
            bodies, self.bodies = self.bodies, []
        for key, body in bodies:
            try:
                n = count_spans(body) if key in (TRACES, GRPC_TRACES) else 0
            except (ValueError, IndexError) as exc:
                n = 0
                self._error(f"{key}: unreadable body ({exc})")
            self.spans += n
            if n and len(self.decoded) < self.decode_first:
                try:
                    result = decode_check(body, self.path)
                except Exception as exc:  # protobuf's DecodeError among others: reported, not fatal
                    result = {"error": f"{type(exc).__name__}: {exc}"}
                self.decoded.append(result)

    def _error(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(text)

    def snapshot(self) -> dict[str, Any]:
        self._walk()
        with self.lock:
            return {
                "requests": dict(self.requests),
                "bytes": dict(self.sizes),
                "spans": self.spans,
                "http_connections": self.connections,
                "errors": list(self.errors),
                "decoded": list(self.decoded),
            }


_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"


def _answer(status: str, body: bytes = b"", ctype: str = "text/plain") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class _OtlpHttp(asyncio.Protocol):
    """HTTP/1.1 keep-alive, Content-Length bodies only (what an OTLP/HTTP exporter sends)."""

    def __init__(self, stats: ReceiverStats) -> None:
        self.stats = stats
        self.buf = bytearray()
        self.want = -1
        self.method = self.target = ""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
        with self.stats.lock:
            self.stats.connections += 1

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        transport = self.transport
        assert transport is not None
        while True:
            if self.want < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > 65536:
                        transport.close()
                    return
                lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
                del buf[: end + 4]
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    transport.write(_answer("400 Bad Request"))
                    transport.close()
                    return
                self.method, self.target = parts[0], parts[1]
                length = 0
                for line in lines[1:]:
                    name, _, val = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(val)
                    elif name == "transfer-encoding":
                        self.stats._error("chunked request body")
                        transport.write(_answer("411 Length Required"))
                        transport.close()
                        return
                self.want = length
            if len(buf) < self.want:
                return
            with memoryview(buf) as view:
                body = bytes(view[: self.want])
            del buf[: self.want]
            self.want = -1
            transport.write(self._handle(body))

    def _handle(self, body: bytes) -> bytes:
        if self.method == "POST" and self.target.startswith("/v1/"):
            self.stats.export(self.target, body)
            return _OK
        if self.method == "GET" and self.target == "/stats":
            return _answer("200 OK", json.dumps(self.stats.snapshot()).encode(), "application/json")
        return _answer("404 Not Found")


def _grpc_server(stats: ReceiverStats, port: int) -> Any:
    """OTLP/gRPC TraceService/Export (raw bytes in, an empty ExportTraceServiceResponse out)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    def export(request: bytes, context: Any) -> bytes:
        stats.export(GRPC_TRACES, request)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2), options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def receiver_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="telemetry.py receiver", description="a cheap local OTLP receiver")
    p.add_argument("--port", type=int, required=True, help="OTLP/HTTP port (and GET /stats)")
    p.add_argument("--grpc-port", type=int, default=0, help="also serve OTLP/gRPC on this port")
    p.add_argument("--path", default=PATH, help="url.path the decoded spans must carry")
    p.add_argument("--decode", type=int, default=DECODE_FIRST)
    args = p.parse_args(argv)
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: F401 - import cost paid now

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    stats = ReceiverStats(args.path, args.decode)
    grpc_server = _grpc_server(stats, args.grpc_port) if args.grpc_port else None

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _OtlpHttp(stats), "127.0.0.1", args.port, backlog=128)
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set_result, None)
        await stop
        server.close()  # not wait_closed(): an exporter's keep-alive connection must not hold the exit up

    asyncio.run(serve())
    if grpc_server is not None:
        grpc_server.stop(0)
    return 0


# --------------------------------------------------------------------------
# The receiver, as the harness runs it


class Receiver:
    """`telemetry.py receiver` on the load core; stopped however the cell ends."""

    def __init__(self, workdir: Path, grpc: bool) -> None:
        self.workdir = workdir
        self.grpc = grpc
        self.port = free_port()
        self.grpc_port = free_port() if grpc else 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "logs" / f"receiver-{self.port}.log"

    @property
    def endpoint(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}" if self.grpc else f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Receiver:
        argv = [
            "taskset",
            "-c",
            CLIENT_CPU,
            sys.executable,
            str(Path(__file__).resolve()),
            "receiver",
            "--port",
            str(self.port),
            "--path",
            PATH,
        ]
        if self.grpc:
            argv += ["--grpc-port", str(self.grpc_port)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.stats()
                return self
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise ServerError(f"OTLP receiver did not start ({exc}): {self.log_tail()}") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def stats(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/stats"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                data: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise WorkloadError(f"GET {url} (receiver) -> {exc.code}: {exc.read()[:300]!r}") from None
        return data

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()[-1500:]
        except OSError:
            return ""


def closed_port() -> int:
    """A loopback port nobody listens on (connect is refused), checked."""
    port = free_port()
    with socket.socket() as s:
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return port
    raise SystemExit(f"port {port} unexpectedly accepts connections")


# --------------------------------------------------------------------------
# edgeward with [telemetry]


class EdgewardTelemetry(Edgeward):
    """edgeward, one HTTPS listener and one static route, access log off, an admin listener for /metrics."""

    protocols = frozenset({"https"})
    http_versions = frozenset({"h1"})

    def __init__(self, env: BenchEnv, name: str, *, tracing: bool) -> None:
        super().__init__(env)
        self.name = name  # type: ignore[misc]
        self.tracing = tracing
        self.endpoint = ""
        """The collector URL of the next start ("" = none)."""
        self.admin_port = 0
        """The admin port of the last start."""

    def telemetry_toml(self, endpoint: str) -> str:
        if not self.tracing:
            return "[telemetry.tracing]\nenabled = false\n"
        text = "[telemetry.tracing]\nenabled = true\nsample_ratio = 1.0\n"
        if endpoint:
            text += f'\n[telemetry.otlp]\nendpoint = "{endpoint}"\nmetrics = false\nlogs = false\n'
        return text

    def config_text(self, port: int, admin_port: int, endpoint: str) -> str:
        c = self.env.certs
        return f"""[server]
workers = 1

[access_log]
enabled = false

[admin]
enabled = true
address = "127.0.0.1:{admin_port}"

[[listeners]]
name = "https"
address = "127.0.0.1:{port}"
[listeners.tls]
certs = [{{ cert = "{c.cert}", key = "{c.key}" }}]
[listeners.quic]
enabled = false

[[routes]]
path = "/"
[routes.static]
root = "{self.env.www}"

{self.telemetry_toml(endpoint)}"""

    def command(self, ports: dict[Mode, int], confdir: Path, quic: bool) -> tuple[list[str], dict[str, str]]:
        if self.tracing and not self.endpoint:
            raise ServerError(f"{self.name}: no collector endpoint set")
        self.admin_port = free_port()
        conf = confdir / "edgeward.toml"
        conf.write_text(self.config_text(ports["https"], self.admin_port, self.endpoint))
        return [str(self.env.ingress_bin), "serve", "--config", str(conf), "--workers", "1"], {}


@dataclass
class Servers:
    off: EdgewardTelemetry
    spans: EdgewardTelemetry


def make_servers(env: BenchEnv) -> Servers:
    return Servers(
        off=EdgewardTelemetry(env, "edgeward-telemetry-off", tracing=False),
        spans=EdgewardTelemetry(env, "edgeward-spans", tracing=True),
    )


# --------------------------------------------------------------------------
# Admin /metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(admin_port: int) -> str:
    url = f"http://127.0.0.1:{admin_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as exc:
        raise WorkloadError(f"GET {url} (admin) -> {exc.code}: {exc.read()[:300]!r}") from None


def telemetry_counters(text: str) -> dict[str, Any]:
    """Exported and dropped spans (by reason) from the Prometheus text, and every telemetry sample as read.

    Takes the span-specific names (``edgeward_telemetry_spans_*``) and the per-signal ones
    (``edgeward_telemetry_exported_total{signal="traces"}``, ``..._dropped_total{signal,reason}``);
    requests never recorded because the pending list was full (``signal="records"``) are drops too.
    """
    exported, found = 0.0, False
    dropped: dict[str, float] = {}
    names: set[str] = set()
    lines = []
    for line in text.splitlines():
        if line.startswith("#") or "telemetry" not in line:
            continue
        lines.append(line)
        m = _SAMPLE.match(line)
        if not m:
            continue
        name, labels, val = m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))
        sig = labels.get("signal")
        if name == EXPORTED or (name == EXPORTED_BY_SIGNAL and sig == "traces"):
            exported += val
        elif name == DROPPED or (name == DROPPED_BY_SIGNAL and sig in ("traces", "records")):
            reason = labels.get("reason", "") if sig != "records" else f"records_{labels.get('reason', '')}"
            dropped[reason] = dropped.get(reason, 0.0) + val
        else:
            continue
        found = True
        names.add(name)
    return {
        "found": found,
        "names": sorted(names),
        "exported": int(exported),
        "dropped": {k: int(v) for k, v in sorted(dropped.items())},
        "dropped_total": int(sum(dropped.values())),
        "samples": lines,
    }


def settle(admin_port: int, sent: int) -> dict[str, Any]:
    """Read the counters until exported + dropped accounts for *sent*, or they stop moving."""
    t0 = time.monotonic()
    last: tuple[int, int] | None = None
    since = t0
    while True:
        snap = telemetry_counters(scrape(admin_port))
        now = time.monotonic()
        key = (snap["exported"], snap["dropped_total"])
        if key != last:
            last, since = key, now
        if sum(key) >= sent or now - since >= SETTLE_STABLE or now - t0 >= SETTLE_MAX:
            snap["settle_seconds"] = round(now - t0, 2)
            return snap
        time.sleep(0.25)


# --------------------------------------------------------------------------
# Measurement


@dataclass(frozen=True)
class Cell:
    name: str
    server: Callable[[Servers], EdgewardTelemetry]
    collector: Collector
    description: str


CELL_SPECS: dict[str, Cell] = {
    c.name: c
    for c in (
        Cell(
            "telemetry_off",
            lambda s: s.off,
            "none",
            "[telemetry.tracing] enabled = false, no collector, access log off: nothing recorded per request",
        ),
        Cell(
            "spans_otlp",
            lambda s: s.spans,
            "http",
            "tracing on, sample_ratio 1.0, [telemetry.otlp] endpoint = http://127.0.0.1:PORT (the local "
            "OTLP/HTTP receiver on CPU 1), metrics and logs export off",
        ),
        Cell(
            "spans_collector_down",
            lambda s: s.spans,
            "closed",
            "as spans_otlp, the endpoint a closed loopback port (connection refused)",
        ),
        Cell(
            "spans_otlp_grpc",
            lambda s: s.spans,
            "grpc",
            "as spans_otlp over OTLP/gRPC: endpoint = grpc://127.0.0.1:PORT (grpcio receiver on CPU 1)",
        ),
    )
}


def _check_decoded(stats: dict[str, Any]) -> None:
    decoded = stats.get("decoded") or []
    if not decoded:
        raise WorkloadError(f"the receiver decoded no export request (stats {_short(stats)})")
    for d in decoded:
        if "error" in d:
            raise WorkloadError(f"the receiver could not decode an export request: {d['error']}")
        if d["spans"] != d["spans_wire_count"]:
            raise WorkloadError(f"span count mismatch: decoded {d['spans']}, wire walk {d['spans_wire_count']}")
        if d["bad"] or not d["matched"]:
            raise WorkloadError(f"spans without the expected attributes: {d['bad'] or d['first_span']}")


def _short(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if k != "decoded"}


def measure(
    cell: Cell, server: RunningServer, admin_port: int, receiver: Receiver | None, duration: float
) -> Measurement:
    _preflight(server, "https", PATH)
    url = server.url("https", PATH)
    warm = _wrk(url, WARMUP_SECONDS, WRK_CONNECTIONS)
    check_wrk(warm, server.log_tail)
    server.check_alive()
    recv0 = receiver.cpu_seconds() if receiver is not None else 0.0
    with ServerCpu(server) as cpu:
        result = _wrk(url, duration, WRK_CONNECTIONS)
    recv_cpu = receiver.cpu_seconds() - recv0 if receiver is not None else 0.0
    server.check_alive()
    result.update(cpu.detail())
    check_wrk(result, server.log_tail)
    requests = result["requests"]
    sent = requests + warm["requests"]
    result["warmup"] = {"requests": warm["requests"], "requests_per_sec": warm["requests_per_sec"]}
    result["receiver_cpu_util"] = round(recv_cpu / (cpu.wall_seconds or 1.0), 3)
    result["load_core_cpu_util"] = round(result["client_cpu_util"] + result["receiver_cpu_util"], 3)

    if cell.collector == "none":
        tele = telemetry_counters(scrape(admin_port))
        if tele["exported"]:
            raise WorkloadError(f"telemetry off, but {tele['exported']} spans exported")
    else:
        tele = settle(admin_port, sent)
        if not tele["found"]:
            got = f"; the receiver got {_short(receiver.stats())}" if receiver is not None else ""
            raise WorkloadError(
                f"no span counters ({EXPORTED}, {EXPORTED_BY_SIGNAL}{{signal=traces}}) on the admin /metrics "
                f"(telemetry samples: {tele['samples'][:10]}){got}"
            )
    tele["wrk_requests"] = sent
    tele["exported_per_request"] = round(tele["exported"] / sent, 4)
    tele["dropped_per_request"] = round(tele["dropped_total"] / sent, 4)
    result["telemetry"] = tele
    server.check_alive()
    if cell.collector in ("http", "grpc"):
        assert receiver is not None
        stats = receiver.stats()
        result["receiver"] = stats
        if tele["exported"] < ACCOUNTED * sent:
            raise WorkloadError(
                f"only {tele['exported']:,} spans exported for {sent:,} wrk requests "
                f"(dropped {tele['dropped']}): this would benchmark dropping; receiver {_short(stats)}"
            )
        if stats["spans"] < ACCOUNTED * sent:
            raise WorkloadError(f"the receiver got {stats['spans']:,} spans for {sent:,} wrk requests")
        _check_decoded(stats)
    elif cell.collector == "closed" and tele["dropped_total"] < ACCOUNTED * sent:
        raise WorkloadError(
            f"collector down: {tele['dropped_total']:,} spans counted as dropped ({tele['dropped']}) for "
            f"{sent:,} wrk requests, {tele['exported']:,} exported (settled after {tele['settle_seconds']} s)"
        )
    values = {"req_per_s": result["requests_per_sec"]}
    if cpu.cpu_seconds > 0:
        values["req_per_server_cpu_s"] = requests / cpu.cpu_seconds
        result["server_cpu_us_per_req"] = round(1e6 * cpu.cpu_seconds / requests, 2)
    for pct in ("p50", "p99"):
        if f"latency_{pct}_ms" in result:
            values[f"latency_{pct}_ms"] = result[f"latency_{pct}_ms"]
    _preflight(server, "https", PATH)
    return Measurement(values, result)


def run_cell(
    name: str, rnd: int, prefix: str, servers: Servers, args: argparse.Namespace, meta: dict[str, Any]
) -> tuple[Measurement | None, bool, str | None]:
    """Start a receiver (if the cell has one) and a fresh server, check, measure once."""
    spec = CELL_SPECS[name]
    note_busy_before(args.wait_quiet, meta, rnd, name, prefix)
    server = spec.server(servers)
    try:
        with contextlib.ExitStack() as stack:
            receiver = None
            if spec.collector in ("http", "grpc"):
                receiver = stack.enter_context(Receiver(args.workdir, grpc=spec.collector == "grpc"))
                server.endpoint = receiver.endpoint
            elif spec.collector == "closed":
                server.endpoint = f"http://127.0.0.1:{closed_port()}"
            else:
                server.endpoint = ""
            running = stack.enter_context(server.start("https"))
            meta["commands"][server.name] = " ".join(map(str, running.argv))
            m = measure(spec, running, server.admin_port, receiver, args.duration)
            m.detail["endpoint"] = server.endpoint
            m.detail["server_log_tail"] = running.log_tail(5)
    except (ServerError, WorkloadError, OSError, subprocess.SubprocessError) as exc:
        err = f"{type(exc).__name__}: {exc}"
        log(f"{prefix} ERROR {err[:1500]}")
        return None, False, err
    d = m.detail
    d["round"] = rnd
    f = foreign_cpu(d, "server_cpu_util", "client_cpu_util", "receiver_cpu_util")
    d["foreign_cpu_util"] = f
    noisy = f is not None and f > FOREIGN_THRESHOLD
    t = d["telemetry"]
    shown = f"req/s={m.values['req_per_s']:,.0f}, per CPU-s={m.values.get('req_per_server_cpu_s', 0):,.0f}"
    shown += f", p50 {d.get('latency_p50_ms', 0):.2f} ms, p99 {d.get('latency_p99_ms', 0):.2f} ms"
    shown += (
        f" (server {d['server_cpu_util']:.2f}, wrk {d['client_cpu_util']:.2f}, receiver {d['receiver_cpu_util']:.2f})"
    )
    shown += f"; spans exported {t['exported']:,}, dropped {t['dropped'] or 0} of {t['wrk_requests']:,} requests"
    if "receiver" in d:
        r = d["receiver"]
        shown += f"; receiver {sum(r['requests'].values())} req, {r['spans']:,} spans"
    if noisy:
        shown += f" warning: foreign load {f:.2f} CPU"
    log(f"{prefix} {shown}")
    return m, noisy, None


# --------------------------------------------------------------------------
# Results


def summary(results: dict[str, CellResult]) -> dict[str, Any]:
    out: dict[str, Any] = {"targets": [], "latency": [], "derived": {}}
    base = "telemetry_off"
    if base not in results:
        return out
    for a in COMPARED:
        if a not in results:
            continue
        a_bound, b_bound = results[a].saturated("load_core_cpu_util"), results[base].saturated("load_core_cpu_util")
        bound = None if a_bound == b_bound else ("lower" if a_bound else "upper")
        for metric in ("req_per_s", "req_per_server_cpu_s"):
            r = ratio(results, a, base, metric)
            status = target_status(r, TARGET)
            if metric == "req_per_s" and r is not None:
                if a_bound and b_bound:
                    status = "inconclusive: both load-core-bound"
                elif a_bound and r < TARGET:
                    status = f"inconclusive: {a} load-core-bound"
                elif b_bound and r >= TARGET:
                    status = f"inconclusive: {base} load-core-bound"
            out["targets"].append(
                {
                    "name": f"{a} / {base}, {metric}",
                    "ratio": r,
                    "per_round": paired_ratios(results, a, base, metric),
                    "target": TARGET,
                    "status": status,
                    "judged": a in JUDGED,
                    "bound": bound if metric == "req_per_s" else None,
                }
            )
        for metric in ("latency_p50_ms", "latency_p99_ms"):
            out["latency"].append(
                {
                    "name": f"{a} / {base}, {metric}",
                    "ratio": ratio(results, a, base, metric),
                    "per_round": paired_ratios(results, a, base, metric),
                }
            )
    d = out["derived"]
    us = {
        name: statistics.median(v)
        for name, c in results.items()
        if (v := [x["server_cpu_us_per_req"] for x in c.details if "server_cpu_us_per_req" in x])
    }
    d["server_cpu_us_per_req"] = us
    for a in COMPARED:
        if a in us and base in us:
            d[f"{a}_cost_us_per_req"] = round(us[a] - us[base], 2)
    # The baseline's own spread: what "noise" is for latency in this run.
    off = results[base]
    for metric in ("latency_p50_ms", "latency_p99_ms"):
        vals = off.values.get(metric, [])
        if len(vals) > 1:
            d[f"{base}_{metric}_range"] = [min(vals), max(vals)]
    return out


def cell_telemetry(c: CellResult) -> dict[str, Any]:
    """Medians over rounds of the exporter counters and the receiver's counts."""
    tele = [d["telemetry"] for d in c.details if "telemetry" in d]
    recv = [d["receiver"] for d in c.details if "receiver" in d]
    out: dict[str, Any] = {}
    if tele:
        out["exported_per_request"] = statistics.median(t["exported_per_request"] for t in tele)
        out["dropped_per_request"] = statistics.median(t["dropped_per_request"] for t in tele)
        reasons: dict[str, int] = {}
        for t in tele:
            for k, v in t["dropped"].items():
                reasons[k] = reasons.get(k, 0) + v
        out["dropped_by_reason_all_rounds"] = reasons
        out["settle_seconds"] = statistics.median(t.get("settle_seconds", 0.0) for t in tele)
    if recv:
        out["receiver_requests"] = statistics.median(sum(r["requests"].values()) for r in recv)
        out["receiver_spans"] = statistics.median(r["spans"] for r in recv)
        out["receiver_bytes"] = statistics.median(sum(r["bytes"].values()) for r in recv)
        out["receiver_http_connections"] = statistics.median(r["http_connections"] for r in recv)
        out["receiver_spans_minus_exported"] = [r["spans"] - t["exported"] for r, t in zip(recv, tele, strict=False)]
    return out


METRIC_UNITS = {
    "req_per_s": "req/s",
    "req_per_server_cpu_s": "req/CPU-s",
    "latency_p50_ms": "ms",
    "latency_p99_ms": "ms",
}


def render_markdown(results: dict[str, CellResult], meta: dict[str, Any], summ: dict[str, Any]) -> str:
    lines = [
        f"`bench/telemetry.py --rounds {meta['rounds']} --duration {meta['duration']:g}` ({meta['date']}, "
        f"{meta['cpu']}, git {meta['git_rev']}): edgeward one worker on CPU {SERVER_CPU}; wrk (-t1 "
        f"-c{WRK_CONNECTIONS} --latency, HTTPS/1.1 keep-alive, GET {PATH}) and the OTLP receiver on CPU "
        f"{CLIENT_CPU}; access log off; {meta['rounds']} interleaved rounds, fresh processes per cell, medians.",
        *load_warnings(meta),
        "",
        "| cell | req/s | req per server CPU-s | server µs/req | server CPU | wrk CPU | receiver CPU "
        "| p50 ms | p99 ms | spans exported / req | spans dropped / req | rounds (req/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    us = summ["derived"].get("server_cpu_us_per_req", {})
    for name in meta["cells"]:
        c = results[name]
        t = cell_telemetry(c)
        rounds = ", ".join(f"{v:,.0f}" for v in c.values.get("req_per_s", []))
        if c.errors:
            rounds += f" ({len(c.errors)} ERR)"
        rps = fmt(c.median("req_per_s"))
        if c.saturated("load_core_cpu_util") and c.median("req_per_s") is not None:
            rps = "≥" + rps
        receiver = "—" if CELL_SPECS[name].collector in ("none", "closed") else fmt(c.util("receiver_cpu_util"), 2)
        lines.append(
            f"| {name} | {rps} | {fmt(c.median('req_per_server_cpu_s'))} | {fmt(us.get(name), 1)} | "
            f"{fmt(c.util('server_cpu_util'), 2)} | {fmt(c.util('client_cpu_util'), 2)} | {receiver} | "
            f"{fmt(c.median('latency_p50_ms'), 2)} | {fmt(c.median('latency_p99_ms'), 2)} | "
            f"{fmt(t.get('exported_per_request'), 3)} | {fmt(t.get('dropped_per_request'), 3)} | {rounds} |"
        )
    lines += [
        "",
        "| target | ratio of medians | per-round ratios | target | status |",
        "|---|---:|---|---:|---|",
    ]
    for t in summ["targets"]:
        name = t["name"] + ("" if t["judged"] else " (reported)")
        r = "—" if t["ratio"] is None else f"{t['ratio']:.2f}"
        if t.get("bound") and t["ratio"] is not None:
            r = ("≤" if t["bound"] == "upper" else "≥") + r
        per_round = ", ".join(f"{x:.2f}" for x in t.get("per_round", []))
        lines.append(f"| {name} | {r} | {per_round} | ≥ {t['target']:g} | {t['status'] if t['judged'] else '—'} |")
    if summ["latency"]:
        lines += ["", "| latency | ratio of medians | per-round ratios |", "|---|---:|---|"]
        for t in summ["latency"]:
            r = "—" if t["ratio"] is None else f"{t['ratio']:.2f}"
            lines.append(f"| {t['name']} | {r} | {', '.join(f'{x:.2f}' for x in t['per_round'])} |")
    d = summ["derived"]
    notes = []
    for a in COMPARED:
        if f"{a}_cost_us_per_req" in d:
            notes.append(f"{a} {d[f'{a}_cost_us_per_req']:+.1f} µs")
    if notes:
        lines += ["", "Server CPU per request over `telemetry_off`: " + "; ".join(notes) + "."]
    ranges = [
        f"{m.removeprefix('latency_').removesuffix('_ms')} {d[k][0]:.2f} to {d[k][1]:.2f} ms"
        for m in ("latency_p50_ms", "latency_p99_ms")
        if (k := f"telemetry_off_{m}_range") in d
    ]
    if ranges:
        lines += ["", "`telemetry_off`'s own spread over the rounds (the noise): " + ", ".join(ranges) + "."]
    for name in meta["cells"]:
        t = cell_telemetry(results[name])
        if "receiver_spans" in t:
            lines += [
                "",
                f"`{name}` receiver (medians per cell): {t['receiver_requests']:,.0f} export requests, "
                f"{t['receiver_spans']:,.0f} spans, {t['receiver_bytes'] / 1e6:,.1f} MB, "
                f"{t['receiver_http_connections']:,.0f} HTTP connection(s); "
                "receiver spans minus exporter count per round: "
                f"{', '.join(str(x) for x in t['receiver_spans_minus_exported'])}.",
            ]
        if t.get("dropped_by_reason_all_rounds"):
            lines += [
                "",
                f"`{name}` spans dropped, all rounds, by reason: "
                + ", ".join(f"{k or '(none)'} {v:,}" for k, v in t["dropped_by_reason_all_rounds"].items())
                + ".",
            ]
    errs = [(n, e) for n in meta["cells"] for e in results[n].errors]
    if errs:
        lines += ["", "Errors:", ""]
        lines += [f"- {n}: {e.splitlines()[0][:300]}" for n, e in errs]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Orchestration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=6.0, help="seconds per measurement (after a 1 s warm-up)")
    p.add_argument(
        "--cells",
        default="",
        help=f"comma list of cells (default: {','.join(DEFAULT_CELLS)}; known: {','.join(CELLS)})",
    )
    p.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "telemetry.json")
    p.add_argument("--ingress", type=Path, default=DEFAULT_INGRESS)
    p.add_argument("--wait-quiet", type=float, default=30.0, metavar="S")
    p.add_argument(
        "--retry-noisy",
        type=int,
        default=2,
        metavar="N",
        help="measure a cell again, up to N times, when foreign CPU load shared the cores during it",
    )
    p.add_argument("--keep-workdir", action="store_true")
    args = p.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()] or list(DEFAULT_CELLS)
    bad = [c for c in cells if c not in CELL_SPECS]
    if bad:
        p.error(f"unknown cell(s) {bad}; known: {list(CELLS)}")
    args.cells = [c for c in CELLS if c in cells]
    if args.rounds < 1 or args.duration < 1:
        p.error("--rounds and --duration must be >= 1")
    return args


def ingress_check(args: argparse.Namespace, servers: Servers, workdir: Path) -> dict[str, str]:
    """``ingress check`` on every config variant (placeholder ports) before anything runs."""
    out = {}
    variants = {"telemetry_off": (servers.off, ""), "spans_otlp": (servers.spans, "http://127.0.0.1:4318")}
    if "spans_otlp_grpc" in args.cells:
        variants["spans_otlp_grpc"] = (servers.spans, "grpc://127.0.0.1:4317")
    for name, (s, endpoint) in variants.items():
        conf = workdir / f"check-{name}.toml"
        conf.write_text(s.config_text(8443, 9901, endpoint))
        proc = subprocess.run(
            [str(args.ingress), "check", "--config", str(conf)], capture_output=True, text=True, timeout=60, check=False
        )
        text = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise SystemExit(f"ingress check failed for {name}:\n{text}")
        out[name] = text.splitlines()[-1] if text else "ok"
    return out


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["receiver"]:
        return receiver_main(raw[1:])
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    for tool in ("taskset", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (apt-get install -y {tool})")
    pinned = pin_self_to_client_cpu()
    nofile = raise_nofile()
    with scratch_dir("edgeward-telemetry-bench-", args.keep_workdir) as workdir:
        args.workdir = workdir
        www = workdir / "www"
        make_www(www)
        env = BenchEnv(
            server_cpu=SERVER_CPU,
            workdir=workdir,
            www=www,
            certs=make_certs(workdir / "tls"),
            bench_dir=BENCH_DIR,
            peers_venv=BENCH_DIR / ".venv-peers",
            ingress_bin=args.ingress,
        )
        servers = make_servers(env)
        meta = common_meta("bench/telemetry.py", argv, args.rounds, args.duration)
        meta.update(
            {
                "wrk_connections": WRK_CONNECTIONS,
                "cells": args.cells,
                "cell_descriptions": {c: CELL_SPECS[c].description for c in args.cells},
                "pinned": {
                    "server_cpu": SERVER_CPU,
                    "client_cpu": CLIENT_CPU if pinned else None,
                    "receiver_cpu": CLIENT_CPU,
                },
                "rlimit_nofile": list(nofile),
                "accounted_min": ACCOUNTED,
                "receiver_decodes_first": DECODE_FIRST,
                "versions": {
                    "edgeward": servers.off.version(),
                    "wrk": first_line(["wrk", "--version"]),
                    "openssl": first_line(["openssl", "version"]),
                    "opentelemetry-proto (receiver)": first_line(
                        [
                            sys.executable,
                            "-c",
                            "import importlib.metadata as m; print(m.version('opentelemetry-proto'))",
                        ]
                    ),
                    "python (harness)": sys.version.split()[0],
                },
                "configs": {
                    "telemetry_off": servers.off.config_text(0, 0, ""),
                    "spans_otlp": servers.spans.config_text(0, 0, "http://127.0.0.1:PORT"),
                },
            }
        )
        for name, version in meta["versions"].items():
            log(f"  {name}: {version}")
        meta["ingress_check"] = ingress_check(args, servers, workdir)

        def once(name: str, rnd: int, prefix: str) -> tuple[Measurement | None, bool, str | None]:
            return run_cell(name, rnd, prefix, servers, args, meta)

        results = run_rounds(args.cells, args.rounds, args.retry_noisy, once, meta)
        summ = summary(results)
        print(render_markdown(results, meta, summ))
        out = {
            "meta": meta,
            "cells": {
                name: c.as_json(
                    METRIC_UNITS,
                    ("load_core_bound", "load_core_cpu_util"),
                    ("receiver_cpu_util",),
                    telemetry=cell_telemetry(c),
                )
                for name, c in results.items()
            },
            **summ,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)

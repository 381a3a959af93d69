"""Workloads: one function each, run against an already started server.

Each workload function gets a :class:`RunningServer` and the measurement
duration, does its own 1 s warm-up, and returns a list of :class:`Metric`
(most return one; the RSS workloads also report worker-only RSS). A
workload that cannot produce a trustworthy number raises
:class:`WorkloadError`; the runner records that as an error for the cell.
No number is ever estimated or filled in.

Load generators (``wrk``, ``openssl s_time``, ``h2load``, ``h3load``) are
pinned with ``taskset -c <client_cpu>``, the other core from the server's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import resource
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import HttpVersion, Mode, RunningServer, probe

CLIENT_CPU = "1"
WARMUP_SECONDS = 1
H3LOAD = Path(__file__).resolve().parent / "h3load.py"
CLIENT_PYTHON: list[Path] = [Path(sys.executable)]
"""Interpreter that runs h3load (needs qh3 + uvloop): the runner sets it to
the peers venv's python with :func:`set_client_python`."""


def set_client_python(python: Path) -> None:
    CLIENT_PYTHON[0] = python


class WorkloadError(RuntimeError):
    """The measurement failed or produced a number we must not report."""


@dataclass
class Metric:
    """One measured number; ``detail`` holds the raw context (tool output...)."""

    name: str
    value: float
    unit: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec:
    """A row of the results table."""

    name: str
    unit: str
    higher_is_better: bool


@dataclass(frozen=True)
class Workload:
    name: str
    mode: Mode
    """Which listener the workload talks to (decides who takes part)."""
    metrics: tuple[MetricSpec, ...]
    run: Callable[[RunningServer, float], list[Metric]]
    tools: tuple[str, ...] = ()
    description: str = ""
    http: HttpVersion = "h1"
    """HTTP version spoken; decides who takes part and whether the server
    starts its QUIC listener (h3)."""


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise WorkloadError(f"{tool} not installed")
    return path


def _preflight(server: RunningServer, mode: Mode, path: str) -> None:
    """Check the exact URL we are about to hammer returns 200 and the exact
    file bytes, so that an error page or a truncated body can never be
    reported as throughput."""
    expected = (server.www / path.lstrip("/")).read_bytes()
    status, body = probe(server, mode, path)
    if status != 200 or body != expected:
        raise WorkloadError(
            f"GET {path} -> {status}, {len(body)} bytes "
            f"(want 200 and the {len(expected)}-byte file{'' if status != 200 else ', content differs'})"
        )


# --------------------------------------------------------------------------
# CPU accounting


def _core_busy_ticks() -> dict[str, tuple[int, int]]:
    """Per-core (busy, total) jiffies from /proc/stat."""
    out: dict[str, tuple[int, int]] = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            ticks = [int(v) for v in vals[:8]]
            idle = ticks[3] + ticks[4]  # idle + iowait
            out[name] = (sum(ticks) - idle, sum(ticks))
    return out


def _busy_between(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    busy: dict[str, float] = {}
    for name, (b1, t1) in after.items():
        b0, t0 = before.get(name, (b1, t1))
        if t1 > t0:
            busy[name] = round((b1 - b0) / (t1 - t0), 3)
    return busy


def machine_busy(sample_seconds: float = 0.5) -> dict[str, float]:
    """Per-core busy fraction over a short sample, taken while none of our
    servers or clients run: anything well above 0 is foreign load (another
    benchmark, a build) that would skew the next measurement."""
    before = _core_busy_ticks()
    time.sleep(sample_seconds)
    return _busy_between(before, _core_busy_ticks())


class ServerCpu:
    """Context manager measuring CPU use over a measurement block.

    On a 2-core box a single-connection client like ``openssl s_time`` can
    be the bottleneck; ``server_cpu_util`` (1.0 = the pinned core fully
    busy) makes that visible instead of leaving a client-bound number
    looking like a server property. ``client_cpu_util`` is the load
    generator's own CPU (children of the harness reaped in the block) and
    ``core_busy`` the machine-wide per-core busy fraction (incl. kernel
    softirq work for loopback that is charged to no process), for spotting
    noisy runs afterwards in the JSON.
    """

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.cpu_seconds = 0.0
        self.wall_seconds = 0.0
        self.client_seconds = 0.0
        self.core_busy: dict[str, float] = {}

    @staticmethod
    def _children_cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    def __enter__(self) -> ServerCpu:
        self._cpu0 = self.server.cpu_seconds()
        self._child0 = self._children_cpu()
        self._cores0 = _core_busy_ticks()
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_seconds = time.monotonic() - self._t0
        self.cpu_seconds = self.server.cpu_seconds() - self._cpu0
        self.client_seconds = self._children_cpu() - self._child0
        self.core_busy = _busy_between(self._cores0, _core_busy_ticks())

    def detail(self) -> dict[str, Any]:
        wall = self.wall_seconds or 1.0
        return {
            "server_cpu_seconds": round(self.cpu_seconds, 3),
            "server_cpu_util": round(self.cpu_seconds / wall, 3),
            "client_cpu_util": round(self.client_seconds / wall, 3),
            "core_busy": self.core_busy,
        }


# --------------------------------------------------------------------------
# wrk


_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(output: str) -> dict[str, Any]:
    """Pull the numbers we need out of wrk's human-readable output."""
    out: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not m:
        raise WorkloadError(f"cannot parse wrk output:\n{output.strip()[-800:]}")
    out["requests_per_sec"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),\s+([\d.]+)(\w+) read", output)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", output)
    if m:
        out["transfer_bytes_per_sec"] = float(m.group(1)) * _SIZE_UNITS.get(m.group(2), 1)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    out["socket_errors"] = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)) if m else {}
    )
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    out["non_2xx"] = int(m.group(1)) if m else 0
    # Lines a wrk Lua script (-s) prints as "bench.NAME=VALUE" (e.g. from done()).
    script = dict(re.findall(r"^bench\.(\w+)=(\S+)$", output, re.M))
    if script:
        out["script"] = script
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
        if m:
            out[f"latency_p{pct}_ms"] = float(m.group(1)) * _TIME_UNITS[m.group(2)]
    return out


def _wrk(
    url: str,
    duration: float,
    connections: int = 64,
    *,
    extra_args: Sequence[str] = (),
    script_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run wrk once. *extra_args* go before the URL (``-H``, ``-s script``),
    *script_args* after it (``-- args`` for the Lua script), and *env*
    replaces the environment (e.g. with an LD_PRELOAD)."""
    wrk = _require("wrk")
    argv = [
        "taskset",
        "-c",
        CLIENT_CPU,
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        *extra_args,
        url,
        *script_args,
    ]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + 60, check=False, env=dict(env) if env else None
    )
    if proc.returncode != 0:
        raise WorkloadError(f"wrk exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return parse_wrk(proc.stdout)


def _wrk_workload(server: RunningServer, duration: float, mode: Mode, path: str, metric: str) -> list[Metric]:
    _preflight(server, mode, path)
    url = server.url(mode, path)
    _wrk(url, WARMUP_SECONDS)
    server.check_alive()
    with ServerCpu(server) as cpu:
        result = _wrk(url, duration)
    server.check_alive()
    result.update(cpu.detail())
    if result["non_2xx"]:
        raise WorkloadError(f"{result['non_2xx']} non-2xx/3xx responses")
    errors = sum(v for k, v in result["socket_errors"].items() if k != "timeout")
    requests = result.get("requests", 0)
    if requests == 0:
        raise WorkloadError("wrk completed 0 requests")
    if errors > 0.01 * requests:
        raise WorkloadError(f"socket errors {result['socket_errors']} for {requests} requests")
    _preflight(server, mode, path)
    return [Metric(metric, result["requests_per_sec"], "req/s", result)]


def https_1k(server: RunningServer, duration: float) -> list[Metric]:
    """64 keep-alive HTTP/1.1-over-TLS connections fetching a 1 KiB file.
    wrk does not verify the certificate (so no client verify cost either)."""
    return _wrk_workload(server, duration, "https", "/1k.bin", "https_1k")


def http_1k(server: RunningServer, duration: float) -> list[Metric]:
    """Plain-HTTP request rate: parser + response path, no crypto."""
    return _wrk_workload(server, duration, "http", "/1k.bin", "http_1k")


def http_100k(server: RunningServer, duration: float) -> list[Metric]:
    """Plain HTTP with a 100 KiB body: exercises the body send path
    (sendfile/zero-copy vs copying through userspace)."""
    return _wrk_workload(server, duration, "http", "/100k.bin", "http_100k")


# --------------------------------------------------------------------------
# openssl s_time


def parse_s_time(output: str) -> dict[str, Any]:
    """Parse the ``-new`` block of ``openssl s_time``.

    We report connections per *real* (wall-clock) second: the user-seconds
    figure only counts the client's CPU time and so says little about the
    server. s_time prints real seconds as a whole number built from
    ``time(NULL)`` differences, which is off by up to one second (for
    ``-time 3`` it said "4 real seconds" after ~3 s: a 25 % error), so the
    caller divides by the measured wall time of the s_time process instead
    and keeps s_time's own figure in the details for reference.
    """
    m = re.search(r"(\d+) connections in (\d+) real seconds", output)
    if not m:
        raise WorkloadError(f"cannot parse openssl s_time output:\n{output.strip()[-800:]}")
    conns, real = int(m.group(1)), int(m.group(2))
    if conns == 0 or real == 0:
        raise WorkloadError(f"s_time: {conns} connections in {real} real seconds")
    out: dict[str, Any] = {"connections": conns, "real_seconds": real}
    m = re.search(r"(\d+) connections in ([\d.]+)s; ([\d.]+) connections/user sec", output)
    if m:
        out["user_seconds"] = float(m.group(2))
        out["connections_per_user_sec"] = float(m.group(3))
    out["s_time_connections_per_real_sec"] = conns / real
    return out


def _s_time(
    port: int, seconds: int, *, extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run ``openssl s_time -new`` once; *extra_args* are added to its
    options (e.g. ``-cert``/``-key`` for mTLS), *env* replaces the environment."""
    openssl = _require("openssl")
    argv = [
        "taskset",
        "-c",
        CLIENT_CPU,
        openssl,
        "s_time",
        "-connect",
        f"127.0.0.1:{port}",
        "-new",
        "-time",
        str(seconds),
        *extra_args,
    ]
    start = time.monotonic()
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=False, env=dict(env) if env else None
    )
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise WorkloadError(f"openssl s_time exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-500:]}")
    result = parse_s_time(proc.stdout)
    result["wall_seconds"] = wall
    result["connections_per_real_sec"] = result["connections"] / wall
    return result


def handshakes(server: RunningServer, duration: float) -> list[Metric]:
    """Full TLS handshakes per second (no resumption).

    s_time runs one connection at a time, so this is the inverse of the
    round-trip cost of connect + full handshake + close, client CPU
    included (ECDHE + ECDSA verify on the client core); it is a latency-
    bound rate, not the server's saturated handshake capacity."""
    port = server.ports["https"]
    _s_time(port, WARMUP_SECONDS)
    server.check_alive()
    with ServerCpu(server) as cpu:
        result = _s_time(port, max(1, round(duration)))
    server.check_alive()
    result.update(cpu.detail())
    metrics = [Metric("handshakes", result["connections_per_real_sec"], "conn/s", result)]
    if cpu.cpu_seconds > 0:  # 0 only if the tick counter did not move at all
        metrics.append(
            Metric(
                "handshakes.per_server_cpu_s",
                result["connections"] / cpu.cpu_seconds,
                "conn/CPU-s",
                result,
            )
        )
    return metrics


# --------------------------------------------------------------------------
# HTTP/2: h2load


def _curl_check(server: RunningServer, path: str, http: str) -> dict[str, Any]:
    """Fetch *path* once with ``curl --http2`` (certificate verified against
    our CA) and check that h2 was negotiated and the answer is a 200 with
    exactly the file's bytes. An independent client: h2load does not check
    bodies, and curl tells which protocol the server picked."""
    curl = _require("curl")
    expected = (server.www / path.lstrip("/")).read_bytes()
    url = server.url("https", path)
    argv = [curl, "-sS", "--max-time", "10", "--cacert", str(server.ca_file), "--http2", url]
    argv += ["-o", "-", "-w", "%{stderr}%{http_version} %{http_code}"]
    proc = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise WorkloadError(f"curl {http} GET {path} failed: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    version, _, status = proc.stderr.decode(errors="replace").strip().rpartition("\n")[2].partition(" ")
    if version != "2":
        raise WorkloadError(f"server negotiated HTTP/{version} with curl --http2, not h2 (ALPN)")
    if status != "200" or proc.stdout != expected:
        raise WorkloadError(
            f"h2 GET {path} -> {status}, {len(proc.stdout)} bytes "
            f"(want 200 and the {len(expected)}-byte file{'' if status != '200' else ', content differs'})"
        )
    return {"http_version": version, "status": int(status)}


def parse_h2load(output: str) -> dict[str, Any]:
    """Numbers from h2load's summary. ``requests_per_sec`` is h2load's own
    "finished in ..., N req/s" (succeeded requests / measured duration)."""
    out: dict[str, Any] = {}
    m = re.search(r"^finished in ([\d.]+)(\w+), ([\d.]+) req/s", output, re.M)
    if not m:
        raise WorkloadError(f"cannot parse h2load output:\n{output.strip()[-800:]}")
    out["finished_in"] = f"{m.group(1)}{m.group(2)}"
    out["requests_per_sec"] = float(m.group(3))
    m = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
        r"(\d+) timeout",
        output,
        re.M,
    )
    if not m:
        raise WorkloadError(f"cannot parse h2load requests line:\n{output.strip()[-800:]}")
    keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    out["requests"] = dict(zip(keys, map(int, m.groups()), strict=True))
    m = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output, re.M)
    if not m:
        raise WorkloadError(f"cannot parse h2load status codes:\n{output.strip()[-800:]}")
    out["status_codes"] = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, m.groups()), strict=True))
    m = re.search(r"^Application protocol: (\S+)", output, re.M)
    out["protocol"] = m.group(1) if m else None
    m = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", output, re.M)
    if m:
        out["request_time_min_max_mean"] = list(m.groups())
    return out


H2_CONNECTIONS = 16
H2_STREAMS = 10


def _h2load(url: str, duration: float) -> dict[str, Any]:
    h2load = _require("h2load")
    argv = [
        "taskset",
        "-c",
        CLIENT_CPU,
        h2load,
        "-t1",
        f"-c{H2_CONNECTIONS}",
        f"-m{H2_STREAMS}",
        f"-D{max(1, round(duration))}",
        # h2 only: the default list ends in http/1.1, which would quietly
        # benchmark HTTP/1.1 against a server without h2.
        "--npn-list=h2",
        url,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if proc.returncode != 0:
        raise WorkloadError(f"h2load exited {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-500:]}")
    result = parse_h2load(proc.stdout)
    result["argv"] = argv[3:]
    return result


def h2_1k(server: RunningServer, duration: float) -> list[Metric]:
    """HTTP/2 over TLS: ``h2load -c16 -m10`` (16 connections x 10 concurrent
    streams) fetching the 1 KiB file. Any failed, errored or timed-out
    request, any non-2xx status, or a protocol other than h2 makes the cell
    an error: nothing is averaged in with failures."""
    path = "/1k.bin"
    check = _curl_check(server, path, "h2")
    url = server.url("https", path)
    _h2load(url, WARMUP_SECONDS)
    server.check_alive()
    with ServerCpu(server) as cpu:
        result = _h2load(url, duration)
    server.check_alive()
    result.update(cpu.detail())
    result["preflight"] = check
    if result["protocol"] != "h2":
        raise WorkloadError(f"h2load negotiated {result['protocol'] or 'no protocol'}, not h2")
    req, codes = result["requests"], result["status_codes"]
    bad = {k: req[k] for k in ("failed", "errored", "timeout") if req[k]}
    if bad:
        raise WorkloadError(f"h2load: {bad} of {req['total']} requests ({result['requests_per_sec']:,.0f} req/s)")
    non_2xx = {k: v for k, v in codes.items() if k != "2xx" and v}
    if non_2xx:
        raise WorkloadError(f"h2load: non-2xx responses {non_2xx} ({result['requests_per_sec']:,.0f} req/s)")
    if req["succeeded"] == 0:
        raise WorkloadError("h2load completed 0 requests")
    _curl_check(server, path, "h2")
    return [Metric("h2_1k", result["requests_per_sec"], "req/s", result)]


# --------------------------------------------------------------------------
# HTTP/3: bench/h3load.py (qh3)

H3_CONNECTIONS = 16
H3_STREAMS = 10
H3_PROCESSES = 1
"""One client process: the client has one core (CPU 1); more processes on
that core only add scheduling (measured: -p2 was not faster than -p1)."""
H3_READY_TIMEOUT = 10.0


def _h3load_argv(server: RunningServer, path: str, *extra: str) -> list[str]:
    return [
        "taskset",
        "-c",
        CLIENT_CPU,
        str(CLIENT_PYTHON[0]),
        str(H3LOAD),
        server.url("https", path),
        "--cafile",
        str(server.ca_file),
        *extra,
    ]


def _h3_check(server: RunningServer, path: str, deadline: float) -> dict[str, Any]:
    """One HTTP/3 GET (certificate verified against our CA) until it works or
    *deadline* passes (the QUIC listener may come up after the TCP one);
    then demand a 200 with exactly the file's bytes over ALPN h3."""
    expected = (server.www / path.lstrip("/")).read_bytes()
    while True:
        server.check_alive()
        proc = subprocess.run(
            _h3load_argv(server, path, "--once", "--connect-timeout", "2"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        result = json.loads(lines[-1]) if lines else {"error": f"h3load: {proc.stderr.strip()[-300:]}"}
        if "error" not in result:
            break
        if time.monotonic() > deadline:
            raise WorkloadError(f"no HTTP/3 answer on udp/{server.ports['https']}: {result['error']}")
        time.sleep(0.2)
    if result.get("alpn") != ["h3"]:
        raise WorkloadError(f"QUIC ALPN {result.get('alpn')}, not h3")
    if result["status"] != 200 or result["sha256"] != hashlib.sha256(expected).hexdigest():
        raise WorkloadError(
            f"h3 GET {path} -> {result['status']}, {result['length']} bytes "
            f"(want 200 and the {len(expected)}-byte file{'' if result['status'] != 200 else ', content differs'})"
        )
    return result


def _udp_drops(port: int) -> int:
    """Datagrams the kernel dropped (receive buffer full) on the UDP socket(s)
    bound to local *port*, i.e. the server's QUIC socket; cumulative."""
    total = 0
    with open("/proc/net/udp", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                total += int(fields[-1])
    return total


def h3_1k(server: RunningServer, duration: float) -> list[Metric]:
    """HTTP/3 over QUIC: bench/h3load.py, 16 connections x 10 concurrent
    streams, GET /1k.bin. Handshakes and a 1 s warm-up on the same
    connections happen before the counted window, and the server's CPU is
    sampled over exactly that window. Any non-200, short body, reset stream
    or lost connection makes the cell an error."""
    path = "/1k.bin"
    if not server.quic:
        raise WorkloadError(f"{server.name} was started without QUIC")
    check = _h3_check(server, path, time.monotonic() + H3_READY_TIMEOUT)
    expected_len = len((server.www / path.lstrip("/")).read_bytes())
    argv = _h3load_argv(
        server,
        path,
        f"--connections={H3_CONNECTIONS}",
        f"--streams={H3_STREAMS}",
        f"--processes={H3_PROCESSES}",
        f"--duration={duration}",
        f"--warmup={WARMUP_SECONDS}",
        f"--expect-length={expected_len}",
    )
    port = server.ports["https"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        if first != "go":
            out, err = proc.communicate(timeout=60)
            raise WorkloadError(f"h3load did not start: {(first + out + err).strip()[-500:]}")
        # The workers count from WARMUP_SECONDS after "go" for `duration`
        # seconds; sample the server over the same window.
        time.sleep(WARMUP_SECONDS)
        drops0 = _udp_drops(port)
        with ServerCpu(server) as cpu:
            time.sleep(duration)
        drops1 = _udp_drops(port)
        out, err = proc.communicate(timeout=duration + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    server.check_alive()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise WorkloadError(f"h3load exited {proc.returncode} without a result: {err.strip()[-500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    client_util = result["client_cpu_util"]
    result.update(cpu.detail())
    # ServerCpu's client figure counts reaped children only; h3load measures
    # its workers over the counted window itself.
    result["client_cpu_util"] = round(client_util, 3)
    result["server_socket_drops"] = drops1 - drops0
    result["preflight"] = check
    result["argv"] = argv[3:]
    if result["errors"]:
        raise WorkloadError(f"h3load: {'; '.join(result['errors'])[:400]}")
    if result["alpn"] != ["h3"]:
        raise WorkloadError(f"QUIC ALPN {result['alpn']}, not h3")
    bad = {k: result[k] for k in ("non_2xx", "bad_length", "stream_reset", "conn_lost") if result[k]}
    if bad:
        raise WorkloadError(f"h3load: {bad} with {result['ok']} ok ({result['requests_per_sec']:,.0f} req/s)")
    if result["ok"] == 0:
        raise WorkloadError("h3load completed 0 requests")
    _h3_check(server, path, time.monotonic() + 2)
    return [Metric("h3_1k", result["requests_per_sec"], "req/s", result)]


# --------------------------------------------------------------------------
# RSS


def _mib(kib: int) -> float:
    return kib / 1024.0


def rss_idle(server: RunningServer, duration: float) -> list[Metric]:
    """Memory after start-up and a handful of requests (the readiness probes),
    once the process has settled for the warm-up second."""
    time.sleep(WARMUP_SECONDS)
    server.check_alive()
    total, worker = server.rss()
    detail = {"pids": server.pids(), "total_kib": total, "worker_kib": worker}
    return [
        Metric("rss_idle", _mib(total), "MiB", detail),
        Metric("rss_idle.worker", _mib(worker), "MiB", detail),
    ]


IDLE_CONNECTIONS = 1000
_OPEN_CONCURRENCY = 32


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One keep-alive GET; returns the body length after checking for 200."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length)
    if status != 200:
        raise WorkloadError(f"GET {path} -> {status}")
    return len(body)


async def _hold_connections(server: RunningServer, count: int) -> tuple[int, int, int, int, list[str]]:
    """Open *count* TLS keep-alive connections, one request each, keep them
    idle, read RSS, then re-use each once to see how many were really held.

    Returns (opened, held, total_kib, worker_kib, first errors).
    """
    port = server.ports["https"]
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    sem = asyncio.Semaphore(_OPEN_CONCURRENCY)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors: list[str] = []

    async def open_one() -> None:
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"),
                    timeout=20,
                )
                conns.append((reader, writer))
                await asyncio.wait_for(_request(reader, writer, "/1k.bin"), timeout=20)
            except (
                TimeoutError,
                OSError,
                asyncio.IncompleteReadError,
                ValueError,
                WorkloadError,
            ) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    async def reuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            await asyncio.wait_for(_request(reader, writer, "/1k.bin"), timeout=20)
            return True
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, WorkloadError):
            return False

    try:
        await asyncio.gather(*(open_one() for _ in range(count)))
        opened = count - len(errors)
        await asyncio.sleep(1.0)  # let the server settle (buffers freed, GC...)
        total, worker = server.rss()
        held = sum(await asyncio.gather(*(reuse(r, w) for r, w in conns)))
        return opened, held, total, worker, errors[:5]
    finally:
        for _, writer in conns:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)


def rss_1000_tls(server: RunningServer, duration: float) -> list[Metric]:
    """RSS while holding 1,000 idle TLS keep-alive connections: the per-
    connection memory cost (TLS state + buffers) that dominates at the edge.
    Also reports KiB per connection over the same start's idle baseline."""
    time.sleep(WARMUP_SECONDS)
    server.check_alive()
    base_total, base_worker = server.rss()
    opened, held, total, worker, errors = asyncio.run(_hold_connections(server, IDLE_CONNECTIONS))
    server.check_alive()
    detail: dict[str, Any] = {
        "opened": opened,
        "held": held,
        "baseline_total_kib": base_total,
        "baseline_worker_kib": base_worker,
        "total_kib": total,
        "worker_kib": worker,
        "errors": errors,
    }
    if opened < IDLE_CONNECTIONS or held < IDLE_CONNECTIONS:
        raise WorkloadError(
            f"only {opened} opened / {held} still held of {IDLE_CONNECTIONS} "
            f"connections when RSS was read ({'; '.join(errors[:2])})"
        )
    return [
        Metric("rss_1000_tls", _mib(total), "MiB", detail),
        Metric("rss_1000_tls.worker", _mib(worker), "MiB", detail),
        Metric("rss_1000_tls.per_conn", (total - base_total) / IDLE_CONNECTIONS, "KiB", detail),
    ]


# --------------------------------------------------------------------------

_RPS_HI = True
_MEM_HI = False

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "https_1k",
            "https",
            (MetricSpec("https_1k", "req/s", _RPS_HI),),
            https_1k,
            ("wrk",),
            "wrk -t1 -c64, GET /1k.bin over TLS",
        ),
        Workload(
            "http_1k",
            "http",
            (MetricSpec("http_1k", "req/s", _RPS_HI),),
            http_1k,
            ("wrk",),
            "wrk -t1 -c64, GET /1k.bin plain",
        ),
        Workload(
            "http_100k",
            "http",
            (MetricSpec("http_100k", "req/s", _RPS_HI),),
            http_100k,
            ("wrk",),
            "wrk -t1 -c64, GET /100k.bin plain",
        ),
        Workload(
            "handshakes",
            "https",
            (
                MetricSpec("handshakes", "conn/s", _RPS_HI),
                MetricSpec("handshakes.per_server_cpu_s", "conn/CPU-s", _RPS_HI),
            ),
            handshakes,
            ("openssl",),
            "openssl s_time -new: full handshakes/s",
        ),
        Workload(
            "rss_idle",
            "https",
            (MetricSpec("rss_idle", "MiB", _MEM_HI), MetricSpec("rss_idle.worker", "MiB", _MEM_HI)),
            rss_idle,
            (),
            "RSS after start (tree total / worker only)",
        ),
        Workload(
            "rss_1000_tls",
            "https",
            (
                MetricSpec("rss_1000_tls", "MiB", _MEM_HI),
                MetricSpec("rss_1000_tls.worker", "MiB", _MEM_HI),
                MetricSpec("rss_1000_tls.per_conn", "KiB", _MEM_HI),
            ),
            rss_1000_tls,
            (),
            "RSS holding 1000 idle TLS keep-alive conns",
        ),
        Workload(
            "h2_1k",
            "https",
            (MetricSpec("h2_1k", "req/s", _RPS_HI),),
            h2_1k,
            ("h2load", "curl"),
            f"h2load -c{H2_CONNECTIONS} -m{H2_STREAMS} --npn-list=h2, GET /1k.bin over TLS (HTTP/2)",
            "h2",
        ),
        Workload(
            "h3_1k",
            "https",
            (MetricSpec("h3_1k", "req/s", _RPS_HI),),
            h3_1k,
            (),
            f"bench/h3load.py (qh3) -c{H3_CONNECTIONS} -m{H3_STREAMS} -p{H3_PROCESSES}, GET /1k.bin over QUIC (HTTP/3)",
            "h3",
        ),
    )
}

WORKLOAD_GROUPS: dict[str, tuple[str, ...]] = {
    "h1": ("https_1k", "http_1k", "http_100k"),
    "tls": ("https_1k", "handshakes", "rss_1000_tls"),
    "rss": ("rss_idle", "rss_1000_tls"),
    "h2": ("h2_1k",),
    "h3": ("h3_1k",),
}
"""Shorthands for ``--workloads``."""

"""Reverse-proxy and cache benchmarks: edgeward's proxy against nginx's, and a cache hit against a static file.

    .venv/bin/python bench/proxy.py --rounds 5 --duration 6 --json bench/results/proxy.json

Cells, each run once per round on a fresh proxy/server process (one worker on
CPU 0) and a fresh origin, interleaved in this order every round. The load
generator is ``wrk -t1 -c50`` (HTTP/1.1 over TLS, keep-alive) on CPU 1:

``proxy_edgeward``
    wrk -> edgeward (TLS front, ALPN ``http/1.1``, one ``[[upstreams]]`` pool
    with ``max_idle = 64`` and one proxy route on ``/`` with ``cache = false``)
    -> origin, GET /1k.bin.
``proxy_nginx``
    the same with nginx as the proxy: ``upstream { server ...; keepalive 64; }``,
    ``proxy_pass``, ``proxy_http_version 1.1``, ``proxy_set_header Connection ""``,
    the same certificate and TLS settings as bench/servers.py's nginx, one
    worker, access_log off. Target: edgeward >= 0.7x nginx.
``cache_hit_edgeward``
    the edgeward proxy with ``cache = true``, GET /cached/1k.bin, which the
    origin answers with ``Cache-Control: max-age=3600``: after the first
    request every request is a hit (checked: the origin's request counter
    does not move during the measurement).
``static_edgeward``
    edgeward serving the same file from a ``[routes.static]`` route over the
    same TLS front (the static fast path). Target: cache hit >= 0.9x static.

The origin (both proxies, all cells but ``static_edgeward``) is nginx serving
the 1 KiB file over plain HTTP/1.1 keep-alive, one worker, pinned to the
**load-generator core** (CPU 1), with ``stub_status`` to count the requests
and connections it accepted: a proxy cell whose origin served fewer requests
than wrk completed, or a cache cell whose origin was asked at all during the
measurement, is an error; the number of new origin connections shows whether
the proxy reused its upstream connections.

Before and after every measurement curl (certificate verified against the
bench CA, HTTP/1.1) must get a 200 with exactly the file's 1024 bytes, and in
the cache cell a ``Cache-Status`` containing ``hit``. No number is filled in:
a failed check, any non-2xx response or > 1 % socket errors makes the cell an
error with wrk's counts and the server's log tail.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from certs import make_certs  # noqa: E402
from interleaved import CellResult, on_signal, paired_ratios, ratio, scratch_dir  # noqa: E402
from run import (  # noqa: E402
    BUSY_THRESHOLD,
    CLIENT_BOUND,
    DEFAULT_INGRESS,
    FOREIGN_THRESHOLD,
    SERVER_CPU,
    cpu_model,
    git_rev,
    log,
    make_www,
    pin_self_to_client_cpu,
    raise_nofile,
    wait_quiet,
)
from servers import (  # noqa: E402
    BenchEnv,
    Edgeward,
    Mode,
    Nginx,
    RunningServer,
    Server,
    ServerError,
)
from workloads import (  # noqa: E402
    CLIENT_CPU,
    WARMUP_SECONDS,
    ServerCpu,
    WorkloadError,
    _wrk,
)

PATH = "/1k.bin"
CACHED_PATH = "/cached/1k.bin"
"""The origin adds ``Cache-Control: max-age=3600`` under /cached/."""
STATUS_PATH = "/nginx_status"
WRK_CONNECTIONS = 50
UPSTREAM_IDLE = 64
PROXY_TARGET = 0.70
CACHE_TARGET = 0.90
CELLS = ("proxy_edgeward", "proxy_nginx", "relay_floor", "cache_hit_edgeward", "static_edgeward")


# --------------------------------------------------------------------------
# Servers


class Origin(Nginx):
    """nginx as the origin: plain HTTP/1.1 keep-alive, one worker, on the
    load-generator core (its BenchEnv has ``server_cpu = CLIENT_CPU``)."""

    name = "origin-nginx"
    protocols = frozenset({"http"})
    http_versions = frozenset({"h1"})

    def command(self, ports: dict[Mode, int], confdir: Path, quic: bool) -> tuple[list[str], dict[str, str]]:
        tmp = confdir / "tmp"
        tmp.mkdir(exist_ok=True)
        www = self.env.www
        conf = confdir / "nginx.conf"
        conf.write_text(
            f"""worker_processes 1;
daemon off;
master_process on;
pid {confdir}/nginx.pid;
error_log {confdir}/error.log warn;
worker_rlimit_nofile 16384;

events {{
    worker_connections 8192;
}}

http {{
    types {{
        text/html html;
        application/octet-stream bin;
    }}
    default_type application/octet-stream;

    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;

    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    server {{
        listen 127.0.0.1:{ports["http"]};
        root {www};
        location /cached/ {{
            alias {www}/;
            add_header Cache-Control "max-age=3600";
        }}
        location = {STATUS_PATH} {{
            stub_status;
        }}
    }}
}}
"""
        )
        argv = [self.binary, "-p", str(confdir), "-c", str(conf), "-e", str(confdir / "error.log")]
        return argv, {}


TLS_EDGEWARD = 'alpn = ["http/1.1"]\n'


class EdgewardStatic(Edgeward):
    """edgeward, HTTPS listener only (ALPN http/1.1), one static route: the static fast path."""

    name = "edgeward-static"
    protocols = frozenset({"https"})
    http_versions = frozenset({"h1"})


class EdgewardProxy(Edgeward):
    """edgeward as a reverse proxy: the same TLS front, one upstream pool, one proxy route on ``/``."""

    protocols = frozenset({"https"})
    http_versions = frozenset({"h1"})

    def __init__(
        self,
        env: BenchEnv,
        *,
        cache: bool,
        methods: tuple[str, ...] = ("GET", "HEAD"),
        tail: str = "",
        name: str = "",
    ) -> None:
        """`methods` of the route; `tail`: TOML appended to the config (bench/waf.py's `[waf]`)."""
        super().__init__(env, tls_extra=TLS_EDGEWARD)
        self.cache = cache
        self.methods = methods
        self.tail = tail
        self.name = name or ("edgeward-cache" if cache else "edgeward-proxy")  # type: ignore[misc]
        self.origin_port: int | None = None

    def config_text(self, port: int, origin_port: int) -> str:
        c = self.env.certs
        return f"""[server]
workers = 1

[access_log]
enabled = false

[admin]
enabled = false

[[listeners]]
name = "web"
address = "127.0.0.1:{port}"
[listeners.tls]
certs = [{{ cert = "{c.cert}", key = "{c.key}" }}]
{TLS_EDGEWARD}[listeners.quic]
enabled = false

[[upstreams]]
name = "app"
origins = ["http://127.0.0.1:{origin_port}"]
max_idle = {UPSTREAM_IDLE}

[[routes]]
path = "/"
methods = [{", ".join(f'"{m}"' for m in self.methods)}]
[routes.proxy]
upstream = "app"
cache = {"true" if self.cache else "false"}
{self.tail}"""

    def command(self, ports: dict[Mode, int], confdir: Path, quic: bool) -> tuple[list[str], dict[str, str]]:
        if self.origin_port is None:
            raise ServerError(f"{self.name}: no origin port set")
        conf = confdir / "edgeward.toml"
        conf.write_text(self.config_text(ports["https"], self.origin_port))
        return [str(self.env.ingress_bin), "serve", "--config", str(conf), "--workers", "1"], {}


class NginxProxy(Nginx):
    """nginx as a reverse proxy with a keep-alive upstream, same TLS settings as bench/servers.py's nginx."""

    name = "nginx-proxy"
    protocols = frozenset({"https"})
    http_versions = frozenset({"h1"})

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.origin_port: int | None = None

    def command(self, ports: dict[Mode, int], confdir: Path, quic: bool) -> tuple[list[str], dict[str, str]]:
        if self.origin_port is None:
            raise ServerError(f"{self.name}: no origin port set")
        from ingress.tls.contexts import INTERMEDIATE_CIPHERS

        c = self.env.certs
        tmp = confdir / "tmp"
        tmp.mkdir(exist_ok=True)
        conf = confdir / "nginx.conf"
        conf.write_text(
            f"""worker_processes 1;
daemon off;
master_process on;
pid {confdir}/nginx.pid;
error_log {confdir}/error.log warn;
worker_rlimit_nofile 16384;

events {{
    worker_connections 8192;
}}

http {{
    default_type application/octet-stream;
    access_log off;
    keepalive_requests 1000000;

    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {INTERMEDIATE_CIPHERS};
    ssl_prefer_server_ciphers off;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 1d;
    ssl_session_tickets off;

    upstream app {{
        server 127.0.0.1:{self.origin_port};
        keepalive {UPSTREAM_IDLE};
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{ports["https"]} ssl;
        ssl_certificate {c.cert};
        ssl_certificate_key {c.key};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
        )
        argv = [self.binary, "-p", str(confdir), "-c", str(conf), "-e", str(confdir / "error.log")]
        return argv, {}


class RelayFloor(Server):
    """bench/relay.py: the same TLS front on the same interpreter and loop, relaying bytes unparsed."""

    name = "relay-floor"
    protocols = frozenset({"https"})
    http_versions = frozenset({"h1"})

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.origin_port: int | None = None

    def unavailable(self) -> str | None:
        return None

    def command(self, ports: dict[Mode, int], confdir: Path, quic: bool) -> tuple[list[str], dict[str, str]]:
        if self.origin_port is None:
            raise ServerError(f"{self.name}: no origin port set")
        c = self.env.certs
        argv = [sys.executable, str(BENCH_DIR / "relay.py"), "--listen", f"127.0.0.1:{ports['https']}"]
        argv += ["--origin", f"127.0.0.1:{self.origin_port}", "--cert", str(c.cert), "--key", str(c.key)]
        return argv, {}


@dataclass
class Servers:
    origin: Origin
    proxy: EdgewardProxy
    cache: EdgewardProxy
    nginx: NginxProxy
    static: EdgewardStatic
    relay: RelayFloor


def make_servers(env: BenchEnv) -> Servers:
    return Servers(
        origin=Origin(replace(env, server_cpu=CLIENT_CPU)),
        proxy=EdgewardProxy(env, cache=False),
        cache=EdgewardProxy(env, cache=True),
        nginx=NginxProxy(env),
        static=EdgewardStatic(env, tls_extra=TLS_EDGEWARD),
        relay=RelayFloor(env),
    )


# --------------------------------------------------------------------------
# Checks


def origin_status(origin: RunningServer) -> dict[str, int]:
    """nginx stub_status counters: accepts, handled, requests (each status read is one request too)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{origin.ports['http']}{STATUS_PATH}", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", text, re.M)
    active = re.search(r"Active connections:\s*(\d+)", text)
    if not m or not active:
        raise WorkloadError(f"cannot parse the origin's stub_status: {text!r}")
    accepts, handled, requests = map(int, m.groups())
    return {"accepts": accepts, "handled": handled, "requests": requests, "active": int(active.group(1))}


def curl_get(server: RunningServer, path: str, workdir: Path) -> dict[str, Any]:
    """One GET with curl over HTTP/1.1 and TLS (verified against the bench CA):
    status, body (compared with the file) and response headers."""
    body_file = workdir / "curl-body"
    body_file.unlink(missing_ok=True)
    argv = [
        "curl",
        "-sS",
        "--http1.1",
        "--max-time",
        "10",
        "--cacert",
        str(server.ca_file),
        "-o",
        str(body_file),
        "-D",
        "-",
        "-w",
        "\n%{http_code}",
        server.url("https", path),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if proc.returncode != 0:
        raise WorkloadError(f"curl {path}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    head, _, code = proc.stdout.rstrip().rpartition("\n")
    headers: dict[str, str] = {}
    for line in head.splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = body_file.read_bytes() if body_file.exists() else b""
    return {"status": int(code), "length": len(body), "body": body, "headers": headers}


def check_response(server: RunningServer, path: str, workdir: Path, *, want_hit: bool) -> dict[str, Any]:
    """200 with exactly the 1 KiB file's bytes; with *want_hit*, Cache-Status says hit."""
    expected = (server.www / "1k.bin").read_bytes()
    r = curl_get(server, path, workdir)
    status, length, headers = r["status"], r["length"], r["headers"]
    if status != 200 or r["body"] != expected:
        raise WorkloadError(
            f"curl GET {path} -> {status}, {length} bytes (want 200 and the {len(expected)}-byte file"
            f"{', content differs' if status == 200 and length == len(expected) else ''}); "
            f"headers {headers}; log tail:\n{server.log_tail()}"
        )
    cache_status = headers.get("cache-status", "")
    if want_hit and "hit" not in cache_status:
        raise WorkloadError(f"curl GET {path}: Cache-Status {cache_status!r}, want a hit; headers {headers}")
    return {"status": status, "length": length, "cache_status": cache_status or None, "headers": headers}


# --------------------------------------------------------------------------
# Measurement


@dataclass
class Measurement:
    values: dict[str, float]
    detail: dict[str, Any]


def _check_wrk(result: dict[str, Any], server: RunningServer) -> None:
    requests = result.get("requests", 0)
    if result["non_2xx"]:
        raise WorkloadError(
            f"{result['non_2xx']} non-2xx/3xx responses of {requests} (socket errors {result['socket_errors']}); "
            f"log tail:\n{server.log_tail()}"
        )
    if requests == 0:
        raise WorkloadError(f"wrk completed 0 requests; log tail:\n{server.log_tail()}")
    errors = sum(v for k, v in result["socket_errors"].items() if k != "timeout")
    if errors > 0.01 * requests:
        raise WorkloadError(
            f"socket errors {result['socket_errors']} for {requests} requests; log tail:\n{server.log_tail()}"
        )


def measure(
    server: RunningServer, origin: RunningServer | None, path: str, duration: float, workdir: Path, *, cache: bool
) -> Measurement:
    checks: dict[str, Any] = {}
    if cache:
        checks["prime"] = check_response(server, path, workdir, want_hit=False)
    checks["before"] = check_response(server, path, workdir, want_hit=cache)
    url = server.url("https", path)
    warm = _wrk(url, WARMUP_SECONDS, WRK_CONNECTIONS)
    _check_wrk(warm, server)
    server.check_alive()
    st0 = origin_status(origin) if origin is not None else None
    origin_cpu0 = origin.cpu_seconds() if origin is not None else 0.0
    with ServerCpu(server) as cpu:
        result = _wrk(url, duration, WRK_CONNECTIONS)
    origin_cpu = origin.cpu_seconds() - origin_cpu0 if origin is not None else 0.0
    st1 = origin_status(origin) if origin is not None else None
    server.check_alive()
    result.update(cpu.detail())
    _check_wrk(result, server)
    requests = result["requests"]
    result["warmup"] = {"requests": warm.get("requests"), "requests_per_sec": warm["requests_per_sec"]}
    result["origin_cpu_seconds"] = round(origin_cpu, 3)
    result["origin_cpu_util"] = round(origin_cpu / (cpu.wall_seconds or 1.0), 3)
    result["load_core_cpu_util"] = round(result["client_cpu_util"] + result["origin_cpu_util"], 3)
    if st0 is not None and st1 is not None:
        # st1 - st0 includes st0's own status request.
        origin_requests = st1["requests"] - st0["requests"] - 1
        result["origin"] = {
            "requests": origin_requests,
            # minus the connection of st1's own status request
            "new_connections": st1["accepts"] - st0["accepts"] - 1,
            "active_connections_after": st1["active"] - 1,
            "requests_per_wrk_request": round(origin_requests / requests, 4),
        }
        if cache and origin_requests > 0.01 * requests:
            raise WorkloadError(
                f"cache cell: the origin served {origin_requests} of {requests} requests during the measurement"
            )
        if not cache and origin_requests < requests:
            raise WorkloadError(f"the origin served {origin_requests} requests but wrk completed {requests}")
    values = {"req_per_s": result["requests_per_sec"]}
    if cpu.cpu_seconds > 0:
        values["req_per_server_cpu_s"] = requests / cpu.cpu_seconds
        result["server_cpu_us_per_req"] = round(1e6 * cpu.cpu_seconds / requests, 2)
    checks["after"] = check_response(server, path, workdir, want_hit=cache)
    result["checks"] = checks
    return Measurement(values, result)


@dataclass(frozen=True)
class Cell:
    name: str
    server: Callable[[Servers], Server]
    path: str
    origin: bool
    cache: bool
    description: str


CELL_SPECS: dict[str, Cell] = {
    c.name: c
    for c in (
        Cell(
            "proxy_edgeward",
            lambda s: s.proxy,
            PATH,
            True,
            False,
            "wrk -t1 -c50 HTTPS/1.1 -> edgeward proxy route (cache = false) -> nginx origin, GET /1k.bin",
        ),
        Cell(
            "proxy_nginx",
            lambda s: s.nginx,
            PATH,
            True,
            False,
            "the same with nginx proxy_pass (upstream keepalive 64, proxy_http_version 1.1)",
        ),
        Cell(
            "relay_floor",
            lambda s: s.relay,
            PATH,
            True,
            False,
            "bench/relay.py: the same TLS front on uvloop relaying bytes to the origin unparsed (reported, not judged)",
        ),
        Cell(
            "cache_hit_edgeward",
            lambda s: s.cache,
            CACHED_PATH,
            True,
            True,
            "edgeward proxy route with cache = true, GET /cached/1k.bin (origin: max-age=3600): every request a hit",
        ),
        Cell(
            "static_edgeward",
            lambda s: s.static,
            PATH,
            False,
            False,
            "edgeward [routes.static] on the same TLS front, GET /1k.bin (static fast path)",
        ),
    )
}


def foreign(detail: dict[str, Any]) -> float | None:
    """Busy time of the two cores used by none of: the server, wrk, the origin."""
    cores = detail.get("core_busy") or {}
    a, b = cores.get(f"cpu{SERVER_CPU}"), cores.get(f"cpu{CLIENT_CPU}")
    if a is None or b is None:
        return None
    ours = float(detail["server_cpu_util"]) + float(detail["client_cpu_util"]) + float(detail["origin_cpu_util"])
    return round(float(a) + float(b) - ours, 3)


# --------------------------------------------------------------------------
# Results


def _status(r: float | None, target: float, override: str | None = None) -> str:
    if r is None:
        return "no data"
    if override and r < target:
        return override
    return "met" if r >= target else "missed"


def summary(results: dict[str, CellResult]) -> dict[str, Any]:
    out: dict[str, Any] = {"targets": [], "derived": {}}
    pairs: tuple[tuple[str, str, float | None], ...] = (
        ("proxy_edgeward", "proxy_nginx", PROXY_TARGET),
        ("cache_hit_edgeward", "static_edgeward", CACHE_TARGET),
        ("relay_floor", "proxy_nginx", None),
    )
    for a, b, target in pairs:
        if a not in results or b not in results:
            continue
        # A load-core-bound cell is a lower bound on what that server can do: bound numerator ->
        # the ratio is a lower bound (a miss is undecided); bound denominator -> an upper bound
        # (a "met" is undecided, a miss stands).
        a_bound, b_bound = results[a].saturated("load_core_cpu_util"), results[b].saturated("load_core_cpu_util")
        bound = None if a_bound == b_bound else ("lower" if a_bound else "upper")
        for metric, judged in (("req_per_s", target is not None), ("req_per_server_cpu_s", False)):
            r = ratio(results, a, b, metric)
            status = "reported" if target is None else _status(r, target)
            if not judged or target is None or r is None:
                pass
            elif a_bound and not b_bound and r < target:
                status = f"inconclusive: {a} load-core-bound"
            elif b_bound and not a_bound and r >= target:
                status = f"inconclusive: {b} load-core-bound"
            elif a_bound and b_bound:
                status = "inconclusive: both load-core-bound"
            out["targets"].append(
                {
                    "name": f"{a} / {b}, {metric}",
                    "ratio": r,
                    "per_round": paired_ratios(results, a, b, metric),
                    "target": target,
                    "status": status,
                    "judged": judged,
                    # req/s only: per-CPU-second numbers do not depend on who was saturated.
                    "bound": bound if metric == "req_per_s" else None,
                }
            )
    d = out["derived"]
    us = {
        name: statistics.median(v)
        for name, c in results.items()
        if (v := [x["server_cpu_us_per_req"] for x in c.details if "server_cpu_us_per_req" in x])
    }
    d["server_cpu_us_per_req"] = us
    if "proxy_edgeward" in us and "static_edgeward" in us:
        d["proxy_cost_us_over_static"] = us["proxy_edgeward"] - us["static_edgeward"]
    if "cache_hit_edgeward" in us and "static_edgeward" in us:
        d["cache_hit_cost_us_over_static"] = us["cache_hit_edgeward"] - us["static_edgeward"]
    return out


METRIC_UNITS = {"req_per_s": "req/s", "req_per_server_cpu_s": "req/CPU-s"}


def _f(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def render_markdown(results: dict[str, CellResult], meta: dict[str, Any], summ: dict[str, Any]) -> str:
    lines = [
        f"`bench/proxy.py --rounds {meta['rounds']} --duration {meta['duration']:g}` ({meta['date']}, "
        f"{meta['cpu']}, git {meta['git_rev']}): proxy/server one worker on CPU {SERVER_CPU}; wrk "
        f"(-t1 -c{WRK_CONNECTIONS}, HTTPS/1.1 keep-alive) and the nginx origin (plain HTTP/1.1 keep-alive) "
        f"both on CPU {CLIENT_CPU}; {meta['rounds']} interleaved rounds, fresh processes per cell, medians.",
    ]
    if meta.get("busy_before") or meta.get("busy_during"):
        shown = ", ".join(
            dict.fromkeys(
                f"{b['cell']} r{b['round']}" for b in [*meta.get("busy_before", []), *meta.get("busy_during", [])]
            )
        )
        lines += ["", f"**Warning:** foreign CPU load before/during: {shown} (see the JSON)."]
    if meta.get("discarded"):
        shown = ", ".join(f"{b['cell']} r{b['round']}" for b in meta["discarded"])
        lines += ["", f"Measured again because of foreign CPU load: {shown} (values in `meta.discarded`)."]
    lines += [
        "",
        "| cell | req/s | req per server CPU-s | server µs/req | server CPU | wrk CPU | origin CPU "
        "| origin req / wrk req | new origin conns | rounds (req/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    us = summ["derived"].get("server_cpu_us_per_req", {})
    for name in meta["cells"]:
        c = results[name]
        orig = [d["origin"] for d in c.details if "origin" in d]
        per = statistics.median([o["requests_per_wrk_request"] for o in orig]) if orig else None
        conns = statistics.median([o["new_connections"] for o in orig]) if orig else None
        rounds = ", ".join(f"{v:,.0f}" for v in c.values.get("req_per_s", []))
        if c.errors:
            rounds += f" ({len(c.errors)} ERR)"
        rps = _f(c.median("req_per_s"))
        if c.saturated("load_core_cpu_util") and c.median("req_per_s") is not None:
            rps = "≥" + rps
        lines.append(
            f"| {name} | {rps} | {_f(c.median('req_per_server_cpu_s'))} | "
            f"{_f(us.get(name), 1)} | {_f(c.util('server_cpu_util'), 2)} | {_f(c.util('client_cpu_util'), 2)} | "
            f"{'—' if name == 'static_edgeward' else _f(c.util('origin_cpu_util'), 2)} | "
            f"{_f(per, 3) if per is not None else '—'} | {_f(conns) if conns is not None else '—'} | {rounds} |"
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
        target = "—" if t["target"] is None else f"≥ {t['target']:g}"
        lines.append(f"| {name} | {r} | {per_round} | {target} | {t['status'] if t['judged'] else '—'} |")
    if any(results[n].saturated("load_core_cpu_util") for n in meta["cells"]):
        lines += [
            "",
            f"≥N: the load core (wrk + origin, CPU {CLIENT_CPU}) was ≥ {CLIENT_BOUND:.0%} busy while the server's "
            "was not, so that server can do at least N req/s; ratios with it are bounds (≤, ≥) and the "
            "per-server-CPU-second ratio is the fairer comparison.",
        ]
    d = summ["derived"]
    extra = []
    if "proxy_cost_us_over_static" in d:
        extra.append(f"proxying costs edgeward {d['proxy_cost_us_over_static']:.1f} µs of server CPU per request")
    if "cache_hit_cost_us_over_static" in d:
        extra.append(f"a cache hit {d['cache_hit_cost_us_over_static']:.1f} µs")
    if extra:
        lines += ["", "Over the static fast path, " + "; ".join(extra) + "."]
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
    p.add_argument("--cells", default="", help=f"comma list of cells (default all: {','.join(CELLS)})")
    p.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "proxy.json")
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
    cells = [c.strip() for c in args.cells.split(",") if c.strip()] or list(CELLS)
    bad = [c for c in cells if c not in CELL_SPECS]
    if bad:
        p.error(f"unknown cell(s) {bad}; known: {list(CELLS)}")
    args.cells = [c for c in CELLS if c in cells]
    if args.rounds < 1 or args.duration < 1:
        p.error("--rounds and --duration must be >= 1")
    return args


def ingress_check(args: argparse.Namespace, servers: Servers, workdir: Path) -> dict[str, str]:
    """``ingress check`` on the two proxy configs (placeholder ports) before anything runs."""
    out = {}
    for s in (servers.proxy, servers.cache):
        conf = workdir / f"check-{s.name}.toml"
        conf.write_text(s.config_text(8443, 8080))
        proc = subprocess.run(
            [str(args.ingress), "check", "--config", str(conf)], capture_output=True, text=True, timeout=60, check=False
        )
        text = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise SystemExit(f"ingress check failed for {s.name}:\n{text}")
        out[s.name] = text.splitlines()[-1] if text else "ok"
    return out


def run_cell(
    name: str, rnd: int, prefix: str, servers: Servers, args: argparse.Namespace, meta: dict[str, Any], workdir: Path
) -> tuple[Measurement | None, bool, str | None]:
    """Start origin (if any) and server, check, measure once. Returns (measurement, noisy, error)."""
    spec = CELL_SPECS[name]
    busy = wait_quiet(args.wait_quiet)
    if max(busy.values(), default=0.0) > BUSY_THRESHOLD:
        meta["busy_before"].append({"round": rnd, "cell": name, "core_busy": busy})
        log(f"{prefix} warning: machine busy before start {busy}")
    server = spec.server(servers)
    try:
        with ExitStack() as stack:
            origin = None
            if spec.origin:
                origin = stack.enter_context(servers.origin.start("http"))
                meta["commands"][servers.origin.name] = " ".join(map(str, origin.argv))
                server.origin_port = origin.ports["http"]  # type: ignore[attr-defined]
            running = stack.enter_context(server.start("https"))
            meta["commands"][server.name] = " ".join(map(str, running.argv))
            m = measure(running, origin, spec.path, args.duration, workdir, cache=spec.cache)
            m.detail["server_log_tail"] = running.log_tail(5)
    except (ServerError, WorkloadError, OSError, subprocess.SubprocessError) as exc:
        err = f"{type(exc).__name__}: {exc}"
        log(f"{prefix} ERROR {err[:1500]}")
        return None, False, err
    m.detail["round"] = rnd
    f = foreign(m.detail)
    m.detail["foreign_cpu_util"] = f
    noisy = f is not None and f > FOREIGN_THRESHOLD
    d = m.detail
    shown = ", ".join(f"{k}={v:,.0f}" for k, v in m.values.items())
    shown += f" (server {d['server_cpu_util']:.2f}, wrk {d['client_cpu_util']:.2f}, origin {d['origin_cpu_util']:.2f}"
    if "origin" in d:
        o = d["origin"]
        shown += f", origin req/wrk req {o['requests_per_wrk_request']}, new conns {o['new_connections']}"
    shown += ")"
    if noisy:
        shown += f" warning: foreign load {f:.2f} CPU"
    log(f"{prefix} {shown}")
    return m, noisy, None


def record(result: CellResult, m: Measurement) -> None:
    for metric, value in m.values.items():
        result.values.setdefault(metric, []).append(value)
    result.details.append(m.detail)


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    text = (proc.stdout + proc.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    for tool in ("taskset", "wrk", "curl", "nginx"):
        if shutil.which(tool) is None and not (tool == "nginx" and Path("/usr/sbin/nginx").exists()):
            raise SystemExit(f"{tool} is required (apt-get install -y {tool})")
    pinned = pin_self_to_client_cpu()
    nofile = raise_nofile()
    with scratch_dir("edgeward-proxy-bench-", args.keep_workdir) as workdir:
        www = workdir / "www"
        make_www(www)
        certs = make_certs(workdir / "tls")
        env = BenchEnv(
            server_cpu=SERVER_CPU,
            workdir=workdir,
            www=www,
            certs=certs,
            bench_dir=BENCH_DIR,
            peers_venv=BENCH_DIR / ".venv-peers",
            ingress_bin=args.ingress,
        )
        servers = make_servers(env)
        meta: dict[str, Any] = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["python", "bench/proxy.py", *(argv if argv is not None else sys.argv[1:])]),
            "rounds": args.rounds,
            "duration": args.duration,
            "wrk_connections": WRK_CONNECTIONS,
            "cells": args.cells,
            "cell_descriptions": {c: CELL_SPECS[c].description for c in args.cells},
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "git_rev": git_rev(),
            "pinned": {
                "server_cpu": SERVER_CPU,
                "client_cpu": CLIENT_CPU if pinned else None,
                "origin_cpu": CLIENT_CPU,
            },
            "rlimit_nofile": list(nofile),
            "versions": {
                "edgeward": servers.proxy.version(),
                "nginx": servers.nginx.version(),
                "wrk": _first_line(["wrk", "--version"]),
                "curl": _first_line(["curl", "--version"]),
                "openssl": _first_line(["openssl", "version"]),
                "python (harness)": platform.python_version(),
            },
            "configs": {
                "edgeward_proxy": servers.proxy.config_text(0, 0),
                "edgeward_cache": servers.cache.config_text(0, 0),
            },
            "busy_before": [],
            "busy_during": [],
            "discarded": [],
            "commands": {},
        }
        for name, version in meta["versions"].items():
            log(f"  {name}: {version}")
        meta["ingress_check"] = ingress_check(args, servers, workdir)

        results = {name: CellResult() for name in args.cells}
        total, n, t0 = args.rounds * len(args.cells), 0, time.monotonic()
        for rnd in range(1, args.rounds + 1):
            for name in args.cells:
                n += 1
                prefix = f"[{n}/{total}] round {rnd} {name:<19}"
                noisy_attempts: list[Measurement] = []
                clean = False
                for attempt in range(args.retry_noisy + 1):
                    m, noisy, err = run_cell(name, rnd, prefix, servers, args, meta, workdir)
                    if m is None:
                        results[name].errors.append(f"round {rnd}: {err}")
                        break
                    if not noisy:
                        record(results[name], m)
                        clean = True
                        break
                    noisy_attempts.append(m)
                    if attempt < args.retry_noisy:
                        log(f"{prefix} foreign load during the measurement: measuring again")
                if noisy_attempts and not clean:
                    best = min(noisy_attempts, key=lambda a: a.detail["foreign_cpu_util"])
                    record(results[name], best)
                    meta["busy_during"].append(
                        {"round": rnd, "cell": name, "foreign_cpu": best.detail["foreign_cpu_util"]}
                    )
                    noisy_attempts.remove(best)
                for a in noisy_attempts:
                    meta["discarded"].append({"round": rnd, "cell": name, "values": a.values, "detail": a.detail})
        meta["elapsed_seconds"] = round(time.monotonic() - t0, 1)
        # Nginx config texts, as the last start wrote them (ports differ per start).
        for s in (servers.nginx, servers.origin):
            confs = sorted((workdir / "conf").glob(f"{s.name}-*/nginx.conf"))
            if confs:
                meta["configs"][s.name] = confs[-1].read_text()

        summ = summary(results)
        markdown = render_markdown(results, meta, summ)
        print(markdown)
        out = {
            "meta": meta,
            "cells": {
                name: c.as_json(METRIC_UNITS, ("load_core_bound", "load_core_cpu_util"), ("origin_cpu_util",))
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

"""The servers under test: one class per server, plus process-tree handling.

Every server is started the same way so that the comparison is about the
server, not the harness:

* exactly one worker, pinned to CPU ``server_cpu`` with ``taskset`` (the load
  generator is pinned to the other core by the caller);
* in its own session/process group so that :meth:`RunningServer.stop` can
  kill the whole tree (supervisor + workers) and nothing outlives the harness;
* stdout/stderr go to a per-start log file in the workdir, whose tail is put
  into the error message if the server dies or never becomes ready;
* readiness = TCP connect succeeds *and* ``GET /1k.bin`` returns 200 with the
  expected length on every listener, verified against our CA for TLS (which
  also proves the server presents the benchmark certificate).

A server that cannot be started (binary missing, crash, not ready in time)
raises :class:`ServerError`; the runner records that as an error for the
cell instead of a number.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from certs import CertPaths

# nginx gets exactly the TLS 1.2 suites edgeward offers (Mozilla intermediate, ECDHE).
from ingress.tls.contexts import INTERMEDIATE_CIPHERS

Mode = Literal["http", "https"]
HttpVersion = Literal["h1", "h2", "h3"]
"""What a workload speaks: HTTP/1.1, HTTP/2 (over TLS, ALPN h2) or HTTP/3
(QUIC on the UDP port with the same number as the TLS listener)."""

READY_PATH = "/1k.bin"
READY_LENGTH = 1024


class ServerError(RuntimeError):
    """The server could not be started or is not usable for this workload."""


@dataclass(frozen=True)
class BenchEnv:
    """Everything a server needs to generate its config; same for all servers."""

    workdir: Path
    www: Path
    certs: CertPaths
    bench_dir: Path
    peers_venv: Path
    ingress_bin: Path
    server_cpu: str = "0"
    ready_timeout: float = 20.0
    client_cert: Path | None = None
    """PEM chain (leaf first) the readiness probes present over TLS, for
    servers that require client certificates (mTLS); None = no certificate."""
    client_key: Path | None = None
    """Private key of :attr:`client_cert`."""
    probe_headers: tuple[tuple[str, str], ...] = ()
    """Extra request headers of the readiness probes and preflight checks
    (e.g. an ``Authorization`` bearer token for a route behind a policy)."""


def free_port() -> int:
    """Return a currently free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------
# /proc helpers


def _ppid_map() -> dict[int, int]:
    """pid -> ppid for every process visible in /proc."""
    result: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        result[int(entry)] = int(fields[1])
    return result


def process_tree(root: int) -> list[int]:
    """*root* followed by all its live descendants (breadth first)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    order = [root]
    i = 0
    while i < len(order):
        order.extend(sorted(children.get(order[i], [])))
        i += 1
    return order


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* in seconds (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is state (stat field 3); utime/stime are stat fields 14/15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_kib(pid: int) -> int:
    """VmRSS of *pid* in KiB (0 if the process is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


# --------------------------------------------------------------------------
# Running server handle

_RUNNING: set[RunningServer] = set()


@dataclass(eq=False)
class RunningServer:
    """A started server process tree and the ports it listens on."""

    name: str
    proc: subprocess.Popen[bytes]
    ports: dict[Mode, int]
    log_path: Path
    ca_file: Path
    www: Path
    quic: bool = False
    """True if the server was started with its HTTP/3 (QUIC) listener on
    UDP ``ports["https"]``."""
    argv: list[str] = field(default_factory=list)
    """The command line it was started with (for the results' metadata)."""
    client_cert: tuple[Path, Path] | None = None
    """(chain, key) the probes present over TLS (see BenchEnv.client_cert)."""
    probe_headers: tuple[tuple[str, str], ...] = ()
    """Extra headers the probes send (see BenchEnv.probe_headers)."""
    _seen_pids: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, mode: Mode, path: str) -> str:
        if mode not in self.ports:
            raise ServerError(f"{self.name} has no {mode} listener")
        return f"{mode}://127.0.0.1:{self.ports[mode]}{path}"

    def pids(self) -> list[int]:
        tree = process_tree(self.pid)
        self._seen_pids.update(tree)
        return tree

    def rss(self) -> tuple[int, int]:
        """(total, worker) RSS in KiB.

        total = the whole process tree (supervisor/master + workers + helper
        processes). worker = the descendants of the root process, i.e. what
        actually serves connections; for single-process servers (uvicorn,
        caddy) the root *is* the worker so worker == total.
        """
        tree = self.pids()
        sizes = {pid: rss_kib(pid) for pid in tree}
        total = sum(sizes.values())
        worker = sum(sizes[p] for p in tree[1:]) if len(tree) > 1 else total
        return total, worker

    def cpu_seconds(self) -> float:
        """CPU time (user + system) consumed so far by the whole tree.

        Sampled before and after a measurement it tells whether the server
        core was saturated (≈1.0 CPU) or the client was the bottleneck.
        """
        return sum(cpu_seconds(pid) for pid in self.pids())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            raise ServerError(f"{self.name} exited with code {self.proc.returncode}; log tail:\n{self.log_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the whole process tree; escalate to SIGKILL on timeout.

        Signals go to the process group (servers run in their own session),
        and afterwards any pid we ever saw in the tree that is still alive is
        killed individually, in case a server re-parented or setsid()'d a
        child out of the group.
        """
        with contextlib.suppress(OSError):
            self.pids()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in self._seen_pids - {self.proc.pid}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        _RUNNING.discard(self)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all() -> None:
    """Stop every server still running (atexit / signal handler safety net)."""
    for server in list(_RUNNING):
        server.stop(timeout=2.0)


atexit.register(stop_all)


# --------------------------------------------------------------------------
# Readiness


def _ssl_client_context(ca_file: Path, client_cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.set_alpn_protocols(["http/1.1"])
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    return ctx


def probe(server: RunningServer, mode: Mode, path: str = READY_PATH) -> tuple[int, bytes]:
    """One GET over *mode*; returns (status, body). Raises OSError etc."""
    port = server.ports[mode]
    conn: http.client.HTTPConnection
    if mode == "https":
        ctx = _ssl_client_context(server.ca_file, server.client_cert)
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=3, context=ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.request("GET", path, headers=dict(server.probe_headers))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(server: RunningServer, timeout: float) -> None:
    """Poll every listener until ``GET /1k.bin`` is a 200 with 1024 bytes."""
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    for mode in server.ports:
        while True:
            server.check_alive()
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{server.name} not ready on {mode} port {server.ports[mode]} "
                    f"after {timeout:.0f}s ({last_error}); log tail:\n{server.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", server.ports[mode]), timeout=1):
                    pass
                status, body = probe(server, mode)
            except (OSError, http.client.HTTPException) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1)
                continue
            if status == 200 and len(body) == READY_LENGTH:
                break
            last_error = f"GET {READY_PATH} -> {status}, {len(body)} bytes"
            if status in (404, 403, 500):
                # A definite wrong answer, not a slow start: fail fast.
                raise ServerError(f"{server.name} {mode}: {last_error}")
            time.sleep(0.1)


# --------------------------------------------------------------------------
# Server classes


class Server(ABC):
    """One server implementation: how to configure, start and describe it."""

    name: ClassVar[str]
    protocols: ClassVar[frozenset[Mode]] = frozenset({"http", "https"})
    """Which workload modes this server takes part in."""
    serves_both: ClassVar[bool] = False
    """True if one process serves plain and TLS listeners at once (then it is
    always started with both, like a real deployment); False if a start
    serves exactly one mode (the ASGI peers bind a single socket)."""
    http_versions: ClassVar[frozenset[HttpVersion]] = frozenset({"h1"})
    """Which HTTP versions the server takes part in. h2 is negotiated with
    ALPN on the same TLS listener every start has; h3 needs a QUIC listener,
    which is only started for h3 workloads (see :meth:`command`)."""

    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self._starts = 0

    def supports(self, mode: Mode, http: HttpVersion = "h1") -> bool:
        return mode in self.protocols and http in self.http_versions

    @abstractmethod
    def unavailable(self) -> str | None:
        """Why this server can't run here (missing binary...), or None."""

    @abstractmethod
    def command(self, ports: dict[Mode, int], confdir: Path, quic: bool) -> tuple[list[str], dict[str, str]]:
        """Write config files into *confdir*; return (argv without taskset, extra env).

        *quic*: also serve HTTP/3 on UDP ``ports["https"]``. Only h3 workloads
        ask for it; every other start runs without a QUIC listener, so that
        memory and CPU are not charged for a listener nginx and the ASGI
        peers do not run (edgeward and caddy enable HTTP/3 by default).
        """

    def version(self) -> str:
        """Human-readable version string for the results metadata."""
        return "unknown"

    def start(self, mode: Mode, http: HttpVersion = "h1") -> RunningServer:
        """Start the server listening for *mode* (and the other mode too if
        :attr:`serves_both`) and wait until it answers on TCP. For
        ``http="h3"`` the QUIC listener is started too; the workload checks
        it (QUIC readiness needs an HTTP/3 client)."""
        reason = self.unavailable()
        if reason:
            raise ServerError(reason)
        if not self.supports(mode, http):
            raise ServerError(f"{self.name} does not take part in {http} {mode} workloads")
        quic = http == "h3"
        modes: list[Mode] = sorted(self.protocols) if self.serves_both else [mode]
        ports: dict[Mode, int] = {m: free_port() for m in modes}
        self._starts += 1
        confdir = self.env.workdir / "conf" / f"{self.name}-{self._starts}"
        confdir.mkdir(parents=True, exist_ok=True)
        argv, extra_env = self.command(ports, confdir, quic)
        env = dict(os.environ)
        env.update(extra_env)
        log_path = self.env.workdir / "logs" / f"{self.name}-{self._starts}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ["taskset", "-c", self.env.server_cpu, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=confdir,
                env=env,
                start_new_session=True,
            )
        client_cert = (
            (self.env.client_cert, self.env.client_key)
            if self.env.client_cert is not None and self.env.client_key is not None
            else None
        )
        running = RunningServer(
            self.name,
            proc,
            ports,
            log_path,
            self.env.certs.ca_cert,
            self.env.www,
            quic=quic,
            argv=proc.args,
            client_cert=client_cert,
            probe_headers=self.env.probe_headers,
        )
        _RUNNING.add(running)
        try:
            wait_ready(running, self.env.ready_timeout)
        except BaseException:
            running.stop()
            raise
        return running


def _run_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else f"unknown (exit {out.returncode})"


class Edgeward(Server):
    """The server under test, run exactly as the task brief specifies."""

    name = "edgeward"
    serves_both = True
    http_versions = frozenset({"h1", "h2", "h3"})

    def __init__(self, env: BenchEnv, *, tls_extra: str = "", extra_config: str = "") -> None:
        super().__init__(env)
        self._listener_keys: frozenset[str] | None = None
        self.tls_extra = tls_extra
        """TOML lines appended to the HTTPS listener's ``[listeners.tls]``
        table (e.g. ``client_auth``/``client_ca`` for mTLS)."""
        self.extra_config = extra_config
        """TOML appended at the end of the config (e.g. a ``[policy]`` table)."""

    def listener_keys(self) -> frozenset[str]:
        """Keys ``[[listeners]]`` accepts, from ``ingress schema``: the
        harness writes ``[listeners.quic]`` only where the binary knows it,
        so it keeps working against builds from before HTTP/3."""
        if self._listener_keys is None:
            try:
                out = subprocess.run(
                    [str(self.env.ingress_bin), "schema"], capture_output=True, text=True, timeout=30, check=True
                )
                schema = json.loads(out.stdout)
                props = schema["properties"]["listeners"]["items"]["properties"]
                self._listener_keys = frozenset(props)
            except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
                self._listener_keys = frozenset()
        return self._listener_keys

    def unavailable(self) -> str | None:
        if not os.access(self.env.ingress_bin, os.X_OK):
            return f"edgeward not runnable: {self.env.ingress_bin} does not exist"
        return None

    def version(self) -> str:
        if self.unavailable():
            return "not installed"
        return _run_version([str(self.env.ingress_bin), "version"])

    def command(self, ports: dict[Mode, int], confdir: Path, quic: bool) -> tuple[list[str], dict[str, str]]:
        c = self.env.certs
        if "quic" in self.listener_keys():
            # Default is on; off unless this start is for an h3 workload.
            quic_block = f"[listeners.quic]\nenabled = {'true' if quic else 'false'}\n"
        elif quic:
            raise ServerError(f"{self.env.ingress_bin} has no HTTP/3 (its config schema has no listeners[].quic)")
        else:
            quic_block = ""
        tls_extra = self.tls_extra.strip() + "\n" if self.tls_extra.strip() else ""
        # A subclass serving only "https" (protocols) gets no plain listener.
        http_block = (
            f'\n[[listeners]]\nname = "http"\naddress = "127.0.0.1:{ports["http"]}"\n' if "http" in ports else ""
        )
        conf = confdir / "edgeward.toml"
        conf.write_text(
            f"""[server]
workers = 1

[access_log]
enabled = false

[admin]
enabled = false

[[listeners]]
name = "https"
address = "127.0.0.1:{ports["https"]}"
[listeners.tls]
certs = [{{ cert = "{c.cert}", key = "{c.key}" }}]
{tls_extra}{quic_block}{http_block}
[[routes]]
path = "/"
[routes.static]
root = "{self.env.www}"
{self.extra_config}"""
        )
        argv = [str(self.env.ingress_bin), "serve", "--config", str(conf), "--workers", "1"]
        return argv, {}


class Nginx(Server):
    """Debian's nginx, tuned the way a competent operator would for static files."""

    name = "nginx"
    serves_both = True
    # Debian 12's nginx 1.22 has no HTTP/3 module.
    http_versions = frozenset({"h1", "h2"})

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.tls_server_extra = ""
        """Directives added to the TLS ``server`` block (see NginxMTLS)."""

    def unavailable(self) -> str | None:
        if not os.access(self.binary, os.X_OK):
            return "nginx not installed (apt-get install -y nginx)"
        return None

    def version(self) -> str:
        return _run_version([self.binary, "-v"])

    def _version_tuple(self) -> tuple[int, ...]:
        m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", self.version())
        return tuple(int(x) for x in m.groups()) if m else (0,)

    def command(self, ports: dict[Mode, int], confdir: Path, quic: bool) -> tuple[list[str], dict[str, str]]:
        c = self.env.certs
        tmp = confdir / "tmp"
        tmp.mkdir(exist_ok=True)
        # `http2 on;` only exists from nginx 1.25.1; older ones (Debian 12
        # ships 1.22) take it as a listen parameter.
        if self._version_tuple() >= (1, 25, 1):
            tls_listen = f"listen 127.0.0.1:{ports['https']} ssl;\n        http2 on;"
        else:
            tls_listen = f"listen 127.0.0.1:{ports['https']} ssl http2;"
        # A subclass serving only "https" (protocols) gets no plain server.
        plain_server = (
            f"""    server {{
        listen 127.0.0.1:{ports["http"]};
        root {self.env.www};
    }}
"""
            if "http" in ports
            else ""
        )
        tls_extra = "".join(f"\n        {line.strip()}" for line in self.tls_server_extra.splitlines() if line.strip())
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

{plain_server}
    server {{
        {tls_listen}
        ssl_certificate {c.cert};
        ssl_certificate_key {c.key};
        root {self.env.www};{tls_extra}
    }}
}}
"""
        )
        # -e: keep even the pre-config startup error log out of /var/log.
        argv = [self.binary, "-p", str(confdir), "-c", str(conf), "-e", str(confdir / "error.log")]
        return argv, {}


class NginxMTLS(Nginx):
    """nginx requiring a client certificate on its only (TLS) listener:
    ``ssl_verify_client on`` with ``ssl_client_certificate`` = *client_ca*.
    Used by bench/policy.py; not one of run.py's peers."""

    name = "nginx-mtls"
    protocols = frozenset({"https"})
    http_versions = frozenset({"h1"})

    def __init__(self, env: BenchEnv, client_ca: Path) -> None:
        super().__init__(env)
        self.tls_server_extra = f"ssl_verify_client on;\nssl_client_certificate {client_ca};"


class Caddy(Server):
    """Debian's caddy as the Go/HTTPS reference (HTTPS workloads only)."""

    name = "caddy"
    protocols = frozenset({"https"})
    http_versions = frozenset({"h1", "h2", "h3"})

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.binary = shutil.which("caddy") or "/usr/bin/caddy"

    def unavailable(self) -> str | None:
        if not os.access(self.binary, os.X_OK):
            return "caddy not installed (apt-get install -y caddy)"
        return None

    def version(self) -> str:
        return _run_version([self.binary, "version"])

    def command(self, ports: dict[Mode, int], confdir: Path, quic: bool) -> tuple[list[str], dict[str, str]]:
        c = self.env.certs
        conf = confdir / "Caddyfile"
        # protocols h1 h2: no HTTP/3 UDP listener outside the h3 workloads,
        # matching the others' TCP-only setup (quic-go would add RSS that
        # nobody else pays). With h3 the UDP socket binds 127.0.0.1 too
        # (`bind` applies to both).
        protocols = "h1 h2 h3" if quic else "h1 h2"
        conf.write_text(
            f"""{{
	admin off
	auto_https off
	storage file_system {confdir}/storage
	default_sni localhost
	servers {{
		protocols {protocols}
	}}
}}

https://:{ports["https"]} {{
	bind 127.0.0.1
	tls {c.cert} {c.key}
	root * {self.env.www}
	file_server
}}
"""
        )
        argv = [self.binary, "run", "--config", str(conf), "--adapter", "caddyfile"]
        env = {
            "GOMAXPROCS": "1",
            "HOME": str(confdir),
            "XDG_DATA_HOME": str(confdir / "data"),
            "XDG_CONFIG_HOME": str(confdir / "config"),
        }
        return argv, env


class AsgiPeer(Server):
    """Common part of the Python ASGI servers: same app, same root, one socket."""

    package: ClassVar[str]

    @property
    def bin(self) -> Path:
        return self.env.peers_venv / "bin" / self.package

    def unavailable(self) -> str | None:
        if not os.access(self.bin, os.X_OK):
            return f"{self.name} not installed in {self.env.peers_venv} (run without --no-setup-peers)"
        return None

    def version(self) -> str:
        py = self.env.peers_venv / "bin" / "python"
        return _run_version([str(py), "-c", f"import importlib.metadata as m; print(m.version({self.package!r}))"])

    def app_env(self) -> dict[str, str]:
        return {
            "BENCH_STATIC_ROOT": str(self.env.www),
            "PYTHONPATH": str(self.env.bench_dir / "peers"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }


class Granian(AsgiPeer):
    name = "granian"
    package = "granian"
    # --http auto (the default): with TLS, ALPN offers h2 and http/1.1, so
    # the same start serves wrk (HTTP/1.1) and h2load (h2).
    http_versions = frozenset({"h1", "h2"})

    def command(self, ports: dict[Mode, int], confdir: Path, quic: bool) -> tuple[list[str], dict[str, str]]:
        ((mode, port),) = ports.items()
        argv = [
            str(self.bin),
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--runtime-threads",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        if mode == "https":
            c = self.env.certs
            argv += ["--ssl-certificate", str(c.cert), "--ssl-keyfile", str(c.key)]
        argv.append("asgi_static:app")
        return argv, self.app_env()


class Uvicorn(AsgiPeer):
    name = "uvicorn"
    package = "uvicorn"

    def command(self, ports: dict[Mode, int], confdir: Path, quic: bool) -> tuple[list[str], dict[str, str]]:
        ((mode, port),) = ports.items()
        argv = [
            str(self.bin),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
            # Default is 5 s, which would drop most of the 1000 idle
            # connections before rss_1000_tls reads RSS; 75 s = nginx default.
            "--timeout-keep-alive",
            "75",
        ]
        if mode == "https":
            c = self.env.certs
            argv += ["--ssl-certfile", str(c.cert), "--ssl-keyfile", str(c.key)]
        argv.append("asgi_static:app")
        return argv, self.app_env()


class Hypercorn(AsgiPeer):
    name = "hypercorn"
    package = "hypercorn"
    # h2 via ALPN on the TLS socket; h3 with --quic-bind (aioquic, from the
    # hypercorn[h3] extra in the peers lock).
    http_versions = frozenset({"h1", "h2", "h3"})

    def command(self, ports: dict[Mode, int], confdir: Path, quic: bool) -> tuple[list[str], dict[str, str]]:
        ((mode, port),) = ports.items()
        argv = [
            str(self.bin),
            "--workers",
            "1",
            # uvloop worker: hypercorn's fastest option, as uvicorn gets it too.
            "--worker-class",
            "uvloop",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            # Same reason as uvicorn: the default 5 s idle timeout.
            "--keep-alive",
            "75",
            "--backlog",
            "1024",
        ]
        if mode == "https":
            c = self.env.certs
            argv += ["--certfile", str(c.cert), "--keyfile", str(c.key)]
            if quic:
                argv += ["--quic-bind", f"127.0.0.1:{port}"]
        argv.append("asgi_static:app")
        return argv, self.app_env()


SERVER_CLASSES: dict[str, type[Server]] = {
    cls.name: cls for cls in (Edgeward, Nginx, Caddy, Granian, Uvicorn, Hypercorn)
}
PYTHON_PEERS = ("granian", "uvicorn", "hypercorn")


def iter_servers(names: list[str], env: BenchEnv) -> Iterator[Server]:
    for name in names:
        yield SERVER_CLASSES[name](env)

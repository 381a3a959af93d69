"""The process model: worker restarts, graceful drain on SIGTERM, live reload on SIGHUP.

Clients here are raw keep-alive sockets (TLS and plain) so that every request sent and every
byte received is accounted for: a request that was sent must get a complete response, and a
connection may only be closed after a response carrying `Connection: close`, or while idle.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import base_config
from tests.pki import CA, Issued
from tests.server import Server, events, wait_for

Address = tuple[str, int]
StartServer = Callable[..., Server]
HELLO = b"hello world\n"


# --------------------------------------------------------------------------- helpers


def dead(pid: int) -> bool:
    """Gone or a zombie: its sockets are closed either way."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rpartition(")")[2].split()[1])


class Wire:
    """One HTTP/1.1 connection, TLS when `ctx` is given."""

    def __init__(
        self,
        address: Address,
        ctx: ssl.SSLContext | None,
        rcvbuf: int = 0,
        server_hostname: str = "localhost",
        session: ssl.SSLSession | None = None,
    ) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.settimeout(10)
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            raw.connect(address)
            self.sock: socket.socket = (
                ctx.wrap_socket(raw, server_hostname=server_hostname, session=session) if ctx else raw
            )
        except BaseException:
            raw.close()
            raise
        self.file = self.sock.makefile("rb")

    def send_get(self, path: str, close: bool = False) -> None:
        conn = "close" if close else "keep-alive"
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: {conn}\r\n\r\n".encode())

    def read_head(self) -> tuple[int, dict[str, str]]:
        status_line = self.file.readline()
        if not status_line:
            raise ConnectionError("closed before a response")
        if not status_line.endswith(b"\r\n"):
            raise ConnectionError(f"status line cut: {status_line!r}")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = self.file.readline()
            if line == b"\r\n":
                return status, headers
            if not line.endswith(b"\r\n"):
                raise ConnectionError(f"head cut: {line!r}")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()

    def read_body(self, headers: dict[str, str]) -> bytes:
        length = int(headers["content-length"])
        body = self.file.read(length)
        if len(body) != length:
            raise ConnectionError(f"body cut at {len(body)} of {length} bytes")
        return body

    def get(self, path: str, close: bool = False) -> tuple[int, dict[str, str], bytes]:
        self.send_get(path, close)
        status, headers = self.read_head()
        return status, headers, self.read_body(headers)

    def at_eof(self) -> bool:
        """True if the peer closed cleanly with nothing more to read."""
        try:
            return self.file.read(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return False

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@dataclass
class Hammer:
    """Keep-alive GETs back to back on one connection, reconnecting only after `Connection: close`."""

    address: Address
    ctx: ssl.SSLContext | None
    reconnect: bool = True
    sent: int = 0
    ok: int = 0
    connects: int = 0
    closes: int = 0  # responses with Connection: close, each followed by a clean close from the server
    refused: str = ""  # how the first connection attempt after the drain failed
    failures: list[str] = field(default_factory=list)
    server_headers: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    draining: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Hammer:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "client thread stuck"

    def _run(self) -> None:
        conn: Wire | None = None
        on_conn = 0
        try:
            while not self.stop.is_set():
                if conn is None:
                    if self.connects and not self.reconnect:
                        return
                    try:
                        conn = Wire(self.address, self.ctx)
                    except (ConnectionRefusedError, ConnectionResetError, ssl.SSLError) as exc:
                        # Nothing was sent on this connection; after the drain this is what must happen.
                        if not self.draining.is_set():
                            self.failures.append(f"connect failed before the drain: {exc!r}")
                        self.refused = type(exc).__name__
                        return
                    self.connects += 1
                    on_conn = 0
                self.sent += 1
                on_conn += 1
                try:
                    status, headers, body = conn.get("/hello.txt")
                except (OSError, ConnectionError, ValueError) as exc:
                    self.failures.append(
                        f"request {self.sent} ({'tls' if self.ctx else 'plain'}, #{on_conn} on connection"
                        f" {self.connects}, draining={self.draining.is_set()}) was sent but got no complete"
                        f" response: {exc!r}"
                    )
                    return
                if status != 200 or body != HELLO:
                    self.failures.append(f"request {self.sent}: {status} {body[:40]!r}")
                    return
                self.ok += 1
                self.server_headers.append(headers.get("server", ""))
                if headers.get("connection", "").lower() == "close":
                    self.closes += 1
                    if not conn.at_eof():
                        self.failures.append("Connection: close but the connection stayed open")
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()


@dataclass
class Download:
    """A slow reader of one large file: keeps the response in flight for seconds."""

    address: Address
    ctx: ssl.SSLContext | None
    path: str
    rate: float = 6 << 20  # bytes per second: 16 MiB take about 2.7 s
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    received: int = 0
    digest: str = ""
    closed_after: bool = False
    error: str = ""
    progress: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Download:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            conn = Wire(self.address, self.ctx, rcvbuf=64 * 1024)
            try:
                conn.send_get(self.path)
                self.status, self.headers = conn.read_head()
                length = int(self.headers["content-length"])
                h = hashlib.sha256()
                start = time.monotonic()
                while self.received < length:
                    data = conn.file.read1(min(64 * 1024, length - self.received))
                    if not data:
                        raise ConnectionError(f"body cut at {self.received} of {length} bytes")
                    h.update(data)
                    self.received += len(data)
                    if self.received >= 1 << 20:
                        self.progress.set()
                    ahead = self.received / self.rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
                self.digest = h.hexdigest()
                self.closed_after = conn.at_eof()
            finally:
                conn.close()
        except Exception as exc:
            self.error = repr(exc)
            self.progress.set()


def refused(address: Address) -> bool:
    try:
        socket.create_connection(address, timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def large(site: Path) -> tuple[str, str]:
    """16 MiB of reproducible bytes: far more than loopback socket buffers hold."""
    data = random.Random(20240601).randbytes(16 << 20)
    (site / "large.bin").write_bytes(data)
    return "/large.bin", hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- worker restart


def test_workers_start_and_a_killed_worker_is_replaced(
    start_server: StartServer, site: Path, localhost_cert: Issued, client_tls: ssl.SSLContext
) -> None:
    server = start_server(base_config(site, localhost_cert), workers=2)
    workers = server.state["workers"]
    assert len(workers) == 2
    assert len(set(workers)) == 2
    for pid in workers:
        assert not dead(pid)
        assert parent_of(pid) == server.pid

    # One request per connection, with timestamps: a failure is only excusable if the request
    # was already under way when the worker died (its connection may have been with that worker).
    results: list[tuple[float, float, str]] = []
    stop = threading.Event()

    def load(address: Address, ctx: ssl.SSLContext | None) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                conn = Wire(address, ctx)
                try:
                    status, _, body = conn.get("/hello.txt", close=True)
                finally:
                    conn.close()
                outcome = "ok" if (status, body) == (200, HELLO) else f"{status} {body[:40]!r}"
            except Exception as exc:
                outcome = repr(exc)
            results.append((t0, time.monotonic(), outcome))

    threads = [
        threading.Thread(target=load, args=(server.address("https"), client_tls), daemon=True),
        threading.Thread(target=load, args=(server.address("http"), None), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        victim, survivor = workers
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: dead(victim), 5, "victim dead", interval=0.001)
        t_dead = time.monotonic()

        def replaced() -> bool:
            now = server.refresh_state()["workers"]
            return victim not in now and all(now) and len(now) == 2

        took = wait_for(replaced, 5, "a new worker pid in the state file")
        t_new = time.monotonic()
        new = next(p for p in server.state["workers"] if p != survivor)
        assert survivor in server.state["workers"]
        assert not dead(new)
        assert parent_of(new) == server.pid
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    restarts = events(server, "worker.restart")
    assert len(restarts) == 1
    assert f"pid {victim}" in restarts[0]["msg"]
    assert "killed by SIGKILL" in restarts[0]["msg"]
    assert took < 5
    bad = [r for r in results if r[2] != "ok"]
    late = [(round(r[0] - t_kill, 4), round(r[1] - t_kill, 4), r[2]) for r in bad if r[0] >= t_dead]
    assert late == [], (
        f"requests started after the worker died (+{t_dead - t_kill:.4f}s, replaced +{t_new - t_kill:.4f}s) failed"
    )
    ok_times = sorted(r[1] for r in results if r[2] == "ok")
    assert sum(1 for t in ok_times if t > t_dead + took) > 10
    gaps = [b - a for a, b in itertools.pairwise(ok_times)]
    assert max(gaps) < 1.0, f"service stalled for {max(gaps):.2f}s"


# --------------------------------------------------------------------------- SIGTERM drain


def test_sigterm_drains_under_load(
    start_server: StartServer,
    site: Path,
    localhost_cert: Issued,
    client_tls: ssl.SSLContext,
    large: tuple[str, str],
) -> None:
    drain_timeout = 10.0
    server = start_server(base_config(site, localhost_cert, server={"drain_timeout": drain_timeout}), workers=2)
    https, http = server.address("https"), server.address("http")
    path, digest = large

    hammers = [Hammer(https, client_tls).start() for _ in range(2)] + [Hammer(http, None).start() for _ in range(2)]
    downloads = [Download(https, client_tls, path).start(), Download(http, None, path).start()]
    idle = Wire(https, client_tls)
    assert idle.get("/hello.txt")[0] == 200  # then it stays idle

    for d in downloads:
        assert d.progress.wait(10)
        assert not d.error, d.error
    wait_for(lambda: all(h.ok > 20 for h in hammers), 10, "hammers running")
    assert all(d.thread is not None and d.thread.is_alive() for d in downloads)

    for h in hammers:
        h.draining.set()
    t0 = time.monotonic()
    server.signal(signal.SIGTERM)

    # The idle keep-alive connection is closed after drain_idle_grace (0.5 s), not cut mid-response.
    idle.sock.settimeout(5)
    assert idle.at_eof()
    idle_closed_after = time.monotonic() - t0
    idle.close()
    assert idle_closed_after < 2.0

    for h in hammers:
        h.join(10)
    # Still draining (the downloads are in flight): the listeners are closed, new connections refused.
    assert all(d.thread is not None and d.thread.is_alive() for d in downloads), "downloads ended too early"
    assert refused(https)
    assert refused(http)
    ready = Wire(_admin(server), None)
    try:
        status, _, body = ready.get("/readyz", close=True)
    finally:
        ready.close()
    assert (status, body) == (503, b"draining\n")

    for d in downloads:
        assert d.thread is not None
        d.thread.join(drain_timeout)
        assert not d.thread.is_alive(), f"download stalled at {d.received} bytes"
        assert not d.error, d.error
        assert d.status == 200
        assert d.digest == digest, "large download not byte-identical"
        assert d.closed_after, "connection not closed after the last response"

    code = server.wait(drain_timeout)
    exited_after = time.monotonic() - t0
    assert code == 0, server.log()
    assert exited_after < drain_timeout

    for h in hammers:
        assert h.failures == [], h.failures
        assert h.ok == h.sent
        assert h.closes >= 1, "the server never said Connection: close"
        assert h.refused, "a new connection after the drain was accepted"
    assert len(events(server, "worker.drain")) == 2
    assert events(server, "worker.drain_deadline") == []


def _admin(server: Server) -> Address:
    host, _, port = server.state["admin"].rpartition(":")
    return host, int(port)


_WRK_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def test_wrk_with_sigterm_mid_run(
    start_server: StartServer, site: Path, localhost_cert: Issued, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server(base_config(site, localhost_cert), workers=2)
    url = server.url("https", "/hello.txt")
    wrk = subprocess.Popen(
        ["wrk", "-t2", "-c16", "-d3s", "--timeout", "2s", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.5)
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait(10)
        exited_after = time.monotonic() - t0
        out, _ = wrk.communicate(timeout=20)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    requests = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    errors = _WRK_SOCKET_ERRORS.search(out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    connect, read, write, timeout = (int(x) for x in errors.groups()) if errors else (0, 0, 0, 0)
    with capsys.disabled():
        print(
            f"\n[wrk, SIGTERM at 1.5 s of 3 s] requests={requests.group(1) if requests else '?'}"
            f" in {requests.group(2) if requests else '?'}, non-2xx={non2xx.group(1) if non2xx else 0},"
            f" socket errors: connect={connect} read={read} write={write} timeout={timeout};"
            f" server exited {code} after {exited_after:.2f}s"
        )
    assert requests is not None, out
    assert int(requests.group(1)) > 100, out
    assert non2xx is None, out
    # After the drain the listeners are closed, so wrk's reconnects fail with ECONNREFUSED: those are
    # the `connect` errors, and expected. Every request wrk did send was answered in full.
    assert (read, write, timeout) == (0, 0, 0), out
    assert code == 0, server.log()
    assert exited_after < 5.0


def test_drain_deadline_cuts_stuck_clients(start_server: StartServer, site: Path, localhost_cert: Issued) -> None:
    with open(site / "huge.bin", "wb") as fh:
        fh.truncate(64 << 20)  # sparse: no disk, still 64 MiB to send
    server = start_server(base_config(site, localhost_cert, server={"drain_timeout": 1.0}))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    stuck = [Wire(server.address("https"), ctx, rcvbuf=16384), Wire(server.address("http"), None, rcvbuf=16384)]
    try:
        for conn in stuck:
            conn.send_get("/huge.bin")
            status, headers = conn.read_head()
            assert status == 200
            assert headers["content-length"] == str(64 << 20)
        time.sleep(0.3)  # never read the body
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait(10)
        took = time.monotonic() - t0
    finally:
        for conn in stuck:
            conn.close()
    assert code == 0, server.log()
    assert took < 3.0, f"exited {took:.2f}s after SIGTERM with drain_timeout = 1"
    assert took > 0.9
    assert len(events(server, "worker.drain_deadline")) == 1


# --------------------------------------------------------------------------- SIGHUP reload


def test_sighup_reload_under_load(
    start_server: StartServer, site: Path, localhost_cert: Issued, client_tls: ssl.SSLContext
) -> None:
    config = base_config(site, localhost_cert, limits={"max_requests_per_connection": 1_000_000})
    server = start_server(config, workers=2)
    https, http = server.address("https"), server.address("http")
    hammers = [Hammer(https, client_tls, reconnect=False).start() for _ in range(2)]
    hammers.append(Hammer(http, None, reconnect=False).start())
    mine = Wire(https, client_tls)
    try:
        status, headers, _ = mine.get("/hello.txt")
        assert (status, headers["server"]) == (200, "edgeward")
        assert mine.get("/moved/x")[0] == 404
        wait_for(lambda: all(h.ok > 20 for h in hammers), 10, "hammers running")

        reloaded = {**config, "server": {**config["server"], "server_header": "edgeward-reloaded"}}
        reloaded["routes"] = [
            *config["routes"],
            {"path": "/moved", "redirect": {"host": "example.test", "status": 301}},
        ]
        server.write_config(reloaded)
        server.signal(signal.SIGHUP)

        # The same keep-alive connection sees the new config.
        wait_for(lambda: mine.get("/hello.txt")[1]["server"] == "edgeward-reloaded", 5, "new Server header")
        status, headers, _ = mine.get("/moved/x?y=1")
        assert status == 301
        assert headers["location"] == "https://example.test/moved/x?y=1"
        wait_for(
            lambda: all(h.server_headers[-1:] == ["edgeward-reloaded"] for h in hammers),
            5,
            "every hammer connection sees the new config",
        )
        wait_for(lambda: len(events(server, "config.reloaded")) == 2, 5, "both workers reloaded")

        # An invalid config is refused with its problem line; the running one keeps serving.
        broken = {**reloaded, "routes": [*reloaded["routes"], {"path": "/x", "listeners": ["nosuch"], "redirect": {}}]}
        server.write_config(broken)
        server.signal(signal.SIGHUP)
        wait_for(lambda: len(events(server, "config.reload_refused")) == 1, 5, "reload refused")
        refusal = events(server, "config.reload_refused")[0]
        assert (
            f"{server.config_path}: routes[2].listeners[0]: no listener named 'nosuch'; listeners are https, http"
            in (refusal["msg"])
        )
        server.config_path.write_text('[server]\nworkers = "x\n')
        server.signal(signal.SIGHUP)
        wait_for(lambda: len(events(server, "config.reload_refused")) == 2, 5, "second reload refused")
        assert f"{server.config_path}: invalid TOML: " in events(server, "config.reload_refused")[1]["msg"]
        time.sleep(0.5)
        status, headers, _ = mine.get("/hello.txt")
        assert (status, headers["server"]) == (200, "edgeward-reloaded")
        assert mine.get("/moved/x")[0] == 301
        assert len(events(server, "config.reloaded")) == 2
    finally:
        mine.close()
        for h in hammers:
            h.stop.set()
        for h in hammers:
            h.join(10)
    for h in hammers:
        assert h.failures == [], h.failures
        assert h.connects == 1
        assert h.closes == 0
        assert h.ok == h.sent
        assert h.ok > 40
        assert h.server_headers[-1] == "edgeward-reloaded"


def _tls_get(
    address: Address, ctx: ssl.SSLContext, server_hostname: str = "localhost", session: ssl.SSLSession | None = None
) -> tuple[bytes, bool, ssl.SSLSession | None]:
    """One full request on a new connection: (certificate SHA-256, session reused, session for next time)."""
    conn = Wire(address, ctx, server_hostname=server_hostname, session=session)
    try:
        status, _, body = conn.get("/hello.txt", close=True)
        assert (status, body) == (200, HELLO)
        assert isinstance(conn.sock, ssl.SSLSocket)
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).digest(), conn.sock.session_reused, conn.sock.session
    finally:
        conn.close()


def test_sighup_certificate_change_keeps_connections_and_sessions(
    start_server: StartServer, site: Path, ca: CA, localhost_cert: Issued, client_tls: ssl.SSLContext
) -> None:
    """Adding a certificate (a new SNI name) is the most common reload: no connection may be closed
    (README: SIGHUP applies a config "without closing a connection"), and the ticket keys shared by
    the workers must survive it, or every client does full handshakes again."""
    rsa = ca.issue("process-rsa", ["rsa.test"], key_type="rsa")
    config = base_config(site, localhost_cert, limits={"max_requests_per_connection": 1_000_000})
    server = start_server(config, workers=2)
    https = server.address("https")
    hammers = [Hammer(https, client_tls, reconnect=False).start() for _ in range(3)]
    try:
        wait_for(lambda: all(h.ok > 20 for h in hammers), 10, "hammers running")
        _, reused, before = _tls_get(https, client_tls)
        assert not reused

        tls = {**config["listeners"][0]["tls"]}
        tls["certs"] = [*tls["certs"], {"cert": str(rsa.cert), "key": str(rsa.key)}]
        server.write_config({**config, "listeners": [{**config["listeners"][0], "tls": tls}, config["listeners"][1]]})
        server.signal(signal.SIGHUP)
        wait_for(lambda: len(events(server, "config.reloaded")) == 2, 5, "both workers reloaded")
        for _ in range(6):  # whichever worker answers
            fingerprint, _, _ = _tls_get(https, client_tls, server_hostname="rsa.test")
            assert fingerprint == rsa.fingerprint

        # A session from before the reload still resumes, on every worker.
        assert [_tls_get(https, client_tls, session=before)[1] for _ in range(6)] == [True] * 6
        # And so does one made after it.
        _, _, after = _tls_get(https, client_tls)
        assert [_tls_get(https, client_tls, session=after)[1] for _ in range(10)] == [True] * 10
        time.sleep(0.5)
    finally:
        for h in hammers:
            h.stop.set()
        for h in hammers:
            h.join(10)
    for h in hammers:
        assert h.failures == [], h.failures
        assert h.connects == 1
        assert h.closes == 0, "a reload closed a keep-alive connection"
        assert h.ok == h.sent


def test_sighup_refuses_what_needs_a_restart(
    start_server: StartServer, site: Path, localhost_cert: Issued, client_tls: ssl.SSLContext
) -> None:
    """Ports are reserved by the supervisor before fork: a reload must not pretend to move or add a listener."""
    config = base_config(site, localhost_cert)
    server = start_server(config, workers=2)
    http = server.address("http")
    with socket.socket() as probe, socket.socket() as probe2:
        probe.bind(("127.0.0.1", 0))
        probe2.bind(("127.0.0.1", 0))
        free, free2 = probe.getsockname()[1], probe2.getsockname()[1]
    moved = {**config, "listeners": [config["listeners"][0], {"name": "http", "address": f"127.0.0.1:{free}"}]}
    moved["listeners"].append({"name": "extra", "address": "127.0.0.1:0"})
    moved["admin"] = {"enabled": True, "address": f"127.0.0.1:{free2}"}
    moved["server"] = {**config["server"], "server_header": "not-applied"}
    server.write_config(moved)
    server.signal(signal.SIGHUP)
    wait_for(lambda: len(events(server, "config.reload_refused")) == 1, 5, "reload refused")
    msg = events(server, "config.reload_refused")[0]["msg"]
    path = server.config_path
    assert msg.splitlines()[1:] == [
        f"{path}: listeners[1].address: changed from 127.0.0.1:0 to 127.0.0.1:{free}; a new address needs a restart",
        f"{path}: listeners[2]: new listener 'extra' needs a restart",
        f"{path}: admin: changing the admin listener needs a restart",
    ]
    time.sleep(0.5)
    assert events(server, "config.reloaded") == []
    assert refused(("127.0.0.1", free))
    conn = Wire(http, None)
    try:
        status, headers, body = conn.get("/hello.txt", close=True)
    finally:
        conn.close()
    assert (status, headers["server"], body) == (200, "edgeward", HELLO)

"""`ingress serve` with no config: the embedded default on its fixed ports.

These tests need 127.0.0.1:8443, :8080 and :9901. They never skip: if a port is
taken, they fail and say which one and by what, since the default is exactly
what a new user runs first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ingress.demo import SITE
from tests.program import PROGRAMS, ingress_argv
from tests.server import ROOT

# The embedded default is what a new user runs first, from source or as the shipped executable.
pytestmark = pytest.mark.parametrize("program", PROGRAMS, indirect=True)

PORTS = {"https": 8443, "http": 8080, "admin": 9901}
MAX_LIFETIME_S = 120


def _assert_ports_free() -> None:
    busy = []
    for name, port in PORTS.items():
        # SO_REUSEADDR like the server, so TIME_WAIT leftovers of an earlier run do not count as busy;
        # no SO_REUSEPORT, so a socket of any other process listening there does.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                busy.append(f"127.0.0.1:{port} ({name}): {exc.strerror}")
    if busy:
        owners = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, check=False).stdout
        pytest.fail(
            "the embedded default needs fixed ports that are in use:\n  "
            + "\n  ".join(busy)
            + "\nstop whatever holds them (ss -ltnp below) and rerun:\n"
            + owners,
            pytrace=False,
        )


class DefaultServer:
    """`ingress serve` with no arguments, stdout and stderr in files."""

    def __init__(self, home: Path, name: str, program: str = "python") -> None:
        self.home = home
        self.program = program
        self.out = home.parent / f"{name}.out"
        self.err = home.parent / f"{name}.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> DefaultServer:
        env = {**os.environ, "EDGEWARD_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        cmd = ["timeout", "--kill-after=5", str(MAX_LIFETIME_S), *ingress_argv(self.program), "serve"]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.try_line() is not None:
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"ingress serve exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"no `try:` line after {timeout}s:\n{self.output()}")

    def try_line(self) -> str | None:
        for line in self.out.read_text(errors="replace").splitlines():
            if line.startswith("try: "):
                return line.removeprefix("try: ")
        return None

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM (timeout relays it to the supervisor, which drains), then kill the whole session."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the session (nothing, after a clean drain) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(5)
        return proc.returncode


@pytest.fixture
def home(tmp_path: Path) -> Path:
    # A space in the path: the printed command must still work when pasted into a shell.
    return tmp_path / "edgeward home"


@pytest.fixture
def default_server(home: Path, program: str) -> Iterator[DefaultServer]:
    _assert_ports_free()
    server = DefaultServer(home, "first", program)
    try:
        yield server.start()
    finally:
        server.stop()


def test_default_serves_demo_site_on_fixed_ports(default_server: DefaultServer, home: Path) -> None:
    banner = default_server.out.read_text()
    assert "https://127.0.0.1:8443/" in banner
    assert "http://127.0.0.1:8080/" in banner
    assert "http://127.0.0.1:9901/healthz" in banner
    line = default_server.try_line()
    assert line is not None
    assert line.startswith("curl ")

    # Exactly as printed, through a shell, as a user would paste it.
    out = subprocess.run(line, shell=True, capture_output=True, timeout=20, check=False)
    assert out.returncode == 0, f"`{line}` failed: {out.stderr.decode(errors='replace')}"
    assert out.stdout == (SITE / "index.html").read_bytes()

    ca = home / "demo" / "ca.pem"
    assert ca.is_file()
    assert ca.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")

    with httpx.Client(verify=ssl.create_default_context(cafile=ca), follow_redirects=False, timeout=10) as client:
        page = client.get("https://127.0.0.1:8443/")
        assert page.status_code == 200
        assert page.content == (SITE / "index.html").read_bytes()
        assert "strict-transport-security" in page.headers

        redirect = client.get("http://127.0.0.1:8080/x")
        assert redirect.status_code == 308
        assert redirect.headers["location"] == "https://127.0.0.1:8443/x"
        with_query = client.get("http://127.0.0.1:8080/a/b?c=d")
        assert with_query.status_code == 308
        assert with_query.headers["location"] == "https://127.0.0.1:8443/a/b?c=d"

        for path, body in (("/healthz", "ok\n"), ("/readyz", "ready\n")):
            admin = client.get(f"http://127.0.0.1:9901{path}")
            assert admin.status_code == 200, path
            assert admin.text == body


def test_default_reuses_its_ca(home: Path, program: str) -> None:
    _assert_ports_free()
    first = DefaultServer(home, "first", program)
    try:
        first.start()
        ca_bytes = (home / "demo" / "ca.pem").read_bytes()
        cert_bytes = (home / "demo" / "server.pem").read_bytes()
    finally:
        code = first.stop()
    assert code == 0, first.output()

    _assert_ports_free()
    second = DefaultServer(home, "second", program)
    try:
        second.start()
        assert (home / "demo" / "ca.pem").read_bytes() == ca_bytes
        assert (home / "demo" / "server.pem").read_bytes() == cert_bytes
        line = second.try_line()
        assert line is not None
        out = subprocess.run(line, shell=True, capture_output=True, timeout=20, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout == (SITE / "index.html").read_bytes()
    finally:
        code = second.stop()
    assert code == 0, second.output()


def test_second_instance_on_the_same_ports_is_refused(default_server: DefaultServer, home: Path, program: str) -> None:
    """Workers bind with SO_REUSEPORT; a second instance must not silently share the first one's ports."""
    second = DefaultServer(home, "second", program)
    try:
        with pytest.raises(AssertionError, match="exited with 1"):
            second.start(timeout=20)
        assert "cannot bind https at 127.0.0.1:8443: Address already in use" in second.output()
    finally:
        second.stop()
    with httpx.Client(verify=ssl.create_default_context(cafile=home / "demo" / "ca.pem"), timeout=10) as client:
        assert client.get("https://127.0.0.1:8443/").status_code == 200

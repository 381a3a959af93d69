from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chromium import chromium_path
from tests.pki import CA, Issued
from tests.server import Server


@pytest.fixture(scope="session", autouse=True)
def _tested_executable(record_testsuite_property: Callable[[str, object], None]) -> None:
    """Name the executable this run tested in the JUnit XML, so an evidence pack can tie the results to a release."""
    path = os.environ.get("EDGEWARD_EXECUTABLE", "")
    if path and Path(path).is_file():
        with Path(path).open("rb") as f:
            record_testsuite_property("edgeward.executable.sha256", hashlib.file_digest(f, "sha256").hexdigest())


@pytest.fixture(scope="session")
def chromium() -> str:
    return chromium_path()


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def client_tls(ca: CA) -> ssl.SSLContext:
    """What a client that trusts only the test CA uses (httpx `verify=`, raw ssl sockets)."""
    return ssl.create_default_context(cafile=str(ca.pem))


@pytest.fixture(scope="session")
def localhost_cert(ca: CA) -> Issued:
    return ca.issue("localhost", ["localhost", "127.0.0.1"])


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A document root with files the suites rely on."""
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>\n")
    (root / "sub" / "index.html").write_text("<h1>sub</h1>\n")
    (root / "hello.txt").write_text("hello world\n")
    (root / "1k.bin").write_bytes(bytes(range(256)) * 4)
    (root / "big.bin").write_bytes(bytes(range(256)) * 4096 * 2)  # 2 MiB: streamed, not inlined
    return root


def base_config(root: Path, cert: Issued, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"drain_timeout": 5.0},
        "access_log": {"enabled": False},
        "admin": {"enabled": True, "address": "127.0.0.1:0"},
        "listeners": [
            {
                "name": "https",
                "address": "127.0.0.1:0",
                "tls": {"certs": [{"cert": str(cert.cert), "key": str(cert.key)}]},
            },
            {"name": "http", "address": "127.0.0.1:0"},
        ],
        "routes": [{"path": "/", "static": {"root": str(root)}}],
    }
    config.update(overrides)
    return config


@pytest.fixture
def program(request: pytest.FixtureRequest) -> str:
    """`python` unless a suite parametrises it over tests.program.PROGRAMS (indirect=True)."""
    return str(getattr(request, "param", "python"))


@pytest.fixture
def start_server(tmp_path: Path, program: str) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(config: dict[str, Any], workers: int = 1, name: str = "server") -> Server:
        server = Server(config, tmp_path, workers=workers, name=name, program=program)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., Server], site: Path, localhost_cert: Issued) -> Server:
    """The standard server: HTTPS and plain listeners serving `site`, one worker."""
    return start_server(base_config(site, localhost_cert))

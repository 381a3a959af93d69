from __future__ import annotations

import ssl
import subprocess

import httpx
import pytest

from tests.pki import CA
from tests.program import PROGRAMS
from tests.server import Server

# The executable is held to the same smoke tests as the source.
pytestmark = pytest.mark.parametrize("program", PROGRAMS, indirect=True)


def test_https_and_plain_serve_the_same_file(server: Server, client_tls: ssl.SSLContext) -> None:
    with httpx.Client(verify=client_tls) as client:
        tls = client.get(server.url("https", "/hello.txt"))
        plain = client.get(server.url("http", "/hello.txt"))
    assert tls.status_code == plain.status_code == 200
    assert tls.content == plain.content == b"hello world\n"
    assert "strict-transport-security" in tls.headers
    assert "strict-transport-security" not in plain.headers


@pytest.mark.parametrize(("flag", "version"), [("--http2", "2"), ("--http1.1", "1.1")])
def test_curl_gets_file_over_tls(server: Server, ca: CA, flag: str, version: str) -> None:
    url = server.url("https", "/hello.txt")
    cmd = ["curl", "-sS", flag, "--cacert", str(ca.pem), "-o", "-", "-w", "\n%{http_code} %{http_version}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True)
    assert out.stdout == f"hello world\n\n200 {version}"

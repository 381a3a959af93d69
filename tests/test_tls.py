"""TLS termination against the real server: policy, SNI, resumption, timeouts, certificate hot reload.

Handshakes are made with `openssl s_client` (what operators use to check a server) and with
Python's ssl module where a test needs many handshakes or a long-lived connection.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.conftest import base_config
from tests.pki import CA, Issued, write_atomic
from tests.server import Server, events, wait_for

Address = tuple[str, int]
StartServer = Callable[..., Server]

REQUEST = b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

# Mozilla "intermediate": ECDHE key exchange, AEAD only.
INTERMEDIATE_ECDSA = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"}
INTERMEDIATE_RSA = {"ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"}


# --------------------------------------------------------------------------- openssl s_client


@dataclass
class Handshake:
    ok: bool
    status: str  # "New" or "Reused"
    protocol: str
    cipher: str
    alpn: str | None
    fingerprint: bytes | None
    output: str


def s_client(address: Address, *args: str, data: bytes = b"", timeout: float = 15) -> Handshake:
    """One `openssl s_client` run; `data` is sent after the handshake (stdin EOF ends the run)."""
    host, port = address
    cmd = ["openssl", "s_client", "-connect", f"{host}:{port}", *args]
    proc = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout, check=False)
    out = proc.stdout.decode("latin-1") + proc.stderr.decode("latin-1")
    m = re.search(r"^(New|Reused), (\S+), Cipher is (\S+)", out, re.M)
    status, protocol, cipher = m.groups() if m else ("", "", "(NONE)")
    alpn = re.search(r"^ALPN protocol: (\S+)", out, re.M)
    pem = re.search(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", proc.stdout, re.S)
    fingerprint = x509.load_pem_x509_certificate(pem.group(0)).fingerprint(hashes.SHA256()) if pem else None
    ok = proc.returncode == 0 and cipher != "(NONE)"
    return Handshake(ok, status, protocol, cipher, alpn.group(1) if alpn else None, fingerprint, out)


def served_fingerprint(address: Address, servername: str | None = "localhost") -> bytes | None:
    sni = ["-servername", servername] if servername else ["-noservername"]
    return s_client(address, *sni).fingerprint


# --------------------------------------------------------------------------- a small HTTP/1.1 client


class Conn:
    """A keep-alive HTTP/1.1 connection over TLS."""

    def __init__(self, address: Address, ctx: ssl.SSLContext, server_hostname: str = "localhost") -> None:
        raw = socket.create_connection(address, timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
        self.file = self.sock.makefile("rb")

    def get(self, path: str, close: bool = False) -> tuple[int, dict[str, str], bytes]:
        conn = "close" if close else "keep-alive"
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: {conn}\r\n\r\n".encode())
        return read_response(self.file)

    def peer_fingerprint(self) -> bytes:
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def read_response(file: Any) -> tuple[int, dict[str, str], bytes]:
    status_line = file.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = file.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = file.read(length)
    if len(body) != length:
        raise ConnectionError(f"body cut at {len(body)} of {length} bytes")
    return status, headers, body


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sni_certs(ca: CA) -> dict[str, Issued]:
    return {
        "rsa": ca.issue("tls-rsa", ["rsa.test"], key_type="rsa"),
        "wild": ca.issue("tls-wild", ["*.wild.test"]),
    }


@pytest.fixture
def sni_server(start_server: StartServer, site: Path, localhost_cert: Issued, sni_certs: dict[str, Issued]) -> Server:
    """ECDSA localhost (first, the default), RSA rsa.test and ECDSA *.wild.test on one listener."""
    config = base_config(site, localhost_cert)
    config["listeners"][0]["tls"]["certs"] += [
        {"cert": str(sni_certs["rsa"].cert), "key": str(sni_certs["rsa"].key)},
        {"cert": str(sni_certs["wild"].cert), "key": str(sni_certs["wild"].key)},
    ]
    return start_server(config)


# --------------------------------------------------------------------------- versions, suites, ALPN


def test_tls12_and_tls13_accepted(server: Server) -> None:
    address = server.address("https")
    for flag, protocol in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        hs = s_client(address, flag, "-servername", "localhost")
        assert hs.ok, hs.output
        assert hs.protocol == protocol


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_old_tls_versions_refused(server: Server, flag: str) -> None:
    # SECLEVEL=0 makes the local OpenSSL willing to offer TLS 1.0/1.1 at all, so it is the server that refuses.
    hs = s_client(server.address("https"), flag, "-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost")
    assert not hs.ok, hs.output
    assert "no protocols available" not in hs.output
    assert hs.cipher == "(NONE)"


def test_min_version_13_refuses_12(start_server: StartServer, site: Path, localhost_cert: Issued) -> None:
    config = base_config(site, localhost_cert)
    config["listeners"][0]["tls"]["min_version"] = "1.3"
    server = start_server(config)
    address = server.address("https")
    refused = s_client(address, "-tls1_2", "-servername", "localhost")
    assert not refused.ok, refused.output
    accepted = s_client(address, "-tls1_3", "-servername", "localhost")
    assert accepted.ok, accepted.output
    assert accepted.protocol == "TLSv1.3"


def test_weak_cipher_refused_and_intermediate_accepted(server: Server) -> None:
    address = server.address("https")
    weak = s_client(address, "-tls1_2", "-cipher", "AES128-SHA", "-servername", "localhost")
    assert not weak.ok, weak.output
    good = s_client(address, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256", "-servername", "localhost")
    assert good.ok, good.output
    assert good.cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_tls12_accepts_exactly_the_intermediate_suites(sni_server: Server) -> None:
    """Offer every TLS 1.2 suite the local OpenSSL knows, one at a time, to the ECDSA and to the RSA cert."""
    listed = subprocess.run(
        ["openssl", "ciphers", "-tls1_2", "-s", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    suites = [s for s in listed.split(":") if not s.startswith("TLS_")]
    assert len(suites) > 40
    assert set(suites) >= INTERMEDIATE_ECDSA | INTERMEDIATE_RSA
    address = sni_server.address("https")

    def attempt(job: tuple[str, str]) -> tuple[str, str, bool]:
        name, suite = job
        hs = s_client(address, "-tls1_2", "-cipher", f"{suite}:@SECLEVEL=0", "-servername", name)
        assert not hs.ok or hs.cipher == suite, hs.output
        return name, suite, hs.ok

    jobs = [(name, suite) for name in ("localhost", "rsa.test") for suite in suites]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, jobs))
    accepted = {(name, suite) for name, suite, ok in results if ok}
    assert accepted == {("localhost", s) for s in INTERMEDIATE_ECDSA} | {("rsa.test", s) for s in INTERMEDIATE_RSA}


def test_tls13_suites(server: Server) -> None:
    address = server.address("https")
    for suite in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"):
        hs = s_client(address, "-tls1_3", "-ciphersuites", suite, "-servername", "localhost")
        assert hs.ok, hs.output
        assert hs.cipher == suite


@pytest.mark.parametrize(
    ("offered", "server_alpn", "selected", "version"),
    [
        ("h2,http/1.1", None, "h2", "2"),
        ("http/1.1,h2", None, "h2", "2"),  # the server's preference wins
        ("h2", None, "h2", "2"),
        ("http/1.1", None, "http/1.1", "1.1"),
        ("", None, None, "1.1"),  # no ALPN at all: HTTP/1.1
        ("h2,http/1.1", ["http/1.1"], "http/1.1", "1.1"),  # h2 switched off on the listener
        ("h2", ["http/1.1"], None, "1.1"),  # no overlap: no ALPN, and HTTP/1.1 still works
    ],
)
def test_alpn_matrix(
    start_server: StartServer,
    site: Path,
    localhost_cert: Issued,
    ca: CA,
    offered: str,
    server_alpn: list[str] | None,
    selected: str | None,
    version: str,
) -> None:
    config = base_config(site, localhost_cert)
    if server_alpn is not None:
        config["listeners"][0]["tls"]["alpn"] = server_alpn
    server = start_server(config)
    args = ["-alpn", offered] if offered else []
    hs = s_client(server.address("https"), *args, "-servername", "localhost")
    assert hs.ok, hs.output
    assert hs.alpn == selected
    ctx = ssl.create_default_context(cafile=str(ca.pem))
    if offered:
        ctx.set_alpn_protocols(offered.split(","))
    host, port = server.address("https")
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == selected
        if version == "2":
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            head = tls.recv(9)
            assert head[3] == 0x04  # the server's first frame is SETTINGS
        else:
            tls.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert tls.recv(4096).startswith(b"HTTP/1.1 200 ")


# --------------------------------------------------------------------------- SNI


@pytest.mark.parametrize(
    ("servername", "expect"),
    [
        ("localhost", "localhost"),
        ("LOCALHOST", "localhost"),
        ("rsa.test", "rsa"),
        ("RSA.Test", "rsa"),
        ("a.wild.test", "wild"),
        ("zz-9.wild.test", "wild"),
        ("wild.test", "localhost"),  # the wildcard does not cover its own apex
        ("a.b.wild.test", "localhost"),  # nor two labels
        ("unknown.test", "localhost"),
        (None, "localhost"),
    ],
)
def test_sni_selects_certificate(
    sni_server: Server,
    localhost_cert: Issued,
    sni_certs: dict[str, Issued],
    servername: str | None,
    expect: str,
) -> None:
    want = {"localhost": localhost_cert, **sni_certs}[expect]
    sni = ["-servername", servername] if servername else ["-noservername"]
    for flag in ("-tls1_2", "-tls1_3"):
        hs = s_client(sni_server.address("https"), flag, *sni)
        assert hs.ok, hs.output
        assert hs.fingerprint == want.fingerprint, f"{servername} over {flag} got the wrong certificate"


def test_rsa_only_clients_get_the_rsa_cert(sni_server: Server, ca: CA, sni_certs: dict[str, Issued]) -> None:
    address = sni_server.address("https")
    tls12 = s_client(address, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256", "-servername", "rsa.test")
    assert tls12.ok, tls12.output
    assert tls12.cipher == "ECDHE-RSA-AES128-GCM-SHA256"
    assert tls12.fingerprint == sni_certs["rsa"].fingerprint
    tls13 = s_client(
        address, "-tls1_3", "-sigalgs", "RSA-PSS+SHA256", "-servername", "rsa.test", "-CAfile", str(ca.pem)
    )
    assert tls13.ok, tls13.output
    assert tls13.fingerprint == sni_certs["rsa"].fingerprint
    assert "Verify return code: 0 (ok)" in tls13.output


def test_sni_hosts_serve_http(sni_server: Server, client_tls: ssl.SSLContext) -> None:
    for name in ("localhost", "rsa.test", "a.wild.test"):
        conn = Conn(sni_server.address("https"), client_tls, server_hostname=name)
        try:
            status, _, body = conn.get("/hello.txt")
        finally:
            conn.close()
        assert (status, body) == (200, b"hello world\n"), name


# --------------------------------------------------------------------------- session resumption


def _resumptions(address: Address, flag: str, sess: Path, count: int, servername: str = "localhost") -> list[str]:
    first = s_client(address, flag, "-servername", servername, "-sess_out", str(sess), "-ign_eof", data=REQUEST)
    assert first.ok, first.output
    assert first.status == "New"
    assert "hello world" in first.output
    statuses = []
    for _ in range(count):
        again = s_client(address, flag, "-servername", servername, "-sess_in", str(sess), "-ign_eof", data=REQUEST)
        assert again.ok, again.output
        assert "hello world" in again.output
        statuses.append(again.status)
    return statuses


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_session_resumption(server: Server, tmp_path: Path, flag: str) -> None:
    assert _resumptions(server.address("https"), flag, tmp_path / "sess.pem", 3) == ["Reused"] * 3


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_session_resumption_on_a_non_default_sni_cert(sni_server: Server, tmp_path: Path, flag: str) -> None:
    address = sni_server.address("https")
    assert _resumptions(address, flag, tmp_path / "sess.pem", 3, servername="rsa.test") == ["Reused"] * 3


def _wait_new_worker(server: Server, old: int) -> list[int]:
    def replaced() -> bool:
        workers = server.refresh_state()["workers"]
        return old not in workers and all(workers)

    wait_for(replaced, 10, f"worker {old} replaced")
    return list(server.state["workers"])


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_session_resumption_across_workers(
    start_server: StartServer, site: Path, localhost_cert: Issued, tmp_path: Path, flag: str
) -> None:
    """Ticket keys come from the base context made before fork: every worker, even a restarted one, resumes."""
    server = start_server(base_config(site, localhost_cert), workers=2)
    address = server.address("https")
    sess = tmp_path / "sess.pem"
    assert _resumptions(address, flag, sess, 10) == ["Reused"] * 10
    # Replace both workers: neither replacement ever saw the session, both must still accept its ticket.
    for pid in list(server.state["workers"]):
        os.kill(pid, signal.SIGKILL)
        _wait_new_worker(server, pid)
    statuses = []
    for _ in range(10):
        again = s_client(address, flag, "-servername", "localhost", "-sess_in", str(sess), "-ign_eof", data=REQUEST)
        assert again.ok, again.output
        statuses.append(again.status)
    assert statuses == ["Reused"] * 10


# --------------------------------------------------------------------------- handshake timeout


@pytest.mark.parametrize("send", [b"", b"\x16\x03\x01\x02\x00\x01"], ids=["silent", "partial-hello"])
def test_handshake_timeout(start_server: StartServer, site: Path, localhost_cert: Issued, send: bytes) -> None:
    server = start_server(base_config(site, localhost_cert, limits={"handshake_timeout": 1}))
    with socket.create_connection(server.address("https"), timeout=10) as sock:
        sock.sendall(send)
        start = time.monotonic()
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = b""
        took = time.monotonic() - start
    assert data == b"", data
    assert 0.8 <= took <= 3.0, f"closed after {took:.2f}s"


# --------------------------------------------------------------------------- hot reload


@pytest.fixture
def rot_ca(tmp_path: Path) -> CA:
    """A CA of this test only, so rotating files never touch another test's certificates."""
    return CA(tmp_path / "rot-pki", name="rotation test CA")


def _rot_server(start_server: StartServer, site: Path, rot_ca: CA, workers: int = 1) -> tuple[Server, Issued]:
    first = rot_ca.issue("rot", ["localhost", "127.0.0.1"])
    return start_server(base_config(site, first), workers=workers), first


def test_hot_reload_replaces_certificate(start_server: StartServer, site: Path, rot_ca: CA) -> None:
    server, first = _rot_server(start_server, site, rot_ca)
    address = server.address("https")
    client = ssl.create_default_context(cafile=str(rot_ca.pem))
    assert served_fingerprint(address) == first.fingerprint

    kept = Conn(address, client)
    try:
        assert kept.get("/hello.txt")[0] == 200
        second = rot_ca.issue("rot", ["localhost", "127.0.0.1"])
        took = wait_for(lambda: served_fingerprint(address) == second.fingerprint, 2.0, "new cert served")
        assert took <= 2.0
        assert served_fingerprint(address, None) == second.fingerprint  # clients without SNI too
        # The connection opened before the rotation keeps its session and keeps working.
        for _ in range(3):
            status, _, body = kept.get("/hello.txt")
            assert (status, body) == (200, b"hello world\n")
        assert kept.peer_fingerprint() == first.fingerprint
    finally:
        kept.close()
    assert events(server, "tls.cert_reloaded")


def test_hot_reload_refuses_bad_material(start_server: StartServer, site: Path, rot_ca: CA) -> None:
    server, first = _rot_server(start_server, site, rot_ca)
    address = server.address("https")

    def refusal(text: str) -> Callable[[], bool]:
        return lambda: any(text in e["msg"] for e in events(server, "tls.cert_refused"))

    # Garbage PEM over the certificate.
    write_atomic(first.cert, b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    wait_for(refusal("holds no PEM certificate"), 3.0, "garbage cert refused")
    assert served_fingerprint(address) == first.fingerprint
    assert served_fingerprint(address, None) == first.fingerprint

    # A valid certificate whose key is not the one on disk.
    other = rot_ca.issue("rot-other", ["localhost", "127.0.0.1"])
    write_atomic(first.cert, other.cert.read_bytes())
    wait_for(refusal("does not match"), 3.0, "mismatched cert refused")
    assert served_fingerprint(address) == first.fingerprint
    refused = [e for e in events(server, "tls.cert_refused") if "does not match" in e["msg"]]
    assert str(first.key) in refused[0]["msg"]
    assert refused[0]["cert"] == str(first.cert)

    # The matching key arrives: now it is picked up.
    write_atomic(first.key, other.key.read_bytes())
    wait_for(lambda: served_fingerprint(address) == other.fingerprint, 2.0, "good cert after refusals")
    assert served_fingerprint(address, None) == other.fingerprint
    conn = Conn(address, ssl.create_default_context(cafile=str(rot_ca.pem)))
    try:
        assert conn.get("/hello.txt")[0] == 200
        assert conn.peer_fingerprint() == other.fingerprint
    finally:
        conn.close()


def test_hot_reload_missing_file_is_refused_once(start_server: StartServer, site: Path, rot_ca: CA) -> None:
    """A key that is briefly missing (a non-atomic deploy) keeps the old cert, and is reported once, not per poll."""
    server, first = _rot_server(start_server, site, rot_ca)
    address = server.address("https")
    saved = first.key.read_bytes()
    first.key.unlink()

    def missing() -> list[dict[str, Any]]:
        return [e for e in events(server, "tls.cert_refused") if "cannot stat" in e["msg"]]

    wait_for(lambda: bool(missing()), 3.0, "missing key reported")
    assert str(first.key) in missing()[0]["msg"]
    time.sleep(1.6)  # three more polls at the default 0.5 s
    assert len(missing()) == 1, [e["msg"] for e in missing()]
    assert served_fingerprint(address) == first.fingerprint
    metrics = subprocess.run(
        ["curl", "-sS", server.admin_url("/metrics")], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert 'edgeward_cert_refusals_total{listener="https"} 1' in metrics

    write_atomic(first.key, saved)
    fresh = rot_ca.issue("rot", ["localhost", "127.0.0.1"])
    wait_for(lambda: served_fingerprint(address) == fresh.fingerprint, 2.0, "cert after the key came back")


@dataclass
class Load:
    """Threads doing a full TLS handshake and one GET per connection, until stopped."""

    address: Address
    ctx: ssl.SSLContext
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    seen: list[bytes] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = Conn(self.address, self.ctx)
                try:
                    fingerprint = conn.peer_fingerprint()
                    status, _, body = conn.get("/hello.txt", close=True)
                finally:
                    conn.close()
                if (status, body) != (200, b"hello world\n"):
                    raise AssertionError(f"got {status} {body!r}")
            except Exception as exc:
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with self.lock:
                self.ok += 1
                self.seen.append(fingerprint)


def test_ten_rotations_under_load(start_server: StartServer, site: Path, rot_ca: CA) -> None:
    server, first = _rot_server(start_server, site, rot_ca, workers=2)
    address = server.address("https")
    load = Load(address, ssl.create_default_context(cafile=str(rot_ca.pem)))
    threads = [threading.Thread(target=load.run, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    issued = [first.fingerprint]
    try:
        time.sleep(0.5)
        for _ in range(10):
            issued.append(rot_ca.issue("rot", ["localhost", "127.0.0.1"]).fingerprint)
            time.sleep(0.3)
        final = issued[-1]

        def load_sees_final() -> bool:
            with load.lock:
                return load.seen[-10:] == [final] * 10

        wait_for(load_sees_final, 3.0, "every worker serves the final certificate")
    finally:
        load.stop.set()
        for t in threads:
            t.join(15)
    assert load.failures == []
    assert load.ok > 50, load.ok
    assert set(load.seen) <= set(issued)
    assert len(set(load.seen)) >= 3, "rotations were not observed under load"
    for _ in range(6):  # whichever worker answers
        assert served_fingerprint(address) == final
    assert len(events(server, "tls.cert_reloaded")) >= 2

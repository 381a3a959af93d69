"""Mutual TLS: one client identity over TCP (HTTP/1.1, HTTP/2) and QUIC (HTTP/3), against the real server.

TCP clients are `curl --cert`, `openssl s_client -cert` and httpx with a client certificate; QUIC
clients are aioquic's (tests/h3client.py) and ngtcp2's `gtlsclient --cert`. The access log's
`client_cert` (the SHA-256 fingerprint of the client certificate) shows which identity each
request carried. OpenSSL verifies TCP clients and edgeward's own ClientTrust verifies QUIC
clients, so every refusal is checked on both.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aioquic.asyncio.client import connect
from aioquic.quic.events import ConnectionTerminated, QuicEvent
from aioquic.tls import SessionTicket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ingress.config import load_config
from ingress.errors import ConfigError
from ingress.protocol.events import Request
from ingress.tls import identity as identity_module
from ingress.tls.identity import ClientCertificateRefused, ClientIdentity, ClientTrust, identity_from_der
from tests.conftest import base_config
from tests.h3client import H3Transport, _Client, h3_configuration
from tests.pki import CA, Issued, write_atomic
from tests.server import ROOT, Server, events, to_toml, wait_for

StartServer = Callable[..., Server]
LOCAL = "127.0.0.1"
HELLO = b"hello world\n"
REQUEST = b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
SPIFFE = "spiffe://edgeward.test/ns/payments/sa/alice"
CRYPTO_ERROR = 0x100  # QUIC carries TLS alert N as CONNECTION_CLOSE error 0x100 + N (RFC 9001 section 4.8)
# TLS alerts (RFC 8446 section 6): QUIC sends the one OpenSSL sends on TCP for the same refusal.
CERTIFICATE_REVOKED, CERTIFICATE_EXPIRED, UNKNOWN_CA, UNSUPPORTED_CERTIFICATE = 44, 45, 48, 43
CERTIFICATE_REQUIRED = 116


# --------------------------------------------------------------------------- PKI


@dataclass
class Clients:
    alice: Issued  # from the trusted client CA, with DNS, SPIFFE URI and e-mail SANs
    rogue: Issued  # clientAuth, but from a CA the server does not trust
    expired: Issued
    server_only: Issued  # from the trusted CA, but extendedKeyUsage serverAuth only


@pytest.fixture(scope="module")
def clients(ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Clients:
    other = CA(tmp_path_factory.mktemp("rogue-pki"), name="rogue CA")
    three_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    return Clients(
        alice=ca.issue("alice", ["alice.clients.test"], client=True, uris=(SPIFFE,), emails=("alice@example.test",)),
        rogue=other.issue("rogue", ["rogue.clients.test"], client=True),
        expired=ca.issue("expired-client", ["old.clients.test"], client=True, days=1, not_before=three_days_ago),
        server_only=ca.issue("server-only", ["svc.clients.test"]),
    )


def fingerprint(issued: Issued) -> str:
    return issued.fingerprint.hex()


# --------------------------------------------------------------------------- server


def mtls_config(site: Path, cert: Issued, ca: CA, mode: str, log: Path) -> dict[str, Any]:
    config = base_config(site, cert, access_log={"enabled": True, "path": str(log), "flush_interval": 0.1})
    config["listeners"][0]["tls"].update({"client_auth": mode, "client_ca": [str(ca.pem)]})
    return config


@dataclass
class Edge:
    server: Server
    log: Path

    @property
    def port(self) -> int:
        return self.server.address("https")[1]

    @property
    def quic_port(self) -> int:
        return int(self.server.state["quic"]["https"].rpartition(":")[2])

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def wait_records(self, count: int) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.records()) >= count, 5.0, f"{count} access-log records")
        return self.records()


def _edge(start_server: StartServer, site: Path, cert: Issued, ca: CA, mode: str) -> Edge:
    log = site.parent / f"access-{mode}.log"
    return Edge(start_server(mtls_config(site, cert, ca, mode, log)), log)


@pytest.fixture
def required(start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA) -> Edge:
    return _edge(start_server, site, localhost_cert, ca, "required")


@pytest.fixture
def optional(start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA) -> Edge:
    return _edge(start_server, site, localhost_cert, ca, "optional")


# --------------------------------------------------------------------------- TCP clients


def curl(port: int, ca: CA, client: Issued | None, version: str) -> subprocess.CompletedProcess[bytes]:
    cert = ["--cert", str(client.cert), "--key", str(client.key)] if client else []
    cmd = ["curl", "-sS", version, "--cacert", str(ca.pem), "--resolve", f"localhost:{port}:{LOCAL}", *cert]
    return subprocess.run([*cmd, f"https://localhost:{port}/hello.txt"], capture_output=True, timeout=20, check=False)


def s_client(port: int, *args: str, client: Issued | None = None) -> str:
    """One `openssl s_client` run sending REQUEST and reading until the server closes; returns all it printed."""
    cert = ["-cert", str(client.cert), "-key", str(client.key)] if client else []
    cmd = ["openssl", "s_client", "-connect", f"{LOCAL}:{port}", "-servername", "localhost", "-ign_eof", *cert, *args]
    proc = subprocess.run(cmd, input=REQUEST, capture_output=True, timeout=15, check=False)
    return proc.stdout.decode("latin-1") + proc.stderr.decode("latin-1")


def alert(output: str) -> int | None:
    """The TLS alert the server sent, as s_client reports it."""
    found = re.search(r"SSL alert number (\d+)", output)
    return int(found.group(1)) if found else None


def tls_context(ca: CA, client: Issued | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.pem))
    if client is not None:
        ctx.load_cert_chain(client.cert, client.key)
    return ctx


def httpx_get(port: int, ca: CA, client: Issued | None, http2: bool) -> httpx.Response:
    with httpx.Client(verify=tls_context(ca, client), http2=http2, timeout=10) as http:
        return http.get(f"https://localhost:{port}/hello.txt")


# --------------------------------------------------------------------------- QUIC clients


class _Probe(_Client):
    """tests/h3client.py's client, also keeping how the connection ended and any session ticket."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed: asyncio.Future[ConnectionTerminated] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated) and not self.closed.done():
            self.closed.set_result(event)
        super().quic_event_received(event)


@dataclass
class H3Outcome:
    status: int | None = None
    body: bytes = b""
    error_code: int | None = None  # the CONNECTION_CLOSE error code, when the server refused


async def _h3_get(port: int, ca: CA, client: Issued | None, tickets: list[SessionTicket] | None) -> H3Outcome:
    cert, key = (str(client.cert), str(client.key)) if client else (None, None)
    config = h3_configuration(str(ca.pem), "localhost", cert, key)
    handler = tickets.append if tickets is not None else None
    # aioquic's client counts its handshake done once it has sent its Finished: a refusal arrives after.
    async with connect(LOCAL, port, configuration=config, create_protocol=_Probe, session_ticket_handler=handler) as p:
        assert isinstance(p, _Probe)
        request = asyncio.ensure_future(p.request(b"GET", b"localhost", b"/hello.txt", [], b""))
        either: set[asyncio.Future[Any]] = {request, p.closed}
        await asyncio.wait(either, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if request.done() and request.exception() is None:
            status, _, body = request.result()
            await asyncio.sleep(0.1)  # a session ticket, if any, follows the handshake
            return H3Outcome(status, body)
        if request.done():
            request.exception()  # the ConnectionError the close caused: retrieved, not logged as lost
        else:
            request.cancel()
        closed = await asyncio.wait_for(p.closed, 15)
        return H3Outcome(error_code=closed.error_code)


def h3_get(port: int, ca: CA, client: Issued | None, tickets: list[SessionTicket] | None = None) -> H3Outcome:
    return asyncio.run(asyncio.wait_for(_h3_get(port, ca, client, tickets), 40))


def gtlsclient(port: int, client: Issued | None) -> tuple[list[int], int | None]:
    """ngtcp2's client (GnuTLS); returns the statuses it got and the error code the server closed with, if any.

    It exits 0 either way, so its log tells which happened.
    """
    cert = [f"--cert={client.cert}", f"--key={client.key}"] if client else []
    cmd = ["gtlsclient", "--exit-on-all-streams-close", "--no-quic-dump", "--no-http-dump", "--timeout=5s", *cert]
    proc = subprocess.run(
        [*cmd, LOCAL, str(port), f"https://localhost:{port}/hello.txt"], capture_output=True, timeout=60, check=False
    )
    log = proc.stdout.decode("latin-1") + proc.stderr.decode("latin-1")
    statuses = [int(s) for s in re.findall(r"^http: stream 0x[0-9a-f]+ \[:status: (\d+)\]$", log, re.M)]
    closed = re.search(r"frm rx \d+ \w+ CONNECTION_CLOSE\(0x1c\) error_code=CRYPTO_ERROR\((0x[0-9a-f]+)\)", log)
    assert statuses or closed, log[-3000:]
    return statuses, int(closed.group(1), 16) if closed else None


# --------------------------------------------------------------------------- required: a valid certificate


def test_required_valid_cert_is_one_identity_on_h1_h2_h3(required: Edge, ca: CA, clients: Clients) -> None:
    alice = clients.alice
    port = required.port
    for version in ("--http1.1", "--http2"):
        out = curl(port, ca, alice, version)
        assert (out.returncode, out.stdout) == (0, HELLO), out.stderr
    for http2 in (False, True):
        response = httpx_get(port, ca, alice, http2)
        assert (response.status_code, response.content) == (200, HELLO)
        assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    h3 = h3_get(required.quic_port, ca, alice)
    assert (h3.status, h3.body) == (200, HELLO)
    with httpx.Client(transport=H3Transport(str(ca.pem), str(alice.cert), str(alice.key))) as http:
        response = http.get(f"https://localhost:{required.quic_port}/hello.txt")
        assert (response.status_code, response.content, response.http_version) == (200, HELLO, "HTTP/3")
    assert gtlsclient(required.quic_port, alice) == ([200], None)

    records = required.wait_records(7)
    assert len(records) == 7
    assert [r["protocol"] for r in records] == ["HTTP/1.1", "HTTP/2", "HTTP/1.1", "HTTP/2"] + ["HTTP/3"] * 3
    # The same certificate is the same identity whichever protocol and TLS stack carried it.
    assert {r["client_cert"] for r in records} == {fingerprint(alice)}
    assert all(r["status"] == 200 for r in records)


# --------------------------------------------------------------------------- required: refusals


def _assert_nothing_served(edge: Edge, ca: CA, clients: Clients) -> None:
    """Refused handshakes log no request: after one good request, it is the only record."""
    out = curl(edge.port, ca, clients.alice, "--http1.1")
    assert out.returncode == 0, out.stderr
    records = edge.wait_records(1)
    assert [(r["path"], r["client_cert"]) for r in records] == [("/hello.txt", fingerprint(clients.alice))]


def test_required_without_a_cert_fails_the_handshake(required: Edge, ca: CA, clients: Clients) -> None:
    port = required.port
    # TLS 1.3 names the missing certificate; TLS 1.2 has no such alert and says handshake_failure.
    tls13 = s_client(port, "-tls1_3")
    assert alert(tls13) == CERTIFICATE_REQUIRED, tls13
    tls12 = s_client(port, "-tls1_2")
    assert alert(tls12) == 40, tls12
    for out in (tls13, tls12):
        assert "hello world" not in out and "HTTP/1.1" not in out
    for version in ("--http1.1", "--http2"):
        result = curl(port, ca, None, version)
        assert result.returncode != 0 and result.stdout == b"", result
    with pytest.raises(httpx.HTTPError):
        httpx_get(port, ca, None, http2=False)
    assert h3_get(required.quic_port, ca, None).error_code == CRYPTO_ERROR + CERTIFICATE_REQUIRED
    assert gtlsclient(required.quic_port, None) == ([], CRYPTO_ERROR + CERTIFICATE_REQUIRED)
    _assert_nothing_served(required, ca, clients)


def test_cert_from_another_ca_is_refused(required: Edge, ca: CA, clients: Clients) -> None:
    rogue = clients.rogue
    out = s_client(required.port, client=rogue)
    assert alert(out) == UNKNOWN_CA, out
    for version in ("--http1.1", "--http2"):
        assert curl(required.port, ca, rogue, version).returncode != 0
    assert h3_get(required.quic_port, ca, rogue).error_code == CRYPTO_ERROR + UNKNOWN_CA
    assert gtlsclient(required.quic_port, rogue) == ([], CRYPTO_ERROR + UNKNOWN_CA)
    _assert_nothing_served(required, ca, clients)


def test_expired_client_cert_is_refused(required: Edge, ca: CA, clients: Clients) -> None:
    out = s_client(required.port, client=clients.expired)
    assert alert(out) == CERTIFICATE_EXPIRED, out
    assert curl(required.port, ca, clients.expired, "--http2").returncode != 0
    assert h3_get(required.quic_port, ca, clients.expired).error_code == CRYPTO_ERROR + CERTIFICATE_EXPIRED
    _assert_nothing_served(required, ca, clients)


def test_cert_not_for_client_auth_is_refused(required: Edge, ca: CA, clients: Clients) -> None:
    """A trusted CA's certificate whose extendedKeyUsage is serverAuth only is not a client certificate."""
    out = s_client(required.port, client=clients.server_only)
    assert alert(out) == UNSUPPORTED_CERTIFICATE, out
    assert curl(required.port, ca, clients.server_only, "--http1.1").returncode != 0
    assert h3_get(required.quic_port, ca, clients.server_only).error_code == CRYPTO_ERROR + UNSUPPORTED_CERTIFICATE
    _assert_nothing_served(required, ca, clients)


# --------------------------------------------------------------------------- optional


def test_optional_serves_without_a_cert_and_verifies_one_sent(optional: Edge, ca: CA, clients: Clients) -> None:
    port = optional.port
    for version in ("--http1.1", "--http2"):
        out = curl(port, ca, None, version)
        assert (out.returncode, out.stdout) == (0, HELLO), out.stderr
    assert h3_get(optional.quic_port, ca, None).status == 200
    anonymous = optional.wait_records(3)
    assert [(r["protocol"], r["client_cert"]) for r in anonymous] == [("HTTP/1.1", ""), ("HTTP/2", ""), ("HTTP/3", "")]

    # A certificate sent is verified all the same: a bad one ends the handshake, a good one is the identity.
    assert alert(s_client(port, client=clients.rogue)) == UNKNOWN_CA
    assert curl(port, ca, clients.rogue, "--http2").returncode != 0
    assert h3_get(optional.quic_port, ca, clients.rogue).error_code == CRYPTO_ERROR + UNKNOWN_CA
    assert h3_get(optional.quic_port, ca, clients.expired).error_code == CRYPTO_ERROR + CERTIFICATE_EXPIRED
    assert curl(port, ca, clients.alice, "--http1.1").returncode == 0
    assert h3_get(optional.quic_port, ca, clients.alice).status == 200
    records = optional.wait_records(5)
    assert [(r["protocol"], r["client_cert"]) for r in records[3:]] == [
        ("HTTP/1.1", fingerprint(clients.alice)),
        ("HTTP/3", fingerprint(clients.alice)),
    ]


# --------------------------------------------------------------------------- resumption and tickets


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_tcp_session_resumption_keeps_the_identity(
    required: Edge, ca: CA, clients: Clients, tmp_path: Path, flag: str
) -> None:
    sess = tmp_path / "sess.pem"
    first = s_client(required.port, flag, "-sess_out", str(sess), client=clients.alice)
    assert "hello world" in first and re.search(r"^New, ", first, re.M), first
    for _ in range(3):
        again = s_client(required.port, flag, "-sess_in", str(sess), client=clients.alice)
        assert "hello world" in again and re.search(r"^Reused, ", again, re.M), again
    records = required.wait_records(4)
    # A resumed session carries the certificate verified in its full handshake.
    assert [r["client_cert"] for r in records] == [fingerprint(clients.alice)] * 4


def test_python_ssl_resumes_with_a_client_cert(required: Edge, ca: CA, clients: Clients) -> None:
    ctx = tls_context(ca, clients.alice)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # a TLS 1.2 session is ready when the handshake ends
    session = None
    reused = []
    for _ in range(3):
        with (
            socket.create_connection((LOCAL, required.port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
        ):
            tls.sendall(REQUEST)
            assert b"hello world" in b"".join(iter(lambda: tls.recv(65536), b""))
            reused.append(tls.session_reused)
            session = tls.session
    assert reused == [False, True, True]


def test_quic_issues_no_session_tickets_with_client_auth(required: Edge, ca: CA, clients: Clients) -> None:
    """aioquic's tickets do not carry the client certificate, so none are issued: every handshake is full."""
    tickets: list[SessionTicket] = []
    for _ in range(2):
        assert h3_get(required.quic_port, ca, clients.alice, tickets).status == 200
    assert tickets == []
    metrics = httpx.get(required.server.admin_url("/metrics"), timeout=5).text
    assert 'kind="resumed"' not in metrics
    assert re.search(r'edgeward_quic_events_total\{[^}]*kind="handshakes"\} 2', metrics), metrics


# --------------------------------------------------------------------------- reload


def test_reload_turns_client_auth_on_for_tcp_and_quic(
    start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA, clients: Clients
) -> None:
    """client_auth is part of the listener's TLS policy: a reload rebuilds its context, and QUIC follows."""
    log = site.parent / "access.log"
    config = mtls_config(site, localhost_cert, ca, "required", log)
    tls = config["listeners"][0]["tls"]
    del tls["client_auth"], tls["client_ca"]
    server = start_server(config)
    edge = Edge(server, log)
    assert curl(edge.port, ca, None, "--http1.1").returncode == 0
    assert h3_get(edge.quic_port, ca, None).status == 200

    tls.update({"client_auth": "required", "client_ca": [str(ca.pem)]})
    server.write_config(config)
    server.signal(signal.SIGHUP)
    wait_for(lambda: bool(events(server, "config.reloaded")), 10, "reload applied")
    assert curl(edge.port, ca, None, "--http1.1").returncode != 0
    assert h3_get(edge.quic_port, ca, None).error_code == CRYPTO_ERROR + CERTIFICATE_REQUIRED
    assert curl(edge.port, ca, clients.alice, "--http2").returncode == 0
    assert h3_get(edge.quic_port, ca, clients.alice).status == 200
    records = edge.wait_records(4)
    assert [r["client_cert"] for r in records] == ["", "", fingerprint(clients.alice), fingerprint(clients.alice)]


# --------------------------------------------------------------------------- identity (unit)


def test_identity_from_der(ca: CA, clients: Clients) -> None:
    cert = x509.load_pem_x509_certificate(clients.alice.cert.read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    identity = identity_from_der(der)
    assert identity.subject == "CN=alice.clients.test"
    assert identity.issuer == "CN=edgeward test CA"
    assert identity.serial == f"{cert.serial_number:x}"
    assert identity.sha256 == cert.fingerprint(hashes.SHA256()).hex() == fingerprint(clients.alice)
    assert identity.dns_sans == ("alice.clients.test",)
    assert identity.uri_sans == (SPIFFE,)
    assert identity.spiffe_id == SPIFFE
    assert identity.email_sans == ("alice@example.test",)
    assert identity.not_after == cert.not_valid_after_utc
    # Memoised by the bytes: another connection presenting the same certificate gets the same object.
    assert identity_from_der(bytes(bytearray(der))) is identity
    with pytest.raises(AttributeError):
        identity.subject = "CN=mallory"  # type: ignore[misc]


def test_identity_memo_is_bounded_and_unparsable_der_keeps_its_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity_module, "_memo", {})
    monkeypatch.setattr(identity_module, "MEMO_SIZE", 4)
    found = [identity_from_der(b"not a certificate %d" % i) for i in range(10)]
    assert len(identity_module._memo) == 4
    assert found[0] == ClientIdentity(subject="", issuer="", serial="", sha256=found[0].sha256)
    assert found[0].sha256 == hashlib.sha256(b"not a certificate 0").hexdigest()
    assert found[0].spiffe_id is None


def test_request_identity_defaults_to_none() -> None:
    request = Request("GET", b"/", b"", {}, "localhost", "1.1", True, "https")
    assert request.peer.identity is None


def test_client_trust_matches_openssl_rules(ca: CA, clients: Clients) -> None:
    trust = ClientTrust(x509.load_pem_x509_certificates(ca.pem.read_bytes()))
    now = dt.datetime.now(dt.UTC)

    def load(issued: Issued) -> x509.Certificate:
        return x509.load_pem_x509_certificate(issued.cert.read_bytes())

    trust.verify(load(clients.alice), [], now)  # no AKI on the leaf, no keyUsage on the CA: OpenSSL accepts both
    for issued, expired in ((clients.rogue, False), (clients.server_only, False), (clients.expired, True)):
        with pytest.raises(ClientCertificateRefused) as info:
            trust.verify(load(issued), [], now)
        assert info.value.expired is expired, issued
    with pytest.raises(ClientCertificateRefused):  # not yet valid, seen from the past
        trust.verify(load(clients.alice), [], now - dt.timedelta(days=1))


# --------------------------------------------------------------------------- config


def _config(tmp_path: Path, tls: dict[str, Any]) -> Path:
    data = {
        "listeners": [
            {"name": "https", "address": "127.0.0.1:0", "tls": {"certs": [{"cert": "c.pem", "key": "k.pem"}], **tls}}
        ],
        "routes": [{"path": "/", "static": {"root": str(tmp_path)}}],
    }
    path = tmp_path / "edge.toml"
    path.write_text(to_toml(data))
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p).removeprefix(f"{path}: ") for p in info.value.problems]


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_client_auth_without_client_ca_is_an_error(tmp_path: Path, mode: str) -> None:
    assert _problems(_config(tmp_path, {"client_auth": mode})) == [
        f'listeners[0].tls.client_ca: client_auth = "{mode}" needs the CA bundles client certificates'
        ' must chain to; add client_ca = ["/path/to/client-ca.pem"]'
    ]


def test_client_ca_without_client_auth_is_an_error(tmp_path: Path) -> None:
    assert _problems(_config(tmp_path, {"client_ca": ["/etc/ca.pem"]})) == [
        'listeners[0].tls.client_auth: client_ca is set but client_auth is "off", so no client certificate'
        ' is asked for; set client_auth = "required" (or "optional"), or remove client_ca'
    ]


def test_client_auth_is_off_by_default(tmp_path: Path) -> None:
    tls = load_config(_config(tmp_path, {})).listeners[0].tls
    assert tls is not None and (tls.client_auth, tls.client_ca) == ("off", ())


def check_client_ca(tmp_path: Path, cert: Issued, bundles: list[str]) -> list[str]:
    """`ingress check` of a listener requiring client certificates from `bundles`; its problem lines."""
    data = base_config(tmp_path, cert)
    data["listeners"][0]["tls"].update({"client_auth": "required", "client_ca": bundles})
    path = tmp_path / "check.toml"
    path.write_text(to_toml(data))
    load_config(path)  # structurally valid: only `check`, which opens the files, refuses it
    cmd = [sys.executable, "-m", "ingress", "check", "--config", str(path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    return [line.removeprefix(f"{path}: ") for line in out.stderr.splitlines() if line]


def test_check_reports_unusable_client_ca_files(
    tmp_path: Path, ca: CA, clients: Clients, localhost_cert: Issued
) -> None:
    missing = tmp_path / "missing-ca.pem"
    garbage = tmp_path / "garbage-ca.pem"
    write_atomic(garbage, b"not a certificate\n")
    unreadable = tmp_path / "unreadable-ca.pem"
    write_atomic(unreadable, ca.pem.read_bytes())
    unreadable.chmod(0)
    bundles = [str(ca.pem), str(missing), str(garbage), str(clients.alice.cert), str(unreadable)]
    got = check_client_ca(tmp_path, localhost_cert, bundles)
    expected = [
        f"listeners[0].tls.client_ca[1]: client CA file {missing} does not exist",
        f"listeners[0].tls.client_ca[2]: client CA file {garbage} holds no PEM certificate",
        f"listeners[0].tls.client_ca[3]: client CA file {clients.alice.cert}: 'CN=alice.clients.test' is not a CA"
        " certificate (no basicConstraints CA:TRUE); list the CA that issues client certificates,"
        " not a client certificate",
    ]
    if os.geteuid() != 0:  # root reads any file
        expected.append(f"listeners[0].tls.client_ca[4]: client CA file {unreadable} cannot be read: Permission denied")
    assert got == expected


def test_client_auth_listeners_issue_one_tls13_ticket_per_handshake(ca: CA, localhost_cert: Issued) -> None:
    """A ticket carrying a client certificate is costly to issue; one per handshake is enough to resume."""
    from ingress.config.model import CertPair, TLSSettings
    from ingress.tls.contexts import policy_context

    pair = (CertPair(cert=str(localhost_cert.cert), key=str(localhost_cert.key)),)
    plain = policy_context(TLSSettings(certs=pair))
    mtls = policy_context(TLSSettings(certs=pair, client_auth="required", client_ca=(str(ca.pem),)))
    assert (plain.num_tickets, mtls.num_tickets) == (2, 1)

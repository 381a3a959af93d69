"""Client certificate revocation (CRLs), client CA and CRL hot reload, and refused handshakes counted by reason.

OpenSSL checks TCP clients against the CRLs (VERIFY_CRL_CHECK_LEAF) and edgeward's Revocations
checks QUIC clients, so every refusal is checked on both, with the TLS alert each sends. A refused
handshake never reaches HTTP: the access log has no line for it, only the failure counter
`edgeward_tls_handshake_failures_total` on the admin listener's /metrics knows.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ingress.config import load_config
from ingress.errors import ConfigError, TLSMaterialError
from ingress.tls import failures
from ingress.tls.identity import ClientCertificateRefused, ClientTrust
from ingress.tls.material import IssuedCRL, client_material, load_client_material, load_crls
from tests.conftest import base_config
from tests.pki import CA, Issued, write_atomic
from tests.server import ROOT, Server, events, to_toml, wait_for
from tests.test_mtls import CRYPTO_ERROR, HELLO, LOCAL, REQUEST, Edge, alert, curl, gtlsclient, h3_get, s_client

StartServer = Callable[..., Server]
# TLS alerts (RFC 8446 section 6).
CERTIFICATE_REVOKED, CERTIFICATE_EXPIRED, UNKNOWN_CA, CERTIFICATE_REQUIRED = 44, 45, 48, 116
POLL = 0.1  # server.cert_poll_interval in these tests: a reload is seen within a few of these


# --------------------------------------------------------------------------- PKI


@dataclass
class PKI:
    """Client CAs apart from the server's (the session `ca`, which clients trust for the server)."""

    a: CA  # the client CA the servers trust
    b: CA  # another client CA, swapped in for `a` by the hot-reload test
    rogue: CA  # never trusted
    alice: Issued  # from a: good
    mallory: Issued  # from a: revoked wherever a CRL revokes anything
    expired: Issued  # from a: past its notAfter
    bob: Issued  # from b
    eve: Issued  # from rogue


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("client-pki")
    a, b, rogue = CA(root / "a", "client CA A"), CA(root / "b", "client CA B"), CA(root / "rogue", "rogue CA")
    three_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    return PKI(
        a=a,
        b=b,
        rogue=rogue,
        alice=a.issue("alice", ["alice.clients.test"], client=True),
        mallory=a.issue("mallory", ["mallory.clients.test"], client=True),
        expired=a.issue("expired", ["old.clients.test"], client=True, days=1, not_before=three_days_ago),
        bob=b.issue("bob", ["bob.clients.test"], client=True),
        eve=rogue.issue("eve", ["eve.clients.test"], client=True),
    )


def cert(issued: Issued) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert.read_bytes())


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------- server


@dataclass
class Trust:
    """The client CA and CRL files a server reads, rewritten in place by the hot-reload tests."""

    ca: Path
    crl: Path


def start_edge(
    start_server: StartServer, site: Path, server_cert: Issued, trust: Trust, crl: bool = True, mode: str = "required"
) -> Edge:
    log = site.parent / "access.log"
    config = base_config(
        site,
        server_cert,
        server={"drain_timeout": 5.0, "cert_poll_interval": POLL},
        access_log={"enabled": True, "path": str(log), "flush_interval": 0.1},
    )
    tls = config["listeners"][0]["tls"]
    tls.update({"client_auth": mode, "client_ca": [str(trust.ca)]})
    if crl:
        tls["client_crl"] = [str(trust.crl)]
    return Edge(start_server(config), log)


@pytest.fixture
def trust(tmp_path: Path, pki: PKI) -> Trust:
    """CA a, and a CRL of a revoking mallory (DER, as CAs publish them; the hot-reload tests write PEM)."""
    found = Trust(tmp_path / "trust" / "client-ca.pem", tmp_path / "trust" / "client.crl")
    found.ca.parent.mkdir()
    write_atomic(found.ca, pki.a.pem.read_bytes())
    write_atomic(found.crl, pki.a.crl([pki.mallory.serial], der=True))
    return found


@pytest.fixture
def revoking(start_server: StartServer, site: Path, localhost_cert: Issued, trust: Trust) -> Edge:
    return start_edge(start_server, site, localhost_cert, trust)


def failure_counts(edge: Edge) -> dict[str, int]:
    text = httpx.get(edge.server.admin_url("/metrics"), timeout=5).text
    pattern = r'^edgeward_tls_handshake_failures_total\{worker="0",reason="(\w+)"\} (\d+)$'
    return {m.group(1): int(m.group(2)) for m in re.finditer(pattern, text, re.M)}


def metric(edge: Edge, line_prefix: str) -> str:
    text = httpx.get(edge.server.admin_url("/metrics"), timeout=5).text
    found = [line for line in text.splitlines() if line.startswith(line_prefix)]
    assert len(found) == 1, text
    return found[0].rpartition(" ")[2]


def reloaded(edge: Edge, count: int) -> None:
    """Wait until the server has reloaded its client CAs and CRLs `count` times in all."""
    wait_for(lambda: len(events(edge.server, "tls.client_trust_reloaded")) >= count, 10, f"trust reload {count}")


def served(edge: Edge) -> list[dict[str, Any]]:
    """Access-log records of the HTTPS listener's requests (the admin listener's /metrics is logged too)."""
    return [r for r in edge.records() if r["path"] == "/hello.txt"]


def fingerprints(edge: Edge, count: int) -> list[str]:
    """The client certificates of the first `count` requests served, once that many are logged."""
    wait_for(lambda: len(served(edge)) >= count, 5, f"{count} access-log records")
    return [r["client_cert"] for r in served(edge)]


class KeepAlive:
    """One HTTP/1.1 connection kept open across a reload, to show it is not closed."""

    def __init__(self, port: int, server_ca: CA, client: Issued) -> None:
        ctx = ssl.create_default_context(cafile=str(server_ca.pem))
        ctx.load_cert_chain(client.cert, client.key)
        raw = socket.create_connection((LOCAL, port), timeout=10)
        self.tls = ctx.wrap_socket(raw, server_hostname="localhost")

    def get(self) -> bytes:
        self.tls.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while not data.endswith(HELLO):
            chunk = self.tls.recv(65536)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 "), data
        return data

    def close(self) -> None:
        self.tls.close()


def plain_http(port: int) -> bytes:
    """An HTTP request to the HTTPS port; returns what came back before the server closed."""
    with socket.create_connection((LOCAL, port), timeout=10) as sock:
        sock.sendall(REQUEST)
        return b"".join(iter(lambda: sock.recv(65536), b""))


# --------------------------------------------------------------------------- revoked certificates


def test_revoked_cert_is_refused_on_h1_h2_h3(revoking: Edge, ca: CA, pki: PKI) -> None:
    port, quic = revoking.port, revoking.quic_port
    for flag in ("-tls1_3", "-tls1_2"):
        out = s_client(port, flag, client=pki.mallory)
        assert alert(out) == CERTIFICATE_REVOKED, out
        assert "hello world" not in out
    for version in ("--http1.1", "--http2"):
        result = curl(port, ca, pki.mallory, version)
        assert result.returncode != 0 and result.stdout == b"", result
        assert b"revoked" in result.stderr, result.stderr
    assert h3_get(quic, ca, pki.mallory).error_code == CRYPTO_ERROR + CERTIFICATE_REVOKED
    assert gtlsclient(quic, pki.mallory) == ([], CRYPTO_ERROR + CERTIFICATE_REVOKED)

    # The CA's other certificates are served, over every protocol.
    for version in ("--http1.1", "--http2"):
        result = curl(port, ca, pki.alice, version)
        assert (result.returncode, result.stdout) == (0, HELLO), result.stderr
    assert h3_get(quic, ca, pki.alice).status == 200
    assert fingerprints(revoking, 3)
    assert [(r["protocol"], r["client_cert"]) for r in served(revoking)] == [
        (protocol, pki.alice.fingerprint.hex()) for protocol in ("HTTP/1.1", "HTTP/2", "HTTP/3")
    ]
    counts = failure_counts(revoking)
    # Each refused handshake counted once: s_client twice and curl twice over TCP, aioquic and gtlsclient over QUIC.
    assert (counts["cert_revoked"], sum(counts.values())) == (6, 6), counts


def test_expired_crl_refuses_every_client_of_its_ca_until_replaced(
    start_server: StartServer, site: Path, localhost_cert: Issued, trust: Trust, ca: CA, pki: PKI
) -> None:
    """OpenSSL treats an expired CRL like an expired certificate (alert 45) for every client of its CA; so does QUIC."""
    expires = now() + dt.timedelta(seconds=4)
    write_atomic(trust.crl, pki.a.crl([pki.mallory.serial], next_update=expires))
    edge = start_edge(start_server, site, localhost_cert, trust)
    next_update = float(metric(edge, "edgeward_client_crl_next_update_timestamp_seconds{"))
    assert next_update == pytest.approx(expires.timestamp(), abs=1)
    time.sleep(max(0.0, (expires - now()).total_seconds()) + 0.3)

    out = s_client(edge.port, client=pki.alice)
    assert alert(out) == CERTIFICATE_EXPIRED, out
    assert h3_get(edge.quic_port, ca, pki.alice).error_code == CRYPTO_ERROR + CERTIFICATE_EXPIRED
    assert failure_counts(edge)["no_valid_crl"] == 2
    wait_for(lambda: bool(events(edge.server, "tls.client_crl_expired")), 5, "the expired CRL logged")
    assert [e["ca"] for e in events(edge.server, "tls.client_crl_expired")] == ["CN=client CA A"]

    # A current CRL ends it, without a restart; the expiry is logged once, not on every poll.
    write_atomic(trust.crl, pki.a.crl([pki.mallory.serial]))
    reloaded(edge, 1)
    assert curl(edge.port, ca, pki.alice, "--http2").returncode == 0
    assert h3_get(edge.quic_port, ca, pki.alice).status == 200
    assert len(events(edge.server, "tls.client_crl_expired")) == 1
    assert fingerprints(edge, 2) == [pki.alice.fingerprint.hex()] * 2


# --------------------------------------------------------------------------- hot reload


def test_crl_hot_reload_revokes_on_new_handshakes_and_keeps_connections(
    start_server: StartServer, site: Path, localhost_cert: Issued, trust: Trust, ca: CA, pki: PKI, tmp_path: Path
) -> None:
    write_atomic(trust.crl, pki.a.crl([]))  # nothing revoked yet
    edge = start_edge(start_server, site, localhost_cert, trust)
    port = edge.port
    open_conn = KeepAlive(port, ca, pki.mallory)
    open_conn.get()
    sessions = {flag: tmp_path / f"mallory{flag}.pem" for flag in ("-tls1_2", "-tls1_3")}
    for flag, sess in sessions.items():
        out = s_client(port, flag, "-sess_out", str(sess), client=pki.mallory)
        assert "hello world" in out, out
    alice_session = tmp_path / "alice.pem"
    assert "hello world" in s_client(port, "-sess_out", str(alice_session), client=pki.alice)
    assert h3_get(edge.quic_port, ca, pki.mallory).status == 200

    write_atomic(trust.crl, pki.a.crl([pki.mallory.serial]))
    reloaded(edge, 1)
    # New handshakes: refused over TCP and QUIC.
    assert alert(s_client(port, client=pki.mallory)) == CERTIFICATE_REVOKED
    assert curl(port, ca, pki.mallory, "--http2").returncode != 0
    assert h3_get(edge.quic_port, ca, pki.mallory).error_code == CRYPTO_ERROR + CERTIFICATE_REVOKED
    # Resuming a session from before the revocation skips verification; it is refused all the same.
    for flag, sess in sessions.items():
        out = s_client(port, flag, "-sess_in", str(sess), client=pki.mallory)
        assert re.search(r"^Reused, ", out, re.M) and "hello world" not in out, out
    assert failure_counts(edge)["cert_revoked"] == 5
    # A session of a certificate still good resumes as before.
    out = s_client(port, "-sess_in", str(alice_session), client=pki.alice)
    assert re.search(r"^Reused, ", out, re.M) and "hello world" in out, out
    # The connection opened before the revocation is not closed by it.
    open_conn.get()
    open_conn.close()

    # A CRL that does not load (here: expired) is refused whole; the one in force stays.
    write_atomic(trust.crl, pki.a.crl([], next_update=now() - dt.timedelta(minutes=1)))
    wait_for(lambda: bool(events(edge.server, "tls.client_trust_refused")), 10, "the expired CRL refused")
    assert "expired on" in events(edge.server, "tls.client_trust_refused")[0]["msg"]
    assert metric(edge, 'edgeward_client_trust_refusals_total{listener="https"}') == "1"
    assert alert(s_client(port, client=pki.mallory)) == CERTIFICATE_REVOKED
    assert h3_get(edge.quic_port, ca, pki.mallory).error_code == CRYPTO_ERROR + CERTIFICATE_REVOKED
    assert curl(port, ca, pki.alice, "--http1.1").returncode == 0
    assert metric(edge, 'edgeward_client_trust_reloads_total{listener="https"}') == "1"

    mallory, alice = pki.mallory.fingerprint.hex(), pki.alice.fingerprint.hex()
    # keep-alive, 2 s_client, alice, HTTP/3; alice resumed, keep-alive again; alice
    assert fingerprints(edge, 8) == [mallory] * 3 + [alice, mallory, alice, mallory, alice]


def test_client_ca_swap_applies_to_new_handshakes_without_restart(
    start_server: StartServer, site: Path, localhost_cert: Issued, trust: Trust, ca: CA, pki: PKI, tmp_path: Path
) -> None:
    """Proves OpenSSL verifies against the store of the context SNI moved the connection to.

    The listener's base context keeps CA a, loaded when it was bound; only the certificate
    contexts are rebuilt with CA b. Were the base context's store used, b's clients would be
    refused; they are accepted, with a server name and without one (the SNI callback runs for both).
    """
    edge = start_edge(start_server, site, localhost_cert, trust, crl=False)
    port = edge.port
    open_conn = KeepAlive(port, ca, pki.alice)
    open_conn.get()
    session = tmp_path / "alice.sess"
    assert "hello world" in s_client(port, "-sess_out", str(session), client=pki.alice)
    assert alert(s_client(port, client=pki.bob)) == UNKNOWN_CA

    write_atomic(trust.ca, pki.b.pem.read_bytes())
    reloaded(edge, 1)
    for version in ("--http1.1", "--http2"):
        result = curl(port, ca, pki.bob, version)
        assert (result.returncode, result.stdout) == (0, HELLO), result.stderr
    bob_cert = ["-cert", str(pki.bob.cert), "-key", str(pki.bob.key)]
    no_sni = subprocess.run(
        ["openssl", "s_client", "-connect", f"{LOCAL}:{port}", "-noservername", "-ign_eof", *bob_cert],
        input=REQUEST,
        capture_output=True,
        timeout=15,
        check=False,
    )
    assert b"hello world" in no_sni.stdout, no_sni.stdout + no_sni.stderr
    assert h3_get(edge.quic_port, ca, pki.bob).status == 200
    # a's clients are refused on new handshakes, while a's connection from before stays open.
    assert alert(s_client(port, client=pki.alice)) == UNKNOWN_CA
    assert h3_get(edge.quic_port, ca, pki.alice).error_code == CRYPTO_ERROR + UNKNOWN_CA
    # Nor does a session of a's from before the swap resume.
    out = s_client(port, "-sess_in", str(session), client=pki.alice)
    assert re.search(r"^Reused, ", out, re.M) and "hello world" not in out, out
    assert failure_counts(edge)["unknown_ca"] == 4
    open_conn.get()
    open_conn.close()
    alice, bob = pki.alice.fingerprint.hex(), pki.bob.fingerprint.hex()
    assert fingerprints(edge, 7) == [alice, alice, bob, bob, bob, bob, alice]


def test_openssl_takes_verify_flags_from_the_base_context_and_the_store_from_the_sni_one(
    pki: PKI, localhost_cert: Issued, tmp_path: Path
) -> None:
    """What policy_context's docstring relies on, shown on bare Python ssl contexts (no edgeward code).

    A connection is created from the base context, and its SNI callback moves it to another. The
    verify flags (VERIFY_CRL_CHECK_LEAF) come from the base; the CAs and CRLs from the other.
    """
    crl_file = tmp_path / "a.crl"
    crl_file.write_bytes(pki.a.crl([pki.mallory.serial]))

    def context(cafile: Path, crl: bool, flag: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(localhost_cert.cert, localhost_cert.key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(cafile))
        if crl:
            ctx.load_verify_locations(cafile=str(crl_file))
        if flag:
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return ctx

    def handshake(base: ssl.SSLContext, moved_to: ssl.SSLContext, client: Issued) -> int | None:
        """The server's verify error code, or None when it accepted the client."""
        base.sni_callback = lambda sslobj, name, current: setattr(sslobj, "context", moved_to)
        found: list[int | None] = []
        with socket.create_server((LOCAL, 0)) as listener:

            def serve() -> None:
                conn, _ = listener.accept()
                conn.settimeout(10)
                try:
                    base.wrap_socket(conn, server_side=True).close()
                    found.append(None)
                except ssl.SSLCertVerificationError as exc:
                    found.append(exc.verify_code)
                    conn.close()

            thread = threading.Thread(target=serve)
            thread.start()
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            ctx.load_cert_chain(client.cert, client.key)
            try:
                raw = socket.create_connection(listener.getsockname(), timeout=10)
                with ctx.wrap_socket(raw, server_hostname="localhost"):
                    pass
            except (ssl.SSLError, OSError):
                pass
            thread.join(10)
        return found[0]

    revoked, no_crl = 23, 3  # X509_V_ERR_CERT_REVOKED, X509_V_ERR_UNABLE_TO_GET_CRL
    # The flag on the context moved to, not on the base: revocation is not checked at all.
    assert handshake(context(pki.a.pem, False, False), context(pki.a.pem, True, True), pki.mallory) is None
    # The flag on the base, the CRL only in the context moved to: checked, and revoked.
    assert handshake(context(pki.a.pem, False, True), context(pki.a.pem, True, False), pki.mallory) == revoked
    # The CRL only in the base: the store moved to has none, so no CRL is found.
    assert handshake(context(pki.a.pem, True, True), context(pki.a.pem, False, False), pki.mallory) == no_crl
    # CAs: only those of the context moved to count.
    assert handshake(context(pki.a.pem, False, False), context(pki.b.pem, False, False), pki.bob) is None
    assert handshake(context(pki.a.pem, False, False), context(pki.b.pem, False, False), pki.alice) == 20


# --------------------------------------------------------------------------- failures by reason


def test_failed_handshakes_are_counted_by_reason_and_never_reach_http(revoking: Edge, ca: CA, pki: PKI) -> None:
    port, quic = revoking.port, revoking.quic_port
    assert set(failure_counts(revoking)) == set(failures.REASONS)
    assert sum(failure_counts(revoking).values()) == 0

    assert alert(s_client(port, "-tls1_3")) == CERTIFICATE_REQUIRED  # the alert-deferral path: counted once
    assert alert(s_client(port, "-tls1_2")) == 40
    assert h3_get(quic, ca, None).error_code == CRYPTO_ERROR + CERTIFICATE_REQUIRED
    assert alert(s_client(port, client=pki.expired)) == CERTIFICATE_EXPIRED
    assert h3_get(quic, ca, pki.expired).error_code == CRYPTO_ERROR + CERTIFICATE_EXPIRED
    assert alert(s_client(port, client=pki.mallory)) == CERTIFICATE_REVOKED
    assert h3_get(quic, ca, pki.mallory).error_code == CRYPTO_ERROR + CERTIFICATE_REVOKED
    assert alert(s_client(port, client=pki.eve)) == UNKNOWN_CA
    assert alert(s_client(port, client=pki.bob)) == UNKNOWN_CA
    assert h3_get(quic, ca, pki.eve).error_code == CRYPTO_ERROR + UNKNOWN_CA
    assert b"HTTP/1.1 200" not in plain_http(port)
    assert b"HTTP/1.1 200" not in plain_http(port)
    s_client(port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    s_client(port, "-tls1_2", "-cipher", "AES128-SHA")
    # A client that does not trust the server's certificate says so with an alert of its own.
    untrusting = subprocess.run(
        ["openssl", "s_client", "-connect", f"{LOCAL}:{port}", "-verify_return_error", "-CAfile", str(pki.rogue.pem)],
        input=b"",
        capture_output=True,
        timeout=15,
        check=False,
    )
    assert untrusting.returncode != 0

    expected = {
        "no_client_cert": 3,
        "cert_expired": 2,
        "cert_revoked": 2,
        "unknown_ca": 3,
        "not_tls": 2,
        "protocol_version": 1,
        "no_shared_cipher": 1,
        "client_alert": 1,
    }
    expected = {reason: expected.get(reason, 0) for reason in failures.REASONS}
    wait_for(lambda: failure_counts(revoking) == expected, 5, f"failure counts {expected}")
    # None of them reached HTTP: after them, one good request is the access log's only line.
    assert curl(port, ca, pki.alice, "--http1.1").returncode == 0
    assert fingerprints(revoking, 1) == [pki.alice.fingerprint.hex()]
    assert [r["path"] for r in revoking.records() if r["path"] != "/metrics"] == ["/hello.txt"]


def test_tcp_failure_reasons() -> None:
    def error(reason: str) -> ssl.SSLError:
        exc = ssl.SSLError(1, reason)
        exc.reason = reason
        return exc

    def verify_error(code: int) -> ssl.SSLError:
        exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
        exc.reason, exc.verify_code = "CERTIFICATE_VERIFY_FAILED", code
        return exc

    assert [failures.tcp_reason(verify_error(code)) for code in (10, 23, 20, 19, 7, 3, 12, 26, 9)] == [
        "cert_expired",
        "cert_revoked",
        "unknown_ca",
        "unknown_ca",
        "unknown_ca",
        "no_valid_crl",
        "no_valid_crl",
        "bad_cert",
        "bad_cert",
    ]
    assert failures.tcp_reason(error("PEER_DID_NOT_RETURN_A_CERTIFICATE")) == "no_client_cert"
    assert failures.tcp_reason(error("HTTP_REQUEST")) == "not_tls"
    assert failures.tcp_reason(error("WRONG_VERSION_NUMBER")) == "not_tls"
    assert failures.tcp_reason(error("TLSV1_ALERT_UNKNOWN_CA")) == "client_alert"
    assert failures.tcp_reason(error("SOMETHING_NEW")) == "other"


# --------------------------------------------------------------------------- Revocations (unit)


@pytest.fixture
def material(pki: PKI) -> Callable[..., ClientTrust]:
    """A ClientTrust for CAs a and b from CRLs given as (CA, CRL bytes); signatures are load's business, not checked."""

    def build(*crls: tuple[CA, bytes]) -> ClientTrust:
        issued = [IssuedCRL("-", ca.cert, x509.load_pem_x509_crl(data)) for ca, data in crls]
        return ClientTrust([pki.a.cert, pki.b.cert], issued)

    return build


def refusal(trust: ClientTrust, leaf: Issued, at: dt.datetime | None = None) -> str | None:
    try:
        trust.verify(cert(leaf), [], at or now())
    except ClientCertificateRefused as exc:
        return exc.kind
    return None


def test_client_trust_checks_the_leaf_against_its_cas_crl(material: Callable[..., ClientTrust], pki: PKI) -> None:
    trust = material((pki.a, pki.a.crl([pki.mallory.serial])), (pki.b, pki.b.crl([])))
    assert refusal(trust, pki.alice) is None
    assert refusal(trust, pki.bob) is None
    assert refusal(trust, pki.mallory) == "revoked"
    assert refusal(trust, pki.expired) == "expired"  # checked before the CRL, as the chain fails first
    assert refusal(trust, pki.eve) == "unknown_ca"
    # With CRLs, a CA without one refuses its clients (OpenSSL: unable to get CRL).
    assert refusal(material((pki.a, pki.a.crl([]))), pki.bob) == "crl_missing"
    # A CRL past its nextUpdate, or before its lastUpdate, is no CRL.
    assert refusal(trust, pki.alice, now() + dt.timedelta(days=2)) == "crl_expired"
    future = material((pki.a, pki.a.crl([], last_update=now() + dt.timedelta(hours=1))), (pki.b, pki.b.crl([])))
    assert refusal(future, pki.alice) == "crl_not_yet_valid"


def test_client_trust_picks_the_crl_openssl_picks(material: Callable[..., ClientTrust], pki: PKI) -> None:
    older = pki.a.crl([], last_update=now() - dt.timedelta(hours=2))
    newer = pki.a.crl([pki.mallory.serial], last_update=now() - dt.timedelta(hours=1))
    assert refusal(material((pki.a, older), (pki.a, newer), (pki.b, pki.b.crl([]))), pki.mallory) == "revoked"
    # A current CRL wins over a newer one that has expired.
    stale = pki.a.crl([], last_update=now() - dt.timedelta(hours=1), next_update=now() - dt.timedelta(minutes=1))
    current = pki.a.crl([pki.mallory.serial], last_update=now() - dt.timedelta(hours=2))
    assert refusal(material((pki.a, stale), (pki.a, current), (pki.b, pki.b.crl([]))), pki.mallory) == "revoked"


def test_client_trust_honours_the_crl_scope(material: Callable[..., ClientTrust], pki: PKI) -> None:
    """A CRL for one distribution point covers only certificates naming it; alice names none."""
    point = x509.UniformResourceIdentifier("http://crl.example.test/a.crl")
    idp = x509.IssuingDistributionPoint([point], None, False, False, None, False, False)
    trust = material((pki.a, pki.a.crl([], extensions=[(idp, True)])), (pki.b, pki.b.crl([])))
    assert refusal(trust, pki.alice) == "crl_scope"


def test_resumed_sessions_are_judged_from_the_leaf_alone(
    material: Callable[..., ClientTrust], pki: PKI, tmp_path: Path
) -> None:
    def resumed(trust: ClientTrust, leaf: Issued, at: dt.datetime | None = None) -> str | None:
        try:
            trust.check_resumed(cert(leaf).public_bytes(Encoding.DER), at or now())
        except ClientCertificateRefused as exc:
            return exc.kind
        return None

    trust = material((pki.a, pki.a.crl([pki.mallory.serial])), (pki.b, pki.b.crl([])))
    assert resumed(trust, pki.alice) is None
    assert resumed(trust, pki.alice) is None  # memoised: the same answer
    assert resumed(trust, pki.mallory) == "revoked"
    assert resumed(trust, pki.expired) == "expired"
    assert resumed(trust, pki.alice, now() + dt.timedelta(days=2)) == "crl_expired"
    # With CRLs, an issuer that is no client CA could not pass a full handshake now.
    assert resumed(trust, pki.eve) == "unknown_ca"
    # A CA replaced under the same name does not vouch for its predecessor's certificates.
    successor = CA(tmp_path / "successor", name="client CA A")
    assert resumed(ClientTrust([successor.cert]), pki.alice) == "unknown_ca"
    # Without CRLs, an unknown issuer may be an intermediate the client sent (the session does not keep
    # it), so it resumes; unless it is a CA this listener trusted and has since dropped.
    assert resumed(ClientTrust([pki.b.cert]), pki.alice) is None
    assert resumed(ClientTrust([pki.b.cert], retired=frozenset({"CN=client CA A"})), pki.alice) == "unknown_ca"


# --------------------------------------------------------------------------- loading and `ingress check`


def test_crl_files_may_be_der_or_several_pem(pki: PKI, tmp_path: Path) -> None:
    der, pem = tmp_path / "a.der", tmp_path / "both.pem"
    der.write_bytes(pki.a.crl([pki.mallory.serial], der=True))
    pem.write_bytes(pki.a.crl([]) + b"\n" + pki.b.crl([pki.bob.serial]))
    assert [len(list(crl)) for crl in load_crls(str(der))] == [1]
    assert [crl.issuer.rfc4514_string() for crl in load_crls(str(pem))] == ["CN=client CA A", "CN=client CA B"]
    ca_file = tmp_path / "cas.pem"
    ca_file.write_bytes(pki.a.pem.read_bytes() + pki.b.pem.read_bytes())
    found, problems = client_material((str(ca_file),), (str(der), str(pem)))
    assert problems == [] and found is not None
    assert [(item.path, item.ca) for item in found.crls] == [
        (str(der), pki.a.cert),
        (str(pem), pki.a.cert),
        (str(pem), pki.b.cert),
    ]


def ingress_check(tmp_path: Path, server_cert: Issued, tls: dict[str, Any]) -> list[str]:
    """`ingress check` of a listener with these client_* settings; its problem lines (exit 2) or [] (exit 0)."""
    data = base_config(tmp_path, server_cert)
    data["listeners"][0]["tls"].update({"client_auth": "required", **tls})
    path = tmp_path / "check.toml"
    path.write_text(to_toml(data))
    cmd = [sys.executable, "-m", "ingress", "check", "--config", str(path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode in (0, 2), out.stderr
    return [line.removeprefix(f"{path}: ") for line in out.stderr.splitlines() if line] if out.returncode else []


def test_check_reports_unusable_crl_files(tmp_path: Path, pki: PKI, localhost_cert: Issued) -> None:
    crls = {
        "missing": None,
        "garbage": b"not a CRL\n",
        "a-cert": pki.a.pem.read_bytes(),
        "rogue": pki.rogue.crl([]),
        "expired": pki.a.crl(
            [],
            last_update=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            next_update=dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.UTC),
        ),
        "delta": pki.a.crl([], extensions=[(x509.DeltaCRLIndicator(1), True)]),
        "critical": pki.a.crl(
            [], extensions=[(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b""), True)]
        ),
        "good": pki.a.crl([pki.mallory.serial], der=True),
    }
    paths = {name: tmp_path / f"{name}.crl" for name in crls}
    for name, data in crls.items():
        if data is not None:
            paths[name].write_bytes(data)
    got = ingress_check(
        tmp_path, localhost_cert, {"client_ca": [str(pki.a.pem)], "client_crl": [str(p) for p in paths.values()]}
    )
    at = "listeners[0].tls.client_crl"
    a = "the CRL of 'CN=client CA A'"
    assert got == [
        f"{at}[0]: client CRL file {paths['missing']} does not exist",
        f"{at}[1]: client CRL file {paths['garbage']} holds no CRL; give one DER CRL or PEM"
        " '-----BEGIN X509 CRL-----' blocks",
        f"{at}[2]: client CRL file {paths['a-cert']} holds no PEM '-----BEGIN X509 CRL-----' block"
        " (it holds a certificate: CA certificates belong in client_ca)",
        f"{at}[3]: client CRL file {paths['rogue']}: the CRL of 'CN=rogue CA' is not signed by any CA in client_ca;"
        " add the CA that issued it to client_ca, or remove the CRL",
        f"{at}[4]: client CRL file {paths['expired']}: {a} expired on 2024-01-02 03:04 UTC (nextUpdate); install a"
        " current CRL from the CA: until then every client certificate the CA issued is refused",
        f"{at}[5]: client CRL file {paths['delta']}: {a} is a delta CRL, which is not supported; configure the CA's"
        " full CRL",
        f"{at}[6]: client CRL file {paths['critical']}: {a} has a critical extension 1.2.3.4 that OpenSSL does not"
        " handle, so it would refuse every client certificate of the CA; ask the CA for a CRL without it",
    ]
    # A CRL in the CA's name but signed by another key is not the CA's.
    forged_ca = CA(tmp_path / "forged", name="client CA A")
    forged = tmp_path / "forged.crl"
    forged.write_bytes(forged_ca.crl([]))
    got = ingress_check(tmp_path, localhost_cert, {"client_ca": [str(pki.a.pem)], "client_crl": [str(forged)]})
    assert got == [
        f"{at}[0]: client CRL file {forged}: {a} is not signed by any CA in client_ca;"
        " add the CA that issued it to client_ca, or remove the CRL"
    ]


def test_check_requires_a_crl_for_every_client_ca_once_any_is_set(
    tmp_path: Path, pki: PKI, localhost_cert: Issued
) -> None:
    a_crl = tmp_path / "a.crl"
    a_crl.write_bytes(pki.a.crl([]))
    cas = [str(pki.a.pem), str(pki.b.pem)]
    got = ingress_check(tmp_path, localhost_cert, {"client_ca": cas, "client_crl": [str(a_crl)]})
    assert got == [
        f"listeners[0].tls.client_crl: client CA 'CN=client CA B' (in {pki.b.pem}) has no CRL in client_crl, so every"
        " client certificate it issued would be refused; add the CA's CRL to client_crl, or remove the CA from"
        " client_ca"
    ]
    b_crl = tmp_path / "b.crl"
    b_crl.write_bytes(pki.b.crl([], der=True))
    assert ingress_check(tmp_path, localhost_cert, {"client_ca": cas, "client_crl": [str(a_crl), str(b_crl)]}) == []


def test_client_crl_without_client_auth_is_an_error(tmp_path: Path) -> None:
    data = {
        "listeners": [
            {
                "name": "https",
                "address": "127.0.0.1:0",
                "tls": {"certs": [{"cert": "c.pem", "key": "k.pem"}], "client_crl": ["/etc/client.crl"]},
            }
        ],
        "routes": [{"path": "/", "static": {"root": str(tmp_path)}}],
    }
    path = tmp_path / "edge.toml"
    path.write_text(to_toml(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p).removeprefix(f"{path}: ") for p in info.value.problems] == [
        'listeners[0].tls.client_crl: client_crl is set but client_auth is "off", so no client certificate is asked'
        ' for or checked against it; set client_auth = "required" (or "optional") with client_ca, or remove'
        " client_crl"
    ]


def test_load_errors_name_the_file(pki: PKI, tmp_path: Path) -> None:
    """Serving (not only `check`) refuses the same material, with every problem in one message."""
    crl = tmp_path / "a.crl"
    crl.write_bytes(pki.rogue.crl([]))
    with pytest.raises(TLSMaterialError, match=f"client CRL file {crl}: the CRL of 'CN=rogue CA' is not signed"):
        load_client_material((str(pki.a.pem),), (str(crl),))

"""Throw-away PKI for the benchmark: one ECDSA P-256 CA and server cert, and a client CA and cert for mTLS.

Every TLS server in a run is handed the *same* certificate and key so that the
handshake cost (signature algorithm, chain length, key size) is identical
across servers; otherwise a handshake benchmark would partly measure the
choice of key instead of the server.

Choices and why:

* ECDSA P-256 everywhere: it is what a modern edge deployment serves and it is
  cheap to sign with, so the handshake workload stresses the server's TLS
  stack rather than RSA bignum maths.
* SAN = IP 127.0.0.1 + DNS localhost, marked **non-critical**: some stacks
  (rustls/webpki, used by granian) are picky about critical SAN extensions on
  certs whose subject is non-empty.
* The server key is written as unencrypted PKCS#8 ("BEGIN PRIVATE KEY"):
  granian only accepts PKCS#8, nginx/caddy/uvicorn/hypercorn accept it too.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertPaths:
    """Absolute paths of the generated PEM files."""

    ca_cert: Path
    cert: Path
    """Server leaf certificate only: every server sends exactly this one cert,
    so the handshake carries the same bytes whoever answers."""
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeward bench"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


_KEY_USAGE_OFF = dict.fromkeys(
    (
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "encipher_only",
        "decipher_only",
    ),
    False,
)


def _window() -> tuple[dt.datetime, dt.datetime]:
    """Validity from a day ago, so a slightly skewed clock never makes a server reject its own certificate."""
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(days=1), now + dt.timedelta(days=30)


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    not_before, not_after = _window()
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **_KEY_USAGE_OFF), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    common_name: str,
    usage: x509.ObjectIdentifier,
    names: list[x509.GeneralName],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A P-256 leaf for `usage` (serverAuth or clientAuth) with `names` as its (non-critical) SAN."""
    not_before, not_after = _window()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **_KEY_USAGE_OFF), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write(
    cert: x509.Certificate, cert_path: Path, key: ec.EllipticCurvePrivateKey | None = None, key_path: Path | None = None
) -> None:
    pem = serialization.Encoding.PEM
    cert_path.write_bytes(cert.public_bytes(pem))
    cert_path.chmod(0o644)
    if key is not None and key_path is not None:
        key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        # Readable by unprivileged server workers (nginx drops to nobody); a throw-away key in a private temp dir.
        key_path.chmod(0o644)


def make_certs(directory: Path) -> CertPaths:
    """Create the CA and server certificate in *directory* and return paths."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca("edgeward bench CA")
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
    key, cert = _leaf(ca_key, ca, "localhost", ExtendedKeyUsageOID.SERVER_AUTH, names)
    paths = CertPaths(
        ca_cert=(directory / "ca.pem").resolve(),
        cert=(directory / "server.pem").resolve(),
        key=(directory / "server-key.pem").resolve(),
    )
    _write(ca, paths.ca_cert)
    _write(cert, paths.cert, key, paths.key)
    return paths


def make_client_certs(directory: Path, uri: str) -> tuple[Path, Path, Path]:
    """A client CA and one client certificate it issues (EKU clientAuth, URI SAN `uri`): (ca, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca("edgeward bench client CA")
    key, cert = _leaf(
        ca_key, ca, "bench-client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.UniformResourceIdentifier(uri)]
    )
    ca_path, cert_path, key_path = directory / "client-ca.pem", directory / "client.pem", directory / "client-key.pem"
    _write(ca, ca_path)
    _write(cert, cert_path, key, key_path)
    return ca_path.resolve(), cert_path.resolve(), key_path.resolve()

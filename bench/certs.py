"""Throw-away PKI for the benchmark: one ECDSA P-256 CA and one server cert.

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


def make_certs(directory: Path) -> CertPaths:
    """Create the CA and server certificate in *directory* and return paths.

    Validity starts a day in the past so that a slightly skewed clock never
    makes a server reject its own certificate mid-benchmark.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(days=1)
    not_after = now + dt.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("edgeward bench CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    paths = CertPaths(
        ca_cert=(directory / "ca.pem").resolve(),
        cert=(directory / "server.pem").resolve(),
        key=(directory / "server-key.pem").resolve(),
    )
    paths.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    paths.cert.write_bytes(cert.public_bytes(pem))
    paths.key.write_bytes(
        key.private_bytes(
            pem,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # Readable by unprivileged server workers (nginx drops to nobody); this is
    # a throw-away key in a private temp directory.
    paths.key.chmod(0o644)
    return paths

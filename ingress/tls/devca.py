"""Development PKI for the embedded default config.

Created once under $EDGEWARD_HOME/demo so that `curl --cacert` works as
printed; reused on later starts and renewed only when the server
certificate nears expiry. Never used unless no config is given.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class DevPKI:
    ca: Path
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeward development"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write(path: Path, data: bytes, private: bool) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _needs_renewal(cert_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return True
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=30)


def ensure_dev_pki(home: Path) -> DevPKI:
    demo = home / "demo"
    demo.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki = DevPKI(ca=demo / "ca.pem", cert=demo / "server.pem", key=demo / "server-key.pem")
    ca_key_path = demo / "ca-key.pem"
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    if not pki.ca.exists() or not ca_key_path.exists() or _needs_renewal(pki.ca):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("edgeward development CA"))
            .issuer_name(_name("edgeward development CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(ca_key_path, _key_pem(ca_key), private=True)
        _write(pki.ca, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
        pki.cert.unlink(missing_ok=True)
    if not pki.key.exists() or _needs_renewal(pki.cert):
        ca_key_loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        assert isinstance(ca_key_loaded, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        san = x509.SubjectAlternativeName(
            [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key_loaded.public_key()),
                critical=False,
            )
            .sign(ca_key_loaded, hashes.SHA256())
        )
        _write(pki.key, _key_pem(key), private=True)
        _write(pki.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return pki

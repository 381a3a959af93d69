"""Test PKI made with `cryptography`.

The SAN extension is non-critical: sslyze and some strict clients reject a
critical SAN alongside a non-empty subject, which other generators produce.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issued:
    cert: Path
    key: Path
    fingerprint: bytes

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert.read_bytes()).serial_number


class CA:
    def __init__(self, directory: Path, name: str = "edgeward test CA") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.dir / "ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        stem: str,
        names: list[str],
        key_type: str = "ecdsa",
        days: int = 10,
        not_before: dt.datetime | None = None,
        client: bool = False,
        uris: tuple[str, ...] = (),
        emails: tuple[str, ...] = (),
    ) -> Issued:
        """A leaf for `names` (the first is the CN); `client` makes it a client certificate (EKU clientAuth)."""
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        key = rsa.generate_private_key(65537, 2048) if key_type == "rsa" else ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        sans += [x509.UniformResourceIdentifier(u) for u in uris] + [x509.RFC822Name(e) for e in emails]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.dir / f"{stem}.pem", self.dir / f"{stem}-key.pem"
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        write_atomic(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        return Issued(cert_path, key_path, cert.fingerprint(hashes.SHA256()))

    def crl(
        self,
        revoked: Iterable[int] = (),
        next_update: dt.datetime | None = None,
        last_update: dt.datetime | None = None,
        der: bool = False,
        extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
    ) -> bytes:
        """A CRL from this CA revoking `revoked` serials (PEM, or DER); valid for a day unless told otherwise."""
        now = dt.datetime.now(dt.UTC)
        last = last_update or now - dt.timedelta(minutes=5)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(last)
            .next_update(next_update or now + dt.timedelta(days=1))
        )
        for serial in revoked:
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(last).build()
            builder = builder.add_revoked_certificate(entry)
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)
        signed = builder.sign(self.key, hashes.SHA256())
        return signed.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)


def write_atomic(path: Path, data: bytes) -> None:
    """How certificate tooling replaces files: write aside, then rename over."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)

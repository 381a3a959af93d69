"""A tiny but complete release directory for tests, laid out as the contract says.

Real keys (cryptography), a real test CA with a codeSigning leaf, and the real signing code: only the
executable is a stand-in (a few KiB of fixed bytes), because a Nuitka build takes minutes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from audit.sign.algorithms import PrivateKey
from audit.sign.keys import KeySigner
from audit.sign.release import default_statements, sign_release_files, write_checksums
from audit.sign.signer import Signer
from audit.sign.x509 import X509Signer

BUILDER_ID = "https://ci.edgeward.example/builders/nuitka-onefile@v1"
SOURCE_REPO = "https://git.edgeward.example/edgeward"
SOURCE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
IDENTITY = "release@bank.example"


def new_key(kind: str = "ed25519") -> PrivateKey:
    return ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else ec.generate_private_key(ec.SECP256R1())


def write_public(key: PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


def write_private(key: PrivateKey, path: Path, passphrase: bytes | None = None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return path


def _ski(key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key)


class TestCA:
    """Root -> intermediate -> code-signing leaves, shaped to pass RFC 5280 / Web PKI profile checks."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "edgeward test root") -> None:
        self.now = dt.datetime.now(dt.UTC)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._ca_cert(name, self.root_key, self.root_key, None, path_length=1)
        self.intermediate_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = self._ca_cert(
            f"{name} intermediate", self.intermediate_key, self.root_key, self.root, path_length=0
        )

    def _ca_cert(
        self,
        name: str,
        key: ec.EllipticCurvePrivateKey,
        issuer_key: ec.EllipticCurvePrivateKey,
        issuer: x509.Certificate | None,
        path_length: int,
        eku: list[x509.ObjectIdentifier] | None = None,
    ) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(days=1))
            .not_valid_after(self.now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
            .add_extension(_ski(key.public_key()), critical=False)
        )
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def restricted_intermediate(
        self, eku: list[x509.ObjectIdentifier], name: str = "restricted intermediate"
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A second intermediate under the root whose EKU constrains what it may issue."""
        key = ec.generate_private_key(ec.SECP256R1())
        return self._ca_cert(name, key, self.root_key, self.root, path_length=0, eku=eku), key

    def issue(
        self,
        key: PrivateKey,
        identity: str = IDENTITY,
        *,
        code_signing: bool = True,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        san: list[x509.GeneralName] | None = None,
        common_name: str = "edgeward release signing",
        issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ) -> x509.Certificate:
        """A leaf for `identity` (a URI SAN if it has "://", else an email SAN), unless `san` says otherwise."""
        usages = [ExtendedKeyUsageOID.CODE_SIGNING] if code_signing else [ExtendedKeyUsageOID.CLIENT_AUTH]
        if san is None:
            san = [x509.UniformResourceIdentifier(identity)] if "://" in identity else [x509.RFC822Name(identity)]
        issuer_cert, issuer_key = issuer or (self.intermediate, self.intermediate_key)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(issuer_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or self.now - dt.timedelta(hours=1))
            .not_valid_after(not_after or self.now + dt.timedelta(days=30))
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
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(_ski(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA256())
        )

    def write_root(self, path: Path) -> Path:
        path.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))
        return path

    def x509_signer(self, key: PrivateKey | None = None, identity: str = IDENTITY) -> X509Signer:
        key = key or new_key("ecdsa-p256")
        return X509Signer(key, self.issue(key, identity), [self.intermediate])


def provenance(
    digest: str, *, builder_id: str = BUILDER_ID, repo: str = SOURCE_REPO, commit: str = SOURCE_COMMIT
) -> bytes:
    """A provenance statement shaped as the contract says `audit provenance` writes it."""
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "edgeward", "digest": {"sha256": digest}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": "https://edgeward.dev/build/nuitka-onefile/v1",
                "externalParameters": {
                    "source": {"repository": repo, "commit": commit, "dirty": False},
                    "build": {"recipe": "build/recipe.toml", "flags": ["--onefile"]},
                },
                "internalParameters": {"buildId": "ab" * 32},
                "resolvedDependencies": [
                    {"name": "python", "uri": "pkg:generic/python@3.11.7"},
                ],
            },
            "runDetails": {
                "builder": {"id": builder_id, "version": {"nuitka": "4.3.3"}},
                "metadata": {
                    "invocationId": "ab" * 32,
                    "startedOn": "2025-01-01T00:00:00Z",
                    "finishedOn": "2025-01-01T00:10:00Z",
                },
                "byproducts": [],
            },
        },
    }
    return (json.dumps(statement, indent=2, sort_keys=True) + "\n").encode()


def executable_bytes(size: int = 4096, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Release:
    dir: Path
    exe: Path
    written: list[Path]

    def small_files(self, limit: int = 16384) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if p != self.exe and p.stat().st_size <= limit)


def build_release(
    directory: Path,
    signer: Signer,
    *,
    exe: bytes | None = None,
    subject_digest: str | None = None,
    builder_id: str = BUILDER_ID,
    repo: str = SOURCE_REPO,
    commit: str = SOURCE_COMMIT,
    checksums: bool = True,
) -> Release:
    """Write the release files, sign them with `signer` and (by default) write the signed SHA256SUMS."""
    directory.mkdir(parents=True, exist_ok=True)
    exe_path = directory / "edgeward"
    data = executable_bytes() if exe is None else exe
    exe_path.write_bytes(data)
    digest = subject_digest or hashlib.sha256(data).hexdigest()
    (directory / "edgeward.build.json").write_text(json.dumps({"schema": "test", "executable_sha256": digest}) + "\n")
    (directory / "edgeward.nuitka-report.xml").write_text("<nuitka-compilation-report/>\n")
    sbom = {"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1, "components": []}
    (directory / "edgeward.cdx.json").write_text(json.dumps(sbom, indent=2) + "\n")
    (directory / "edgeward.scan.json").write_text('{"vulnerabilities": []}\n')
    (directory / "edgeward.scan.md").write_text("# Scan\n\nNo known vulnerabilities.\n")
    (directory / "edgeward.intoto.json").write_bytes(
        provenance(digest, builder_id=builder_id, repo=repo, commit=commit)
    )
    written = sign_release_files(exe_path, default_statements(exe_path), signer)
    (directory / "SUMMARY.md").write_text("# edgeward release\n\nTest release.\n")
    if checksums:
        written += write_checksums(directory, signer)
    return Release(directory, exe_path, written)


def with_chain(release: Release, key: PrivateKey, certs: list[x509.Certificate]) -> Release:
    """Replace the release's signing-chain.pem (certificates the signer would refuse to write) and re-sign
    SHA256SUMS with `key`, so only the certificate checks can fail."""
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    (release.dir / "signing-chain.pem").write_bytes(pem)
    write_checksums(release.dir, KeySigner(key))
    return release


def key_release(directory: Path, kind: str = "ed25519") -> tuple[Release, Path]:
    """A release signed with a fresh key; returns it and the trusted public key file (outside the release)."""
    key = new_key(kind)
    public = write_public(key, directory.parent / f"{directory.name}-{kind}.pub")
    return build_release(directory, KeySigner(key)), public

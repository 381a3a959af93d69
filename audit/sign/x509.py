"""Signing with a key whose certificate chains to the organisation's own CA.

Signatures and envelopes are the same as for a bare key (the leaf's key signs them); what changes is what a
verifier trusts: not the key itself but the CA plus an identity in the leaf's SAN. So the release also gets
`signing-chain.pem` (leaf first, then intermediates), which the verifier path-validates to its CA.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from audit.errors import AuditError
from audit.files import write_atomic
from audit.sign import algorithms
from audit.sign.keys import KeySigner
from audit.sign.names import CHAIN_NAME


def load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditError(f"{path}: cannot read certificates ({exc.strerror})") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise AuditError(f"{path}: not PEM certificates") from exc
    return certs


class X509Signer(KeySigner):
    def __init__(
        self,
        key: algorithms.PrivateKey,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate] = (),
        *,
        now: dt.datetime | None = None,
    ) -> None:
        super().__init__(key)
        # Refuse here what every verifier would refuse later, so a release is never published unverifiable.
        leaf_key = algorithms.supported_public(leaf.public_key(), "signing certificate")
        if algorithms.spki_der(leaf_key) != algorithms.spki_der(self.public_key):
            raise AuditError("signing certificate does not match the private key")
        try:
            usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.CODE_SIGNING not in usages:
            raise AuditError("signing certificate lacks the codeSigning extended key usage")
        moment = now or dt.datetime.now(dt.UTC)
        if not leaf.not_valid_before_utc <= moment <= leaf.not_valid_after_utc:
            raise AuditError(
                "signing certificate is not valid now",
                hint=f"valid {leaf.not_valid_before_utc.isoformat()} to {leaf.not_valid_after_utc.isoformat()}",
            )
        self.leaf = leaf
        self.intermediates = tuple(intermediates)

    @classmethod
    def from_files(
        cls, key: Path, cert: Path, chain: Path | None = None, passphrase: bytes | None = None
    ) -> X509Signer:
        leaves = load_certificates(cert)
        if len(leaves) != 1:
            raise AuditError(f"{cert}: expected exactly one certificate", hint="put intermediates in --chain")
        intermediates = load_certificates(chain) if chain else []
        return cls(algorithms.load_private_key(key, passphrase), leaves[0], intermediates)

    @property
    def description(self) -> str:
        return f"certificate {self.leaf.subject.rfc4514_string() or '(empty subject)'} ({super().description})"

    def write_material(self, directory: Path) -> list[Path]:
        out = directory / CHAIN_NAME
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.leaf, *self.intermediates))
        write_atomic(out, pem)
        return [out]

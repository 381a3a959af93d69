"""Trust by certificate: the organisation's CA, plus the identity its certificate must name.

The operator pins a CA and an identity, not a key, so keys can rotate under the CA without touching every
edge node. The chain comes from the release (`signing-chain.pem`) and is untrusted until validated here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from audit.errors import AuditError, Finding
from audit.sign.algorithms import supported_public
from audit.sign.x509 import load_certificates
from audit.verify.dsse import TrustedKey
from audit.verify.evidence import Evidence, Verified
from audit.verify.keys import TrustedKeys
from audit.verify.oneline import oneline
from audit.verify.policy import Policy

MAX_CHAIN_DEPTH = 4


def certificate_identities(cert: x509.Certificate, identity: str = "") -> set[str]:
    """The SAN identities a code-signing certificate can be pinned to, of the kind `identity` is.

    An identity containing "://" is a URI and is matched against URI SANs only; any other is an email and is
    matched against RFC 822 SANs only. Matching across types would let a CA that issues URI SANs freely
    (`release@bank.example` is a valid relative URI) impersonate a mailbox, and the reverse.
    Without `identity`, both kinds (for messages).
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    uris = set(san.get_values_for_type(x509.UniformResourceIdentifier))
    emails = set(san.get_values_for_type(x509.RFC822Name))
    if not identity:
        return uris | emails
    return uris if is_uri_identity(identity) else emails


def is_uri_identity(identity: str) -> bool:
    return "://" in identity


def _allows_code_signing(cert: x509.Certificate) -> bool:
    """A CA certificate without EKU is unconstrained; with one, it must allow codeSigning (or any usage)."""
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.CODE_SIGNING in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages


class CertificateIdentity(Policy):
    """The signing certificate chains to one of `roots`, is for code signing, and names `identity`."""

    def __init__(self, roots: Sequence[x509.Certificate], identity: str, *, at: dt.datetime | None = None) -> None:
        if not roots:
            raise AuditError("no CA certificate to trust", hint="pass --ca CA.pem")
        if not identity:
            raise AuditError("no certificate identity to expect", hint="pass --cert-identity EMAIL-OR-URI")
        if at is not None and at.tzinfo is None:
            raise AuditError("--at needs a timezone (e.g. 2025-01-31T12:00:00Z)")
        self.roots = tuple(roots)
        self.identity = identity
        self.at = at

    @classmethod
    def from_files(cls, ca: Path, identity: str, *, at: dt.datetime | None = None) -> CertificateIdentity:
        return cls(load_certificates(ca), identity, at=at)

    def describe(self) -> str:
        return f"certificate for {self.identity} from CA {self.roots[0].subject.rfc4514_string()}"

    def _leaf_key(self, evidence: Evidence) -> TrustedKey:
        # 0. The leaf and intermediates come from the release's signing-chain.pem: untrusted input.
        if not evidence.chain:
            raise Finding(f"{evidence.name}: no signing certificate chain (signing-chain.pem) for the CA policy")
        leaf, intermediates = evidence.chain[0], list(evidence.chain[1:])
        moment = self.at or dt.datetime.now(dt.UTC)
        # 1. Path-validate leaf -> intermediates -> one of the operator's roots at `moment` (RFC 5280 with
        #    the Web PKI profile's extension rules, via cryptography). Client verifiers demand the clientAuth
        #    EKU; code-signing certificates carry codeSigning instead, so the EKU is relaxed here and checked
        #    in (3), as sigstore-python does for Fulcio certificates.
        ca_policy = ExtensionPolicy.webpki_defaults_ca().may_be_present(
            x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None
        )
        ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None
        )
        verifier = (
            PolicyBuilder()
            .store(Store(list(self.roots)))
            .time(moment)
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
            .build_client_verifier()
        )
        try:
            chain = verifier.verify(leaf, intermediates).chain
        except (VerificationError, x509.UnsupportedGeneralNameType) as exc:
            # cryptography's text quotes certificate subjects, which the release's author chose: escaped.
            reason = oneline(str(exc))
            raise Finding(f"{evidence.name}: signing certificate does not chain to the trusted CA ({reason})") from exc
        # 1b. EKU constrains the certificates a CA issues (the de facto rule cryptography applies to serverAuth
        #     and clientAuth, relaxed above): every CA certificate on the validated path that carries EKU must
        #     allow codeSigning or anyExtendedKeyUsage, so a TLS-only intermediate cannot mint signing leaves.
        for ca_cert in chain[1:]:
            if not _allows_code_signing(ca_cert):
                subject = oneline(ca_cert.subject.rfc4514_string())
                raise Finding(f"{evidence.name}: CA certificate {subject} does not allow codeSigning (its EKU)")
        # 2. The leaf must not be a CA, and its key usage (when present) must allow digital signatures.
        try:
            if leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise Finding(f"{evidence.name}: signing certificate is a CA certificate")
        except x509.ExtensionNotFound:
            pass
        try:
            if not leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
                raise Finding(f"{evidence.name}: signing certificate's key usage lacks digitalSignature")
        except x509.ExtensionNotFound:
            pass
        # 3. The leaf must carry the codeSigning extended key usage.
        try:
            usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.CODE_SIGNING not in usages:
            raise Finding(f"{evidence.name}: signing certificate lacks the codeSigning extended key usage")
        # 4. The expected identity must be one of the leaf's SANs of the same type (email: RFC 822 names only;
        #    "://": URIs only), compared exactly.
        identities = certificate_identities(leaf, self.identity)
        if self.identity not in identities:
            kind = "URI" if is_uri_identity(self.identity) else "email"
            found = oneline(", ".join(sorted(identities))) or f"no {kind} SAN"
            raise Finding(f"{evidence.name}: signing certificate identity {found} is not {oneline(self.identity)}")
        # 5. Only now is the leaf's key trusted; the signature check is the keys policy's, with this one key.
        try:
            key = supported_public(leaf.public_key(), "signing certificate")
        except AuditError as exc:
            raise Finding(f"{evidence.name}: {oneline(str(exc))}") from exc
        return TrustedKey.of(key)

    def verify(self, evidence: Evidence) -> Verified:
        if evidence.bundle is not None and evidence.signature is None and evidence.envelope is None:
            raise Finding(f"{evidence.name}: signed keyless (Sigstore bundle) but the policy trusts a CA")
        # 6. Verify the signature or envelope with the leaf's key (an envelope keyid, if set, must be its id).
        result = TrustedKeys([self._leaf_key(evidence)], label=f"certificate {self.identity}, key").verify(evidence)
        return result

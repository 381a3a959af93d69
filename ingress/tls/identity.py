"""Who a client is, from the certificate it presented in a mutual-TLS handshake.

TCP and QUIC verify a client's chain in different places (OpenSSL for
HTTP/1.1 and HTTP/2, `ClientTrust` below for HTTP/3, whose TLS is
aioquic's), but both end holding the leaf certificate's DER bytes and both
hand them to `identity_from_der`. Every request then carries the same
`ClientIdentity` for the same certificate whatever protocol it came over,
so policy and logs are written once.

The identity is built once per connection, never per request, and
memoised by DER: a client that reconnects (a new connection per request is
common for machine clients) costs a dict lookup, not an X.509 parse.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ingress.errors import EdgewardError

MEMO_SIZE = 1024


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """A verified client certificate, reduced to what policy and logs use.

    Only `sha256` goes to the access log: it names the certificate without
    writing personal data (names, e-mail addresses) into every log line.
    """

    subject: str  # RFC 4514, e.g. "CN=payments,O=Example"
    issuer: str  # RFC 4514
    serial: str  # lower-case hex, no prefix or separators
    sha256: str  # lower-case hex fingerprint of the DER certificate
    dns_sans: tuple[str, ...] = ()
    uri_sans: tuple[str, ...] = ()  # SPIFFE IDs (spiffe://trust-domain/path) are URI SANs
    email_sans: tuple[str, ...] = ()
    not_after: dt.datetime | None = None

    @property
    def spiffe_id(self) -> str | None:
        """The SPIFFE ID, if the certificate is an X.509-SVID (exactly one spiffe:// URI SAN)."""
        ids = [uri for uri in self.uri_sans if uri.startswith("spiffe://")]
        return ids[0] if len(ids) == 1 else None


_memo: dict[bytes, ClientIdentity] = {}


def identity_from_der(der: bytes) -> ClientIdentity:
    """The identity of a DER certificate the handshake has already verified; memoised by its bytes.

    The memo is bounded (MEMO_SIZE, oldest out first), so a stream of
    distinct certificates cannot grow it. A certificate that OpenSSL
    accepted but `cryptography` cannot parse still gets its fingerprint,
    with the other fields empty, rather than failing the connection.
    """
    identity = _memo.get(der)
    if identity is None:
        identity = _parse(der)
        if len(_memo) >= MEMO_SIZE:
            del _memo[next(iter(_memo))]  # dicts keep insertion order: this is the oldest
        _memo[der] = identity
    return identity


def _parse(der: bytes) -> ClientIdentity:
    sha256 = hashlib.sha256(der).hexdigest()
    try:
        cert = x509.load_der_x509_certificate(der)
        subject, issuer = cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
        serial, not_after = f"{cert.serial_number:x}", cert.not_valid_after_utc
    except ValueError:
        return ClientIdentity(subject="", issuer="", serial="", sha256=sha256)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):  # ValueError: a SAN extension that does not parse
        return ClientIdentity(subject, issuer, serial, sha256, not_after=not_after)
    return ClientIdentity(
        subject,
        issuer,
        serial,
        sha256,
        dns_sans=tuple(san.get_values_for_type(x509.DNSName)),
        uri_sans=tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
        email_sans=tuple(san.get_values_for_type(x509.RFC822Name)),
        not_after=not_after,
    )


class ClientCertificateRefused(EdgewardError):
    """A client chain that does not verify; `expired` says the leaf is outside its validity period."""

    def __init__(self, reason: str, expired: bool = False) -> None:
        self.reason = reason
        self.expired = expired
        super().__init__(reason)


def _ca_key_usage(policy: Policy, cert: x509.Certificate, usage: x509.KeyUsage | None) -> None:
    if usage is not None and not usage.key_cert_sign:
        raise ValueError("a CA's keyUsage must allow keyCertSign")


# The Web PKI profile, relaxed where OpenSSL (which verifies TCP clients) is
# relaxed, so one certificate is accepted or refused alike over TCP and QUIC:
# keyUsage is optional on CAs (keyCertSign if present), and authorityKeyIdentifier
# and subjectAltName are optional on client certificates. What stays strict is
# the same on both sides: signatures, validity periods, CA:TRUE on issuers, path
# length, and extendedKeyUsage, which must include clientAuth when present.
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca().may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ca_key_usage)
_EE_POLICY = (
    ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.AuthorityKeyIdentifier, Criticality.AGNOSTIC, None)
    .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
)


class ClientTrust:
    """The CAs a listener trusts for client certificates, for handshakes OpenSSL does not verify (QUIC)."""

    def __init__(self, cas: Sequence[x509.Certificate]) -> None:
        self._store = Store(list(cas))

    def verify(self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], now: dt.datetime) -> None:
        """Raise ClientCertificateRefused unless `leaf` chains, at `now`, to one of the CAs."""
        builder = (
            PolicyBuilder().store(self._store).time(now).extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
        )
        try:
            builder.build_client_verifier().verify(leaf, list(intermediates))
        except VerificationError as exc:
            expired = not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc
            raise ClientCertificateRefused(str(exc), expired) from None

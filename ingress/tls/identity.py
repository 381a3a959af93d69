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
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ingress.errors import EdgewardError
from ingress.tls.material import IssuedCRL

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
    """A client certificate that does not verify; `kind` says why, finely enough to pick OpenSSL's TLS alert.

    Kinds: `expired`, `not_yet_valid`, `unknown_ca` (no chain to a client
    CA, or a bad signature), `wrong_usage` (extendedKeyUsage without
    clientAuth), `bad_cert` (any other profile failure), `revoked`, and,
    with CRLs configured, `crl_missing`, `crl_expired`, `crl_not_yet_valid`
    and `crl_scope` for a CA without a CRL that applies now.
    """

    def __init__(self, reason: str, kind: str = "unknown_ca") -> None:
        self.reason = reason
        self.kind = kind
        super().__init__(reason)

    @property
    def expired(self) -> bool:
        return self.kind == "expired"


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


# Extension profiles relaxed to what a chain needs to exist at all: telling "no chain to a client CA"
# from "a chain, but the certificate is not fit for client authentication" when verification fails.
_ANY_CA = ExtensionPolicy.permit_all().require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
_ANY_EE = ExtensionPolicy.permit_all()


class ClientTrust:
    """The CAs (and CRLs) a listener trusts for client certificates.

    QUIC verifies every client chain with it (OpenSSL does not see those
    handshakes), and TCP asks it about resumed sessions, which OpenSSL lets
    through without verifying anything (check_resumed).

    `retired` names CAs this listener trusted before a hot reload and no
    longer does: their certificates' sessions must not resume.
    """

    def __init__(
        self,
        cas: Sequence[x509.Certificate],
        crls: Sequence[IssuedCRL] = (),
        retired: frozenset[str] = frozenset(),
    ) -> None:
        # TCP's contexts load these same objects (contexts.policy_context), so both stacks trust one set.
        self.cas = tuple(cas)
        self.crls = tuple(crls)
        self.revocations = Revocations(crls) if crls else None
        self.retired = retired - {ca.subject.rfc4514_string() for ca in cas}
        self._store = Store(list(cas))
        self._resumed: dict[bytes, _Resumed] = {}

    def verify(self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], now: dt.datetime) -> None:
        """Raise ClientCertificateRefused unless `leaf` chains, at `now`, to one of the CAs, and is not revoked."""
        builder = (
            PolicyBuilder().store(self._store).time(now).extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
        )
        try:
            chain = builder.build_client_verifier().verify(leaf, list(intermediates)).chain
        except VerificationError as exc:
            raise ClientCertificateRefused(str(exc), self._why(leaf, intermediates, now)) from None
        if self.revocations is not None:
            # Only the leaf is checked against a CRL, as OpenSSL's VERIFY_CRL_CHECK_LEAF does on TCP.
            self.revocations.check(chain[1] if len(chain) > 1 else chain[0], leaf, now)

    def check_resumed(self, der: bytes, now: dt.datetime) -> None:
        """Raise ClientCertificateRefused if a resumed session's certificate would now be refused.

        A resumed TCP session (a TLS 1.2 session ID or ticket, a TLS 1.3
        PSK) skips certificate verification: OpenSSL trusts what the
        session's full handshake verified, possibly against CAs or CRLs
        that a hot reload has since replaced. The session keeps the leaf
        but not its chain, so this decides from the leaf alone:

        (1) it must not have expired since;
        (2) if its issuer's name is a current client CA's, that CA's key
            must have signed it (a CA replaced under the same name does
            not vouch for the old one's certificates), and its CA's CRL,
            if any, must be current and not list it;
        (3) if its issuer is no current client CA: with CRLs, its full
            handshake would now fail (no CRL for its issuer), and a CA that
            was trusted and has been removed no longer vouches for it;
            otherwise it may have come through an intermediate the client
            sent, which the session does not record, and it resumes.

        The signature check runs once per certificate and trust set
        (memoised); the rest is a few comparisons and a set lookup.
        """
        found = self._resumed.get(der)
        if found is None:
            found = self._resumable(der)
            if len(self._resumed) >= MEMO_SIZE:
                del self._resumed[next(iter(self._resumed))]
            self._resumed[der] = found
        leaf, issuer, refused = found
        if refused is not None:
            raise ClientCertificateRefused(f"resumed session refused: {refused}", refused)
        assert leaf is not None
        if now > leaf.not_valid_after_utc:  # (1)
            raise ClientCertificateRefused("resumed session of an expired certificate", "expired")
        if issuer is not None and self.revocations is not None:  # (2)
            self.revocations.check(issuer, leaf, now)

    def _resumable(self, der: bytes) -> _Resumed:
        try:
            leaf = x509.load_der_x509_certificate(der)
        except ValueError:
            return None, None, "bad_cert"
        candidates = [ca for ca in self.cas if ca.subject == leaf.issuer]
        for ca in candidates:  # (2)
            try:
                leaf.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return leaf, ca, None
        if candidates or self.revocations is not None or leaf.issuer.rfc4514_string() in self.retired:  # (3)
            return leaf, None, "unknown_ca"
        return leaf, None, None

    def _why(self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], now: dt.datetime) -> str:
        """Why verification failed, as OpenSSL would report it; runs only on the failure path."""
        if now > leaf.not_valid_after_utc:
            return "expired"
        if now < leaf.not_valid_before_utc:
            return "not_yet_valid"
        relaxed = PolicyBuilder().store(self._store).time(now).extension_policies(ca_policy=_ANY_CA, ee_policy=_ANY_EE)
        try:
            relaxed.build_client_verifier().verify(leaf, list(intermediates))
        except VerificationError:
            return "unknown_ca"
        try:
            usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (x509.ExtensionNotFound, ValueError):
            return "bad_cert"
        return "bad_cert" if ExtendedKeyUsageOID.CLIENT_AUTH in usages else "wrong_usage"


# A resumed session's leaf, the client CA that signed it (None: none of them), and why it is refused whatever the time.
_Resumed = tuple[x509.Certificate | None, x509.Certificate | None, str | None]


@dataclass(frozen=True, slots=True)
class _CRL:
    """One CRL reduced to what a handshake asks of it."""

    revoked: frozenset[int]
    last_update: dt.datetime
    next_update: dt.datetime | None
    scope: tuple[x509.GeneralName, ...]  # issuingDistributionPoint fullName; empty: every certificate of the CA

    def current(self, now: dt.datetime) -> bool:
        # OpenSSL's X509_cmp_time: a CRL has expired at its nextUpdate itself, and is valid from its lastUpdate.
        return self.last_update <= now and (self.next_update is None or now < self.next_update)

    def covers(self, leaf: x509.Certificate) -> bool:
        """Whether the CRL's scope includes `leaf`, as OpenSSL's crl_crldp_check decides."""
        if not self.scope:
            return True
        try:
            points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        except (x509.ExtensionNotFound, ValueError):
            return False
        return any(
            point.crl_issuer is None and point.full_name is not None and set(point.full_name) & set(self.scope)
            for point in points
        )


def _reduce(crl: x509.CertificateRevocationList) -> _CRL:
    revoked = set()
    for entry in crl:
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except (x509.ExtensionNotFound, ValueError):
            reason = None
        if reason is not x509.ReasonFlags.remove_from_crl:  # an entry taken back off a delta CRL revokes nothing
            revoked.add(entry.serial_number)
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
        scope = tuple(idp.full_name or ())
    except x509.ExtensionNotFound:
        scope = ()
    return _CRL(frozenset(revoked), crl.last_update_utc, crl.next_update_utc, scope)


class Revocations:
    """The CRLs of the client CAs, indexed for the handshake: a dict lookup and a set membership.

    Signatures were verified when the CRLs were loaded (material.crl_issuer),
    against the CA each is filed under here, so nothing is verified per
    handshake. When a CA has several CRLs, the one OpenSSL would choose is
    used: in scope first, then current, then the newest.
    """

    def __init__(self, crls: Sequence[IssuedCRL]) -> None:
        by_ca: dict[x509.Certificate, list[_CRL]] = {}
        for item in sorted(crls, key=lambda c: c.crl.last_update_utc, reverse=True):
            by_ca.setdefault(item.ca, []).append(_reduce(item.crl))
        self._by_ca = by_ca
        self.next_update = min((c.next_update for cs in by_ca.values() for c in cs if c.next_update), default=None)

    def check(self, issuer: x509.Certificate, leaf: x509.Certificate, now: dt.datetime) -> None:
        """Raise ClientCertificateRefused if `leaf`, issued by `issuer`, is revoked or has no CRL that applies now."""
        # (1) A CRL of the leaf's issuer: none is what OpenSSL calls "unable to get CRL".
        candidates = self._by_ca.get(issuer)
        if not candidates:
            raise ClientCertificateRefused("no CRL for the client certificate's CA", "crl_missing")
        # (2) OpenSSL's choice among several: in scope, then current, then newest (the list is newest first).
        best, score = candidates[0], -1
        for crl in candidates:
            points = 2 * crl.covers(leaf) + crl.current(now)
            if points > score:
                best, score = crl, points
        # (3) The CRL must apply: to this certificate, and now.
        if not best.covers(leaf):
            raise ClientCertificateRefused("the CA's CRL does not cover this certificate", "crl_scope")
        if now < best.last_update:
            raise ClientCertificateRefused("the CA's CRL is not valid yet", "crl_not_yet_valid")
        if best.next_update is not None and now >= best.next_update:
            raise ClientCertificateRefused(
                f"the CA's CRL expired at {best.next_update:%Y-%m-%d %H:%M} UTC", "crl_expired"
            )
        # (4) The serial is on it.
        if leaf.serial_number in best.revoked:
            raise ClientCertificateRefused(f"serial {leaf.serial_number:x} is revoked", "revoked")

    def stale(self, now: dt.datetime) -> list[str]:
        """The client CAs (RFC 4514 subjects) none of whose CRLs is current at `now`."""
        return [
            ca.subject.rfc4514_string() for ca, crls in self._by_ca.items() if not any(c.current(now) for c in crls)
        ]

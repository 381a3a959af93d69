"""Reading certificates and keys, with errors that say what is wrong.

`ssl.SSLContext.load_cert_chain` reports a mismatched key as
"KEY_VALUES_MISMATCH"; operators need to hear which file and why, so the
material is parsed with `cryptography` first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtensionOID

from ingress.errors import TLSMaterialError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class CertInfo:
    names: tuple[str, ...]
    not_after: dt.datetime
    sha256: str
    key_type: str
    # The parsed chain (leaf first) and key: QUIC's TLS signs with these objects directly.
    chain: tuple[x509.Certificate, ...]
    key: PrivateKey


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise TLSMaterialError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise TLSMaterialError(f"{what} file {path} cannot be read: {exc.strerror}") from None


def load_pair(cert_path: str, key_path: str) -> CertInfo:
    """Parse a certificate chain and its key; raise TLSMaterialError naming the file and fix."""
    cert_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TLSMaterialError(f"certificate file {cert_path} holds no PEM certificate") from None
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TLSMaterialError(
            f"key file {key_path} is encrypted; provide an unencrypted key readable only by the server"
        ) from None
    except ValueError:
        raise TLSMaterialError(f"key file {key_path} holds no PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise TLSMaterialError(f"key file {key_path}: unsupported key type {type(key).__name__}; use RSA or ECDSA")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, pub) != leaf.public_key().public_bytes(der, pub):
        raise TLSMaterialError(
            f"key file {key_path} does not match the certificate in {cert_path}"
            " (the first certificate must be the leaf)"
        )
    now = dt.datetime.now(dt.UTC)
    if leaf.not_valid_after_utc < now:
        raise TLSMaterialError(f"certificate in {cert_path} expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
        names += tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        names = ()
    kind = (
        "rsa"
        if isinstance(key, rsa.RSAPrivateKey)
        else "ecdsa"
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else "ed25519"
    )
    return CertInfo(
        names=names,
        not_after=leaf.not_valid_after_utc,
        sha256=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        key_type=kind,
        chain=tuple(chain),
        key=key,
    )


def load_ca_bundle(path: str, now: dt.datetime | None = None) -> tuple[x509.Certificate, ...]:
    """Parse a PEM bundle of CA certificates; raise TLSMaterialError naming the file and fix.

    A bundle that parses but would refuse every client is an error too: a
    certificate that is not a CA, or a CA that has expired, can only make
    `client_auth` lock everyone out.
    """
    pem = _read(path, "client CA")
    try:
        cas = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TLSMaterialError(f"client CA file {path} holds no PEM certificate") from None
    now = now or dt.datetime.now(dt.UTC)
    for ca in cas:
        subject = ca.subject.rfc4514_string()
        try:
            is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise TLSMaterialError(
                f"client CA file {path}: {subject!r} is not a CA certificate (no basicConstraints CA:TRUE);"
                " list the CA that issues client certificates, not a client certificate"
            )
        if ca.not_valid_after_utc < now:
            raise TLSMaterialError(f"client CA file {path}: {subject!r} expired on {ca.not_valid_after_utc:%Y-%m-%d}")
    return tuple(cas)


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)
# CRL extensions OpenSSL handles; any other critical one makes it refuse the CRL, hence every client of its CA.
_HANDLED_CRL_EXTENSIONS = {
    ExtensionOID.ISSUING_DISTRIBUTION_POINT,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.DELTA_CRL_INDICATOR,
}


@dataclass(frozen=True)
class IssuedCRL:
    """A CRL whose signature verified against `ca`, one of the client CAs."""

    path: str
    ca: x509.Certificate
    crl: x509.CertificateRevocationList


@dataclass(frozen=True)
class ClientMaterial:
    """The client CAs and CRLs of one listener, read and checked once.

    TCP contexts and QUIC's ClientTrust are all built from these objects,
    never by reading the files again, so the two stacks cannot see two
    versions of a file that changed in between.
    """

    cas: tuple[x509.Certificate, ...]
    crls: tuple[IssuedCRL, ...] = ()

    @property
    def ca_pem(self) -> str:
        return "".join(ca.public_bytes(serialization.Encoding.PEM).decode() for ca in self.cas)

    @property
    def crl_pem(self) -> bytes:
        return b"".join(item.crl.public_bytes(serialization.Encoding.PEM) for item in self.crls)


def load_crls(path: str) -> tuple[x509.CertificateRevocationList, ...]:
    """Parse a CRL file: one or more PEM `X509 CRL` blocks, or one DER CRL; raise TLSMaterialError naming the fix."""
    data = _read(path, "client CRL")
    if b"-----BEGIN" not in data:
        try:
            return (x509.load_der_x509_crl(data),)
        except ValueError:
            raise TLSMaterialError(
                f"client CRL file {path} holds no CRL; give one DER CRL or PEM '-----BEGIN X509 CRL-----' blocks"
            ) from None
    blocks = _PEM_CRL.findall(data)
    if not blocks:
        hint = " (it holds a certificate: CA certificates belong in client_ca)" if b"CERTIFICATE-----" in data else ""
        raise TLSMaterialError(f"client CRL file {path} holds no PEM '-----BEGIN X509 CRL-----' block{hint}")
    crls = []
    for n, block in enumerate(blocks, 1):
        try:
            crls.append(x509.load_pem_x509_crl(block))
        except ValueError as exc:
            raise TLSMaterialError(f"client CRL file {path}: CRL #{n} does not parse ({exc})") from None
    return tuple(crls)


def crl_issuer(
    path: str, crl: x509.CertificateRevocationList, cas: tuple[x509.Certificate, ...], now: dt.datetime
) -> x509.Certificate:
    """The client CA that signed `crl`; raise TLSMaterialError if OpenSSL would not use it for every client.

    Each refusal here is a CRL that would otherwise refuse every client
    certificate of its CA at handshake time (expired, not yet valid, a
    critical extension OpenSSL does not handle), or one that would revoke
    nothing while looking as if it did (a delta or partial CRL). Saying so
    at load time names the file; at handshake time there is only a
    refused client.
    """
    issuer = crl.issuer.rfc4514_string()
    where = f"client CRL file {path}: the CRL of {issuer!r}"
    # (1) Signed by a client CA: the CA that issued the certificates it revokes.
    signer = next(
        (ca for ca in cas if ca.subject == crl.issuer and _signed_by(crl, ca)),
        None,
    )
    if signer is None:
        raise TLSMaterialError(
            f"{where} is not signed by any CA in client_ca; add the CA that issued it to client_ca, or remove the CRL"
        )
    # (2) Current, as OpenSSL judges it at every handshake.
    if crl.next_update_utc is not None and crl.next_update_utc <= now:
        raise TLSMaterialError(
            f"{where} expired on {crl.next_update_utc:%Y-%m-%d %H:%M} UTC (nextUpdate); install a current CRL"
            " from the CA: until then every client certificate the CA issued is refused"
        )
    if crl.last_update_utc > now:
        raise TLSMaterialError(
            f"{where} is not valid before {crl.last_update_utc:%Y-%m-%d %H:%M} UTC (lastUpdate);"
            " check this host's clock"
        )
    # (3) A complete CRL: OpenSSL ignores delta CRLs and would refuse a partial one for some certificates.
    try:
        crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    except x509.ExtensionNotFound:
        pass
    else:
        raise TLSMaterialError(f"{where} is a delta CRL, which is not supported; configure the CA's full CRL")
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        pass
    else:
        if (
            idp.only_contains_ca_certs
            or idp.only_contains_attribute_certs
            or idp.only_some_reasons
            or idp.indirect_crl
            or idp.relative_name
        ):
            raise TLSMaterialError(
                f"{where} covers only part of the CA's certificates (its issuingDistributionPoint restricts it);"
                " configure the CA's full CRL"
            )
    for ext in crl.extensions:
        if ext.critical and ext.oid not in _HANDLED_CRL_EXTENSIONS:
            raise TLSMaterialError(
                f"{where} has a critical extension {ext.oid.dotted_string} that OpenSSL does not handle,"
                " so it would refuse every client certificate of the CA; ask the CA for a CRL without it"
            )
    # (4) The CA may sign CRLs: OpenSSL checks keyUsage cRLSign when the CA has a keyUsage.
    try:
        usage = signer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if not usage.crl_sign:
            raise TLSMaterialError(
                f"{where} is signed by a CA whose keyUsage lacks cRLSign, so OpenSSL refuses it;"
                " the CA must be reissued with cRLSign, or sign its CRLs with a key that has it"
            )
    return signer


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        return False
    return crl.is_signature_valid(key)


def client_material(
    ca_paths: tuple[str, ...], crl_paths: tuple[str, ...], now: dt.datetime | None = None
) -> tuple[ClientMaterial | None, list[tuple[str, str]]]:
    """The client CAs and CRLs, or every problem found as (config key under `tls.`, message).

    With any CRL configured, OpenSSL checks the client certificate of
    every handshake against its CA's CRL (VERIFY_CRL_CHECK_LEAF) and
    refuses it when that CA has none. So a CA without a CRL is an error
    here: served, it would refuse every client certificate it issued.
    """
    now = now or dt.datetime.now(dt.UTC)
    problems: list[tuple[str, str]] = []
    cas: list[tuple[str, x509.Certificate]] = []
    for j, path in enumerate(ca_paths):
        try:
            cas.extend((path, ca) for ca in load_ca_bundle(path, now))
        except TLSMaterialError as exc:
            problems.append((f"client_ca[{j}]", str(exc)))
    all_cas = tuple(ca for _, ca in cas)
    # With a CA file unusable, a CRL it signed would look unsigned: then the CRL files are only parsed.
    cas_usable = not problems
    issued: list[IssuedCRL] = []
    for j, path in enumerate(crl_paths):
        try:
            crls = load_crls(path)
            if cas_usable:
                issued.extend(IssuedCRL(path, crl_issuer(path, crl, all_cas, now), crl) for crl in crls)
        except TLSMaterialError as exc:
            problems.append((f"client_crl[{j}]", str(exc)))
    if crl_paths and not problems:
        covered = {item.ca for item in issued}
        for path, ca in cas:
            if ca not in covered:
                problems.append(
                    (
                        "client_crl",
                        f"client CA {ca.subject.rfc4514_string()!r} (in {path}) has no CRL in client_crl, so every"
                        " client certificate it issued would be refused; add the CA's CRL to client_crl,"
                        " or remove the CA from client_ca",
                    )
                )
    if problems:
        return None, problems
    return ClientMaterial(all_cas, tuple(issued)), []


def load_client_material(
    ca_paths: tuple[str, ...], crl_paths: tuple[str, ...], now: dt.datetime | None = None
) -> ClientMaterial:
    """client_material, raising TLSMaterialError with every problem when there is any."""
    material, problems = client_material(ca_paths, crl_paths, now)
    if material is None:
        raise TLSMaterialError("; ".join(message for _, message in problems))
    return material

"""Reading certificates and keys, with errors that say what is wrong.

`ssl.SSLContext.load_cert_chain` reports a mismatched key as
"KEY_VALUES_MISMATCH"; operators need to hear which file and why, so the
material is parsed with `cryptography` first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

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

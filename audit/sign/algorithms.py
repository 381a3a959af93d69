"""The two signature algorithms a release may use: Ed25519 and ECDSA P-256 with SHA-256.

A closed list on purpose: the verifier on an edge node accepts exactly what the signer can produce, so a key
of any other kind is refused when it is loaded rather than discovered at verification time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from audit.digest import sha256_file
from audit.errors import AuditError

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey

_CHUNK = 1 << 20

# Domain separation between the two messages a release key signs. A DSSE envelope's signature is over
# PAE(type, payload) = b"DSSEv1 <len> <type> <len> <payload>"; a detached signature (`edgeward.sig`) is over
# the file's raw bytes (Ed25519) or their SHA-256 (ECDSA, what `openssl dgst -sha256` checks). Were a file's
# bytes ever a PAE, the envelope signature over a signed SBOM would also verify as a detached signature over
# that file. So no detached signature is ever made or accepted over bytes that start with this prefix: the
# two message sets are disjoint (for ECDSA, short of a SHA-256 collision), while `.sig` stays a plain raw
# signature that openssl verifies. Nothing is lost: the executable is an ELF (b"\x7fELF"), never a PAE.
PAE_PREFIX = b"DSSEv1 "


def spki_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def keyid(key: PublicKey) -> str:
    """Hex SHA-256 of the SubjectPublicKeyInfo DER: stable across PEM formatting, and what `openssl` can recompute."""
    return hashlib.sha256(spki_der(key)).hexdigest()


def algorithm_name(key: PublicKey | PrivateKey) -> str:
    return "ed25519" if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey) else "ecdsa-p256"


def supported_public(key: object, source: str) -> PublicKey:
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise AuditError(f"{source}: unsupported key type", hint="use an Ed25519 or ECDSA P-256 key")


def supported_private(key: object, source: str) -> PrivateKey:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise AuditError(f"{source}: unsupported key type", hint="use an Ed25519 or ECDSA P-256 key")


def load_public_key(path: Path) -> PublicKey:
    """A PEM public key (SubjectPublicKeyInfo), as `audit sign --generate-key` writes beside the private key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditError(f"{path}: cannot read public key ({exc.strerror})") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise AuditError(f"{path}: not a PEM public key", hint="pass the .pub file, not the private key") from exc
    return supported_public(key, str(path))


def load_private_key(path: Path, passphrase: bytes | None) -> PrivateKey:
    """A PEM private key; encrypted keys need the passphrase (which never appears in a message)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditError(f"{path}: cannot read private key ({exc.strerror})") from exc
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        if passphrase is None:
            raise AuditError(
                f"{path}: private key is encrypted",
                hint="name the environment variable holding its passphrase with --key-passphrase-env",
            ) from exc
        raise AuditError(
            f"{path}: private key is not encrypted but a passphrase was given",
            hint="drop --key-passphrase-env, or re-encrypt the key",
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        hint = "check the passphrase" if passphrase is not None else "pass a PEM private key"
        raise AuditError(f"{path}: cannot load private key (wrong passphrase or not a PEM key)", hint=hint) from exc
    return supported_private(key, str(path))


def sign_bytes(key: PrivateKey, data: bytes) -> bytes:
    """Ed25519 over the bytes; ECDSA P-256 over SHA-256 of the bytes, DER-encoded (what `openssl dgst` expects)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def sign_file(key: PrivateKey, path: Path) -> bytes:
    """Sign a file's bytes; ECDSA streams the digest, Ed25519 (no prehash variant here) must read it whole.

    Refuses a file that starts like a DSSE PAE (see PAE_PREFIX): its signature could pass for an envelope's.
    """
    try:
        digest = _sha256_unless_pae(path)
        if digest is None:
            raise AuditError(
                f"{path}: starts with {PAE_PREFIX!r} (a DSSE pre-authentication encoding): refusing to sign it",
                hint="a detached signature over such bytes would double as a DSSE envelope signature",
            )
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(path.read_bytes())
    except OSError as exc:
        raise AuditError(f"{path}: cannot read ({exc.strerror})") from exc
    return key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def verify_bytes(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def verify_file(key: PublicKey, signature: bytes, path: Path) -> bool:
    """Whether `signature` is a detached signature over the file; never for PAE-like bytes (see PAE_PREFIX).

    Raises OSError if the file cannot be read: the caller names the file.
    """
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            data = path.read_bytes()
            if data.startswith(PAE_PREFIX):
                return False
            key.verify(signature, data)
        else:
            digest = _sha256_unless_pae(path)
            if digest is None:
                return False
            key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


def starts_like_pae(path: Path) -> bool:
    """Whether the file's bytes begin with the DSSE PAE prefix (so it must not carry a detached signature)."""
    with path.open("rb") as handle:
        return handle.read(len(PAE_PREFIX)) == PAE_PREFIX


def _sha256_unless_pae(path: Path) -> bytes | None:
    """SHA-256 of the file, or None if it starts with PAE_PREFIX; one pass, so the check and digest agree."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        head = handle.read(len(PAE_PREFIX))
        if head == PAE_PREFIX:
            return None
        digest.update(head)
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()


def file_sha256(path: Path) -> bytes:
    return bytes.fromhex(sha256_file(path))

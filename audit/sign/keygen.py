"""`audit sign --generate-key`: a release key pair that is safe by default.

The private key is encrypted unless the caller says `unencrypted_unsafe`, created with mode 0600 and never
over an existing file (O_EXCL), so a typo cannot clobber the team's real key.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from audit.errors import AuditError
from audit.sign import algorithms

KINDS = ("ed25519", "ecdsa-p256")


def public_key_path(private: Path) -> Path:
    """`release.pem` -> `release.pub`; any other name gets `.pub` appended."""
    return private.with_suffix(".pub") if private.suffix == ".pem" else private.with_name(private.name + ".pub")


def _create(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise AuditError(f"{path}: already exists", hint="choose another --output; keys are never overwritten") from exc
    except OSError as exc:
        raise AuditError(f"{path}: cannot create ({exc.strerror})") from exc
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def generate_key(
    kind: str, output: Path, *, passphrase: bytes | None, unencrypted_unsafe: bool = False
) -> tuple[Path, Path]:
    """Write `output` (PKCS#8 PEM, 0600) and its public key beside it; return both paths."""
    if kind not in KINDS:
        raise AuditError(f"unknown key type {kind!r}", hint=f"choose one of {', '.join(KINDS)}")
    if passphrase is None and not unencrypted_unsafe:
        raise AuditError(
            "refusing to write an unencrypted private key",
            hint="pass --key-passphrase-env NAME (the variable holds the passphrase), or --unencrypted-key-unsafe",
        )
    if passphrase is not None and not passphrase:
        raise AuditError("the key passphrase is empty")
    key: algorithms.PrivateKey = (
        ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public = public_key_path(output)
    if public.exists():
        raise AuditError(f"{public}: already exists", hint="choose another --output; keys are never overwritten")
    _create(output, private_pem, 0o600)
    _create(public, public_pem, 0o644)
    return output, public

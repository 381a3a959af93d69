"""Choosing a signer from what the user gave: a key, a key plus certificate chain, or Sigstore keyless."""

from __future__ import annotations

import os
from pathlib import Path

from audit.errors import AuditError
from audit.sign.signer import Signer


def passphrase_from_env(name: str | None) -> bytes | None:
    """Read a passphrase from the environment variable *named* on the command line, never from argv itself."""
    if not name:
        return None
    value = os.environ.get(name)
    if value is None:
        raise AuditError(f"environment variable {name} is not set", hint="it must hold the key passphrase")
    if not value:
        raise AuditError(f"environment variable {name} is empty", hint="it must hold the key passphrase")
    return value.encode("utf-8")


def load_signer(
    *,
    key: Path | None = None,
    passphrase_env: str | None = None,
    cert: Path | None = None,
    chain: Path | None = None,
    sigstore: bool = False,
    identity_token: str | None = None,
    staging: bool = False,
) -> Signer:
    """Return the one signer the arguments describe; contradictory or partial combinations are usage errors."""
    if sigstore:
        if key or cert or chain or passphrase_env:
            raise AuditError("--sigstore signs keyless: drop --key, --cert, --chain and --key-passphrase-env")
        from audit.sign.sigstore_keyless import SigstoreSigner

        return SigstoreSigner(identity_token, staging=staging)
    if identity_token or staging:
        raise AuditError("--identity-token and --staging only apply with --sigstore")
    if key is None:
        raise AuditError("no signing key", hint="pass --key KEY.pem (with --cert/--chain for X.509), or --sigstore")
    passphrase = passphrase_from_env(passphrase_env)
    if cert is not None:
        from audit.sign.x509 import X509Signer

        return X509Signer.from_files(key, cert, chain, passphrase)
    if chain is not None:
        raise AuditError("--chain needs --cert (the leaf certificate)")
    from audit.sign.keys import KeySigner

    return KeySigner.from_file(key, passphrase)

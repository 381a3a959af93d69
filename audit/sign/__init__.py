"""`audit sign`: detached signatures, DSSE envelopes and Sigstore bundles over a release.

Exports are loaded lazily so `audit --help` (which imports every command package) does not pay for
cryptography or sigstore.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.sign.algorithms import keyid, load_private_key, load_public_key
    from audit.sign.dsse import Envelope, Signature, pae, parse_envelope
    from audit.sign.keygen import generate_key
    from audit.sign.keys import KeySigner
    from audit.sign.load import load_signer
    from audit.sign.release import default_statements, sign_release_files, write_checksums
    from audit.sign.signer import Signer
    from audit.sign.sigstore_keyless import SigstoreSigner
    from audit.sign.x509 import X509Signer

_EXPORTS = {
    "keyid": "algorithms",
    "load_private_key": "algorithms",
    "load_public_key": "algorithms",
    "Envelope": "dsse",
    "Signature": "dsse",
    "pae": "dsse",
    "parse_envelope": "dsse",
    "generate_key": "keygen",
    "KeySigner": "keys",
    "load_signer": "load",
    "default_statements": "release",
    "sign_release_files": "release",
    "write_checksums": "release",
    "Signer": "signer",
    "SigstoreSigner": "sigstore_keyless",
    "X509Signer": "x509",
}

__all__ = [
    "Envelope",
    "KeySigner",
    "Signature",
    "Signer",
    "SigstoreSigner",
    "X509Signer",
    "default_statements",
    "generate_key",
    "keyid",
    "load_private_key",
    "load_public_key",
    "load_signer",
    "pae",
    "parse_envelope",
    "sign_release_files",
    "write_checksums",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'audit.sign' has no attribute {name!r}")
    return getattr(importlib.import_module(f"audit.sign.{module}"), name)

"""`audit verify`: what an edge operator runs before starting the executable.

Exports are loaded lazily so `audit --help` does not import cryptography or sigstore.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.verify.artefacts import verify_artefact, verify_release
    from audit.verify.dsse import TrustedKey, verify_envelope
    from audit.verify.evidence import Evidence, Verified
    from audit.verify.keys import TrustedKeys
    from audit.verify.policy import AllOf, AnyOf, Policy
    from audit.verify.provenance import Expectations
    from audit.verify.report import VerifyReport
    from audit.verify.sigstore_identity import SigstoreIdentity
    from audit.verify.x509 import CertificateIdentity

_EXPORTS = {
    "verify_artefact": "artefacts",
    "verify_release": "artefacts",
    "TrustedKey": "dsse",
    "verify_envelope": "dsse",
    "Evidence": "evidence",
    "Verified": "evidence",
    "TrustedKeys": "keys",
    "AllOf": "policy",
    "AnyOf": "policy",
    "Policy": "policy",
    "Expectations": "provenance",
    "VerifyReport": "report",
    "SigstoreIdentity": "sigstore_identity",
    "CertificateIdentity": "x509",
}

__all__ = [
    "AllOf",
    "AnyOf",
    "CertificateIdentity",
    "Evidence",
    "Expectations",
    "Policy",
    "SigstoreIdentity",
    "TrustedKey",
    "TrustedKeys",
    "Verified",
    "VerifyReport",
    "verify_artefact",
    "verify_envelope",
    "verify_release",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'audit.verify' has no attribute {name!r}")
    return getattr(importlib.import_module(f"audit.verify.{module}"), name)

"""Trust by Sigstore identity: a Fulcio certificate for `identity` from OIDC `issuer`, logged in Rekor.

All cryptographic checks are sigstore-python's (`Verifier.verify_artifact` / `verify_dsse`, whose steps
(0)-(8) cover time, chain, SCT, identity, log inclusion and signature). What is added here is a precise
one-line answer for the common failure (the file is not the one that was signed) and offline use of the
trust root embedded in the pinned sigstore-python.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import TYPE_CHECKING, Any

from audit.errors import AuditError, Finding
from audit.sign.algorithms import file_sha256
from audit.sign.dsse import loads_strict
from audit.verify.evidence import Evidence, Verified
from audit.verify.policy import Policy

if TYPE_CHECKING:
    from sigstore.verify import Verifier


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _signed_digest(bundle: Any) -> str | None:
    """The SHA-256 a message-signature bundle documents, if any (read from the bundle's public JSON form)."""
    if not isinstance(bundle, dict):
        return None
    signature = bundle.get("messageSignature")
    if not isinstance(signature, dict):
        return None
    digest = signature.get("messageDigest")
    if not isinstance(digest, dict) or digest.get("algorithm") != "SHA2_256":
        return None
    value = digest.get("digest")
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return None


class SigstoreIdentity(Policy):
    def __init__(self, identity: str, issuer: str, *, staging: bool = False, offline: bool = False) -> None:
        if not identity or not issuer:
            raise AuditError(
                "a Sigstore policy needs both an identity and an issuer",
                hint="pass --sigstore-identity and --sigstore-issuer",
            )
        self.identity = identity
        self.issuer = issuer
        self.staging = staging
        self.offline = offline
        self._verifier: Verifier | None = None

    def describe(self) -> str:
        instance = "staging" if self.staging else "production"
        return f"Sigstore {instance} identity {self.identity} from {self.issuer}"

    def _get_verifier(self) -> Verifier:
        # sigstore is heavy: imported on first use. Offline, the trust root embedded in the package is used.
        from sigstore.errors import Error as SigstoreError
        from sigstore.verify import Verifier

        if self._verifier is None:
            # Offline was asked for explicitly, so sigstore's "loaded in offline mode" warning would only break
            # the one-line answer operators grep for.
            if self.offline:
                logging.getLogger("sigstore._internal.tuf").setLevel(logging.ERROR)
            try:
                if self.staging:
                    self._verifier = Verifier.staging(offline=self.offline)
                else:
                    self._verifier = Verifier.production(offline=self.offline)
            except (SigstoreError, OSError) as exc:
                raise AuditError(
                    "Sigstore: cannot load the trust root",
                    hint="use --offline to rely on the embedded trust root, or check the network",
                ) from exc
        return self._verifier

    def verify(self, evidence: Evidence) -> Verified:
        from sigstore.errors import Error as SigstoreError
        from sigstore.hashes import Hashed
        from sigstore.models import Bundle
        from sigstore.verify.policy import Identity
        from sigstore_models.common.v1 import HashAlgorithm

        signer = f"Sigstore identity {self.identity} ({self.issuer})"
        # 1. The bundle must exist and parse as a Sigstore bundle (known media type, certificate present).
        if evidence.bundle is None:
            raise Finding(f"{evidence.name}: no Sigstore bundle (the policy expects keyless signing)")
        raw = loads_strict(evidence.bundle, evidence.source)
        try:
            bundle = Bundle.from_json(evidence.bundle)
        except SigstoreError as exc:
            raise Finding(f"{evidence.source}: invalid Sigstore bundle: {_one_line(str(exc))}") from exc
        policy = Identity(identity=self.identity, issuer=self.issuer)
        verifier = self._get_verifier()
        is_dsse = isinstance(raw, dict) and "dsseEnvelope" in raw
        try:
            if is_dsse:
                # 2a. A DSSE bundle: sigstore verifies the certificate, log entry and envelope signature and
                #     returns the payload; the caller compares it with the document's bytes.
                payload_type, payload = verifier.verify_dsse(bundle, policy)
                if payload_type not in evidence.payload_types:
                    raise Finding(f"{evidence.source}: payloadType {payload_type!r} is not expected")
                return Verified(signers=(signer,), payload=payload, payload_type=payload_type)
            # 2b. A message signature: first name the digest mismatch precisely if the bundle documents one
            #     (sigstore would only say "digest mismatch"), then let sigstore verify everything.
            actual = file_sha256(evidence.artefact)
            signed = _signed_digest(raw)
            if signed is not None and signed != actual.hex():
                raise Finding(
                    f"{evidence.name}: sha256 {actual.hex()[:16]}… does not match the digest "
                    f"signed in {evidence.source} ({signed[:16]}…)"
                )
            verifier.verify_artifact(Hashed(algorithm=HashAlgorithm.SHA2_256, digest=actual), bundle, policy)
        except SigstoreError as exc:
            raise Finding(f"{evidence.source}: Sigstore verification failed: {_one_line(str(exc))}") from exc
        return Verified(signers=(signer,))

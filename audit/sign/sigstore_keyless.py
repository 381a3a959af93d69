"""Sigstore keyless signing: an OIDC identity gets a short-lived Fulcio certificate, Rekor logs the signature.

Needs the network and a token, so it cannot run in the offline build; its tests are marked `online`.
In-toto statements are signed as DSSE (sigstore's `sign_dsse`, which accepts only statements); any other
document and the executable are signed as message signatures over their SHA-256 (hashedrekord).
Bundles are `<name>.sigstore.json` (see `audit.sign.names.bundle_name`).
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from audit.errors import AuditError
from audit.files import write_atomic
from audit.sign import algorithms
from audit.sign.names import PAYLOAD_TYPE_INTOTO, bundle_name
from audit.sign.signer import Signer

if TYPE_CHECKING:
    from sigstore.models import Bundle
    from sigstore.sign import Signer as _SigstoreSigner


class SigstoreSigner(Signer):
    def __init__(self, identity_token: str | None = None, *, staging: bool = False) -> None:
        # sigstore is imported here, not at module level: it is heavy and only keyless signing needs it.
        from sigstore.errors import Error as SigstoreError
        from sigstore.models import ClientTrustConfig
        from sigstore.oidc import IdentityError, IdentityToken, detect_credential
        from sigstore.sign import SigningContext

        self.staging = staging
        try:
            token = identity_token or detect_credential()
        except IdentityError as exc:
            raise AuditError("Sigstore: ambient OIDC credential detection failed", hint=str(exc)) from exc
        if not token:
            raise AuditError(
                "Sigstore: no OIDC identity token",
                hint="run in CI with an OIDC provider (ambient detection), or set SIGSTORE_IDENTITY_TOKEN",
            )
        try:
            self._identity = IdentityToken(token)
            config = ClientTrustConfig.staging() if staging else ClientTrustConfig.production()
            self._context = SigningContext.from_trust_config(config)
        except (SigstoreError, ValueError) as exc:
            # The token is never echoed: the message names the step only.
            raise AuditError("Sigstore: cannot set up keyless signing", hint=type(exc).__name__) from exc
        self._stack = ExitStack()
        self._signer: _SigstoreSigner | None = None

    @property
    def description(self) -> str:
        instance = "staging" if self.staging else "production"
        return f"Sigstore {instance} keyless, identity {self._identity.identity} ({self._identity.issuer})"

    def _session(self) -> _SigstoreSigner:
        # One Fulcio certificate for the whole release (cache=True), so every artefact names the same signer.
        if self._signer is None:
            self._signer = self._stack.enter_context(self._context.signer(self._identity, cache=True))
        return self._signer

    def _write(self, bundle: Bundle, out: Path) -> Path:
        write_atomic(out, bundle.to_json().encode("utf-8"))
        return out

    def sign_artefact(self, path: Path) -> Path:
        from sigstore.hashes import Hashed
        from sigstore_models.common.v1 import HashAlgorithm

        # Same domain separation as for keys (see algorithms.PAE_PREFIX): no message signature over PAE bytes.
        try:
            pae_like = algorithms.starts_like_pae(path)
            digest = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=algorithms.file_sha256(path))
        except OSError as exc:
            raise AuditError(f"{path}: cannot read ({exc.strerror})") from exc
        if pae_like:
            raise AuditError(f"{path}: starts with {algorithms.PAE_PREFIX!r} (a DSSE PAE): refusing to sign it")
        return self._write(self._session().sign_artifact(digest), path.with_name(bundle_name(path.name)))

    def sign_payload(self, payload: bytes, payload_type: str, name: str, directory: Path) -> Path:
        from sigstore.dsse import Statement
        from sigstore.hashes import Hashed
        from sigstore_models.common.v1 import HashAlgorithm

        if payload_type == PAYLOAD_TYPE_INTOTO:
            bundle = self._session().sign_dsse(Statement(payload))
        else:
            digest = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=hashlib.sha256(payload).digest())
            bundle = self._session().sign_artifact(digest)
        return self._write(bundle, directory / bundle_name(name))

    def close(self) -> None:
        self._stack.close()

"""Trust by Sigstore identity: a Fulcio certificate for `identity` from OIDC `issuer`, logged in Rekor.

All cryptographic checks are sigstore-python's (`Verifier.verify_artifact` / `verify_dsse`, whose steps
(0)-(8) cover time, chain, SCT, identity, log inclusion and signature). What is added here is a precise
one-line answer for the common failure (the file is not the one that was signed) and offline use of a
trust root that nobody but the operator could have written.

Offline, sigstore-python's own `Verifier.production(offline=True)` reads `trusted_root.json` from the user's
TUF cache ($XDG_CACHE_HOME/sigstore-python/tuf/...) without verifying it against TUF metadata: whoever can
write that directory picks the Fulcio CA and Rekor keys. So offline this module never touches the cache: the
trust root is the one embedded in the installed (hash-pinned) sigstore-python package, or a file the
operator pins with `--trusted-root`. Online, sigstore-python refreshes it through TUF, which verifies it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from audit.errors import AuditError, Finding
from audit.sign.dsse import loads_strict
from audit.verify.evidence import Evidence, Verified
from audit.verify.oneline import oneline
from audit.verify.policy import Policy

if TYPE_CHECKING:
    from sigstore.models import TrustedRoot
    from sigstore.verify import Verifier

# The TUF repositories whose trust roots sigstore-python embeds in `sigstore/_store/<quoted URL>/`
# (sigstore._internal.tuf.DEFAULT_TUF_URL / STAGING_TUF_URL; repeated here rather than imported from a
# private module, and checked by the tests).
PRODUCTION_TUF_URL = "https://tuf-repo-cdn.sigstore.dev"
STAGING_TUF_URL = "https://tuf-repo-cdn.sigstage.dev"


def _one_line(text: str) -> str:
    # Collapse sigstore's and pydantic's multi-line texts, then escape what remains (certificate subjects).
    return oneline(" ".join(text.split()))


def embedded_trusted_root_path(staging: bool) -> str:
    """Where the installed sigstore-python package keeps the trust root it shipped with (never the cache)."""
    repo = quote(STAGING_TUF_URL if staging else PRODUCTION_TUF_URL, safe="")
    return str(resources.files("sigstore._store").joinpath(repo, "trusted_root.json"))


def load_trusted_root(path: str | Path) -> TrustedRoot:
    """A Sigstore trusted root (trustedroot+json v0.1) from a file; any problem is the operator's input error."""
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import TrustedRoot

    try:
        return TrustedRoot.from_file(str(path))
    except OSError as exc:
        raise AuditError(f"{oneline(str(path))}: cannot read the Sigstore trusted root ({exc.strerror})") from exc
    except (SigstoreError, ValueError) as exc:
        raise AuditError(
            f"{oneline(str(path))}: not a Sigstore trusted root ({_one_line(str(exc))[:200]})",
            hint="pass a trusted_root.json (application/vnd.dev.sigstore.trustedroot+json;version=0.1)",
        ) from exc


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
    def __init__(
        self,
        identity: str,
        issuer: str,
        *,
        staging: bool = False,
        offline: bool = False,
        trusted_root: Path | None = None,
    ) -> None:
        if not identity or not issuer:
            raise AuditError(
                "a Sigstore policy needs both an identity and an issuer",
                hint="pass --sigstore-identity and --sigstore-issuer",
            )
        if trusted_root is not None and staging:
            raise AuditError("--trusted-root already says which Sigstore instance to trust: drop --staging")
        self.identity = identity
        self.issuer = issuer
        self.staging = staging
        self.offline = offline or trusted_root is not None
        self.trusted_root = trusted_root
        self._verifier: Verifier | None = None

    def describe(self) -> str:
        if self.trusted_root is not None:
            root = f"trust root {self.trusted_root}"
        else:
            root = ("staging" if self.staging else "production") + (" embedded trust root" if self.offline else "")
        return f"Sigstore identity {self.identity} from {self.issuer} ({root})"

    def _get_verifier(self) -> Verifier:
        # sigstore is heavy: imported on first use.
        from sigstore.errors import Error as SigstoreError
        from sigstore.verify import Verifier

        if self._verifier is not None:
            return self._verifier
        # 1. Offline, the trust root is the operator's pinned file, else the one embedded in the installed
        #    package; never the user's TUF cache, which nothing verifies offline (see the module docstring).
        if self.offline:
            path = self.trusted_root or embedded_trusted_root_path(self.staging)
            self._verifier = Verifier(trusted_root=load_trusted_root(path))
            return self._verifier
        # 2. Online, sigstore-python refreshes the trust root through TUF (signed metadata, rollback-protected).
        try:
            self._verifier = Verifier.staging() if self.staging else Verifier.production()
        except (SigstoreError, OSError) as exc:
            raise AuditError(
                "Sigstore: cannot refresh the trust root over TUF",
                hint="check the network, or pass --offline (the trust root embedded in the installed sigstore "
                "package) or --trusted-root FILE",
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
        source = evidence.bundle_source or evidence.source
        raw = loads_strict(evidence.bundle, source)
        try:
            bundle = Bundle.from_json(evidence.bundle)
        except SigstoreError as exc:
            raise Finding(f"{source}: invalid Sigstore bundle: {_one_line(str(exc))}") from exc
        policy = Identity(identity=self.identity, issuer=self.issuer)
        verifier = self._get_verifier()
        is_dsse = isinstance(raw, dict) and "dsseEnvelope" in raw
        try:
            if is_dsse:
                # 2a. A DSSE bundle: sigstore verifies the certificate, log entry and envelope signature and
                #     returns the payload; the caller compares it with the document's bytes.
                payload_type, payload = verifier.verify_dsse(bundle, policy)
                if payload_type not in evidence.payload_types:
                    raise Finding(f"{source}: payloadType {oneline(repr(payload_type))} is not expected")
                return Verified(signers=(signer,), payload=payload, payload_type=payload_type, files=(source,))
            # 2b. A message signature: first name the digest mismatch precisely if the bundle documents one
            #     (sigstore would only say "digest mismatch"), then let sigstore verify everything.
            #     The digest is the one gathered with the evidence: the file itself may be absent (a statement
            #     signed by digest whose document was not shipped) and then there is nothing to check.
            if not evidence.digest:
                raise Finding(f"{evidence.name}: missing ({source} signs its digest, so the file is needed)")
            actual = evidence.digest
            signed = _signed_digest(raw)
            if signed is not None and not hmac.compare_digest(signed.encode(), actual.encode()):
                raise Finding(
                    f"{evidence.name}: sha256 {actual} does not match the digest signed in {source} ({signed})"
                )
            hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(actual))
            verifier.verify_artifact(hashed, bundle, policy)
        except SigstoreError as exc:
            raise Finding(f"{source}: Sigstore verification failed: {_one_line(str(exc))}") from exc
        return Verified(signers=(signer,), files=(source,))

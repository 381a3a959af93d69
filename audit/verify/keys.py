"""Trust by public key: the release team's own keys, as `audit sign --generate-key` wrote them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from audit.errors import AuditError, Finding
from audit.sign.algorithms import algorithm_name, load_public_key, verify_file
from audit.verify.dsse import TrustedKey, verify_envelope
from audit.verify.evidence import Evidence, Verified
from audit.verify.policy import Policy


class TrustedKeys(Policy):
    """At least `threshold` distinct keys of `keys` signed the file (a detached signature counts as one)."""

    def __init__(self, keys: Sequence[TrustedKey], *, threshold: int = 1, label: str = "key") -> None:
        if threshold < 1:
            raise AuditError(f"signature threshold must be at least 1, not {threshold}")
        self.keys = tuple(keys)
        self.threshold = threshold
        self.label = label

    @classmethod
    def from_files(cls, paths: Sequence[Path], *, threshold: int = 1) -> TrustedKeys:
        return cls([TrustedKey.of(load_public_key(p)) for p in paths], threshold=threshold)

    def describe(self) -> str:
        ids = ", ".join(k.keyid[:16] for k in self.keys) or "none"
        return f"{self.threshold} of {len(self.keys)} trusted keys ({ids})"

    def _name(self, keyid: str) -> str:
        key = next(k for k in self.keys if k.keyid == keyid)
        return f"{self.label} {keyid[:16]} ({algorithm_name(key.key)})"

    def verify(self, evidence: Evidence) -> Verified:
        if not self.keys:
            raise Finding(f"{evidence.name}: no trusted keys (an empty policy denies)")
        if evidence.envelope is not None:
            result = verify_envelope(
                evidence.envelope,
                self.keys,
                payload_types=evidence.payload_types,
                threshold=self.threshold,
                what=evidence.source,
            )
            return Verified(
                signers=tuple(self._name(k) for k in result.keyids),
                payload=result.payload,
                payload_type=result.payload_type,
            )
        if evidence.signature is not None:
            # A detached signature is one signature: it can satisfy a threshold of one key only.
            if self.threshold > 1:
                raise Finding(f"{evidence.source}: one detached signature cannot meet a threshold of {self.threshold}")
            for trusted in self.keys:
                if verify_file(trusted.key, evidence.signature, evidence.artefact):
                    return Verified(signers=(self._name(trusted.keyid),))
            raise Finding(f"{evidence.source}: signature over {evidence.name} does not verify with a trusted key")
        if evidence.bundle is not None:
            raise Finding(f"{evidence.name}: signed keyless (Sigstore bundle) but the policy trusts keys")
        raise Finding(f"{evidence.name}: no signature found")

"""Trust by public key: the release team's own keys, as `audit sign --generate-key` wrote them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from audit.errors import AuditError, Finding
from audit.sign.algorithms import PAE_PREFIX, algorithm_name, load_public_key, starts_like_pae, verify_file
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
        if evidence.signature is None and evidence.envelope is None:
            if evidence.bundle is not None:
                raise Finding(f"{evidence.name}: signed keyless (Sigstore bundle) but the policy trusts keys")
            raise Finding(f"{evidence.name}: no signature found")
        # Every envelope and detached signature present is checked (a Sigstore bundle is not this policy's:
        # the caller refuses a bundle no policy checked).
        signers: list[str] = []
        files: list[str] = []
        envelope_result = None
        if evidence.envelope is not None:
            envelope_result = verify_envelope(
                evidence.envelope,
                self.keys,
                payload_types=evidence.payload_types,
                threshold=self.threshold,
                what=evidence.envelope_source or evidence.source,
            )
            signers += [self._name(k) for k in envelope_result.keyids]
            files.append(evidence.envelope_source)
        if evidence.signature is not None:
            signers.append(self._detached(evidence, evidence.signature))
            files.append(evidence.signature_source)
        return Verified(
            signers=tuple(dict.fromkeys(signers)),
            payload=envelope_result.payload if envelope_result else None,
            payload_type=envelope_result.payload_type if envelope_result else None,
            files=tuple(f for f in files if f),
        )

    def _detached(self, evidence: Evidence, signature: bytes) -> str:
        source = evidence.signature_source or evidence.source
        # 1. A detached signature is one signature: it can satisfy a threshold of one key only.
        if self.threshold > 1:
            raise Finding(f"{source}: one detached signature cannot meet a threshold of {self.threshold}")
        # 2. Domain separation (audit.sign.algorithms.PAE_PREFIX): bytes that start like a DSSE PAE never carry a
        #    detached signature, so an envelope's signature cannot be replayed as one.
        try:
            if starts_like_pae(evidence.artefact):
                raise Finding(
                    f"{evidence.name}: starts with {PAE_PREFIX!r} (a DSSE pre-authentication encoding), "
                    "which no detached signature may cover"
                )
            # 3. Any trusted key whose signature verifies over the bytes.
            for trusted in self.keys:
                if verify_file(trusted.key, signature, evidence.artefact):
                    return self._name(trusted.keyid)
        except OSError as exc:
            raise Finding(f"{evidence.name}: cannot read ({exc.strerror})") from exc
        raise Finding(f"{source}: signature over {evidence.name} does not verify with a trusted key")

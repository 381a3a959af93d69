"""Deciding whether a DSSE envelope is signed by enough trusted keys.

Follows the DSSE protocol's verifier: the signature is over PAE(payloadType, payload), never over the
payload alone, so a signature cannot be moved to an envelope that claims a different type.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from audit.errors import AuditError, Finding
from audit.sign.algorithms import PublicKey, keyid, spki_der, verify_bytes
from audit.sign.dsse import Envelope


@dataclass(frozen=True)
class TrustedKey:
    """A public key the operator trusts, and the id signatures name it by (default: SHA-256 of its SPKI)."""

    key: PublicKey
    keyid: str

    @classmethod
    def of(cls, key: PublicKey, keyid_: str | None = None) -> TrustedKey:
        return cls(key=key, keyid=keyid(key) if keyid_ is None else keyid_)


@dataclass(frozen=True)
class VerifiedPayload:
    payload_type: str
    payload: bytes
    keyids: tuple[str, ...]


def verify_envelope(
    envelope: Envelope,
    trusted: Sequence[TrustedKey],
    *,
    payload_types: Collection[str],
    threshold: int = 1,
    what: str = "envelope",
) -> VerifiedPayload:
    """Return the payload if at least `threshold` distinct trusted keys signed it; else raise Finding."""
    # 1. A threshold below one, or no trusted key at all, would accept anything: that is a policy error.
    if threshold < 1:
        raise AuditError(f"signature threshold must be at least 1, not {threshold}")
    if not trusted:
        raise Finding(f"{what}: no trusted keys (an empty policy denies)")
    # 2. The payload type must be one the caller knows how to handle, compared exactly (DSSE leaves the
    #    type to the application; an unexpected type means the payload must not be interpreted).
    if envelope.payload_type not in payload_types:
        raise Finding(f"{what}: payloadType {envelope.payload_type!r} is not one of {sorted(payload_types)}")
    # 3. Every signature covers PAE(payloadType, payload).
    message = envelope.pae()
    # 4. For each signature, the candidate keys are those whose id equals its keyid exactly; a signature with
    #    an empty keyid may be from any trusted key. keyid is a hint, never trust: the signature must verify.
    # 5. Count distinct keys (by SubjectPublicKeyInfo, so one key listed under two ids counts once): the same
    #    key signing twice is still one signer.
    verified: dict[bytes, str] = {}
    for signature in envelope.signatures:
        candidates = [t for t in trusted if not signature.keyid or t.keyid == signature.keyid]
        for candidate in candidates:
            spki = spki_der(candidate.key)
            if spki in verified:
                continue
            if verify_bytes(candidate.key, signature.sig, message):
                verified[spki] = candidate.keyid
                break
    # 6. Accept only when the distinct verified keys reach the threshold.
    if len(verified) < threshold:
        if threshold == 1:
            raise Finding(f"{what}: no signature verifies with a trusted key")
        raise Finding(f"{what}: {len(verified)} of {threshold} required trusted signatures verify")
    return VerifiedPayload(envelope.payload_type, envelope.payload, tuple(verified.values()))

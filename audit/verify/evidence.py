"""What a verifier found for one signed file, gathered before any trust decision is made.

Policies read from it; nothing in it is trusted yet (the chain, the envelope and the bundle come from the
release directory, i.e. from whoever could write there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from audit.sign.dsse import Envelope


@dataclass(frozen=True)
class Evidence:
    """One signed file: `artefact` is the file whose bytes are covered; `digest` its hex SHA-256.

    Exactly one of `signature` (detached, over the bytes), `envelope` (DSSE whose payload must equal the
    bytes) or `bundle` (Sigstore bundle JSON) is normally set. `source` names the signature file in messages.
    """

    name: str
    artefact: Path
    digest: str
    source: str
    signature: bytes | None = None
    envelope: Envelope | None = None
    bundle: bytes | None = None
    chain: tuple[x509.Certificate, ...] = ()
    payload_types: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Verified:
    """Who signed (one entry per satisfied policy) and, for envelopes, the payload they signed."""

    signers: tuple[str, ...]
    payload: bytes | None = None
    payload_type: str | None = None

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

    Any of `signature` (detached, over the bytes), `envelope` (DSSE whose payload must equal the bytes) and
    `bundle` (Sigstore bundle JSON) may be set, at most one of each; `*_source` names the file each came from
    and `source` all of them, for messages. Every one present must be verified by the policy (see
    `Verified.files`): a signature file that is shown but not checked would be reported as if it were.
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
    signature_source: str = ""
    envelope_source: str = ""
    bundle_source: str = ""

    @property
    def sources(self) -> tuple[str, ...]:
        """Every signature file this evidence holds."""
        return tuple(s for s in (self.signature_source, self.envelope_source, self.bundle_source) if s)


@dataclass(frozen=True)
class Verified:
    """Who signed (one entry per satisfied policy), for envelopes the payload they signed, and `files`: the
    signature files whose signatures were actually checked (the report lists these and nothing else)."""

    signers: tuple[str, ...]
    payload: bytes | None = None
    payload_type: str | None = None
    files: tuple[str, ...] = ()

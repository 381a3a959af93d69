"""The onefile payload's entries and their digests, through audit.sbom.payload (one parser, not two)."""

from __future__ import annotations

from pathlib import Path

from audit.errors import AuditError


def payload_digests(executable: Path) -> dict[str, str] | None:
    """Entry path -> SHA-256 (symlinks as "-> target"), or None when `executable` has no readable payload.

    Whether entries carry a CRC32 depends on the onefile's cache mode; both layouts are tried.
    """
    from audit.sbom.payload import read_payload

    for checksums in (True, False):
        try:
            files = read_payload(executable, checksums=checksums)
        except AuditError:
            continue
        return {name: (f.sha256 or f"-> {f.link_target}") for name, f in files.items()}
    return None

"""`audit sbom`: a CycloneDX 1.6 bill of materials for exactly what is inside the executable.

Public API (the release command calls these; the CLI is a thin shell around them):
  build_sbom(exe, build_info, report, lock, fmt="json") -> bytes   validated, deterministic document
  write_sbom(exe, output, build_info, report, lock, fmt="json") -> str   writes it, returns its SHA-256

Imported lazily, so `audit --help` (which imports every command module) does not load the SBOM machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.sbom.api import build_sbom, write_sbom

__all__ = ["build_sbom", "write_sbom"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from audit.sbom import api

        return getattr(api, name)
    raise AttributeError(name)

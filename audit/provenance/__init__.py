"""`audit provenance`: SLSA v1 provenance for the executable, in an in-toto Statement v1.

Public API (the release command calls these):
  build_provenance(exe, build_info, sbom_path, report_path, builder_id=None) -> dict   validated statement
  write_provenance(exe, output, build_info, sbom_path, report_path, builder_id=None) -> str   its SHA-256
  dumps(statement) -> bytes   the one canonical serialisation (sort_keys, indent 2, trailing newline)
"""

from __future__ import annotations

from audit.provenance.statement import build_provenance, dumps, write_provenance

__all__ = ["build_provenance", "dumps", "write_provenance"]

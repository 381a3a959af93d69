"""The answer `audit verify` gives when everything matched: a short summary and a machine report."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from audit.verify.oneline import oneline
from audit.verify.provenance import ProvenanceFacts


@dataclass(frozen=True)
class SignatureCheck:
    file: str
    covers: str
    signers: tuple[str, ...]


@dataclass(frozen=True)
class VerifyReport:
    artefact: str
    sha256: str
    policy: str
    signatures: tuple[SignatureCheck, ...]
    provenance: ProvenanceFacts | None
    files: tuple[str, ...] = field(default=())
    provenance_note: str = ""

    def to_json(self) -> str:
        data = {"result": "ok", **asdict(self)}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def summary(self) -> str:
        """Human lines for stderr. Every value from the release (names, builder, source) is escaped, so the
        summary has exactly the lines written here and none an attacker could add."""
        e = oneline
        lines = [f"audit verify: OK: {e(self.artefact)} sha256 {self.sha256}"]
        signers = sorted({s for check in self.signatures for s in check.signers})
        lines.append(f"  signed by: {e(', '.join(signers))}")
        lines.append(f"  signatures checked: {e(', '.join(c.file for c in self.signatures))}")
        if self.provenance is None:
            lines.append(f"  provenance: {e(self.provenance_note or 'not given (signature and digest only)')}")
        else:
            p = self.provenance
            lines.append(f"  provenance: builder {e(p.builder_id)}, source {e(p.source_repo)}@{e(p.source_commit)}")
            lines.append(f"  provenance checked: {', '.join(p.checked)}")
            if p.source_dirty:
                lines.append("  warning: built from a dirty source tree")
        if self.files:
            lines.append(f"  SHA256SUMS: {len(self.files)} files match")
        return "\n".join(lines)

"""CycloneDX VEX: `vulnerabilities[]` with `analysis.state`, `analysis.justification` and `affects[].ref`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.errors import AuditError
from audit.scan.vex import AFFECTED, NOT_AFFECTED, Statement, Target

# CycloneDX 1.6 impactAnalysisJustification.
JUSTIFICATIONS = frozenset(
    {
        "code_not_present",
        "code_not_reachable",
        "requires_configuration",
        "requires_dependency",
        "requires_environment",
        "protected_by_compiler",
        "protected_at_runtime",
        "protected_at_perimeter",
        "protected_by_mitigating_control",
    }
)
# impactAnalysisState -> the OpenVEX-style status the matcher speaks.
_STATES = {
    "not_affected": NOT_AFFECTED,
    "exploitable": AFFECTED,
    "in_triage": "under_investigation",
    "resolved": "fixed",
    "resolved_with_pedigree": "fixed",
    "false_positive": "false_positive",
}


class CycloneDxVex:
    def detect(self, document: Mapping[str, Any]) -> bool:
        return document.get("bomFormat") == "CycloneDX"

    def statements(self, document: Mapping[str, Any], source: str) -> list[Statement]:
        found: list[Statement] = []
        for n, vuln in enumerate(document.get("vulnerabilities") or []):
            where = f"{source}#/vulnerabilities/{n}"
            if not isinstance(vuln, Mapping) or not isinstance(vuln.get("id"), str):
                raise AuditError(f"VEX {where}: vulnerability without an id")
            analysis = vuln.get("analysis")
            if not isinstance(analysis, Mapping):
                analysis = {}
            state = str(analysis.get("state") or "")
            if not state:
                continue  # no analysis: a plain vulnerability listing, not a VEX claim
            if state not in _STATES:
                raise AuditError(f"VEX {where}: unknown analysis.state {state!r}")
            justification = str(analysis.get("justification") or "")
            if _STATES[state] == NOT_AFFECTED:
                if not justification:
                    raise AuditError(
                        f"VEX {where}: {vuln['id']} is not_affected without analysis.justification",
                        hint="a not_affected claim must say why (e.g. code_not_reachable)",
                    )
                if justification not in JUSTIFICATIONS:
                    raise AuditError(f"VEX {where}: unknown justification {justification!r}")
            # `references[]` are the same vulnerability under other names (aliases).
            ids = {vuln["id"]} | {
                str(ref["id"]) for ref in vuln.get("references") or [] if isinstance(ref, Mapping) and ref.get("id")
            }
            targets = tuple(
                Target(str(affect["ref"]))
                for affect in vuln.get("affects") or []
                if isinstance(affect, Mapping) and affect.get("ref")
            )
            if not targets:
                raise AuditError(f"VEX {where}: {vuln['id']} has no affects[].ref", hint="name the component")
            found.append(Statement(frozenset(ids), targets, _STATES[state], justification, where))
        return found

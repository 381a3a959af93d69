"""OpenVEX (v0.0.1 and v0.2.0): `statements[]` with `vulnerability`, `products`, `status`, `justification`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from audit.errors import AuditError
from audit.scan.vex import NOT_AFFECTED, Statement, Target

JUSTIFICATIONS = frozenset(
    {
        "component_not_present",
        "vulnerable_code_not_present",
        "vulnerable_code_not_in_execute_path",
        "vulnerable_code_cannot_be_controlled_by_adversary",
        "inline_mitigations_already_exist",
    }
)
STATUSES = frozenset({"not_affected", "affected", "fixed", "under_investigation"})


def _ids(vulnerability: object) -> set[str]:
    # v0.0.1: a string; v0.2.0: {"name", "@id", "aliases"}.
    if isinstance(vulnerability, str):
        return {vulnerability}
    if isinstance(vulnerability, Mapping):
        names = {str(vulnerability[key]) for key in ("name", "@id") if vulnerability.get(key)}
        return names | {str(alias) for alias in vulnerability.get("aliases") or []}
    return set()


def _refs(item: object) -> list[str]:
    if isinstance(item, str):
        return [item]
    if not isinstance(item, Mapping):
        return []
    refs = [str(item["@id"])] if item.get("@id") else []
    identifiers = item.get("identifiers")
    if isinstance(identifiers, Mapping) and identifiers.get("purl"):
        refs.append(str(identifiers["purl"]))
    return refs


def _targets(statement: Mapping[str, Any]) -> tuple[Target, ...]:
    targets: list[Target] = []
    for product in statement.get("products") or []:
        subs = (
            tuple(ref for sub in (product.get("subcomponents") or []) for ref in _refs(sub))
            if isinstance(product, Mapping)
            else ()
        )
        targets.extend(Target(ref, subs) for ref in _refs(product))
    return tuple(targets)


class OpenVex:
    def detect(self, document: Mapping[str, Any]) -> bool:
        return str(document.get("@context", "")).startswith("https://openvex.dev/ns")

    def statements(self, document: Mapping[str, Any], source: str) -> list[Statement]:
        found: list[Statement] = []
        for n, statement in enumerate(document.get("statements") or []):
            where = f"{source}#/statements/{n}"
            if not isinstance(statement, Mapping):
                raise AuditError(f"VEX {where}: statement is not an object")
            ids = _ids(statement.get("vulnerability"))
            if not ids:
                raise AuditError(f"VEX {where}: statement names no vulnerability")
            status = str(statement.get("status") or "")
            if status not in STATUSES:
                raise AuditError(f"VEX {where}: unknown status {status!r}")
            justification = str(statement.get("justification") or "")
            if status == NOT_AFFECTED:
                if not justification:
                    raise AuditError(
                        f"VEX {where}: {min(ids)} is not_affected without a justification",
                        hint="a not_affected claim must say why (e.g. vulnerable_code_not_in_execute_path)",
                    )
                if justification not in JUSTIFICATIONS:
                    raise AuditError(f"VEX {where}: unknown justification {justification!r}")
            targets = _targets(statement)
            if not targets:
                raise AuditError(f"VEX {where}: statement names no product")
            found.append(Statement(frozenset(ids), targets, status, justification, where))
        return found

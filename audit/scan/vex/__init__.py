"""VEX: statements by the producer that a finding does not apply, and how they mark findings.

One format per file (`cyclonedx.py`, `openvex.py`), each turning a document into `Statement`s;
matching is done here once, so both formats mean exactly the same thing. A statement mitigates a
finding only when it says `not_affected` with a justification, names the finding by id or alias,
and names the component. If another statement says the same component IS affected, the finding
stays affected: a contradiction in the evidence is not a reason to pass a gate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from packageurl import PackageURL
from packaging.version import InvalidVersion, Version

from audit.errors import AuditError
from audit.pypi import normalise_name

NOT_AFFECTED = "not_affected"
AFFECTED = "affected"


@dataclass(frozen=True)
class Target:
    """A product a statement is about; with subcomponents, the statement is about those only."""

    product: str  # purl, bom-ref or BOM-Link (urn:cdx:serial/version#bom-ref)
    subcomponents: tuple[str, ...] = ()


@dataclass(frozen=True)
class Statement:
    ids: frozenset[str]  # vulnerability id and aliases
    targets: tuple[Target, ...]
    status: str  # not_affected | affected | fixed | under_investigation
    justification: str
    source: str  # "<file>#<json pointer>", quoted in the report


class VexFormat(Protocol):
    """One VEX document format."""

    def detect(self, document: Mapping[str, Any]) -> bool: ...

    def statements(self, document: Mapping[str, Any], source: str) -> list[Statement]: ...


@dataclass(frozen=True)
class Subject:
    """The component a finding is in, and the SBOM it came from (for bom-refs and BOM-Links)."""

    purl: str
    bom_ref: str
    serial: str
    product_refs: frozenset[str]  # the executable's own purl / bom-ref: statements about it cover all


def _formats() -> Sequence[VexFormat]:
    from audit.scan.vex.cyclonedx import CycloneDxVex
    from audit.scan.vex.openvex import OpenVex

    return (CycloneDxVex(), OpenVex())


def load_vex(path: Path) -> list[Statement]:
    """Every statement of one VEX file (CycloneDX VEX or OpenVEX)."""
    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise AuditError(f"cannot read VEX {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditError(f"VEX {path} is not valid JSON ({exc})") from None
    if isinstance(document, Mapping):
        for fmt in _formats():
            if fmt.detect(document):
                return fmt.statements(document, path.name)
    raise AuditError(f"VEX {path}: neither CycloneDX VEX nor OpenVEX", hint="bomFormat CycloneDX or @context openvex")


def _purl_matches(text: str, purl: str) -> bool:
    """Same package; a VEX purl without a version covers every version of it."""
    try:
        want, have = PackageURL.from_string(text), PackageURL.from_string(purl)
    except ValueError:
        return False
    if want.type != have.type or (want.namespace or "") != (have.namespace or ""):
        return False
    if want.type == "pypi":
        if normalise_name(want.name) != normalise_name(have.name):
            return False
        if not want.version:
            return True
        try:
            return Version(want.version) == Version(have.version or "")
        except InvalidVersion:
            return want.version == have.version
    return want.name == have.name and (not want.version or want.version == have.version)


def refers_to(ref: str, subject: Subject) -> bool:
    """Does a statement's product/subcomponent reference name this component?"""
    if ref.startswith("pkg:"):
        return _purl_matches(ref, subject.purl)
    if ref.startswith("urn:cdx:"):
        # BOM-Link: urn:cdx:<serial uuid>/<version>#<bom-ref>, valid only for our SBOM's serial.
        head, _, fragment = ref.partition("#")
        serial = head.removeprefix("urn:cdx:").split("/", 1)[0]
        return bool(subject.bom_ref) and fragment == subject.bom_ref and subject.serial == f"urn:uuid:{serial}"
    return bool(subject.bom_ref) and ref == subject.bom_ref


def _covers(target: Target, subject: Subject) -> bool:
    if target.subcomponents:
        return any(refers_to(sub, subject) for sub in target.subcomponents)
    if target.product in subject.product_refs:
        return True
    return refers_to(target.product, subject) or any(
        ref.startswith("pkg:") and _purl_matches(target.product, ref) for ref in subject.product_refs
    )


@dataclass(frozen=True)
class Verdict:
    status: str  # affected | not_affected
    justification: str = ""
    note: str = ""  # which statements decided it, or the conflict


def verdict(statements: Iterable[Statement], ids: frozenset[str], subject: Subject) -> Verdict:
    """Apply every statement to one finding (ids = the finding's id and aliases)."""
    # (1) Keep statements naming this vulnerability (by any alias) and this component.
    applicable = [s for s in statements if s.ids & ids and any(_covers(t, subject) for t in s.targets)]
    cleared = [s for s in applicable if s.status == NOT_AFFECTED]
    disputed = [s for s in applicable if s.status == AFFECTED]
    # (2) Contradicting statements: the finding stays affected, and the report says why.
    if cleared and disputed:
        return Verdict(
            AFFECTED, note="VEX conflict: " + ", ".join(sorted({s.source for s in disputed})) + " say affected"
        )
    # (3) Otherwise one justified not_affected is enough.
    if cleared:
        return Verdict(
            NOT_AFFECTED,
            justification=", ".join(sorted({s.justification for s in cleared})),
            note=", ".join(sorted({s.source for s in cleared})),
        )
    return Verdict(AFFECTED)

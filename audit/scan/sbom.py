"""Which SBOM components the scan must check, read from CycloneDX JSON.

Every component ends in exactly one bucket: a PyPI distribution pip-audit can look up, a purl type
the operator declared out of scope, or skipped with a reason. Nothing is dropped on the floor,
because a component that silently leaves the scan looks exactly like a clean one in the report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packageurl import PackageURL
from packaging.version import InvalidVersion, Version

from audit.errors import AuditError
from audit.pypi import normalise_name
from audit.scan.model import Component

_SPEC_VERSIONS = ("1.4", "1.5", "1.6")
# PEP 508 project name; anything else cannot be written as a `name==version` requirement line.
_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)


@dataclass(frozen=True)
class PypiComponent:
    name: str  # PEP 503 normalised
    version: Version
    purl: str
    bom_ref: str


@dataclass(frozen=True)
class SbomComponents:
    metadata_purl: str  # the executable's own purl (metadata.component), may be ""
    metadata_ref: str
    serial: str
    pypi: tuple[PypiComponent, ...]
    others: tuple[Component, ...]  # skipped or out of scope, with the reason


def _walk(components: object) -> Iterator[Mapping[str, Any]]:
    if not isinstance(components, list):
        return
    for component in components:
        if isinstance(component, Mapping):
            yield component
            yield from _walk(component.get("components"))


def _classify(component: Mapping[str, Any], out_of_scope: frozenset[str]) -> PypiComponent | Component:
    purl_text = str(component.get("purl") or "")
    name = str(component.get("name") or "")
    version = str(component.get("version") or "")
    ref = str(component.get("bom-ref") or "")

    def skipped(reason: str) -> Component:
        return Component(purl=purl_text, name=name, version=version, bom_ref=ref, status="skipped", reason=reason)

    if not purl_text:
        return skipped("no purl: cannot tell which package this is")
    try:
        purl = PackageURL.from_string(purl_text)
    except ValueError as exc:
        return skipped(f"invalid purl ({exc})")
    if purl.type != "pypi":
        if purl.type in out_of_scope:
            return Component(
                purl=purl_text,
                name=purl.name,
                version=purl.version or version,
                bom_ref=ref,
                status="out_of_scope",
                reason=f"purl type {purl.type} declared out of scope",
            )
        return skipped(f"not a PyPI component (purl type {purl.type}); no Python advisory source covers it")
    if not _NAME.match(purl.name):
        return skipped(f"purl name {purl.name!r} is not a valid Python project name")
    name = normalise_name(purl.name)
    if not purl.version:
        return Component(purl=purl_text, name=name, version=version, bom_ref=ref, status="skipped", reason="no version")
    try:
        parsed = Version(purl.version)
    except InvalidVersion:
        return Component(
            purl=purl_text,
            name=name,
            version=purl.version,
            bom_ref=ref,
            status="skipped",
            reason=f"version {purl.version!r} is not PEP 440, so PyPI cannot resolve it",
        )
    # The purl is what we audit; a different `version` field means the SBOM contradicts itself.
    if version and version != purl.version:
        try:
            same = Version(version) == parsed
        except InvalidVersion:
            same = False
        if not same:
            return Component(
                purl=purl_text,
                name=name,
                version=purl.version,
                bom_ref=ref,
                status="skipped",
                reason=f"component version {version!r} contradicts its purl",
            )
    return PypiComponent(name=name, version=parsed, purl=purl_text, bom_ref=ref)


def read_sbom(path: Path, out_of_scope: Iterable[str] = ()) -> SbomComponents:
    """Components of a CycloneDX JSON SBOM (nested components included), sorted into buckets."""
    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise AuditError(f"cannot read SBOM {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditError(f"SBOM {path} is not valid JSON ({exc})", hint="audit sbom writes CycloneDX JSON") from None
    if not isinstance(document, Mapping) or document.get("bomFormat") != "CycloneDX":
        raise AuditError(f"SBOM {path} is not a CycloneDX document", hint="audit sbom writes CycloneDX JSON")
    if document.get("specVersion") not in _SPEC_VERSIONS:
        raise AuditError(f"SBOM {path}: unsupported specVersion {document.get('specVersion')!r}", hint="CycloneDX 1.6")
    scope = frozenset(out_of_scope)
    if "pypi" in scope:
        raise AuditError("purl type pypi cannot be out of scope: Python components are what this scan checks")
    pypi: dict[tuple[str, Version], PypiComponent] = {}
    others: list[Component] = []
    for component in _walk(document.get("components")):
        classified = _classify(component, scope)
        if isinstance(classified, PypiComponent):
            pypi.setdefault((classified.name, classified.version), classified)
        else:
            others.append(classified)
    metadata = document.get("metadata")
    top = metadata.get("component") if isinstance(metadata, Mapping) else None
    top = top if isinstance(top, Mapping) else {}
    return SbomComponents(
        metadata_purl=str(top.get("purl") or ""),
        metadata_ref=str(top.get("bom-ref") or ""),
        serial=str(document.get("serialNumber") or ""),
        pypi=tuple(sorted(pypi.values(), key=lambda c: (c.name, c.version))),
        others=tuple(sorted(others)),
    )

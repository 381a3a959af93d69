"""Turn an Inventory into a CycloneDX 1.6 document, serialised and schema-validated by cyclonedx-python-lib.

Determinism is a requirement, not a nicety: two runs over the same artefacts must give the same bytes, so
that the SBOM's digest in the provenance and its DSSE signature stay valid when someone regenerates it.
So the serial number is derived from the content and the timestamp from SOURCE_DATE_EPOCH (else the
build's finish time), never from the clock or a random UUID.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import License, LicenseAcknowledgement
from cyclonedx.schema import OutputFormat, SchemaVersion
from packageurl import PackageURL

from audit import __version__
from audit.buildinfo import BuildInfo
from audit.errors import AuditError
from audit.sbom.inventory import RUNTIME, BundledFile, Inventory, NativeLibrary, PythonDist
from audit.sbom.licenses import FoundLicense

FORMATS = ("json", "xml")
_P = "edgeward:"
BUNDLED_FILE = _P + "bundled-file"


def sbom_timestamp(build_info: BuildInfo, environ: Mapping[str, str]) -> datetime:
    """SOURCE_DATE_EPOCH when set (reproducible-builds.org), else when the build finished."""
    epoch = environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        if not epoch.isdigit():
            raise AuditError(f"SOURCE_DATE_EPOCH={epoch!r} is not a count of seconds")
        return datetime.fromtimestamp(int(epoch), tz=UTC)
    try:
        finished = datetime.fromisoformat(build_info.finished_on.replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(f"build record finished_on={build_info.finished_on!r} is not RFC 3339") from None
    if finished.tzinfo is None:
        raise AuditError(f"build record finished_on={build_info.finished_on!r} has no time zone")
    return finished.astimezone(UTC)


def _sha256(hexes: Iterable[str]) -> list[HashType]:
    return [HashType(alg=HashAlgorithm.SHA_256, content=h) for h in sorted(hexes)]


def _props(**values: str) -> list[Property]:
    return [Property(name=_P + key.replace("_", "-"), value=value) for key, value in sorted(values.items()) if value]


def _licenses(found: FoundLicense) -> list[License]:
    factory = LicenseFactory()
    declared = LicenseAcknowledgement.DECLARED
    if found.expression:
        return [factory.make_from_string(found.expression, license_acknowledgement=declared)]
    licenses: list[License] = [factory.make_with_id(i, acknowledgement=declared) for i in found.ids]
    licenses.extend(factory.make_with_name(n, acknowledgement=declared) for n in found.names)
    return licenses


def _file(bundled: BundledFile) -> Component:
    """A bundled file nobody owns: a component of its own, without a purl, so a scan cannot pass over it."""
    return Component(
        type=ComponentType.FILE,
        name=bundled.path,
        bom_ref=f"file:{bundled.path}",
        hashes=_sha256([bundled.sha256]),
        properties=_props(module=bundled.module, kind=bundled.kind, size=str(bundled.size)),
    )


def _contents(files: Iterable[BundledFile]) -> list[Property]:
    """Files a component put inside the executable, as `edgeward:bundled-file` = "<sha256>  <path>".

    Properties rather than nested `file` components: consumers (our scan, Dependency-Track) treat every
    component as a package to look up, and a file is part of its package, not another package.
    """
    return [Property(name=BUNDLED_FILE, value=f"{f.sha256}  {f.path}") for f in files]


def _dist(dist: PythonDist) -> Component:
    purl = PackageURL(type="pypi", name=dist.name, version=dist.version)
    return Component(
        type=ComponentType.LIBRARY,
        name=dist.name,
        version=dist.version,
        purl=purl,
        bom_ref=purl.to_string(),
        hashes=_sha256(dist.lock_hashes),
        licenses=_licenses(dist.license),
        properties=[
            *_props(license_source=dist.license.source or "none", hashes_from="lock file"),
            *_contents(dist.files),
        ],
    )


def _native(lib: NativeLibrary) -> Component:
    return Component(
        type=ComponentType.LIBRARY,
        name=lib.name,
        version=lib.version or None,
        purl=PackageURL.from_string(lib.purl),
        bom_ref=f"native:{lib.file.path}",
        hashes=_sha256([lib.file.sha256]),
        licenses=_licenses(lib.license),
        properties=_props(
            path=lib.file.path,
            system_package=lib.package,
            version_source=lib.version_source,
            license_source=lib.license.source or "none",
        ),
    )


def _serial(components: Iterable[Component], dependencies: dict[str, list[str]]) -> uuid.UUID:
    """UUID (RFC 9562 version 8, i.e. custom) from a SHA-256 of the canonical component list and graph."""

    def walk(items: Iterable[Component]) -> Iterable[list[object]]:
        for c in items:
            yield [
                str(c.bom_ref),
                c.type.value,
                c.name,
                c.version or "",
                c.purl.to_string() if c.purl else "",
                sorted(h.content for h in c.hashes),
                sorted(p.value for p in c.properties if p.name == BUNDLED_FILE),
            ]
            yield from walk(c.components)

    canonical = json.dumps(
        {"components": sorted(walk(components)), "dependencies": dependencies},
        sort_keys=True,
        separators=(",", ":"),
    )
    raw = bytearray(hashlib.sha256(canonical.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(raw))


def make_bom(inventory: Inventory, timestamp: datetime) -> Bom:
    exe = inventory.executable
    app = Component(
        type=ComponentType.APPLICATION,
        name=exe.name,
        version=exe.version,
        bom_ref=exe.name,
        purl=PackageURL(type="generic", name=exe.name, version=exe.version),
        hashes=_sha256([exe.sha256]),
        properties=[
            *_props(
                build_id=exe.build_id,
                source_repository=exe.source_repository,
                source_commit=exe.source_commit,
                source_dirty="true" if exe.source_dirty else "false",
            ),
            *_contents(inventory.app_files),
        ],
    )
    runtime_purl = PackageURL(type="generic", name=RUNTIME, version=inventory.python_version)
    runtime = Component(
        type=ComponentType.LIBRARY,
        name=RUNTIME,
        version=inventory.python_version,
        purl=runtime_purl,
        bom_ref=runtime_purl.to_string(),
        licenses=_licenses(FoundLicense("CPython LICENSE file", ids=("PSF-2.0",))),
        properties=[
            *_props(linkage="static (libpython linked into the executable)", license_source="CPython LICENSE file"),
            *_contents(inventory.runtime_files),
        ],
    )
    refs: dict[str, Component] = {RUNTIME: runtime}
    components: list[Component] = [runtime]
    graph: dict[str, set[str]] = {exe.name: {str(runtime.bom_ref)}, str(runtime.bom_ref): set()}

    for dist in inventory.dists:
        component = _dist(dist)
        components.append(component)
        refs[dist.name] = component
        graph[str(component.bom_ref)] = set()
        for embedded in dist.embedded:
            purl = PackageURL(type="generic", name=embedded.name, version=embedded.version)
            inner = Component(
                type=ComponentType.LIBRARY,
                name=embedded.name,
                version=embedded.version,
                purl=purl,
                bom_ref=f"{purl.to_string()}#{dist.name}",
                properties=_props(
                    embedded_in=embedded.inside or dist.name,
                    linkage="static",
                    version_source=embedded.version_source,
                ),
            )
            components.append(inner)
            graph[str(component.bom_ref)].add(str(inner.bom_ref))
            graph[str(inner.bom_ref)] = set()

    required = {r for dist in inventory.dists for r in dist.requires}
    for dist in inventory.dists:
        ref = str(refs[dist.name].bom_ref)
        graph[ref] |= {str(refs[r].bom_ref) for r in dist.requires}
        if dist.direct or dist.name not in required:
            graph[exe.name].add(ref)

    for lib in inventory.native:
        component = _native(lib)
        components.append(component)
        graph[str(component.bom_ref)] = set()
        owner = refs.get(lib.owner)
        graph[str(owner.bom_ref) if owner is not None else exe.name].add(str(component.bom_ref))
    for bundled in inventory.unattributed:
        component = _file(bundled)
        components.append(component)
        graph[exe.name].add(str(component.bom_ref))

    dependencies = {ref: sorted(targets) for ref, targets in sorted(graph.items())}
    bom = Bom(serial_number=_serial([app, *components], dependencies))
    bom.metadata.timestamp = timestamp
    bom.metadata.component = app
    bom.metadata.tools.components.add(
        Component(type=ComponentType.APPLICATION, name="edgeward-audit", version=__version__, bom_ref="tool:audit")
    )
    if nuitka := inventory.tools.get("nuitka"):
        bom.metadata.tools.components.add(
            Component(type=ComponentType.APPLICATION, name="nuitka", version=nuitka, bom_ref="tool:nuitka")
        )
    for component in components:
        bom.components.add(component)
    by_ref = {str(c.bom_ref): c for c in [app, *components]}
    for ref, targets in dependencies.items():
        bom.register_dependency(by_ref[ref], [by_ref[t] for t in targets])
    return bom


def serialise(bom: Bom, fmt: str) -> bytes:
    """Serialise with the library, then validate against the bundled 1.6 schema before anyone sees it."""
    from cyclonedx.output import make_outputter
    from cyclonedx.validation.json import JsonStrictValidator
    from cyclonedx.validation.xml import XmlValidator

    if fmt not in FORMATS:
        raise AuditError(f"unknown SBOM format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    output_format = OutputFormat.JSON if fmt == "json" else OutputFormat.XML
    text = make_outputter(bom, output_format, SchemaVersion.V1_6).output_as_string(indent=2)
    validator = JsonStrictValidator(SchemaVersion.V1_6) if fmt == "json" else XmlValidator(SchemaVersion.V1_6)
    error = validator.validate_str(text)
    if error is not None:
        detail = getattr(error.data, "message", None) or str(error.data).splitlines()[0]
        where = getattr(error.data, "json_path", "")
        raise AuditError(f"SBOM does not validate against CycloneDX 1.6 {fmt}: {detail} {where}".rstrip())
    return (text.rstrip("\n") + "\n").encode("utf-8")

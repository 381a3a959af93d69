"""`scan_sbom`: SBOM in, `ScanReport` out, with pip-audit as the scanner of record.

Online, pip-audit asks its own services (PyPI's JSON API by default). Offline, it asks an OSV API
served on loopback from a local advisory snapshot. Either way everything pip-audit did not confirm
as audited is reported as unchecked, severities come from OSV records (pip-audit gives none), and
VEX statements mark findings not_affected before the gate judges them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from packaging.version import Version

from audit.digest import sha256_file
from audit.errors import AuditError
from audit.progress import Progress
from audit.scan import osv, pipaudit
from audit.scan.advisories import AdvisoryIndex, load_advisories
from audit.scan.gate import Evidence, evaluate, release_gate
from audit.scan.model import AdvisorySource, Component, InputFile, ScanReport, Skipped, Vulnerability
from audit.scan.sbom import PypiComponent, SbomComponents, read_sbom
from audit.scan.server import serve
from audit.scan.severity import severity_of
from audit.scan.vex import Statement, Subject, load_vex, verdict

ONLINE_SERVICES = ("pypi", "osv")


def _rounds(components: Sequence[PypiComponent]) -> list[list[PypiComponent]]:
    """Split so no project appears twice in one run (pip-audit rejects duplicate requirements)."""
    rounds: list[list[PypiComponent]] = []
    for component in components:
        for batch in rounds:
            if all(other.name != component.name for other in batch):
                batch.append(component)
                break
        else:
            rounds.append([component])
    return rounds


def _offline_round(
    index: AdvisoryIndex, batch: Sequence[pipaudit.Requested], progress: Progress
) -> tuple[list[pipaudit.Reported], dict[pipaudit.Requested, str]]:
    vulns: list[pipaudit.Reported] = []
    unchecked: dict[pipaudit.Requested, str] = {}
    pending = list(batch)
    with serve(index) as server:
        progress.note(f"OSV advisories served at {server.url}")
        while pending:
            outcome = pipaudit.run(pending, ["--vulnerability-service", "osv", "--osv-url", server.url], offline=True)
            if outcome.crashed:
                # (1) pip-audit stops at the first query the server refused. Name those packages
                #     and run again without them, so one bad record does not hide the rest.
                refused = {(f.name, f.version): f.reason for f in server.log.failures()}
                named = {p: refused[(p.name, str(p.version))] for p in pending if (p.name, str(p.version)) in refused}
                if not named:
                    reason = f"pip-audit failed: {outcome.stderr_tail.splitlines()[-1] if outcome.stderr_tail else ''}"
                    unchecked.update({p: reason.strip() for p in pending})
                    break
                unchecked.update(named)
                pending = [p for p in pending if p not in named]
                continue
            unchecked.update(outcome.unchecked)
            for package in outcome.audited:
                # (2) "Audited" must mean this snapshot answered for exactly this version.
                if not server.log.was_answered(package.name, package.version):
                    unchecked[package] = "pip-audit reported it audited but never asked the advisory server"
            vulns.extend(v for v in outcome.vulnerabilities if (v.name, v.version) not in _keys(unchecked))
            break
    return vulns, unchecked


def _keys(unchecked: Iterable[pipaudit.Requested]) -> set[tuple[str, object]]:
    return {(p.name, p.version) for p in unchecked}


def _online_round(
    service: str, batch: Sequence[pipaudit.Requested]
) -> tuple[list[pipaudit.Reported], dict[pipaudit.Requested, str]]:
    outcome = pipaudit.run(batch, ["--vulnerability-service", service], offline=False)
    unchecked = dict(outcome.unchecked)
    if outcome.crashed and outcome.stderr_tail:
        unchecked = {p: f"{r}: {outcome.stderr_tail.splitlines()[-1]}" for p, r in unchecked.items()}
    return list(outcome.vulnerabilities), unchecked


def _finding(
    reported: pipaudit.Reported,
    component: PypiComponent,
    index: AdvisoryIndex | None,
    missing: str,
    statements: Sequence[Statement],
    sbom: SbomComponents,
) -> Vulnerability:
    ids = frozenset({reported.id, *reported.aliases})
    records = index.find(reported.name, ids) if index is not None else []
    # pip-audit merged records sharing an alias; the local records may know more names still.
    all_ids = ids.union(*(osv.ids_of(record) for record in records))
    fixes = set(reported.fix_versions).union(*(osv.fix_versions(record, reported.name) for record in records))
    subject = Subject(
        purl=component.purl,
        bom_ref=component.bom_ref,
        serial=sbom.serial,
        product_refs=frozenset(ref for ref in (sbom.metadata_purl, sbom.metadata_ref) if ref),
    )
    decided = verdict(statements, all_ids, subject)
    return Vulnerability(
        package=reported.name,
        version=str(reported.version),
        id=reported.id,
        aliases=tuple(sorted(all_ids - {reported.id})),
        purl=component.purl,
        severity=severity_of(records, missing),
        fix_versions=tuple(sorted(fixes, key=Version)),
        status=decided.status,
        justification=decided.justification,
        vex=decided.note,
    )


def scan_sbom(
    sbom_path: Path,
    advisories: Path | None = None,
    vex: Sequence[Path] = (),
    fail_on: str = "high",
    progress: Progress | None = None,
    *,
    online: bool | None = None,
    service: str = "pypi",
    out_of_scope: Iterable[str] = (),
    now: datetime | None = None,
) -> ScanReport:
    """Scan the SBOM's PyPI components; never raises for findings (see `gate.check_gate`).

    `online=None` means online exactly when no `advisories` directory is given; with both, the scan
    is online and the directory only supplies severities. Raises `AuditError` for bad inputs.
    """
    progress = progress if progress is not None else Progress(quiet=True)
    policy = release_gate(fail_on)  # validates fail_on before any work
    online = advisories is None if online is None else online
    if service not in ONLINE_SERVICES:
        raise ValueError(f"service must be one of {ONLINE_SERVICES}")
    if not online and advisories is None:
        raise AuditError("an offline scan needs --advisories DIR", hint="a directory of OSV JSON records")

    sbom = read_sbom(sbom_path, out_of_scope)
    statements = [statement for path in vex for statement in load_vex(path)]
    index = load_advisories(advisories) if advisories is not None else None
    progress.note(
        f"{len(sbom.pypi)} PyPI component(s), {len(sbom.others)} other(s), {len(statements)} VEX statement(s)"
    )
    if index is not None:
        progress.note(f"advisories {index.directory}: {index.records} record(s), digest sha256:{index.digest}")

    reported: list[pipaudit.Reported] = []
    unchecked: dict[pipaudit.Requested, str] = {}
    for batch in _rounds(sbom.pypi):
        requested = [pipaudit.Requested(c.name, c.version) for c in batch]
        progress.note(f"pip-audit: {len(requested)} package(s) via {service if online else 'loopback OSV'}")
        if online:
            found, missed = _online_round(service, requested)
        else:
            assert index is not None
            found, missed = _offline_round(index, requested, progress)
        reported.extend(found)
        unchecked.update(missed)

    by_key = {(c.name, c.version): c for c in sbom.pypi}
    if online:
        missing = "not in --advisories" if index is not None else "online services give no severity; no --advisories"
    else:
        missing = "advisory record has no severity"
    vulnerabilities = tuple(
        sorted(_finding(r, by_key[(r.name, r.version)], index, missing, statements, sbom) for r in reported)
    )
    components = [
        Component(
            purl=c.purl,
            name=c.name,
            version=str(c.version),
            bom_ref=c.bom_ref,
            status="skipped" if pipaudit.Requested(c.name, c.version) in unchecked else "checked",
            reason=unchecked.get(pipaudit.Requested(c.name, c.version), ""),
        )
        for c in sbom.pypi
    ]
    components.extend(sbom.others)
    skipped = tuple(sorted(Skipped(c.name, c.version, c.purl, c.reason) for c in components if c.status == "skipped"))
    evidence = Evidence(components=components, vulnerabilities=vulnerabilities, skipped=skipped)

    if online:
        source = AdvisorySource(
            mode="online",
            service=service,
            directory=str(index.directory) if index else "",
            digest=index.digest if index else "",
            records=index.records if index else 0,
            scanned_on=(now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
    else:
        assert index is not None
        source = AdvisorySource(
            mode="offline",
            service="osv-loopback",
            directory=str(index.directory),
            digest=index.digest,
            records=index.records,
        )
    return ScanReport(
        sbom=InputFile(sbom_path.name, sha256_file(sbom_path)),
        source=source,
        vex=tuple(InputFile(path.name, sha256_file(path)) for path in vex),
        components=tuple(sorted(components)),
        vulnerabilities=vulnerabilities,
        skipped=skipped,
        gate=evaluate(policy, fail_on, evidence),
        scanner=f"pip-audit {pipaudit.version()}",
    )

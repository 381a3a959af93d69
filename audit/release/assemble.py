"""`audit release`: from a built executable to a signed, self-verified release directory.

The order is the order of trust: what was built (copied with its build record and report), what is
inside it (SBOM), whether that is safe to ship (scan gate), how it was made (provenance), the summary,
then the signatures, then SHA256SUMS and its signed statement, which cover everything before them.
Last, the directory is verified the way an edge operator will, so a release that would fail
`audit verify` is never handed over.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from audit.buildinfo import BuildInfo, build_info_path, load_build_info, report_path
from audit.digest import sha256_file
from audit.errors import AuditError, Finding
from audit.progress import Progress
from audit.release.summary import SummaryFacts, render_summary
from audit.sign import Signer

STEPS = 8
SBOM_SUFFIX = ".cdx.json"
SCAN_SUFFIX = ".scan.json"
SCAN_MARKDOWN_SUFFIX = ".scan.md"
PROVENANCE_SUFFIX = ".intoto.json"
SUMMARY = "SUMMARY.md"


@dataclass(frozen=True)
class ScanOptions:
    advisories: Path | None
    vex: Sequence[Path]
    fail_on: str
    online: bool | None
    out_of_scope: Sequence[str]


@dataclass(frozen=True)
class Release:
    directory: Path
    info: BuildInfo
    files: tuple[str, ...]
    verified: str


def _empty_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise AuditError(f"{output}: exists and is not an empty directory", hint="name a new directory for the release")
    output.mkdir(parents=True, exist_ok=True)


def _collect(executable: Path, output: Path) -> tuple[Path, BuildInfo]:
    record, report = build_info_path(executable), report_path(executable)
    for needed in (executable, record, report):
        if not needed.is_file():
            raise AuditError(f"{needed}: missing", hint="run `audit build` first; it writes all three")
    info = load_build_info(record)
    actual = sha256_file(executable)
    if actual != info.executable_sha256:
        raise Finding(f"{executable}: sha256 {actual} differs from its build record's {info.executable_sha256}")
    target = output / info.executable
    for source in (executable, record, report):
        shutil.copy2(source, output / (info.executable + source.name.removeprefix(executable.name)))
    return target, info


def _self_check(output: Path, info: BuildInfo, signer: Signer) -> str:
    """Verify the finished directory as an operator would; with Sigstore the identity is checked by them."""
    from audit.verify import Expectations, TrustedKey, TrustedKeys, verify_release

    public = getattr(signer, "public_key", None)
    if public is None:
        return "not self-verified (keyless signature: verify with --sigstore-identity/--sigstore-issuer)"
    expect = Expectations(
        artefact=info.executable,
        builder_id=info.builder_id,
        source_repo=info.source_repository,
        source_commit=info.source_commit or None,
    )
    report = verify_release(output, TrustedKeys([TrustedKey.of(public)]), expect)
    return f"verified: {len(report.files)} files, {len(report.signatures)} signatures"


def make_release(
    executable: Path,
    output: Path,
    *,
    lock: Path,
    signer: Signer,
    scan: ScanOptions,
    progress: Progress,
    verify_hint: str,
) -> Release:
    from audit.provenance import write_provenance
    from audit.sbom.api import write_sbom
    from audit.scan import check_gate, scan_sbom, write_json, write_markdown
    from audit.sign import default_statements, sign_release_files, write_checksums

    with progress.step("collect the executable, its build record and report"):
        _empty_output(output)
        exe, info = _collect(executable, output)
        progress.note(f"{info.executable} {info.version} build {info.build_id[:16]} sha256 {info.executable_sha256}")
    name = info.executable
    sbom = output / (name + SBOM_SUFFIX)
    with progress.step("SBOM (CycloneDX 1.6)"):
        write_sbom(exe, sbom, info, report_path(exe), lock)
        components = len(json.loads(sbom.read_text(encoding="utf-8")).get("components", []))
        progress.note(f"{components} components")
    with progress.step("vulnerability scan"):
        report = scan_sbom(
            sbom,
            scan.advisories,
            scan.vex,
            scan.fail_on,
            progress,
            online=scan.online,
            out_of_scope=scan.out_of_scope,
        )
        write_json(report, output / (name + SCAN_SUFFIX))
        write_markdown(report, output / (name + SCAN_MARKDOWN_SUFFIX))
        # A release that fails the gate keeps its reports for the release manager, and gets no signature.
        check_gate(report)
    with progress.step("provenance (SLSA v1)"):
        write_provenance(exe, output / (name + PROVENANCE_SUFFIX), info, sbom, report_path(exe), info.builder_id)
    with progress.step("summary"):
        facts = SummaryFacts(info, exe.stat().st_size, components, report, signer.description, verify_hint)
        (output / SUMMARY).write_text(render_summary(facts), encoding="utf-8")
    with progress.step(f"sign ({signer.description})"):
        written = sign_release_files(exe, default_statements(exe), signer)
        progress.note(", ".join(path.name for path in written))
    with progress.step("SHA256SUMS and its signed statement"):
        write_checksums(output, signer)
    with progress.step("verify the release as an operator would"):
        verified = _self_check(output, info, signer)
        progress.note(verified)
    files = tuple(sorted(path.name for path in output.iterdir()))
    return Release(output, info, files, verified)

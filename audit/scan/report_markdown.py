"""The scan report as Markdown, for the evidence pack and a human reviewer; same content as the JSON."""

from __future__ import annotations

from pathlib import Path

from audit.scan.model import ScanReport


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "-"


def render_markdown(report: ScanReport) -> str:
    gate, source = report.gate, report.source
    lines = [
        "# Vulnerability scan",
        "",
        f"**Gate: {'PASSED' if gate.passed else 'FAILED'}** (fail on `{gate.fail_on}` and above; "
        "a finding of unknown severity fails; every component must be checked)",
        "",
        f"- SBOM: `{report.sbom.path}` sha256:`{report.sbom.sha256}`",
        f"- Scanner: {report.scanner}",
    ]
    if source.mode == "offline":
        lines.append(
            f"- Advisories: offline OSV snapshot `{source.directory}`, {source.records} record(s), "
            f"digest sha256:`{source.digest}`"
        )
    else:
        lines.append(f"- Advisories: online, pip-audit service `{source.service}`, scanned on {source.scanned_on}")
        if source.directory:
            lines.append(f"- Severities looked up in `{source.directory}` (digest sha256:`{source.digest}`)")
    lines.extend(f"- VEX: `{f.path}` sha256:`{f.sha256}`" for f in report.vex)
    if not gate.passed:
        lines += ["", "## Gate failures", ""] + [f"- {_cell(line)}" for line in gate.failing]

    lines += ["", "## Findings", ""]
    if report.vulnerabilities:
        lines += [
            "| id | aliases | package | version | severity | fix versions | status | justification |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for v in report.vulnerabilities:
            score = f" ({v.severity.score})" if v.severity.score is not None else ""
            status = v.status + (f" ({v.vex})" if v.vex else "")
            lines.append(
                f"| {v.id} | {_cell(', '.join(v.aliases))} | {v.package} | {v.version} | {v.severity.level}{score} "
                f"| {_cell(', '.join(v.fix_versions))} | {_cell(status)} | {_cell(v.justification)} |"
            )
    else:
        lines.append("None.")

    lines += ["", "## Not checked", ""]
    if report.skipped:
        lines += [f"- `{s.package}` {s.version}: {_cell(s.reason)}" for s in report.skipped]
    else:
        lines.append("None: every in-scope component was checked.")

    lines += ["", "## Components", "", "| purl | status | note |", "|---|---|---|"]
    lines += [f"| {_cell(c.purl)} | {c.status} | {_cell(c.reason)} |" for c in report.components]
    return "\n".join(lines) + "\n"


def write_markdown(report: ScanReport, path: Path) -> None:
    path.write_text(render_markdown(report), encoding="utf-8")

"""The scan report as JSON: sorted keys and sorted lists, so the same inputs give the same bytes."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from audit.scan.model import ScanReport

SCHEMA = "https://edgeward.dev/audit/scan/v1"


def to_dict(report: ScanReport) -> dict[str, Any]:
    vulns = [asdict(v) for v in report.vulnerabilities]
    return {
        "schema": SCHEMA,
        "scanner": report.scanner,
        "sbom": asdict(report.sbom),
        "vex": [asdict(f) for f in report.vex],
        "advisory_source": asdict(report.source),
        "gate": {
            **asdict(report.gate),
            "failing": list(report.gate.failing),
            "policy": "every component checked; no affected finding at or above fail_on; "
            "a finding of unknown severity fails",
        },
        "summary": {
            "components": len(report.components),
            "checked": sum(c.status == "checked" for c in report.components),
            "skipped": len(report.skipped),
            "out_of_scope": sum(c.status == "out_of_scope" for c in report.components),
            "vulnerabilities": len(vulns),
            "affected": sum(v.status == "affected" for v in report.vulnerabilities),
            "not_affected": sum(v.status == "not_affected" for v in report.vulnerabilities),
        },
        "components": [asdict(c) for c in report.components],
        "vulnerabilities": vulns,
        "skipped": [asdict(s) for s in report.skipped],
    }


def render_json(report: ScanReport) -> str:
    return json.dumps(to_dict(report), sort_keys=True, indent=2) + "\n"


def write_json(report: ScanReport, path: Path) -> None:
    path.write_text(render_json(report), encoding="utf-8")

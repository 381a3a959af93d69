"""`audit scan SBOM`: the CLI face of `audit.scan.scan_sbom` (imports it only when run)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "scan the SBOM's Python components for known vulnerabilities with pip-audit; online by default, "
    "offline from a local OSV advisory directory with --advisories. Exit 1 when a component could not "
    "be checked or an unmitigated finding is at or above --fail-on (a finding of unknown severity counts as failing)"
)

# The SBOM's native components (bundled shared libraries, CPython itself): pip-audit has no database for them.
NATIVE_PURL_TYPES = ("generic", "deb")

EXAMPLES = """examples:
  audit scan dist/edgeward.cdx.json --advisories osv/ --output dist/edgeward.scan.json --markdown dist/edgeward.scan.md
  audit scan dist/edgeward.cdx.json --advisories osv/ --vex vex/openvex.json --fail-on critical
  audit scan dist/edgeward.cdx.json --output scan.json                    online (PyPI), severities unknown
  audit scan dist/edgeward.cdx.json --online --advisories osv/            online, severities from osv/
  audit scan dist/edgeward.cdx.json --advisories osv/ --out-of-scope generic   only pkg:generic is out of scope
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sbom", type=Path, help="CycloneDX 1.6 JSON SBOM (audit sbom's edgeward.cdx.json)")
    parser.add_argument(
        "--advisories",
        type=Path,
        metavar="DIR",
        help="offline: OSV JSON records (one per file, nested dirs allowed), served to pip-audit on 127.0.0.1",
    )
    parser.add_argument(
        "--online",
        action="store_true",
        help="scan with pip-audit's online service even when --advisories is given (DIR then only supplies severities)",
    )
    parser.add_argument(
        "--service", choices=("pypi", "osv"), default="pypi", help="pip-audit service for online scans (default pypi)"
    )
    parser.add_argument(
        "--vex",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="CycloneDX VEX or OpenVEX; justified not_affected statements mitigate findings (repeatable)",
    )
    parser.add_argument(
        "--fail-on",
        choices=("low", "medium", "high", "critical"),
        default="high",
        help="fail on any unmitigated finding at or above this severity (default high); "
        "findings of unknown severity always fail",
    )
    parser.add_argument(
        "--out-of-scope",
        action="append",
        metavar="PURL_TYPE",
        help="purl type listed as not scanned instead of failing the scan (repeatable; default: generic and deb, "
        "the native libraries and runtime, which pip-audit cannot check: it covers PyPI only)",
    )
    parser.add_argument("--output", type=Path, metavar="FILE.json", help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, metavar="FILE.md", help="write the Markdown report here")
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout")


def run(args: argparse.Namespace) -> int:
    import sys

    from audit.progress import Progress
    from audit.scan import check_gate, scan_sbom, write_json, write_markdown
    from audit.scan.report_json import render_json

    progress = Progress(1)
    with progress.step("scan"):
        report = scan_sbom(
            args.sbom,
            args.advisories,
            args.vex,
            args.fail_on,
            progress,
            online=True if args.online else None,
            service=args.service,
            out_of_scope=args.out_of_scope if args.out_of_scope is not None else NATIVE_PURL_TYPES,
        )
    # Reports are written before the gate so a failed scan still leaves its evidence behind.
    if args.output:
        write_json(report, args.output)
    if args.markdown:
        write_markdown(report, args.markdown)
    if args.json:
        sys.stdout.write(render_json(report))
    checked = sum(c.status == "checked" for c in report.components)
    affected = sum(v.status == "affected" for v in report.vulnerabilities)
    print(
        f"scan: {checked} checked, {len(report.skipped)} not checked, {len(report.vulnerabilities)} finding(s) "
        f"({affected} affected), gate {'passed' if report.gate.passed else 'FAILED'} at --fail-on {args.fail_on}",
        file=sys.stderr,
    )
    check_gate(report)
    return 0

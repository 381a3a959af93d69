"""SUMMARY.md: the release in a page, for the release manager who signs off and the auditor who reads later.

It is written before the signatures and is itself listed in SHA256SUMS, so it cannot be edited afterwards
without `audit verify` failing.
"""

from __future__ import annotations

from dataclasses import dataclass

from audit.buildinfo import BuildInfo
from audit.scan import ScanReport


@dataclass(frozen=True)
class SummaryFacts:
    info: BuildInfo
    executable_bytes: int
    sbom_components: int
    scan: ScanReport
    signer: str
    verify_hint: str


def render_summary(facts: SummaryFacts) -> str:
    info, scan = facts.info, facts.scan
    checked = sum(c.status == "checked" for c in scan.components)
    out_of_scope = sum(c.status == "out_of_scope" for c in scan.components)
    affected = [v for v in scan.vulnerabilities if v.status == "affected"]
    mitigated = [v for v in scan.vulnerabilities if v.status == "not_affected"]
    commit = info.source_commit or "(no commit)"
    tools = ", ".join(f"{tool.name} {tool.version}" for tool in info.tools)
    lines = [
        f"# edgeward {info.version} release",
        "",
        "| | |",
        "|---|---|",
        f"| executable | `{info.executable}` ({facts.executable_bytes:,} bytes) |",
        f"| sha256 | `{info.executable_sha256}` |",
        f"| build id | `{info.build_id}` |",
        f"| source | {info.source_repository} @ `{commit}`{' **(dirty tree)**' if info.source_dirty else ''} |",
        f"| built | {info.started_on} to {info.finished_on} by `{info.builder_id}` |",
        f"| toolchain | {tools} |",
        f"| links | {info.extras.get('links', '')} |",
        f"| SBOM | CycloneDX 1.6, {facts.sbom_components} components (`{info.executable}.cdx.json`) |",
        f"| scan | {scan.scanner}: {checked} Python components checked, {out_of_scope} native out of scope, "
        f"{len(affected)} affected, {len(mitigated)} not affected (VEX); "
        f"gate {'passed' if scan.gate.passed else 'FAILED'} at {scan.gate.fail_on} |",
        f"| signed by | {facts.signer} |",
        "",
        "## Files",
        "",
        f"- `{info.executable}`: the executable; `{info.executable} version` prints its build id and sha256.",
        f"- `{info.executable}.build.json`, `{info.executable}.nuitka-report.xml`: how it was built, what is inside.",
        f"- `{info.executable}.cdx.json`: the SBOM; `{info.executable}.scan.json` and `.scan.md`: the scan.",
        f"- `{info.executable}.intoto.json`: SLSA v1 provenance in an in-toto Statement v1.",
        "- `*.sig`, `*.dsse.json`, `*.sigstore.json`, `signing-chain.pem`: signatures and what verifies them.",
        "- `SHA256SUMS`, signed by `SHA256SUMS.dsse.json` (or `.sigstore.json`): every file's digest.",
        "",
        "## Before deploying",
        "",
        "```sh",
        facts.verify_hint,
        "```",
        "",
    ]
    return "\n".join(lines)

"""What a scan produced, as frozen values: the JSON and Markdown reports and the gate read only this."""

from __future__ import annotations

from dataclasses import dataclass

# Ordered from harmless to worst. "unknown" is not on the scale: the gate treats it as failing,
# because a finding nobody rated has not been shown to be below the bar.
SEVERITIES = ("none", "low", "medium", "high", "critical")
UNKNOWN = "unknown"
GATE_LEVELS = ("low", "medium", "high", "critical")


def severity_at_least(severity: str, bar: str) -> bool:
    """True when `severity` fails a gate set at `bar`; unknown always does."""
    if severity not in SEVERITIES:
        return True
    return SEVERITIES.index(severity) >= SEVERITIES.index(bar)


@dataclass(frozen=True, order=True)
class Component:
    """One SBOM component as the scan saw it."""

    purl: str
    name: str  # PEP 503 normalised for pypi; as written otherwise
    version: str
    bom_ref: str
    status: str  # "checked" | "skipped" | "out_of_scope"
    reason: str = ""  # why skipped / out of scope


@dataclass(frozen=True, order=True)
class Severity:
    level: str  # one of SEVERITIES or UNKNOWN
    score: float | None  # CVSS base score when one was computed
    source: str  # the vector or word it came from, or why there is none


@dataclass(frozen=True, order=True)
class Vulnerability:
    """One finding: an advisory that applies to one component version."""

    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    purl: str
    severity: Severity
    fix_versions: tuple[str, ...]
    status: str  # "affected" | "not_affected"
    justification: str = ""  # VEX justification when not_affected
    vex: str = ""  # which VEX document(s) said so, or the conflict that kept it affected

    @property
    def ids(self) -> frozenset[str]:
        return frozenset({self.id, *self.aliases})


@dataclass(frozen=True, order=True)
class Skipped:
    """A component that could not be checked. Every one of these fails the scan."""

    package: str
    version: str
    purl: str
    reason: str


@dataclass(frozen=True)
class AdvisorySource:
    mode: str  # "online" | "offline"
    service: str  # pip-audit service: "pypi", "osv" (online) or "osv-loopback" (offline)
    directory: str = ""  # offline snapshot (or severity lookup dir for online)
    digest: str = ""  # AdvisoryIndex.digest of `directory`
    records: int = 0
    scanned_on: str = ""  # RFC 3339 UTC, online only: a live database has no digest, only a date


@dataclass(frozen=True)
class GateResult:
    fail_on: str
    passed: bool
    failing: tuple[str, ...]  # one "what, why" entry per failing finding or unchecked package


@dataclass(frozen=True)
class InputFile:
    path: str
    sha256: str


@dataclass(frozen=True)
class ScanReport:
    sbom: InputFile
    source: AdvisorySource
    vex: tuple[InputFile, ...]
    components: tuple[Component, ...]
    vulnerabilities: tuple[Vulnerability, ...]
    skipped: tuple[Skipped, ...]
    gate: GateResult
    scanner: str  # "pip-audit X.Y.Z"

"""The release gate over a scan: small policies, all of which must hold; an empty gate denies.

Each policy returns the violations it sees, one line each, so the one-line `Finding` and the
report name exactly which package or advisory failed and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from audit.errors import AuditError, Finding
from audit.scan.model import (
    GATE_LEVELS,
    UNKNOWN,
    Component,
    GateResult,
    ScanReport,
    Skipped,
    Vulnerability,
    severity_at_least,
)


@dataclass(frozen=True)
class Evidence:
    components: Sequence[Component]
    vulnerabilities: Sequence[Vulnerability]
    skipped: Sequence[Skipped]


class Policy(Protocol):
    def violations(self, evidence: Evidence) -> list[str]: ...


class EverythingChecked:
    """Every component was looked up: an unchecked package is a failure, never a silent pass."""

    def violations(self, evidence: Evidence) -> list[str]:
        return [f"unchecked {s.package}=={s.version or '?'}: {s.reason}" for s in evidence.skipped]


class SomethingChecked:
    """A scan that looked at nothing proves nothing, so it cannot pass either."""

    def violations(self, evidence: Evidence) -> list[str]:
        if any(component.status == "checked" for component in evidence.components):
            return []
        return ["no PyPI component was checked"]


@dataclass(frozen=True)
class SeverityBelow:
    """No unmitigated finding at or above `fail_on`; an unrated finding counts as failing."""

    fail_on: str

    def __post_init__(self) -> None:
        if self.fail_on not in GATE_LEVELS:
            raise AuditError(f"--fail-on {self.fail_on!r}: choose one of {', '.join(GATE_LEVELS)}")

    def violations(self, evidence: Evidence) -> list[str]:
        found = []
        for v in evidence.vulnerabilities:
            if v.status == "affected" and severity_at_least(v.severity.level, self.fail_on):
                level = "severity unknown (counts as failing)" if v.severity.level == UNKNOWN else v.severity.level
                found.append(f"{v.id} in {v.package}=={v.version}: {level}")
        return found


@dataclass(frozen=True)
class AllOf:
    policies: tuple[Policy, ...]

    def violations(self, evidence: Evidence) -> list[str]:
        if not self.policies:
            return ["empty gate policy denies"]
        return [line for policy in self.policies for line in policy.violations(evidence)]


def release_gate(fail_on: str) -> AllOf:
    return AllOf((EverythingChecked(), SomethingChecked(), SeverityBelow(fail_on)))


def evaluate(policy: AllOf, fail_on: str, evidence: Evidence) -> GateResult:
    failing = tuple(sorted(policy.violations(evidence)))
    return GateResult(fail_on=fail_on, passed=not failing, failing=failing)


def check_gate(report: ScanReport) -> None:
    """Raise `Finding` (exit 1) naming every failing package and advisory, on one line."""
    if not report.gate.passed:
        raise Finding(f"scan gate failed (--fail-on {report.gate.fail_on}): " + "; ".join(report.gate.failing))

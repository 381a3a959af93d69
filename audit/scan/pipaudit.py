"""pip-audit as a subprocess over a requirements file made from the SBOM.

A subprocess, not pip-audit's private Python API: its CLI and JSON report are the interface it
keeps stable, and the exact command line goes into the log for anyone re-running the scan by hand.
pip-audit exits 0 with packages quietly "skipped" when it could not look them up, so the answer is
read from its JSON and checked against what was asked: anything not reported as audited is unchecked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from audit.errors import AuditError
from audit.pypi import normalise_name

_TIMEOUT = 600.0


@dataclass(frozen=True)
class Requested:
    name: str  # normalised
    version: Version


@dataclass(frozen=True)
class Reported:
    """One vulnerability as pip-audit reported it."""

    name: str
    version: Version
    id: str
    aliases: tuple[str, ...]
    fix_versions: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    audited: frozenset[Requested]
    vulnerabilities: tuple[Reported, ...]
    unchecked: Mapping[Requested, str]  # requested package -> why it was not audited
    crashed: bool  # no JSON report at all (pip-audit died mid-way); stderr_tail says how
    stderr_tail: str
    command: tuple[str, ...]


def version() -> str:
    return metadata.version("pip-audit")


def requirements_text(packages: Sequence[Requested]) -> str:
    """`name==version` lines; names are PEP 503 normalised, so no two lines name one project."""
    names = [package.name for package in packages]
    if len(set(names)) != len(names):
        raise ValueError("one version per project per pip-audit run")
    return "".join(f"{package.name}=={package.version}\n" for package in sorted(packages, key=lambda p: p.name))


def interpret(report: Mapping[str, Any], requested: Sequence[Requested]) -> Outcome:
    """Read pip-audit's `-f json` report: audited packages, their vulnerabilities, and every gap."""
    audited: set[Requested] = set()
    unchecked: dict[Requested, str] = {}
    vulns: list[Reported] = []
    wanted = {(r.name, r.version): r for r in requested}
    by_name = {r.name: r for r in requested}
    for dep in report.get("dependencies") or []:
        name = normalise_name(str(dep.get("name", "")))
        # (1) pip-audit's own skips ("could not be audited", not found on PyPI, ...).
        if "skip_reason" in dep:
            if name in by_name:
                unchecked[by_name[name]] = f"pip-audit skipped it: {dep['skip_reason']}"
            continue
        try:
            key = (name, Version(str(dep.get("version"))))
        except InvalidVersion:
            continue
        # (2) Audited, but only counts for the exact version we asked about.
        if key not in wanted:
            continue
        audited.add(wanted[key])
        for vuln in dep.get("vulns") or []:
            vulns.append(
                Reported(
                    name=name,
                    version=key[1],
                    id=str(vuln["id"]),
                    aliases=tuple(sorted(str(a) for a in vuln.get("aliases") or [] if a != vuln["id"])),
                    fix_versions=tuple(str(v) for v in vuln.get("fix_versions") or []),
                )
            )
    # (3) Anything asked for and neither audited nor skipped is missing from the report: unchecked.
    for package in requested:
        if package not in audited and package not in unchecked:
            unchecked[package] = "missing from pip-audit's report"
    return Outcome(frozenset(audited), tuple(vulns), unchecked, crashed=False, stderr_tail="", command=())


def _environment(offline: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_AUDIT_")}
    if offline:
        # Loopback only: no proxy may see (or answer for) the advisory server.
        for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env.pop(key, None)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def run(packages: Sequence[Requested], service_args: Sequence[str], *, offline: bool) -> Outcome:
    """Audit `packages` (one version per project) with `python -m pip_audit` and read its report."""
    with tempfile.TemporaryDirectory(prefix="audit-scan-") as tmp:
        work = Path(tmp)
        requirements = work / "requirements.txt"
        requirements.write_text(requirements_text(packages))
        output = work / "pip-audit.json"
        command = (
            sys.executable,
            "-m",
            "pip_audit",
            "--requirement",
            str(requirements),
            "--no-deps",
            "--disable-pip",
            "--format",
            "json",
            "--aliases",
            "on",
            "--desc",
            "off",
            "--progress-spinner",
            "off",
            # A fresh cache: a result cached by an earlier run must never stand in for a lookup.
            "--cache-dir",
            str(work / "cache"),
            "--output",
            str(output),
            *service_args,
        )
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, env=_environment(offline), timeout=_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise AuditError(f"pip-audit did not finish within {_TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise AuditError(f"cannot run pip-audit: {exc}", hint="install the release extras") from None
        tail = "\n".join(done.stderr.strip().splitlines()[-3:])
        try:
            report = json.loads(output.read_text())
        except (OSError, json.JSONDecodeError):
            # (4) No report: pip-audit died (an HTTP error from the service, a crash). Nothing checked.
            reason = f"pip-audit exited {done.returncode} without a report"
            return Outcome(
                frozenset(),
                (),
                {package: reason for package in packages},
                crashed=True,
                stderr_tail=tail,
                command=command,
            )
    outcome = interpret(report, packages)
    return Outcome(
        outcome.audited, outcome.vulnerabilities, outcome.unchecked, crashed=False, stderr_tail=tail, command=command
    )

"""Totals from a JUnit XML file (pytest's --junitxml), for the index; the file itself goes in the pack.

The suite records the SHA-256 of the executable it ran against as the testsuite property
`edgeward.executable.sha256` (tests/conftest.py), which is how a pack tells results of this build from
results of some other one.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from audit.errors import AuditError

EXECUTABLE_PROPERTY = "edgeward.executable.sha256"


def junit_summary(data: bytes, what: str) -> dict[str, Any]:
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise AuditError(f"{what}: DTDs and entities are not accepted in JUnit XML")
    try:
        root = ET.fromstring(data)  # noqa: S314 - DTDs and entities are refused above
    except ET.ParseError as exc:
        raise AuditError(f"{what}: not XML ({exc})") from None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if root.tag not in ("testsuite", "testsuites"):
        raise AuditError(f"{what}: not JUnit XML (root element {root.tag!r})")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    seconds = 0.0
    for suite in suites:
        for key in totals:
            try:
                totals[key] += int(suite.get(key, "0"))
            except ValueError:
                raise AuditError(f"{what}: {key}={suite.get(key)!r} is not a number") from None
        seconds += float(suite.get("time", "0") or 0)
    tested = sorted(
        {
            prop.get("value", "")
            for suite in suites
            for prop in suite.iterfind("properties/property")
            if prop.get("name") == EXECUTABLE_PROPERTY
        }
    )
    passed = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    return {
        **totals,
        "passed": passed,
        "seconds": round(seconds, 3),
        "ok": totals["failures"] + totals["errors"] == 0,
        "executable_sha256": tested,
    }

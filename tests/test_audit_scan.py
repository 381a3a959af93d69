"""`audit scan`: the OSV matcher, the loopback OSV server, real pip-audit runs, VEX and the gate.

Scans run the real `python -m pip_audit` subprocess against the real loopback server, fed from the
fixture snapshot in tests/osv/ (see its README for what each record covers). Nothing is mocked.
The online path needs PyPI, which this machine cannot reach: that test is marked `online`
(deselected by default; run with `-m online`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from audit.errors import AuditError, Finding
from audit.scan import check_gate, command, osv, pipaudit, scan_sbom
from audit.scan.advisories import load_advisories
from audit.scan.model import ScanReport
from audit.scan.report_json import render_json, to_dict
from audit.scan.report_markdown import render_markdown
from audit.scan.sbom import read_sbom
from audit.scan.server import answer, serve
from audit.scan.severity import severity_of
from audit.scan.vex import Subject, load_vex, verdict

OSV_DIR = Path(__file__).parent / "osv"
DB = OSV_DIR / "db"
SERIAL = "urn:uuid:3e671687-395b-41f5-a30f-a58921a69b79"

# --------------------------------------------------------------------------- helpers


def sbom(tmp: Path, *purls: str, name: str = "edgeward.cdx.json") -> Path:
    components = []
    for purl in purls:
        body, _, version = purl.rpartition("@")
        components.append(
            {"type": "library", "name": body.rsplit("/", 1)[-1], "version": version, "purl": purl, "bom-ref": purl}
        )
    document = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "version": 1,
        "serialNumber": SERIAL,
        "metadata": {
            "component": {
                "type": "application",
                "name": "edgeward",
                "version": "0.1.0",
                "bom-ref": "edgeward",
                "purl": "pkg:generic/edgeward@0.1.0",
            }
        },
        "components": components,
    }
    path = tmp / name
    path.write_text(json.dumps(document))
    return path


def write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document))
    return path


def openvex(
    tmp: Path,
    vuln: str,
    product: str,
    *,
    justification: str | None = "vulnerable_code_not_in_execute_path",
    status: str = "not_affected",
    aliases: tuple[str, ...] = (),
    name: str = "openvex.json",
) -> Path:
    statement: dict[str, Any] = {
        "vulnerability": {"name": vuln, "aliases": list(aliases)},
        "products": [{"@id": "pkg:generic/edgeward@0.1.0", "subcomponents": [{"@id": product}]}],
        "status": status,
    }
    if justification is not None:
        statement["justification"] = justification
    return write(
        tmp / name,
        {
            "@context": "https://openvex.dev/ns/v0.2.0",
            "@id": "https://edgeward.dev/vex/1",
            "author": "edgeward security",
            "timestamp": "2099-01-01T00:00:00Z",
            "version": 1,
            "statements": [statement],
        },
    )


def cdx_vex(
    tmp: Path,
    vuln: str,
    ref: str,
    *,
    state: str = "not_affected",
    justification: str | None = "code_not_reachable",
    references: tuple[str, ...] = (),
) -> Path:
    analysis: dict[str, Any] = {"state": state}
    if justification is not None:
        analysis["justification"] = justification
    return write(
        tmp / "cdx-vex.json",
        {
            "bomFormat": "CycloneDX",
            "specVersion": "1.6",
            "version": 1,
            "vulnerabilities": [
                {
                    "id": vuln,
                    "references": [{"id": r, "source": {"name": "GHSA"}} for r in references],
                    "analysis": analysis,
                    "affects": [{"ref": ref}],
                }
            ],
        },
    )


def by_id(report: ScanReport) -> dict[str, Any]:
    return {v.id: v for v in report.vulnerabilities}


def record(
    *ranges: dict[str, Any], versions: list[str] | None = None, ecosystem: str = "PyPI", name: str = "pkg", **extra: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {"package": {"ecosystem": ecosystem, "name": name}}
    if ranges:
        entry["ranges"] = list(ranges)
    if versions is not None:
        entry["versions"] = versions
    return {"id": "OSV-TEST-1", "affected": [entry], **extra}


def eco(*events: dict[str, str]) -> dict[str, Any]:
    return {"type": "ECOSYSTEM", "events": list(events)}


def affected(rec: dict[str, Any], version: str, name: str = "pkg") -> bool:
    return osv.record_affects(rec, name, Version(version))


# --------------------------------------------------------------------------- the pure matcher


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("0.9", False),
        ("1.0", True),
        ("1.0.post1", True),
        ("1.3.99", True),
        ("1.4rc1", True),
        ("1.4", False),
        ("2.0", False),
    ],
)
def test_introduced_fixed_range_is_half_open(version: str, expected: bool) -> None:
    assert affected(record(eco({"introduced": "1.0"}, {"fixed": "1.4"})), version) is expected


def test_events_are_evaluated_in_version_order_not_file_order() -> None:
    rec = record(eco({"fixed": "1.6"}, {"introduced": "1.5"}, {"fixed": "1.2"}, {"introduced": "1.0"}))
    assert [affected(rec, v) for v in ("0.1", "1.1", "1.3", "1.5.1", "1.6")] == [False, True, False, True, False]


@pytest.mark.parametrize(("version", "expected"), [("0", True), ("2.0", True), ("2.0.0", True), ("2.0.1", False)])
def test_last_affected_is_inclusive(version: str, expected: bool) -> None:
    assert affected(record(eco({"introduced": "0"}, {"last_affected": "2.0"})), version) is expected


def test_limit_bounds_the_range_without_closing_intervals() -> None:
    rec = record(eco({"introduced": "0"}, {"limit": "1.0"}, {"introduced": "2.0"}, {"limit": "3.0"}))
    assert [affected(rec, v) for v in ("0.5", "1.5", "2.5", "3.0")] == [True, True, True, False]
    assert affected(record(eco({"introduced": "1.0"}, {"limit": "*"})), "99") is True


def test_versions_list_uses_pep440_equality_and_is_ored_with_ranges() -> None:
    rec = record(eco({"introduced": "5.0"}), versions=["0.9", "1.1.0", "not a version"])
    assert [affected(rec, v) for v in ("0.9", "1.1", "1.2", "5.1")] == [True, True, False, True]


def test_withdrawn_record_never_affects() -> None:
    assert affected(record(eco({"introduced": "0"}), withdrawn="2099-01-01T00:00:00Z"), "1.0") is False


def test_ecosystem_mismatch_and_pep503_names() -> None:
    assert affected(record(eco({"introduced": "0"}), ecosystem="npm"), "1.0") is False
    assert affected(record(eco({"introduced": "0"}), name="Zope.Interface_x"), "1.0", name="zope-interface-x") is True
    assert affected(record(eco({"introduced": "0"}), name="other"), "1.0") is False


def test_undecidable_records_raise_instead_of_answering_not_affected() -> None:
    with pytest.raises(osv.Undecidable, match="not a PEP 440 version"):
        affected(record(eco({"introduced": "0"}, {"fixed": "next week"})), "1.0")
    git_only = record({"type": "GIT", "repo": "https://git.example/x", "events": [{"introduced": "0"}]})
    with pytest.raises(osv.Undecidable, match="no versions list"):
        affected(git_only, "1.0")
    with pytest.raises(osv.Undecidable, match="exactly one"):
        affected(record(eco({"introduced": "0", "fixed": "1.0"})), "0.5")
    # A GIT range next to an ECOSYSTEM range is skipped, not fatal.
    both = record({"type": "GIT", "events": [{"introduced": "0"}]}, eco({"introduced": "1.0"}, {"fixed": "2.0"}))
    assert affected(both, "1.5") is True


def test_fix_versions_come_from_every_range() -> None:
    rec = record(eco({"introduced": "1.0"}, {"fixed": "1.4.2"}), eco({"introduced": "2.0"}, {"fixed": "2.1"}), name="P")
    assert osv.fix_versions(rec, "p") == ["1.4.2", "2.1"]


def test_severity_worst_rating_wins_and_missing_is_unknown() -> None:
    both = {
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"}],
        "database_specific": {"severity": "HIGH"},
    }
    assert severity_of([both], "").level == "high"
    v4 = {"severity": [{"type": "CVSS_V4", "score": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N"}]}
    assert (severity_of([v4], "").level, severity_of([v4], "").score) == ("critical", 9.3)
    assert severity_of([{"database_specific": {"severity": "MODERATE"}}], "").level == "medium"
    assert severity_of([{"severity": [{"type": "CVSS_V3", "score": "garbage"}]}], "why").source == "why"
    assert severity_of([], "no record").level == "unknown"


# --------------------------------------------------------------------------- snapshot and server


def test_snapshot_loads_nested_dirs_and_pins_a_digest(tmp_path: Path) -> None:
    index = load_advisories(DB)
    assert (index.records, index.withdrawn) == (6, 1)
    assert {r["id"] for r in index.for_package("demo_lib")} == {"PYSEC-2099-1", "GHSA-2099-wdrn-bbbb"}
    copy = shutil.copytree(DB, tmp_path / "db")
    assert load_advisories(copy).digest == index.digest
    (copy / "PYSEC" / "PYSEC-2099-3.json").write_text((copy / "PYSEC" / "PYSEC-2099-3.json").read_text() + " ")
    assert load_advisories(copy).digest != index.digest


def test_snapshot_refuses_what_would_read_as_clean(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(AuditError, match="no OSV records"):
        load_advisories(tmp_path / "empty")
    (tmp_path / "v2").mkdir()
    write(tmp_path / "v2" / "X.json", {"id": "X-1", "schema_version": "2.0.0"})
    with pytest.raises(AuditError, match="schema_version"):
        load_advisories(tmp_path / "v2")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.json").write_text("{")
    with pytest.raises(AuditError, match="not valid JSON"):
        load_advisories(tmp_path / "bad")


def test_server_answers_osv_queries_on_loopback() -> None:
    index = load_advisories(DB)

    def post(url: str, body: object) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    with serve(index) as server:
        assert server.url.startswith("http://127.0.0.1:")
        status, body = post(server.url, {"package": {"name": "Demo.Lib", "ecosystem": "PyPI"}, "version": "1.2"})
        # Withdrawn GHSA-2099-wdrn-bbbb and npm's NPM-2099-1 are not served; `published` is stripped.
        assert (status, [v["id"] for v in body["vulns"]]) == (200, ["PYSEC-2099-1"])
        assert "published" not in body["vulns"][0]
        assert post(server.url, {"package": {"name": "demo-lib", "ecosystem": "PyPI"}, "version": "1.4"}) == (
            200,
            {"vulns": []},
        )
        assert post(server.url, {"package": {"name": "demo-lib", "ecosystem": "npm"}, "version": "1"})[0] == 400
        assert post(server.url.replace("/v1/query", "/v1/querybatch"), {})[0] == 404
        assert server.log.was_answered("demo_lib", Version("1.2.0"))
        assert not server.log.was_answered("demo-lib", Version("1.3"))
    assert answer(index, {"package": {"name": "x", "ecosystem": "PyPI"}, "version": "not pep 440"})[0] == 400


def test_pip_audit_report_gaps_are_unchecked() -> None:
    asked = [
        pipaudit.Requested("a", Version("1.0")),
        pipaudit.Requested("b", Version("2.0")),
        pipaudit.Requested("c", Version("3.0")),
    ]
    report = {
        "dependencies": [
            {"name": "a", "version": "1.0", "vulns": [{"id": "X-1", "fix_versions": ["1.1"], "aliases": ["CVE-1"]}]},
            {"name": "b", "skip_reason": "Dependency not found on PyPI and could not be audited: b (2.0)"},
        ],
        "fixes": [],
    }
    outcome = pipaudit.interpret(report, asked)
    assert outcome.audited == {asked[0]}
    assert [(v.id, v.aliases) for v in outcome.vulnerabilities] == [("X-1", ("CVE-1",))]
    assert outcome.unchecked[asked[1]].startswith("pip-audit skipped it: Dependency not found")
    assert outcome.unchecked[asked[2]] == "missing from pip-audit's report"


def test_sbom_components_that_pip_audit_cannot_resolve_are_skipped(tmp_path: Path) -> None:
    path = sbom(
        tmp_path,
        "pkg:pypi/good@1.0",
        "pkg:pypi/weird@not.a.version!",
        "pkg:generic/openssl@3.0.11",
        "pkg:deb/debian/libc6@2.36",
    )
    document = json.loads(path.read_text())
    document["components"].append({"type": "file", "name": "no-purl", "version": "1"})
    document["components"][0]["components"] = [{"type": "library", "name": "inner", "purl": "pkg:pypi/Inner_Pkg@2"}]
    path.write_text(json.dumps(document))
    found = read_sbom(path, out_of_scope=["deb"])
    assert [(c.name, str(c.version)) for c in found.pypi] == [("good", "1.0"), ("inner-pkg", "2")]
    reasons = {c.name: (c.status, c.reason) for c in found.others}
    assert reasons["weird"][0] == "skipped" and "not PEP 440" in reasons["weird"][1]
    assert reasons["openssl"] == (
        "skipped",
        "not a PyPI component (purl type generic); no Python advisory source covers it",
    )
    assert reasons["libc6"][0] == "out_of_scope"
    assert reasons["no-purl"][0] == "skipped"
    with pytest.raises(AuditError, match="pypi cannot be out of scope"):
        read_sbom(path, out_of_scope=["pypi"])


def test_vex_not_affected_needs_a_justification(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="not_affected without a justification"):
        load_vex(openvex(tmp_path, "CVE-2099-0001", "pkg:pypi/demo-lib@1.2", justification=None))
    with pytest.raises(AuditError, match=r"not_affected without analysis\.justification"):
        load_vex(cdx_vex(tmp_path, "CVE-2099-0001", "pkg:pypi/demo-lib@1.2", justification=None))
    with pytest.raises(AuditError, match="unknown justification"):
        load_vex(openvex(tmp_path, "CVE-2099-0001", "pkg:pypi/demo-lib@1.2", justification="trust me"))


def test_vex_matching_by_alias_purl_bom_link_and_conflict(tmp_path: Path) -> None:
    subject = Subject(
        "pkg:pypi/demo-lib@1.2", "demo-ref", SERIAL, frozenset({"pkg:generic/edgeward@0.1.0", "edgeward"})
    )
    ids = frozenset({"PYSEC-2099-1", "CVE-2099-0001"})
    by_alias = load_vex(openvex(tmp_path, "GHSA-other", "pkg:pypi/Demo_Lib@1.2.0", aliases=("CVE-2099-0001",)))
    assert verdict(by_alias, ids, subject).status == "not_affected"
    assert verdict(by_alias, frozenset({"PYSEC-2099-9"}), subject).status == "affected"
    other_version = load_vex(openvex(tmp_path, "CVE-2099-0001", "pkg:pypi/demo-lib@1.3"))
    assert verdict(other_version, ids, subject).status == "affected"
    link = load_vex(cdx_vex(tmp_path, "CVE-2099-0001", f"urn:cdx:{SERIAL.removeprefix('urn:uuid:')}/1#demo-ref"))
    assert verdict(link, ids, subject).justification == "code_not_reachable"
    foreign = load_vex(cdx_vex(tmp_path, "CVE-2099-0001", "urn:cdx:00000000-0000-0000-0000-000000000000/1#demo-ref"))
    assert verdict(foreign, ids, subject).status == "affected"
    disputed = load_vex(
        openvex(
            tmp_path,
            "PYSEC-2099-1",
            "pkg:pypi/demo-lib@1.2",
            status="affected",
            justification=None,
            name="disputed.json",
        )
    )
    decided = verdict(by_alias + disputed, ids, subject)
    assert decided.status == "affected" and "VEX conflict" in decided.note


# --------------------------------------------------------------------------- real pip-audit scans


FULL = (
    "pkg:pypi/demo-lib@1.2",
    "pkg:pypi/demo-lib@1.4",
    "pkg:pypi/lastpkg@2.0",
    "pkg:pypi/listed@1.1",
    "pkg:pypi/clean@3.0",
    "pkg:generic/openssl@3.0.11",
)


def test_offline_scan_reports_findings_skips_and_fails_the_gate(tmp_path: Path) -> None:
    report = scan_sbom(sbom(tmp_path, *FULL), DB, [], "high")
    found = by_id(report)
    # introduced/fixed, last_affected (pip-audit picks the CVE alias as its id), explicit versions list.
    assert sorted((v.package, v.version) for v in report.vulnerabilities) == [
        ("demo-lib", "1.2"),
        ("lastpkg", "2.0"),
        ("listed", "1.1"),
    ]
    assert found["PYSEC-2099-1"].fix_versions == ("1.4",)
    assert (found["PYSEC-2099-1"].severity.level, found["PYSEC-2099-1"].severity.score) == ("critical", 9.8)
    assert found["CVE-2099-0002"].aliases == ("GHSA-2099-last-aaaa",)
    assert found["CVE-2099-0002"].severity.level == "medium"
    assert found["PYSEC-2099-3"].severity.level == "low"
    # The fixed version, the withdrawn record and the npm record produced nothing.
    assert "GHSA-2099-wdrn-bbbb" not in found and "NPM-2099-1" not in found
    assert {c.purl: c.status for c in report.components}["pkg:pypi/demo-lib@1.4"] == "checked"
    assert [s.package for s in report.skipped] == ["openssl"]
    assert report.gate.failing == (
        "PYSEC-2099-1 in demo-lib==1.2: critical",
        "unchecked openssl==3.0.11: not a PyPI component (purl type generic); no Python advisory source covers it",
    )
    with pytest.raises(Finding) as failure:
        check_gate(report)
    assert "\n" not in str(failure.value) and "PYSEC-2099-1" in str(failure.value) and "openssl" in str(failure.value)
    assert report.source.digest == load_advisories(DB).digest and report.source.mode == "offline"
    assert to_dict(report)["summary"]["affected"] == 3


def test_vex_by_alias_and_out_of_scope_pass_the_gate_only_at_high(tmp_path: Path) -> None:
    vex = openvex(tmp_path, "CVE-2099-0001", "pkg:pypi/demo-lib@1.2")
    path = sbom(tmp_path, *FULL)
    report = scan_sbom(path, DB, [vex], "high", out_of_scope=["generic"])
    mitigated = by_id(report)["PYSEC-2099-1"]
    assert (mitigated.status, mitigated.justification) == ("not_affected", "vulnerable_code_not_in_execute_path")
    assert mitigated.vex == "openvex.json#/statements/0"
    assert report.gate.passed and not report.skipped
    check_gate(report)
    stricter = scan_sbom(path, DB, [vex], "medium", out_of_scope=["generic"])
    assert stricter.gate.failing == ("CVE-2099-0002 in lastpkg==2.0: medium",)


def test_unknown_severity_fails_even_at_critical(tmp_path: Path) -> None:
    report = scan_sbom(sbom(tmp_path, "pkg:pypi/unrated@1.0"), DB, [], "critical")
    assert report.gate.failing == ("PYSEC-2099-4 in unrated==1.0: severity unknown (counts as failing)",)
    assert by_id(report)["PYSEC-2099-4"].severity.source == "advisory record has no severity"


def test_package_the_server_cannot_answer_for_fails_the_scan(tmp_path: Path) -> None:
    advisories = shutil.copytree(DB, tmp_path / "advisories")
    shutil.copytree(OSV_DIR / "malformed", advisories / "malformed")
    report = scan_sbom(sbom(tmp_path, "pkg:pypi/brokenpkg@1.0", "pkg:pypi/demo-lib@1.2"), advisories, [], "critical")
    assert [(s.package, s.reason) for s in report.skipped] == [
        ("brokenpkg", "advisory GHSA-2099-bad0-cccc: fixed version 'next week' is not a PEP 440 version")
    ]
    # pip-audit stopped at the 500; the rerun without brokenpkg still checked the rest.
    assert [v.id for v in report.vulnerabilities] == ["PYSEC-2099-1"]
    with pytest.raises(Finding, match=r"unchecked brokenpkg==1\.0: advisory GHSA-2099-bad0-cccc"):
        check_gate(report)


def test_cli_writes_deterministic_reports_then_exits_through_the_gate(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    path = sbom(tmp_path, "pkg:pypi/demo-lib@1.2", "pkg:pypi/clean@3.0")
    vex = cdx_vex(tmp_path, "GHSA-unrelated", "pkg:pypi/demo-lib@1.2", references=("CVE-2099-0001",))
    outputs = []
    for n in (1, 2):
        out, md = tmp_path / f"scan{n}.json", tmp_path / f"scan{n}.md"
        args = parser.parse_args(
            [
                str(path),
                "--advisories",
                str(DB),
                "--vex",
                str(vex),
                "--output",
                str(out),
                "--markdown",
                str(md),
                "--fail-on",
                "low",
            ]
        )
        assert command.run(args) == 0
        outputs.append((out.read_bytes(), md.read_bytes()))
    assert outputs[0] == outputs[1]
    document = json.loads(outputs[0][0])
    assert document["vulnerabilities"][0]["status"] == "not_affected"
    assert document["gate"]["passed"] is True and document["vex"][0]["path"] == "cdx-vex.json"
    assert (
        "| PYSEC-2099-1 | CVE-2099-0001 | demo-lib | 1.2 | critical (9.8) | 1.4 | not_affected"
        in outputs[0][1].decode()
    )
    failing = parser.parse_args([str(path), "--advisories", str(DB), "--output", str(tmp_path / "f.json")])
    with pytest.raises(Finding, match=r"PYSEC-2099-1 in demo-lib==1\.2: critical"):
        command.run(failing)
    assert json.loads((tmp_path / "f.json").read_text())["gate"]["passed"] is False  # written before the gate


def test_report_renderers_are_stable_for_one_report(tmp_path: Path) -> None:
    report = scan_sbom(sbom(tmp_path, "pkg:pypi/listed@0.9"), DB, [], "high")
    assert render_json(report) == render_json(report)
    text = render_markdown(report)
    assert "**Gate: PASSED**" in text and "| PYSEC-2099-3 |" in text and report.source.digest in text


@pytest.mark.online
def test_online_scan_against_pypi(tmp_path: Path) -> None:
    # requests 2.19.0 has long-published advisories (CVE-2018-18074); pip-audit gives no severity.
    report = scan_sbom(sbom(tmp_path, "pkg:pypi/requests@2.19.0"), None, [], "critical")
    assert report.source.mode == "online" and report.source.scanned_on
    assert report.vulnerabilities and not report.skipped
    assert all(v.severity.level == "unknown" for v in report.vulnerabilities)
    assert not report.gate.passed

"""`audit provenance` over the stand-in release of tests/data/nuitka (see make_fixture.py there).

The SBOM byproduct is produced by `audit sbom` itself, so the two commands are tested as the release runs them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2

from audit.buildinfo import BuildInfo, load_build_info
from audit.digest import sha256_file
from audit.errors import AuditError, Finding
from audit.provenance import build_provenance, dumps, write_provenance
from audit.provenance.validate import validate_statement
from audit.sbom import write_sbom
from audit.sbom.lock import load_lock

FIXTURES = Path(__file__).parent / "data" / "nuitka"


@dataclasses.dataclass
class Release:
    exe: Path
    info: BuildInfo
    report: Path
    sbom: Path
    lock: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SBOM for the module (it takes a few seconds); each test copies the directory."""
    root = tmp_path_factory.mktemp("release")
    for item in FIXTURES.iterdir():
        if item.name != "make_fixture.py":
            shutil.copy2(item, root / item.name)
    (root / "report.xml").rename(root / "edgeward.nuitka-report.xml")
    info = load_build_info(root / "edgeward.build.json")
    write_sbom(
        root / "edgeward", root / "edgeward.cdx.json", info, root / "edgeward.nuitka-report.xml",
        root / "requirements.lock", environ={},
    )  # fmt: skip
    return root


@pytest.fixture
def release(built: Path, tmp_path: Path) -> Release:
    root = tmp_path / "release"
    shutil.copytree(built, root)
    return Release(
        root / "edgeward",
        load_build_info(root / "edgeward.build.json"),
        root / "edgeward.nuitka-report.xml",
        root / "edgeward.cdx.json",
        root / "requirements.lock",
    )


def provenance(release: Release, info: BuildInfo | None = None, builder_id: str | None = None) -> dict[str, Any]:
    return build_provenance(release.exe, info or release.info, release.sbom, release.report, builder_id)


def test_statement_has_the_contract_shape(release: Release) -> None:
    statement = provenance(release)
    assert set(statement) == {"_type", "subject", "predicateType", "predicate"}
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [{"name": "edgeward", "digest": {"sha256": sha256_file(release.exe)}}]
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    definition = statement["predicate"]["buildDefinition"]
    assert definition["buildType"] == "https://edgeward.dev/build/nuitka-onefile/v1"
    assert definition["externalParameters"] == {
        "source": {
            "repository": "https://git.example/edgeward",
            "commit": "0123456789abcdef0123456789abcdef01234567",
            "dirty": False,
        },
        "build": {"recipe": "build/recipe.toml", "flags": list(release.info.flags)},
    }
    assert definition["internalParameters"] == {"buildId": release.info.build_id}
    run = statement["predicate"]["runDetails"]
    assert run["builder"] == {"id": "https://edgeward.dev/builders/test-fixture", "version": {"nuitka": "4.3.3"}}
    assert run["metadata"] == {
        "invocationId": release.info.build_id,
        "startedOn": "2026-11-23T08:17:04Z",
        "finishedOn": "2026-11-23T08:26:21Z",
    }
    assert run["byproducts"] == [
        {"name": "edgeward.cdx.json", "digest": {"sha256": sha256_file(release.sbom)}},
        {"name": "edgeward.nuitka-report.xml", "digest": {"sha256": sha256_file(release.report)}},
    ]


def test_resolved_dependencies(release: Release) -> None:
    deps = provenance(release)["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0] == {
        "name": "requirements.lock",
        "uri": "git+https://git.example/edgeward@0123456789abcdef0123456789abcdef01234567#requirements.lock",
        "digest": {"sha256": sha256_file(release.lock)},
    }
    by_uri = {d["uri"]: d for d in deps}
    lock = load_lock(release.lock)
    sbom_purls = {c.get("purl") for c in json.loads(release.sbom.read_text())["components"]}
    pypi = [d for d in deps if d["uri"].startswith("pkg:pypi/")]
    assert {d["uri"] for d in pypi} == {p for p in sbom_purls if p and p.startswith("pkg:pypi/")}
    assert "pkg:pypi/pycparser@3.12" not in by_uri  # locked, but not inside the executable
    uvloop = by_uri["pkg:pypi/uvloop@0.23.0"]
    # 61 locked files and no record of which was installed: all of them, no guess.
    assert uvloop["annotations"]["lockedSha256"] == sorted(lock.dists["uvloop"].hashes)
    assert "digest" not in uvloop
    for tool, version in (("python", "3.11.7"), ("nuitka", "4.3.3"), ("gcc", "12.2.0"), ("glibc", "2.36")):
        assert {"name": tool, "uri": f"pkg:generic/{tool}@{version}"} in deps
    assert {"name": "openssl", "uri": "pkg:generic/openssl@3.0.22"} in deps
    embedded = [d for d in deps if d.get("annotations", {}).get("embeddedIn")]
    assert [d["name"] for d in embedded] == ["openssl"]
    assert deps[-5:] == [d for d in deps if d["uri"].startswith("pkg:generic/") and d["name"] in {
        "python", "nuitka", "gcc", "glibc", "openssl"} and "annotations" not in d]  # fmt: skip


def test_installed_wheel_hash_from_the_build_record_becomes_the_digest(release: Release) -> None:
    wheel = load_lock(release.lock).dists["h2"].hashes[1]
    info = dataclasses.replace(release.info, extras={"wheel-sha256.h2": wheel})
    deps = provenance(release, info)["predicate"]["buildDefinition"]["resolvedDependencies"]
    h2 = next(d for d in deps if d["uri"] == "pkg:pypi/h2@4.4.1")
    assert h2 == {"name": "h2", "uri": "pkg:pypi/h2@4.4.1", "digest": {"sha256": wheel}}
    bad = dataclasses.replace(release.info, extras={"wheel-sha256.h2": "0" * 64})
    with pytest.raises(Finding, match=r"h2: installed wheel sha256 0{64} is not in the lock"):
        provenance(release, bad)


def test_statement_passes_the_in_toto_bindings(release: Release) -> None:
    statement = provenance(release)
    validate_statement(statement)
    parsed = json_format.ParseDict(statement["predicate"], provenance_pb2.Provenance())
    assert parsed.run_details.builder.id == "https://edgeward.dev/builders/test-fixture"
    envelope = json_format.ParseDict(
        {k: v for k, v in statement.items() if k != "_type"} | {"type": statement["_type"]}, statement_pb2.Statement()
    )
    assert envelope.subject[0].digest["sha256"] == sha256_file(release.exe)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda s: s["predicate"]["runDetails"]["builder"].update(id=""), "builder.id is required"),
        (lambda s: s["predicate"]["buildDefinition"].update(buildType=""), "buildType is required"),
        (lambda s: s["predicate"]["buildDefinition"].update(surprise=1), "provenance predicate"),
        (lambda s: s["predicate"]["runDetails"]["metadata"].update(startedOn="yesterday"), "provenance predicate"),
        (lambda s: s["subject"][0].update(digest={}), "At least one digest required"),
        (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "Wrong statement type"),
        (lambda s: s["predicate"]["runDetails"]["byproducts"][0].update(digest={"sha256": "ABC"}), "64 lower-case"),
    ],
)
def test_broken_statements_are_rejected(release: Release, breakage: Any, message: str) -> None:
    statement = copy.deepcopy(provenance(release))
    breakage(statement)
    with pytest.raises(AuditError, match=message):
        validate_statement(statement)


def test_subject_must_match_the_build_record(release: Release) -> None:
    release.exe.write_bytes(release.exe.read_bytes() + b"tampered")
    with pytest.raises(Finding) as caught:
        provenance(release)
    assert caught.value.exit_code == 1
    assert "differs from the build record's" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_sbom_of_another_executable_is_refused(release: Release) -> None:
    document = json.loads(release.sbom.read_text())
    document["metadata"]["component"]["hashes"][0]["content"] = "0" * 64
    release.sbom.write_text(json.dumps(document))
    with pytest.raises(Finding, match="describes an executable other than"):
        provenance(release)


def test_dirty_source_is_recorded(release: Release) -> None:
    dirty = dataclasses.replace(release.info, source_dirty=True)
    assert provenance(release, dirty)["predicate"]["buildDefinition"]["externalParameters"]["source"]["dirty"] is True
    assert provenance(release)["predicate"]["buildDefinition"]["externalParameters"]["source"]["dirty"] is False


def test_builder_id_from_the_caller_wins_and_one_is_required(release: Release) -> None:
    statement = provenance(release, builder_id="https://ci.example/runners/7")
    assert statement["predicate"]["runDetails"]["builder"]["id"] == "https://ci.example/runners/7"
    with pytest.raises(AuditError, match="no builder id"):
        provenance(release, dataclasses.replace(release.info, builder_id=""))


def test_missing_tool_version_is_an_error(release: Release) -> None:
    info = dataclasses.replace(release.info, tools=tuple(t for t in release.info.tools if t.name != "glibc"))
    with pytest.raises(AuditError, match="build record has no glibc version"):
        provenance(release, info)


def test_output_is_deterministic_and_written_only_when_valid(release: Release) -> None:
    output = release.exe.with_name("edgeward.intoto.json")
    digest = write_provenance(release.exe, output, release.info, release.sbom, release.report)
    first = output.read_bytes()
    assert digest == sha256_file(output)
    write_provenance(release.exe, output, release.info, release.sbom, release.report)
    assert output.read_bytes() == first == dumps(json.loads(first))
    assert first.endswith(b"}\n") and b'  "_type"' in first
    output.unlink()
    anonymous = dataclasses.replace(release.info, builder_id="")
    with pytest.raises(AuditError, match="no builder id"):
        write_provenance(release.exe, output, anonymous, release.sbom, release.report)
    assert not output.exists()


def test_cli(release: Release, capsys: pytest.CaptureFixture[str]) -> None:
    from audit.provenance import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.run(parser.parse_args([str(release.exe), "--builder-id", "https://ci.example/runners/7"])) == 0
    written = json.loads(release.exe.with_name("edgeward.intoto.json").read_text())
    assert written["predicate"]["runDetails"]["builder"]["id"] == "https://ci.example/runners/7"
    assert "wrote" in capsys.readouterr().err

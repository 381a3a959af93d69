"""`audit sbom` against a trimmed real Nuitka report and a stand-in onefile written by Nuitka's payload writer.

Licences, Requires-Dist and cryptography's OpenSSL are read from this venv (the build environment) and
system libraries from this machine's dpkg: both real, as in a release. See tests/data/nuitka/make_fixture.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from cyclonedx.validation.xml import XmlValidator

from audit.buildinfo import BuildInfo, load_build_info
from audit.digest import sha256_file
from audit.errors import AuditError, Finding
from audit.sbom import build_sbom, write_sbom
from audit.sbom.lock import load_lock, parse_lock
from audit.sbom.payload import read_payload

FIXTURES = Path(__file__).parent / "data" / "nuitka"
HAS_DPKG = shutil.which("dpkg-query") is not None and Path("/usr/lib/x86_64-linux-gnu/libssl.so.3").exists()


@dataclasses.dataclass
class Release:
    exe: Path
    info: BuildInfo
    report: Path
    lock: Path


def standin(path: str) -> str:
    """The hash make_fixture.py gave every bundled file of the stand-in executable."""
    return hashlib.sha256(f"stand-in for {path}\n".encode()).hexdigest()


@pytest.fixture
def release(tmp_path: Path) -> Release:
    for item in FIXTURES.iterdir():
        if item.name != "make_fixture.py":
            shutil.copy2(item, tmp_path / item.name)
    report = (tmp_path / "report.xml").rename(tmp_path / "edgeward.nuitka-report.xml")
    exe = tmp_path / "edgeward"
    return Release(exe, load_build_info(tmp_path / "edgeward.build.json"), report, tmp_path / "requirements.lock")


def sbom(release: Release, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("environ", {})
    return json.loads(build_sbom(release.exe, release.info, release.report, release.lock, **kwargs))


def component(document: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in document["components"] if c["name"] == name]
    assert len(found) == 1, [c["name"] for c in document["components"]]
    return found[0]


def properties(item: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in item.get("properties", ())}


def bundled_files(item: dict[str, Any]) -> dict[str, str]:
    """path -> sha256 from the `edgeward:bundled-file` properties ("<sha256>  <path>")."""
    pairs = [p["value"].split("  ", 1) for p in item.get("properties", ()) if p["name"] == "edgeward:bundled-file"]
    return {path: digest for digest, path in pairs}


def edges(document: dict[str, Any]) -> dict[str, set[str]]:
    return {d["ref"]: set(d.get("dependsOn", ())) for d in document["dependencies"]}


def test_json_is_valid_cyclonedx_1_6_describing_the_executable(release: Release) -> None:
    raw = build_sbom(release.exe, release.info, release.report, release.lock, environ={})
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(raw.decode()) is None
    document = json.loads(raw)
    assert document["specVersion"] == "1.6"
    top = document["metadata"]["component"]
    assert top["type"] == "application"
    assert (top["name"], top["version"]) == ("edgeward", "0.1.0")
    assert top["hashes"] == [{"alg": "SHA-256", "content": sha256_file(release.exe)}]
    assert properties(top)["edgeward:build-id"] == release.info.build_id
    assert properties(top)["edgeward:source-dirty"] == "false"
    uuid8 = r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"  # RFC 9562 v8
    assert re.fullmatch(uuid8, document["serialNumber"])
    assert raw.endswith(b"}\n")


def test_xml_is_valid_cyclonedx_1_6(release: Release) -> None:
    raw = build_sbom(release.exe, release.info, release.report, release.lock, fmt="xml", environ={})
    assert XmlValidator(SchemaVersion.V1_6).validate_str(raw.decode()) is None
    assert b'xmlns="http://cyclonedx.org/schema/bom/1.6"' in raw
    assert b"pkg:pypi/uvloop@0.23.0" in raw


def test_bytes_are_identical_across_runs_and_follow_source_date_epoch(release: Release) -> None:
    first = build_sbom(release.exe, release.info, release.report, release.lock, environ={})
    assert build_sbom(release.exe, release.info, release.report, release.lock, environ={}) == first
    assert json.loads(first)["metadata"]["timestamp"] == "2026-11-23T08:26:21+00:00"  # build record's finished_on

    pinned = {"SOURCE_DATE_EPOCH": "1767225600"}
    second = build_sbom(release.exe, release.info, release.report, release.lock, environ=pinned)
    assert build_sbom(release.exe, release.info, release.report, release.lock, environ=pinned) == second
    assert json.loads(second)["metadata"]["timestamp"] == "2026-01-01T00:00:00+00:00"
    # The serial number is derived from the content, not the clock.
    assert json.loads(second)["serialNumber"] == json.loads(first)["serialNumber"]
    xml = [build_sbom(release.exe, release.info, release.report, release.lock, fmt="xml", environ=pinned) for _ in "ab"]
    assert xml[0] == xml[1]


def test_serial_number_changes_with_content(release: Release) -> None:
    before = sbom(release)["serialNumber"]
    text = release.lock.read_text()
    old = load_lock(release.lock).dists["h2"].hashes[0]
    release.lock.write_text(text.replace(old, old[::-1]))  # another (well-formed) hash for one h2 wheel
    info = dataclasses.replace(release.info, lock_sha256=sha256_file(release.lock))
    after = json.loads(build_sbom(release.exe, info, release.report, release.lock, environ={}))["serialNumber"]
    assert after != before


def test_python_distributions_carry_lock_hashes_purls_and_licences(release: Release) -> None:
    document = sbom(release)
    lock = load_lock(release.lock)
    for name in ("uvloop", "cryptography", "h2", "aioquic", "pyjwt", "opentelemetry-sdk", "protobuf"):
        item = component(document, name)
        locked = lock.dists[name]
        assert item["version"] == locked.version
        assert item["purl"] == f"pkg:pypi/{name}@{locked.version}"
        assert sorted(h["content"] for h in item["hashes"]) == sorted(locked.hashes)
        assert {h["alg"] for h in item["hashes"]} == {"SHA-256"}
    expression = {"expression": "Apache-2.0 OR BSD-3-Clause", "acknowledgement": "declared"}
    assert component(document, "cryptography")["licenses"] == [expression]
    assert properties(component(document, "cryptography"))["edgeward:license-source"] == "License-Expression"
    uvloop = component(document, "uvloop")  # License: "MIT License" (not SPDX), so the classifiers decide
    assert sorted(lic["license"]["id"] for lic in uvloop["licenses"]) == ["Apache-2.0", "MIT"]
    assert properties(uvloop)["edgeward:license-source"] == "Classifier"
    assert component(document, "protobuf")["licenses"][0]["license"]["id"] == "BSD-3-Clause"


def test_only_bundled_distributions_are_listed(release: Release) -> None:
    names = {c["name"] for c in sbom(release)["components"]}
    assert "pycparser" in load_lock(release.lock).dists  # locked (cffi needs it at build time) ...
    assert "pycparser" not in names  # ... but Nuitka did not put it in the executable
    # opentelemetry-proto-json shares the `opentelemetry` namespace in the report but ships no included module.
    assert "opentelemetry-proto-json" not in names
    assert "edgeward" not in names  # the application is metadata.component, not a dependency of itself


def test_native_libraries_are_hashed_as_bundled(release: Release) -> None:
    document = sbom(release)
    libssl = component(document, "libssl")
    assert libssl["hashes"] == [{"alg": "SHA-256", "content": standin("libssl.so.3")}]
    assert properties(libssl)["edgeward:path"] == "libssl.so.3"
    for name, path in (("libcrypto", "libcrypto.so.3"), ("libffi", "libffi.so.8"), ("libuuid", "libuuid.so.1")):
        item = component(document, name)
        assert properties(item)["edgeward:path"] == path
        assert item["hashes"] == [{"alg": "SHA-256", "content": standin(path)}]


@pytest.mark.skipif(not HAS_DPKG, reason="needs dpkg with libssl3 installed")
def test_system_libraries_are_identified_by_dpkg(release: Release) -> None:
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "libssl3"], capture_output=True, text=True, check=True
    ).stdout
    libssl = component(sbom(release), "libssl")
    assert libssl["version"] == version
    assert libssl["purl"].startswith("pkg:deb/debian/libssl3@") and libssl["purl"].endswith("?arch=amd64")
    assert properties(libssl)["edgeward:system-package"] == "libssl3"
    assert libssl["licenses"] == [{"license": {"id": "Apache-2.0", "acknowledgement": "declared"}}]


def test_extension_modules_are_files_of_their_distribution_or_the_runtime(release: Release) -> None:
    document = sbom(release)
    assert bundled_files(component(document, "uvloop")) == {"uvloop/loop.so": standin("uvloop/loop.so")}
    assert set(bundled_files(component(document, "cffi"))) == {"_cffi_backend.so"}
    assert set(bundled_files(component(document, "protobuf"))) == {"google/_upb/_message.so"}
    assert set(bundled_files(component(document, "certifi"))) == {"certifi/cacert.pem"}
    cpython = component(document, "cpython")
    assert cpython["purl"] == "pkg:generic/cpython@3.11.7"
    runtime_files = bundled_files(cpython)
    assert runtime_files["_ssl.so"] == standin("_ssl.so")
    assert {"_hashlib.so", "_ctypes.so"} <= set(runtime_files)
    assert "_cffi_backend.so" not in runtime_files
    own = bundled_files(document["metadata"]["component"])
    assert set(own) == {"edgeward.bin", "ingress/demo/site/index.html", "ingress/demo/site/style.css"}
    # Every component is a package with a purl: nothing a scan would have to skip.
    assert all(c.get("purl") for c in document["components"])
    assert not any("components" in c for c in document["components"])


def test_the_scan_reads_every_component(release: Release) -> None:
    from audit.scan.sbom import read_sbom

    path = release.exe.with_name("edgeward.cdx.json")
    write_sbom(release.exe, path, release.info, release.report, release.lock, environ={})
    read = read_sbom(path, ("deb", "generic"))
    assert len(read.pypi) == 20
    assert {c.status for c in read.others} == {"out_of_scope"}


def test_cryptography_bundled_openssl_is_recorded(release: Release) -> None:
    from cryptography.hazmat.backends.openssl import backend

    expected = backend.openssl_version_text().split()[1]
    document = sbom(release)
    openssl = component(document, "openssl")
    assert openssl["version"] == expected
    assert openssl["purl"] == f"pkg:generic/openssl@{expected}"
    assert properties(openssl)["edgeward:embedded-in"] == "cryptography/hazmat/bindings/_rust.so"
    assert openssl["bom-ref"] in edges(document)["pkg:pypi/cryptography@50.0.2"]


def test_dependency_graph(release: Release) -> None:
    graph = edges(sbom(release))
    assert graph["pkg:pypi/h2@4.4.1"] == {"pkg:pypi/hpack@4.2.0", "pkg:pypi/hyperframe@6.1.0"}
    assert "pkg:pypi/pylsqpack@1.0.0" in graph["pkg:pypi/aioquic@1.7.2"]
    assert "pkg:pypi/cffi@2.1.1" in graph["pkg:pypi/cryptography@50.0.2"]
    # cffi's Requires-Dist pycparser is not bundled, so there is no edge to a component that is not there.
    assert graph["pkg:pypi/cffi@2.1.1"] == set()
    # The executable depends on what the project asked for, the runtime, and its own files.
    assert {"pkg:pypi/h2@4.4.1", "pkg:pypi/uvloop@0.23.0", "pkg:generic/cpython@3.11.7"} <= graph["edgeward"]
    assert "pkg:pypi/hpack@4.2.0" not in graph["edgeward"]
    # System libraries hang off the stdlib extension that loads them ("Used by '_ssl.so'").
    assert "native:libssl.so.3" in graph["pkg:generic/cpython@3.11.7"]
    every_ref = set(graph) | {t for targets in graph.values() for t in targets}
    assert every_ref <= set(graph)  # no dangling references


def test_distribution_missing_from_the_lock_is_an_error_and_nothing_is_written(release: Release) -> None:
    text = release.lock.read_text()
    trimmed = re.sub(r"^h2==.*?(?=^\S)", "", text, flags=re.MULTILINE | re.DOTALL)
    assert "h2==" not in trimmed
    release.lock.write_text(trimmed)
    info = dataclasses.replace(release.info, lock_sha256=sha256_file(release.lock))
    output = release.exe.with_name("edgeward.cdx.json")
    with pytest.raises(AuditError) as caught:
        write_sbom(release.exe, output, info, release.report, release.lock, environ={})
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith("h2: in the executable but not in the lock file")
    assert not output.exists() and not output.with_name("edgeward.cdx.json.partial").exists()


def test_lock_other_than_the_build_used_is_a_finding(release: Release) -> None:
    release.lock.write_text(release.lock.read_text() + "\n")
    with pytest.raises(Finding, match="differs from the build record's lock_sha256"):
        sbom(release)


def test_executable_other_than_the_build_record_is_a_finding(release: Release) -> None:
    release.exe.write_bytes(release.exe.read_bytes() + b"\0")
    with pytest.raises(Finding, match="differs from the build record"):
        sbom(release)


def test_file_inside_but_not_in_the_report_is_a_finding(release: Release) -> None:
    text = release.report.read_text()
    release.report.write_text(re.sub(r"\s*<included_dll name=\"libuuid.so.1\"[^>]*/>", "", text))
    with pytest.raises(Finding, match=r"^libuuid.so.1: inside edgeward but not in edgeward.nuitka-report.xml"):
        sbom(release)


def test_aborted_build_report_is_refused(release: Release) -> None:
    text = release.report.read_text()
    release.report.write_text(text.replace('completion="yes"', 'completion="interrupted"', 1))
    with pytest.raises(AuditError, match="did not complete"):
        sbom(release)


def test_validation_failure_is_an_error(release: Release) -> None:
    from datetime import UTC, datetime

    from audit.sbom.bom import make_bom, serialise
    from audit.sbom.inventory import BundledFile, Executable, Inventory

    inventory = Inventory(
        executable=Executable("edgeward", "0.1.0", "not-a-sha256", "id", "repo", "commit", False),
        python_version="3.11.7",
        runtime_files=(BundledFile("_ssl.so", "0" * 64, 1, "extension"),),
        dists=(),
        native=(),
        unattributed=(),
        app_files=(),
    )
    with pytest.raises(AuditError, match=r"does not validate against CycloneDX 1\.6 json"):
        serialise(make_bom(inventory, datetime(2026, 1, 1, tzinfo=UTC)), "json")
    with pytest.raises(AuditError, match=r"does not validate against CycloneDX 1\.6 xml"):
        serialise(make_bom(inventory, datetime(2026, 1, 1, tzinfo=UTC)), "xml")


def test_payload_embedded_in_the_bootstrap_is_found(release: Release, tmp_path: Path) -> None:
    # Nuitka 4.3 on Linux links the payload blob into the bootstrap ("incbin") instead of appending it.
    data = release.exe.read_bytes()
    blob = data[data.index(b"KAY") :]
    embedded = tmp_path / "embedded"
    decoy = b"KAY\x00\x00" + bytes(64)  # a marker that is not a payload must be skipped, not fatal
    embedded.write_bytes(b"\x7fELF" + b"KA" + bytes(4000) + blob + decoy + (0).to_bytes(8, "little"))
    appended = read_payload(release.exe, checksums=True)
    assert read_payload(embedded, checksums=True) == appended
    assert appended["libssl.so.3"].sha256 == standin("libssl.so.3")
    assert appended["edgeward.bin"].size == len("stand-in for edgeward.bin\n")


def test_not_a_onefile_executable_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"#!/bin/sh\nexit 0\n" * 10)
    with pytest.raises(AuditError, match="no Nuitka onefile payload"):
        read_payload(plain, checksums=True)


def test_lock_parser(release: Release, tmp_path: Path) -> None:
    lock = load_lock(release.lock)
    assert len(lock.dists["cffi"].hashes) == 100
    assert lock.dists["h2"].direct and not lock.dists["hpack"].direct
    assert lock.get("PyJWT") is lock.dists["pyjwt"]
    with pytest.raises(AuditError, match=r"foo==1.0 has no --hash"):
        parse_lock("foo==1.0\n    # via bar\n", tmp_path / "x.lock")


def test_cli_writes_the_sbom_beside_the_executable(
    release: Release, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.sbom import command

    # The build record names its lock relative to the checkout it was built in; here that is the fixture's folder.
    monkeypatch.chdir(release.exe.parent)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.run(parser.parse_args([str(release.exe)])) == 0
    written = release.exe.with_name("edgeward.cdx.json")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(written.read_text()) is None
    assert "wrote" in capsys.readouterr().err
    assert command.run(parser.parse_args([str(release.exe), "--format", "xml"])) == 0
    assert release.exe.with_name("edgeward.cdx.xml").read_bytes().startswith(b"<?xml")


def test_symlinked_library_in_the_payload_is_hashed_through_the_link(tmp_path: Path) -> None:
    from nuitka.tools.onefile_compressor.OnefileCompressor import attachOnefilePayload

    from audit.sbom.inventory import _follow

    dist = tmp_path / "dist"
    (dist / "pkg.libs").mkdir(parents=True)
    (dist / "pkg.libs" / "libz.so.1.3").write_bytes(b"zlib bytes\n")
    (dist / "pkg.libs" / "libz.so.1").symlink_to("libz.so.1.3")
    (dist / "main.bin").write_bytes(b"main\n")
    exe = tmp_path / "exe"
    exe.write_bytes(b"bootstrap\n")
    attachOnefilePayload(
        dist_dir=str(dist), onefile_output_filename=str(exe), start_binary=str(dist / "main.bin"),
        include_start_binary=True, expect_compression=True, as_archive=False, use_compression_cache=False,
        file_checksums=False, win_path_sep=False, low_memory=False, job_limit=1,
        expected_files=("pkg.libs/libz.so.1.3", "pkg.libs/libz.so.1", "main.bin"),
    )  # fmt: skip
    payload = read_payload(exe, checksums=False)
    assert payload["pkg.libs/libz.so.1"].link_target == "libz.so.1.3"
    followed = _follow(payload, "pkg.libs/libz.so.1")
    assert followed is not None and followed.sha256 == hashlib.sha256(b"zlib bytes\n").hexdigest()
    # Read with the wrong checksum setting, the payload does not parse: reported, not guessed around.
    with pytest.raises(AuditError, match="no Nuitka onefile payload"):
        read_payload(exe, checksums=True)


def test_licences_as_declared() -> None:
    from importlib.metadata import distribution

    from audit.sbom.licenses import FoundLicense, dep5_license, python_license

    # hyperframe's License field is the full licence text: not a name; its classifier says MIT.
    assert python_license(distribution("hyperframe").metadata) == FoundLicense("Classifier", ids=("MIT",))
    assert python_license(distribution("certifi").metadata) == FoundLicense("License", expression="MPL-2.0")
    dep5 = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: x\n\n"
        "Files: debian/*\nLicense: GPL-2+\n\nFiles: *\nCopyright: someone\nLicense: Expat or GPL-2+\n text\n"
    )
    assert dep5_license(dep5) == FoundLicense("debian/copyright", expression="MIT OR GPL-2.0-or-later")
    assert dep5_license(dep5.replace("Expat or GPL-2+", "BSD-variant")).names == ("BSD-variant",)
    assert dep5_license("This is the Debian prepackaged version of the GNU C Library.\n") == FoundLicense()

"""Assemble the provenance statement from the release artefacts (shape fixed by the issue-7 contract).

The subject and byproduct digests are recomputed from the files here (and the subject must match the
build record). The lock file's digest is the build record's, which `audit sbom` checked against the lock
it read; distribution and library digests come from the SBOM, whose hashes came from that lock and from
the executable's payload.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

from audit.buildinfo import BuildInfo
from audit.digest import sha256_bytes, sha256_file
from audit.errors import AuditError, Finding
from audit.files import write_atomic

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://edgeward.dev/build/nuitka-onefile/v1"
TOOLS = ("python", "nuitka", "gcc", "glibc", "openssl")
_EMBEDDED_IN = "edgeward:embedded-in"


def _sbom(path: Path, exe_sha256: str) -> dict[str, Any]:
    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the SBOM: {exc.strerror}", hint="run `audit sbom` first") from None
    except ValueError:
        raise AuditError(
            f"{path}: not JSON", hint="pass the CycloneDX JSON SBOM (`audit sbom --format json`)"
        ) from None
    if not isinstance(document, dict) or document.get("bomFormat") != "CycloneDX":
        raise AuditError(f"{path}: not a CycloneDX SBOM")
    top = document.get("metadata", {}).get("component", {})
    described = {h.get("content") for h in top.get("hashes", ()) if h.get("alg") == "SHA-256"}
    if not any(isinstance(d, str) and hmac.compare_digest(d, exe_sha256) for d in described):
        raise Finding(f"{path}: describes an executable other than sha256 {exe_sha256}")
    return document


def _dependencies(sbom: dict[str, Any], build_info: BuildInfo) -> list[dict[str, Any]]:
    """Lock file, then every bundled locked distribution and native library (from the SBOM), then the tools."""
    deps: list[dict[str, Any]] = [
        {
            "name": Path(build_info.lock_file).name,
            "uri": f"git+{build_info.source_repository}@{build_info.source_commit}#{build_info.lock_file}",
            "digest": {"sha256": build_info.lock_sha256},
        }
    ]
    pinned = []
    for component in sbom.get("components", ()):
        purl = str(component.get("purl", ""))
        hashes = sorted(h["content"] for h in component.get("hashes", ()) if h.get("alg") == "SHA-256")
        properties = {p.get("name"): p.get("value") for p in component.get("properties", ())}
        entry: dict[str, Any] = {"name": component["name"], "uri": purl}
        if purl.startswith("pkg:generic/cpython@"):
            continue  # the build record's `python` tool entry below is the same runtime
        if purl.startswith("pkg:pypi/"):
            # The lock allows one file per platform (and the sdist); the wheel that was installed is one of
            # them. Name it when the build recorded which, else list them all rather than pick one.
            installed = build_info.extras.get(f"wheel-sha256.{component['name']}", "")
            if installed and installed not in hashes:
                raise Finding(f"{component['name']}: installed wheel sha256 {installed} is not in the lock")
            if installed or len(hashes) == 1:
                entry["digest"] = {"sha256": installed or hashes[0]}
            else:
                entry["annotations"] = {"lockedSha256": hashes}
        elif purl:
            if hashes:
                entry["digest"] = {"sha256": hashes[0]}
            if properties.get(_EMBEDDED_IN):
                entry["annotations"] = {"embeddedIn": properties[_EMBEDDED_IN]}
        else:
            continue
        pinned.append(entry)
    deps.extend(sorted(pinned, key=lambda d: (not d["uri"].startswith("pkg:pypi/"), d["uri"], d["name"])))
    for name in TOOLS:
        version = build_info.tool(name)
        if not version:
            raise AuditError(
                f"build record has no {name} version", hint="`audit build` records python, nuitka, gcc, glibc, openssl"
            )
        deps.append({"name": name, "uri": f"pkg:generic/{name}@{version}"})
    return deps


def build_provenance(
    exe: Path,
    build_info: BuildInfo,
    sbom_path: Path,
    report_path: Path,
    builder_id: str | None = None,
) -> dict[str, Any]:
    """The provenance statement, validated with the in-toto protobuf bindings; raises instead of returning a bad one."""
    from audit.provenance.validate import validate_statement

    # (1) Subject: the executable's digest, recomputed; it must be the one the build record describes.
    exe_sha256 = sha256_file(exe)
    if not hmac.compare_digest(exe_sha256, build_info.executable_sha256):
        raise Finding(f"{exe}: sha256 {exe_sha256} differs from the build record's {build_info.executable_sha256}")
    # (2) The SBOM must describe this executable; (3) byproducts are hashed as they are on disk.
    sbom_bytes = _read(sbom_path, "SBOM")
    sbom = _sbom(sbom_path, exe_sha256)
    report_bytes = _read(report_path, "Nuitka report")
    # (4) The builder is named by the caller or the build record, never left empty.
    builder = builder_id or build_info.builder_id
    if not builder:
        raise AuditError("no builder id", hint="pass --builder-id URI (or record one with `audit build`)")
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": exe.name, "digest": {"sha256": exe_sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "source": {
                        "repository": build_info.source_repository,
                        "commit": build_info.source_commit,
                        "dirty": build_info.source_dirty,
                    },
                    "build": {"recipe": build_info.recipe, "flags": list(build_info.flags)},
                },
                "internalParameters": {"buildId": build_info.build_id},
                "resolvedDependencies": _dependencies(sbom, build_info),
            },
            "runDetails": {
                "builder": {"id": builder, "version": {"nuitka": build_info.tool("nuitka")}},
                "metadata": {
                    "invocationId": build_info.build_id,
                    "startedOn": build_info.started_on,
                    "finishedOn": build_info.finished_on,
                },
                "byproducts": [
                    {"name": sbom_path.name, "digest": {"sha256": sha256_bytes(sbom_bytes)}},
                    {"name": report_path.name, "digest": {"sha256": sha256_bytes(report_bytes)}},
                ],
            },
        },
    }
    # (5) Nothing leaves this function that the in-toto/SLSA bindings would not accept.
    validate_statement(statement)
    return statement


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def dumps(statement: dict[str, Any]) -> bytes:
    return (json.dumps(statement, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_provenance(
    exe: Path,
    output: Path,
    build_info: BuildInfo,
    sbom_path: Path,
    report_path: Path,
    builder_id: str | None = None,
) -> str:
    """Write the statement (nothing is written if anything fails); return its SHA-256 hex."""
    document = dumps(build_provenance(exe, build_info, sbom_path, report_path, builder_id))
    return write_atomic(output, document)

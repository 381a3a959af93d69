"""Build and write the SBOM from the release artefacts; the steps are in the order a reviewer checks them."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from audit.buildinfo import BuildInfo
from audit.digest import sha256_file
from audit.errors import AuditError, Finding
from audit.files import write_atomic
from audit.sbom.lock import Lock, load_lock
from audit.sbom.report import NuitkaReport, load_report
from audit.sbom.system import PackageDatabase, default_database


def load_checked_lock(path: Path, build_info: BuildInfo) -> Lock:
    """The lock, refused unless it is byte-for-byte the one the build record says the build used."""
    lock = load_lock(path)
    actual = sha256_file(path)
    if not build_info.lock_sha256:
        raise AuditError("build record has no lock_sha256", hint="`audit build` records the lock it built from")
    if not hmac.compare_digest(actual, build_info.lock_sha256):
        raise Finding(f"{path}: sha256 {actual} differs from the build record's lock_sha256 {build_info.lock_sha256}")
    return lock


def build_sbom(
    exe: Path,
    build_info: BuildInfo,
    report: NuitkaReport | Path,
    lock: Lock | Path,
    *,
    fmt: str = "json",
    environ: Mapping[str, str] | None = None,
    packages: PackageDatabase | None = None,
) -> bytes:
    """The SBOM document, validated against the CycloneDX 1.6 schema; raises instead of returning a bad one."""
    from audit.sbom.bom import make_bom, sbom_timestamp, serialise
    from audit.sbom.inventory import collect
    from audit.sbom.payload import read_payload

    report = report if isinstance(report, NuitkaReport) else load_report(report)
    lock = lock if isinstance(lock, Lock) else load_checked_lock(lock, build_info)
    # (1) The executable must be the one the build record describes.
    exe_sha256 = sha256_file(exe)
    if not hmac.compare_digest(exe_sha256, build_info.executable_sha256):
        raise Finding(f"{exe}: sha256 {exe_sha256} differs from the build record's {build_info.executable_sha256}")
    # (2) Its payload is the ground truth for the binaries; (3) the report, lock and metadata for the rest.
    payload = read_payload(exe, checksums=report.payload_has_checksums)
    inventory = collect(exe, exe_sha256, build_info, report, lock, payload, packages or default_database())
    timestamp = sbom_timestamp(build_info, os.environ if environ is None else environ)
    return serialise(make_bom(inventory, timestamp), fmt)


def write_sbom(
    exe: Path,
    output: Path,
    build_info: BuildInfo,
    report: NuitkaReport | Path,
    lock: Lock | Path,
    *,
    fmt: str = "json",
    environ: Mapping[str, str] | None = None,
    packages: PackageDatabase | None = None,
) -> str:
    """Write the SBOM (nothing is written if anything fails); return its SHA-256 hex."""
    document = build_sbom(exe, build_info, report, lock, fmt=fmt, environ=environ, packages=packages)
    return write_atomic(output, document)

"""Signing a release directory: what `audit sign` and `audit release` call.

Order matters: the executable and documents first, then SHA256SUMS over every file (signatures included),
then the signed checksum statement last, because it is the one file that covers all the others.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from audit.digest import sha256_bytes, sha256_file
from audit.errors import AuditError
from audit.files import write_atomic
from audit.sign.names import (
    BUNDLE_SUFFIX,
    ENVELOPE_SUFFIX,
    PAYLOAD_TYPE_CYCLONEDX,
    PAYLOAD_TYPE_INTOTO,
    PROVENANCE_SUFFIX,
    RELEASE_FILE_NAME_RULE,
    SBOM_SUFFIX,
    SUMS_NAME,
    SUMS_PREDICATE_TYPE,
    is_release_file_name,
)
from audit.sign.signer import Signer

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"


def default_statements(executable: Path) -> dict[Path, str]:
    """The documents beside the executable that the contract says are signed, with their payload types."""
    found: dict[Path, str] = {}
    for suffix, payload_type in ((PROVENANCE_SUFFIX, PAYLOAD_TYPE_INTOTO), (SBOM_SUFFIX, PAYLOAD_TYPE_CYCLONEDX)):
        path = executable.with_name(executable.name + suffix)
        if path.is_file():
            found[path] = payload_type
    return found


def sign_release_files(executable: Path, statement_files: Mapping[Path, str], signer: Signer) -> list[Path]:
    """Sign the executable and each document (path -> DSSE payloadType); return every file written."""
    written = signer.write_material(executable.parent)
    written.append(signer.sign_artefact(executable))
    for path, payload_type in statement_files.items():
        try:
            payload = path.read_bytes()
        except OSError as exc:
            raise AuditError(f"{path}: cannot read ({exc.strerror})") from exc
        written.append(signer.sign_payload(payload, payload_type, path.name, path.parent))
    return written


def sums_signature_names() -> frozenset[str]:
    return frozenset({SUMS_NAME, SUMS_NAME + ENVELOPE_SUFFIX, SUMS_NAME + BUNDLE_SUFFIX})


def checksum_lines(directory: Path) -> str:
    """`<hex>  <name>` (sha256sum's text format) for every file but SHA256SUMS and its signature, sorted.

    Every name is checked against the verifier's rule before anything is hashed or written, so a release
    the verifier would refuse is never published.
    """
    # 1. Inventory: regular files only, each with a name the verifier accepts (audit.sign.names).
    try:
        paths = sorted(directory.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise AuditError(f"{directory}: cannot list ({exc.strerror})") from exc
    listed = []
    for path in paths:
        if path.name in sums_signature_names():
            continue
        if not is_release_file_name(path.name):
            raise AuditError(
                f"{path.name!r}: file name cannot be listed in {SUMS_NAME}", hint=f"use {RELEASE_FILE_NAME_RULE}"
            )
        if path.is_symlink() or not path.is_file():
            raise AuditError(f"{path}: a release directory holds only regular files")
        listed.append(path)
    # 2. Only then hash them.
    lines = []
    for path in listed:
        try:
            digest = sha256_file(path)
        except OSError as exc:
            raise AuditError(f"{path}: cannot read ({exc.strerror})") from exc
        lines.append(f"{digest}  {path.name}\n")
    return "".join(lines)


def checksums_statement(sums: bytes) -> bytes:
    """In-toto Statement v1: one subject per SHA256SUMS line, and the SHA256SUMS file's own digest.

    The predicate binds the exact bytes of SHA256SUMS, so no edit to it (even one that parses the same)
    survives verification.
    """
    subjects = []
    # split("\n"), not splitlines(): the verifier splits on LF only, and so must the signer.
    text = sums.decode("utf-8")
    for line in text[:-1].split("\n") if text else []:
        digest, name = line.split("  ", 1)
        subjects.append({"name": name, "digest": {"sha256": digest}})
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": SUMS_PREDICATE_TYPE,
        "predicate": {"checksums": {"name": SUMS_NAME, "digest": {"sha256": sha256_bytes(sums)}}},
    }
    return (json.dumps(statement, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_checksums(directory: Path, signer: Signer) -> list[Path]:
    """Write SHA256SUMS and its signed statement (`SHA256SUMS.dsse.json` or `.sigstore.json`); call last."""
    sums = checksum_lines(directory).encode("utf-8")
    sums_path = directory / SUMS_NAME
    write_atomic(sums_path, sums)
    envelope = signer.sign_payload(checksums_statement(sums), PAYLOAD_TYPE_INTOTO, SUMS_NAME, directory)
    return [sums_path, envelope]

"""A local OSV advisory directory, loaded once and pinned by a digest.

An offline scan is only as good as the advisory snapshot it used, so the report names the snapshot
by a digest over every record file: a regulator can ask for that exact directory and re-run the scan.
Loading is strict: an empty directory, unreadable JSON or an unsupported schema would otherwise turn
into "no vulnerabilities", the one wrong answer a scanner must never give.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.digest import sha256_bytes
from audit.errors import AuditError
from audit.pypi import normalise_name
from audit.scan import osv


@dataclass(frozen=True)
class AdvisoryIndex:
    """OSV records by the normalised PyPI names they affect, plus what identifies the snapshot."""

    directory: Path
    digest: str  # sha256 over "<sha256>  <relative path>\n" lines (sha256sum format), sorted by path
    records: int
    withdrawn: int
    by_package: Mapping[str, tuple[Mapping[str, Any], ...]] = field(repr=False)

    def for_package(self, name: str) -> tuple[Mapping[str, Any], ...]:
        return self.by_package.get(normalise_name(name), ())

    def find(self, name: str, ids: frozenset[str]) -> list[Mapping[str, Any]]:
        """Records for `name` that share any id or alias with `ids` (a pip-audit result's names)."""
        return [record for record in self.for_package(name) if osv.ids_of(record) & ids]


def _record_files(directory: Path) -> list[Path]:
    files: list[Path] = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        files.extend(Path(root, name) for name in sorted(names) if name.endswith(".json"))
    return files


def _load_record(path: Path, data: bytes) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditError(f"advisory {path}: not valid JSON ({exc})", hint="one OSV record per .json file") from None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not record["id"]:
        raise AuditError(f"advisory {path}: not an OSV record (no string 'id')", hint="one OSV record per .json file")
    schema = str(record.get("schema_version", "1.0.0"))
    # pip-audit silently drops records of another major schema version; refuse them here instead.
    if not schema.split(".", 1)[0] == "1":
        raise AuditError(f"advisory {path}: unsupported OSV schema_version {schema!r}", hint="OSV schema 1.x only")
    return record


def load_advisories(directory: Path) -> AdvisoryIndex:
    """Read every `*.json` under `directory` (nested directories too) as one OSV record."""
    if not directory.is_dir():
        raise AuditError(f"advisory directory {directory} does not exist", hint="--advisories DIR of OSV JSON files")
    manifest: list[tuple[str, str]] = []
    by_package: dict[str, list[Mapping[str, Any]]] = {}
    seen: dict[str, Path] = {}
    withdrawn = 0
    for path in _record_files(directory):
        data = path.read_bytes()
        record = _load_record(path, data)
        if record["id"] in seen:
            raise AuditError(
                f"advisory {path}: id {record['id']} already defined by {seen[record['id']]}",
                hint="an advisory snapshot has one file per id",
            )
        seen[record["id"]] = path
        manifest.append((path.relative_to(directory).as_posix(), sha256_bytes(data)))
        withdrawn += osv.is_withdrawn(record)
        for name in osv.names_in(record):
            by_package.setdefault(name, []).append(record)
    if not manifest:
        raise AuditError(
            f"advisory directory {directory} has no OSV records (*.json)",
            hint="an empty advisory snapshot would report every package as clean",
        )
    return AdvisoryIndex(
        directory=directory,
        digest=sha256_bytes("".join(f"{digest}  {name}\n" for name, digest in sorted(manifest)).encode()),
        records=len(manifest),
        withdrawn=withdrawn,
        by_package={name: tuple(records) for name, records in by_package.items()},
    )

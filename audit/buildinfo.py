"""What `audit build` records about a build, beside the executable, for the SBOM and the provenance.

The record is written once by the builder and only read afterwards: the SBOM takes the tool versions and
the lock file from it, the provenance takes the source, flags, tool versions and times. Keeping it a file
(`<executable>.build.json`) lets `audit sbom` and `audit provenance` run later, on another machine, from
the artefacts alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import AuditError

BUILD_INFO_SUFFIX = ".build.json"
REPORT_SUFFIX = ".nuitka-report.xml"
SCHEMA = "https://edgeward.dev/build-info/v1"


@dataclass(frozen=True)
class Tool:
    """A tool that shaped the bytes: name as in a purl (`python`, `nuitka`, `gcc`, `openssl`), and version."""

    name: str
    version: str


@dataclass(frozen=True)
class BuildInfo:
    """One build of the executable.

    `build_id` is the SHA-256 (hex) of the inputs: source tree, lock file, recipe, flags and tool versions;
    the executable embeds it and `ingress version` prints it. `lock_file` is relative to `source_dir`.
    Times are RFC 3339 UTC.
    """

    version: str
    build_id: str
    executable: str
    executable_sha256: str
    source_repository: str
    source_commit: str
    source_dirty: bool
    flags: tuple[str, ...]
    recipe: str
    lock_file: str
    lock_sha256: str
    tools: tuple[Tool, ...]
    started_on: str
    finished_on: str
    builder_id: str
    extras: dict[str, str] = field(default_factory=dict)

    def tool(self, name: str) -> str:
        for tool in self.tools:
            if tool.name == name:
                return tool.version
        return ""

    def to_json(self) -> str:
        data: dict[str, Any] = {"schema": SCHEMA, **asdict(self)}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def build_info_path(executable: Path) -> Path:
    return executable.with_name(executable.name + BUILD_INFO_SUFFIX)


def report_path(executable: Path) -> Path:
    return executable.with_name(executable.name + REPORT_SUFFIX)


def load_build_info(path: Path) -> BuildInfo:
    """Read a build record; a missing or foreign file names itself and how to make one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditError(
            f"{path}: no build record", hint="run `audit build` first; it writes one beside the executable"
        ) from None
    except (OSError, ValueError) as exc:
        raise AuditError(f"{path}: cannot read the build record: {exc}") from None
    if not isinstance(data, dict) or data.pop("schema", None) != SCHEMA:
        raise AuditError(f"{path}: not an edgeward build record (schema must be {SCHEMA})")
    try:
        data["flags"] = tuple(data["flags"])
        data["tools"] = tuple(Tool(**tool) for tool in data["tools"])
        return BuildInfo(**data)
    except (KeyError, TypeError) as exc:
        raise AuditError(f"{path}: malformed build record: {exc}") from None

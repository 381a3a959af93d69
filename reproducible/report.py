"""The comparison as data, as deterministic JSON and as text for a person.

The verdict is about the executable's bytes; the standalone tree and the payload say where a difference
comes from, and the explained ranges say what it is. What still differs is listed, never summarised away.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from reproducible.explain import KINDS, Region

EXECUTABLE = "executable"
STANDALONE = "standalone"
PAYLOAD_ENTRY = "payload"
RECORD = "record"


@dataclass(frozen=True)
class FileDiff:
    path: str
    role: str
    status: str  # differs | only-a | only-b | mode
    size_a: int = 0
    size_b: int = 0
    sha256_a: str = ""
    sha256_b: str = ""
    regions: tuple[Region, ...] = ()
    regions_total: int = 0
    bytes_differing: int = 0
    note: str = ""


@dataclass(frozen=True)
class Report:
    executable: str
    sha256_a: str
    sha256_b: str
    files_compared: int
    differences: tuple[FileDiff, ...]
    sides: dict[str, dict[str, str]] = field(default_factory=dict)
    context: dict[str, str | int] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        if self.executable:
            return bool(self.sha256_a) and self.sha256_a == self.sha256_b
        return not [d for d in self.differences if d.status != "mode"]

    def content_differences(self, role: str) -> list[FileDiff]:
        return [d for d in self.differences if d.role == role and d.status != "mode"]

    def kinds(self) -> dict[str, int]:
        counted = Counter(r.kind for d in self.differences for r in d.regions)
        return {kind: counted[kind] for kind in KINDS if counted[kind]}

    def with_context(self, **values: str | int) -> Report:
        return dataclasses.replace(self, context={**self.context, **values})

    def to_dict(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "executable": {"name": self.executable, "sha256": {"a": self.sha256_a, "b": self.sha256_b}},
            "files_compared": self.files_compared,
            "standalone_tree_identical": not self.content_differences(STANDALONE),
            "region_kinds": self.kinds(),
            "differences": [dataclasses.asdict(d) for d in self.differences],
            "builds": self.sides,
            "context": self.context,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_text(self) -> str:
        lines = [
            f"reproducible {self.context.get('command', 'compare')}: "
            + ("IDENTICAL" if self.identical else "DIFFERENT")
        ]
        if "source" in self.context:
            lines.append(f"  source      {self.context['source']}")
        if "seconds" in self.context:
            lines.append(f"  took        {self.context['seconds']} s")
        for key in sorted(set(self.context) - {"command", "source", "seconds"}):
            lines.append(f"  {key:<11} {self.context[key]}")
        for label, facts in sorted(self.sides.items()):
            lines.append(f"  build {label:<5} " + ", ".join(f"{k} {v}" for k, v in sorted(facts.items())))
        if self.executable:
            lines.append(f"  {self.executable}: a {self.sha256_a or '-'}")
            lines.append(f"  {' ' * len(self.executable)}  b {self.sha256_b or '-'}")
        standalone = self.content_differences(STANDALONE)
        lines.append(
            f"  files compared {self.files_compared}; standalone tree "
            + ("identical" if not standalone else f"differs in {len(standalone)} file(s)")
        )
        if self.kinds():
            lines.append("  differing ranges by kind: " + ", ".join(f"{k} {n}" for k, n in self.kinds().items()))
        modes = [d for d in self.differences if d.status == "mode"]
        if modes:
            lines.append(
                f"- {len(modes)} file(s) differ only in their mode ({modes[0].note}, ...): the umask; the onefile"
                " payload keeps only the executable bit, so this does not reach the executable"
            )
        for diff in self.differences:
            if diff.status == "mode":
                continue
            lines.append(f"- {diff.path} [{diff.role}] {diff.status}" + (f": {diff.note}" if diff.note else ""))
            if diff.status == "differs" and diff.size_a:
                lines.append(
                    f"    {diff.size_a} vs {diff.size_b} bytes, {diff.bytes_differing} differing in "
                    f"{diff.regions_total} range(s)"
                    + (f" ({len(diff.regions)} listed)" if diff.regions_total > len(diff.regions) else "")
                )
            runs = _runs(diff.regions)
            for run in runs[:40]:
                lines.append("    " + _describe_run(run))
            if len(runs) > 40:
                lines.append(f"    ... {len(runs) - 40} more in the JSON report")
        return "\n".join(lines) + "\n"


_SAME_STORY = ("payload", "unknown")


def _runs(regions: tuple[Region, ...]) -> list[list[Region]]:
    """Neighbouring ranges that tell the same story (payload, or unknown in one section) as one text line."""
    runs: list[list[Region]] = []
    for region in regions:
        last = runs[-1][-1] if runs else None
        if (
            last is not None
            and region.kind in _SAME_STORY
            and (last.kind, last.section, last.detail) == (region.kind, region.section, region.detail)
        ):
            runs[-1].append(region)
        else:
            runs.append([region])
    return runs


def _describe_run(run: list[Region]) -> str:
    first, last = run[0], run[-1]
    where = f" in {first.section}" if first.section else ""
    if len(run) == 1:
        size = f"{first.length}" if first.length == first.length_b else f"{first.length}/{first.length_b}"
        return f"@{first.offset:#x} +{size}{where}: {first.kind}: {first.detail}"
    end = last.offset + last.length
    changed = sum(r.length for r in run)
    return f"@{first.offset:#x}..{end:#x}{where}: {first.kind}: {len(run)} ranges, {changed} bytes: {first.detail}"


def emit(report: Report, *, output: Path | None, text: Path | None, as_json: bool) -> int:
    """Write the JSON and text reports, print the text on stderr; 0 when identical, 1 when not."""
    try:
        if output is not None:
            output.write_text(report.to_json(), encoding="utf-8")
        if text is not None:
            text.write_text(report.to_text(), encoding="utf-8")
    except OSError as exc:
        raise AuditError(f"cannot write the report: {exc}") from None
    if as_json:
        sys.stdout.write(report.to_json())
    sys.stderr.write(report.to_text())
    return 0 if report.identical else 1

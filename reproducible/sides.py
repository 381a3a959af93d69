"""What a build output directory on disk says about the build that made it (for `compare` and `rebuild`)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from reproducible.compare import Side


def executable_in(directory: Path) -> str:
    """The executable named by the single `*.build.json` record in `directory`, else "" (compare everything)."""
    records = sorted(directory.glob("*.build.json"))
    if len(records) != 1:
        return ""
    try:
        name = json.loads(records[0].read_text(encoding="utf-8")).get("executable", "")
    except (OSError, ValueError):
        return ""
    return name if isinstance(name, str) else ""


def _epoch(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def run_window(directory: Path, executable: str) -> tuple[float, float]:
    """started_on..finished_on from the build record, else the span of the files' modification times."""
    record = directory / f"{executable}.build.json"
    if executable and record.is_file():
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        start, end = _epoch(data.get("started_on")), _epoch(data.get("finished_on"))
        if start is not None and end is not None:
            return (start, end)
    times = [p.stat().st_mtime for p in directory.rglob("*") if p.is_file()] or [0.0]
    return (min(times), max(times))


def side_for(label: str, directory: Path, paths: tuple[str, ...], executable: str) -> Side:
    resolved = directory.resolve()
    default = (str(resolved), str(resolved.parent))
    return Side(label, resolved, paths or default, run_window(resolved, executable))

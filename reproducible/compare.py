"""Compare two build outputs: the executable's digest, every file beside it, the standalone tree and the
onefile payload; explain each differing file's byte ranges.

Files are compared by SHA-256 (hmac.compare_digest, as everywhere in the release path), then read whole
only when they differ. A file mode that differs is listed but does not make builds different: the onefile
payload keeps only an executable bit, so the umask cannot reach the shipped bytes through it.
"""

from __future__ import annotations

import hmac
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from audit.digest import sha256_file
from audit.errors import AuditError
from reproducible.explain import Evidence, explain
from reproducible.ranges import differing_ranges
from reproducible.report import EXECUTABLE, PAYLOAD_ENTRY, RECORD, STANDALONE, FileDiff, Report


@dataclass(frozen=True)
class Side:
    """One build output directory and what that build knows about itself."""

    label: str
    directory: Path
    paths: tuple[str, ...]
    window: tuple[float, float]
    variation: dict[str, str] = field(default_factory=dict)

    def evidence(self, data: bytes) -> Evidence:
        return Evidence(data, self.paths, self.window)


def _listing(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files) + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            path = Path(folder) / name
            found[path.relative_to(root).as_posix()] = path
    return found


def _role(relative: str, executable: str) -> str:
    if relative == executable:
        return EXECUTABLE
    if executable and relative.startswith(f"{executable}.dist/"):
        return STANDALONE
    return RECORD


def _json_note(a: bytes, b: bytes) -> str:
    try:
        left, right = json.loads(a), json.loads(b)
    except ValueError:
        return ""
    if isinstance(left, dict) and isinstance(right, dict):
        keys = sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k))
        return "JSON keys differ: " + ", ".join(keys)
    return ""


def _file_diff(relative: str, role: str, a: Side, b: Side, path_a: Path, path_b: Path) -> FileDiff | None:
    if path_a.is_symlink() or path_b.is_symlink():
        target_a = os.readlink(path_a) if path_a.is_symlink() else ""
        target_b = os.readlink(path_b) if path_b.is_symlink() else ""
        if target_a == target_b:
            return None
        return FileDiff(relative, role, "differs", note=f"symlink {target_a or '(file)'} vs {target_b or '(file)'}")
    digest_a, digest_b = sha256_file(path_a), sha256_file(path_b)
    mode_a, mode_b = stat.S_IMODE(path_a.stat().st_mode), stat.S_IMODE(path_b.stat().st_mode)
    if hmac.compare_digest(digest_a, digest_b):
        if mode_a == mode_b:
            return None
        return FileDiff(relative, role, "mode", note=f"mode {mode_a:04o} vs {mode_b:04o}")
    data_a, data_b = path_a.read_bytes(), path_b.read_bytes()
    ranges = differing_ranges(data_a, data_b)
    return FileDiff(
        relative,
        role,
        "differs",
        size_a=len(data_a),
        size_b=len(data_b),
        sha256_a=digest_a,
        sha256_b=digest_b,
        regions=explain(a.evidence(data_a), b.evidence(data_b), ranges),
        regions_total=ranges.total,
        bytes_differing=ranges.bytes_differing,
        note=_json_note(data_a, data_b) if relative.endswith(".json") else "",
    )


def _payload_diffs(executable: str, a: Side, b: Side, dist_a: dict[str, str]) -> list[FileDiff]:
    """Entry-by-entry comparison of the two onefile payloads; empty when either has none."""
    from reproducible.payload import payload_digests

    found_a = payload_digests(a.directory / executable)
    found_b = payload_digests(b.directory / executable)
    if found_a is None or found_b is None:
        return []
    diffs: list[FileDiff] = []
    for name in sorted(set(found_a) | set(found_b)):
        digest_a, digest_b = found_a.get(name, ""), found_b.get(name, "")
        if digest_a and digest_b and hmac.compare_digest(digest_a, digest_b):
            continue
        status = "differs" if digest_a and digest_b else "only-a" if digest_a else "only-b"
        same = dist_a.get(f"{executable}.dist/{name}") == digest_a
        note = f"same bytes as {executable}.dist/{name}, explained there" if same else ""
        diffs.append(
            FileDiff(f"{executable}!/{name}", PAYLOAD_ENTRY, status, sha256_a=digest_a, sha256_b=digest_b, note=note)
        )
    return diffs


def compare_trees(a: Side, b: Side, *, executable: str, only: tuple[str, ...] = ()) -> Report:
    """Compare `a.directory` with `b.directory`; `executable` names the file the verdict is about ("" = all).

    With `only`, just those top-level names are compared (a release directory holds much more than a build).
    """
    for side in (a, b):
        if not side.directory.is_dir():
            raise AuditError(f"{side.directory}: not a directory", hint="pass two build output directories")
    if executable and not (a.directory / executable).is_file():
        raise AuditError(f"{a.directory / executable}: no such executable", hint="name it with --executable")
    listed_a, listed_b = _listing(a.directory), _listing(b.directory)
    if only:
        listed_a = {k: v for k, v in listed_a.items() if k.split("/")[0] in only}
        listed_b = {k: v for k, v in listed_b.items() if k.split("/")[0] in only}
    diffs: list[FileDiff] = []
    dist_digests: dict[str, str] = {}
    for relative in sorted(set(listed_a) | set(listed_b)):
        role = _role(relative, executable)
        if relative not in listed_b:
            diffs.append(FileDiff(relative, role, "only-a"))
            continue
        if relative not in listed_a:
            diffs.append(FileDiff(relative, role, "only-b"))
            continue
        found = _file_diff(relative, role, a, b, listed_a[relative], listed_b[relative])
        if found is not None:
            diffs.append(found)
            if found.sha256_a:
                dist_digests[relative] = found.sha256_a
    sha_a = sha256_file(a.directory / executable) if executable else ""
    sha_b = sha256_file(b.directory / executable) if executable and (b.directory / executable).is_file() else ""
    if executable and sha_a and sha_b and not hmac.compare_digest(sha_a, sha_b):
        diffs.extend(_payload_diffs(executable, a, b, dist_digests))
    return Report(
        executable=executable,
        sha256_a=sha_a,
        sha256_b=sha_b,
        files_compared=len(set(listed_a) | set(listed_b)),
        differences=tuple(diffs),
        sides={
            a.label: {"directory": str(a.directory), **a.variation},
            b.label: {"directory": str(b.directory), **b.variation},
        },
    )

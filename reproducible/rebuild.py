"""`reproducible rebuild RELEASE_DIR`: build the release again from what its provenance says, and compare.

A verifier who trusts the source but not the builder rebuilds: if the bytes match the published digest,
the builder added nothing. The steps:

  (1) read the provenance statement and the build record; the subject is the executable;
  (2) the published executable must have the subject's digest (otherwise the release contradicts itself
      and there is nothing meaningful to rebuild against);
  (3) a build from a dirty tree cannot be rebuilt: its commit does not hold what was compiled;
  (4) clone the recorded repository at the recorded commit into a fresh directory;
  (5) build it with `audit build` (recorded flags are compared with the rebuild's afterwards: the recipe
      at that commit decides them, so a difference means the provenance is not that commit's build);
  (6) compare the executables (and build records) and explain every differing range.
"""

from __future__ import annotations

import hmac
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from audit.buildinfo import build_info_path, load_build_info
from audit.digest import sha256_file
from audit.errors import AuditError, Finding
from audit.progress import Progress
from reproducible.builder import run_build
from reproducible.check import side_of
from reproducible.compare import compare_trees
from reproducible.report import Report
from reproducible.sides import side_for
from reproducible.sources import clone_commit, copy_build_env
from reproducible.variation import SECOND

PROVENANCE = "edgeward.intoto.json"


def _field(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            raise AuditError(
                f"{PROVENANCE}: missing {'.'.join(path)}", hint="pass a release directory `audit release` wrote"
            )
        data = data[key]
    return data


def read_provenance(release: Path) -> tuple[str, str, str, bool, list[str], str]:
    """(executable name, sha256, repository, dirty, flags, commit) from the release's provenance."""
    path = release / PROVENANCE
    try:
        statement = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AuditError(f"{path}: cannot read the provenance: {exc}", hint="pass a release directory") from None
    subjects = _field(statement, "subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise AuditError(f"{path}: expected exactly one subject (the executable)")
    name = str(_field(subjects[0], "name"))
    digest = str(_field(subjects[0], "digest", "sha256"))
    source = _field(statement, "predicate", "buildDefinition", "externalParameters", "source")
    flags = _field(statement, "predicate", "buildDefinition", "externalParameters", "build", "flags")
    return (
        name,
        digest,
        str(_field(source, "repository")),
        bool(_field(source, "dirty")),
        [str(f) for f in flags],
        str(_field(source, "commit")),
    )


def rebuild(
    release: Path, *, repository: str, build_env_from: Path, work_dir: Path | None, keep: bool, progress: Progress
) -> Report:
    release = release.resolve()
    began = time.monotonic()
    # (1) What the release says.
    name, digest, recorded_repository, dirty, flags, commit = read_provenance(release)
    published = release / name
    # (2) The published bytes are the subject.
    if not published.is_file() or not hmac.compare_digest(sha256_file(published), digest):
        raise Finding(f"{published}: SHA-256 does not match the provenance subject {digest}")
    # (3) Only a clean commit can be rebuilt.
    if dirty or not commit:
        raise AuditError(
            f"{release / PROVENANCE}: built from a dirty tree (commit {commit or 'none'}); it cannot be rebuilt",
            hint="rebuild releases built from a clean commit",
        )
    record = load_build_info(build_info_path(published))
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="edgeward-rebuild-", dir=work_dir)).resolve()
    try:
        # (4) The recorded commit, in a fresh clone.
        copy = root / SECOND.directory
        with progress.step(f"clone {repository or recorded_repository} at {commit[:12]}"):
            clone_commit(repository or recorded_repository, commit, copy)
            copy_build_env(build_env_from.resolve(), copy)
        # (5) The build.
        with progress.step(f"build in {copy}"):
            built = run_build(copy, SECOND, repository=recorded_repository, cache_base=root, progress=progress)
        rebuilt = load_build_info(build_info_path(built.output / name))
        # (6) The comparison.
        with progress.step("compare"):
            side_a = side_for("published", release, (), name)
            report = compare_trees(side_a, side_of(built), executable=name, only=(name, f"{name}.build.json"))
    finally:
        if keep:
            progress.note(f"kept the rebuild in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    notes: dict[str, str | int] = {
        "command": "rebuild",
        "source": f"{recorded_repository}@{commit}",
        "seconds": round(time.monotonic() - began),
        "build_id": "same" if rebuilt.build_id == record.build_id else f"{record.build_id} vs {rebuilt.build_id}",
    }
    if list(rebuilt.flags) != flags:
        notes["flags"] = "the rebuild's flags differ from the provenance's: " + " ".join(rebuilt.flags)
    tools = {t.name: t.version for t in record.tools}
    changed = [
        f"{t.name} {tools.get(t.name, '?')} -> {t.version}" for t in rebuilt.tools if tools.get(t.name) != t.version
    ]
    if changed:
        notes["tools"] = "; ".join(changed)
    return report.with_context(**notes)

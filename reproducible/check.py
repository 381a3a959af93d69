"""`reproducible check`: build the same source twice, as differently as the machine allows, and compare.

The builds run one after the other (never in parallel: the second one should hit the compiler cache the
first one filled, and the machine's cores are shared) in two fresh copies at paths of different lengths.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from audit.build.source import describe_source
from audit.buildinfo import build_info_path, load_build_info
from audit.errors import AuditError
from audit.progress import Progress
from reproducible.builder import BuildOutput, run_build
from reproducible.compare import Side, compare_trees
from reproducible.report import Report
from reproducible.sources import copy_working_tree
from reproducible.variation import FIRST, SECOND


def side_of(build: BuildOutput) -> Side:
    return Side(
        label=build.label,
        directory=build.output,
        paths=(str(build.source),),
        window=(build.started, build.finished),
        variation=build.variation,
    )


def same_source(copies: list[Path]) -> None:
    """Both copies must hold the same commit and the same input files, or the comparison means nothing."""
    heads = {describe_source(copy).commit for copy in copies}
    if len(heads) != 1:
        raise AuditError(f"the source changed while copying it (commits {', '.join(sorted(heads))})", hint="run again")


def same_inputs(builds: list[BuildOutput]) -> None:
    records = [load_build_info(build_info_path(b.output / b.executable)) for b in builds]
    ids = {(r.build_id, r.source_commit) for r in records}
    if len(ids) != 1:
        raise AuditError(
            "the two builds had different inputs: " + " vs ".join(f"{i[:16]}@{c[:12]}" for i, c in sorted(ids)),
            hint="keep the source tree still during the check",
        )


def check(source: Path, *, work_dir: Path | None, keep: bool, progress: Progress) -> Report:
    source = source.resolve()
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="edgeward-repro-", dir=work_dir)).resolve()
    began = time.monotonic()
    try:
        origin = describe_source(source)
        # Both copies are taken before either build: a commit landing during the first build (minutes)
        # must not make the second build another source.
        copies = [root / variation.directory for variation in (FIRST, SECOND)]
        for copy in copies:
            copy_working_tree(source, copy)
        same_source(copies)
        builds: list[BuildOutput] = []
        for variation, copy in zip((FIRST, SECOND), copies, strict=True):
            with progress.step(f"build {variation.label} in {copy}"):
                builds.append(
                    run_build(copy, variation, repository=origin.repository, cache_base=root, progress=progress)
                )
        same_inputs(builds)
        with progress.step("compare"):
            report = compare_trees(side_of(builds[0]), side_of(builds[1]), executable=builds[0].executable)
    finally:
        if keep:
            progress.note(f"kept both builds in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return report.with_context(
        command="check",
        source=f"{origin.repository}@{origin.commit or 'no commit'}{' (dirty)' if origin.dirty else ''}",
        seconds=round(time.monotonic() - began),
    )

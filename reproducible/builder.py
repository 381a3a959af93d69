"""One build of a source copy under one variation, in a child process, keeping what is needed to compare.

The build runs in a child so the umask and the environment's order apply to everything it starts
(Nuitka, scons, gcc, the linker) without touching this process. ccache gets `CCACHE_BASEDIR` set to the
directory holding both copies: it rewrites the absolute paths below it, so the second build hits the
cache the first one filled and costs minutes, not a cold compile.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from audit.build.recipe import load_recipe
from audit.errors import AuditError
from audit.progress import Progress
from reproducible.variation import Variation

OUTPUT_DIR = "dist"
TOOLS_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BuildOutput:
    """Where one build left its executable (and its record, report and standalone tree)."""

    label: str
    source: Path
    output: Path
    executable: str
    started: float
    finished: float
    variation: dict[str, str]

    @property
    def dist(self) -> Path:
        return self.output / f"{self.executable}.dist"


def run_build(
    source: Path, variation: Variation, *, repository: str, cache_base: Path, progress: Progress
) -> BuildOutput:
    output = source / OUTPUT_DIR
    name = load_recipe(source).name
    env = variation.environment(
        {**os.environ, "CCACHE_BASEDIR": str(cache_base), "PYTHONPATH": str(TOOLS_ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    )
    command = [sys.executable, "-m", "reproducible.worker", str(source), str(output), repository]
    log = source.parent / f"build-{variation.label}.log"
    tail: list[str] = []
    started = time.time()
    with (
        log.open("w", encoding="utf-8") as record,
        subprocess.Popen(
            command,
            cwd=source.parent,  # not the copy: its own `audit` package would shadow the one running this
            env=env,
            umask=variation.umask,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as proc,
    ):
        assert proc.stdout is not None
        for raw in proc.stdout:
            record.write(raw)
            line = raw.rstrip()
            if line.lstrip().startswith("[") or "compiled in" in line or "sha256" in line:
                progress.note(f"{variation.label}: {line.strip()}")
            if line:
                tail = [*tail[-19:], line]
    if proc.returncode != 0:
        raise AuditError(
            f"build {variation.label} failed with exit code {proc.returncode}",
            hint=f"full log: {log}; last lines: " + " | ".join(tail[-3:]),
        )
    return BuildOutput(
        label=variation.label,
        source=source,
        output=output,
        executable=name,
        started=started,
        finished=time.time(),
        variation=variation.describe(),
    )

"""The two forms of edgeward a test can run: the Python entry point and the compiled executable.

Suites that take the `program` fixture with `PROGRAMS` run once per form, so the executable is held to
the same tests as the source. `./dev test` builds the executable first (reusing it while the build id is
unchanged) and names it in EDGEWARD_EXECUTABLE; running pytest by hand without it fails those cases with
how to build it, rather than skipping them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ("python", "executable")


def executable() -> Path:
    path = Path(os.environ.get("EDGEWARD_EXECUTABLE", ROOT / "dist" / "edgeward"))
    if not path.is_file():
        pytest.fail(
            f"no compiled executable at {path}: run `./dev test` (it builds one), or "
            "`.venv/bin/audit build --output dist` and set EDGEWARD_EXECUTABLE",
            pytrace=False,
        )
    return path


def ingress_argv(program: str) -> list[str]:
    """The argv prefix that runs `ingress` in this form; the rest (`serve`, `check`...) is the same."""
    if program == "python":
        return [sys.executable, "-m", "ingress"]
    if program == "executable":
        return [str(executable())]
    raise ValueError(program)

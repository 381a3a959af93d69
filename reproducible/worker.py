"""The child process of `reproducible.builder`: one `audit build` that keeps Nuitka's standalone tree.

Usage (internal): python -m reproducible.worker SOURCE OUTPUT REPOSITORY
"""

from __future__ import annotations

import sys
from pathlib import Path

from audit.build.nuitka import build_executable
from audit.build.recipe import load_recipe
from audit.errors import AuditError
from audit.progress import Progress


def build(argv: list[str]) -> int:
    source, output, repository = (Path(argv[0]), Path(argv[1]), argv[2])
    try:
        name = load_recipe(source).name
        build_executable(source, output, repository=repository, progress=Progress(3), keep_dist=output / f"{name}.dist")
    except AuditError as exc:
        print(f"reproducible worker: {exc.diagnostics()}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(build(sys.argv[1:]))

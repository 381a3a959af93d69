"""`audit build`: the command-line face of audit.build.nuitka."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "compile the server into one executable with Nuitka (onefile, static libpython, deployment mode)"
EXAMPLES = """examples:
  audit build                                  build dist/edgeward from the current source tree
  audit build --output /tmp/rel --source ~/edgeward
  audit build --builder-id https://ci.bank.example/runners/release-7

Writes <output>/edgeward, edgeward.nuitka-report.xml (every bundled module, extension and library) and
edgeward.build.json (source, commit, flags, tool versions, build id). ccache is used when installed:
a warm rebuild is about 3x faster. The executable extracts once into
~/.cache/edgeward/<version>-<build id>/, so later starts skip extraction.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", type=Path, default=Path("dist"), help="directory for the executable (default: dist)"
    )
    parser.add_argument("--source", type=Path, default=Path("."), help="edgeward source tree (default: .)")
    parser.add_argument("--source-repo", default="", help="repository URL to record (default: git remote origin)")
    parser.add_argument(
        "--builder-id", default="", help="SLSA builder id to record (default: edgeward's local builder)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep an executable already in --output whose build id (a digest of every input) is unchanged",
    )


def run(args: argparse.Namespace) -> int:
    from audit.build.nuitka import DEFAULT_BUILDER_ID, build_executable
    from audit.progress import Progress

    progress = Progress(3)
    info = build_executable(
        args.source,
        args.output,
        repository=args.source_repo,
        builder_id=args.builder_id or DEFAULT_BUILDER_ID,
        progress=progress,
        interactive=sys.stderr.isatty(),
        reuse=args.reuse,
    )
    print(f"{args.output / info.executable}: edgeward {info.version} build {info.build_id[:16]}", file=sys.stderr)
    return 0

"""`reproducible compare`: compare two build outputs already on disk (kept by `check --keep`, or any two)."""

from __future__ import annotations

import argparse
from pathlib import Path

from reproducible.commands.check import add_report_arguments

HELP = "compare two build output directories and explain every differing byte range"
EXAMPLES = """examples:
  reproducible compare /tmp/edgeward-repro-x/a/dist /tmp/edgeward-repro-x/second-build-at-a-longer-path/dist
  reproducible compare a/ b/ --executable edgeward --path-a /build/a --path-b /build/b --json

The executable defaults to the one named by an `*.build.json` in A_DIR; with none, every file decides.
Paths to look for default to each directory and its parent; each build's run time comes
from its build record (started_on..finished_on) or else from the files' modification times.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a_dir", type=Path, metavar="A_DIR")
    parser.add_argument("b_dir", type=Path, metavar="B_DIR")
    parser.add_argument(
        "--executable", default=None, help="the file the verdict is about (default: from the build record)"
    )
    parser.add_argument("--path-a", action="append", default=[], help="a path build A ran under (repeatable)")
    parser.add_argument("--path-b", action="append", default=[], help="a path build B ran under (repeatable)")
    add_report_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from reproducible.compare import compare_trees
    from reproducible.report import emit
    from reproducible.sides import executable_in, side_for

    executable = args.executable if args.executable is not None else executable_in(args.a_dir)
    a = side_for("a", args.a_dir, tuple(args.path_a), executable)
    b = side_for("b", args.b_dir, tuple(args.path_b), executable)
    report = compare_trees(a, b, executable=executable).with_context(command="compare")
    return emit(report, output=args.output, text=args.text, as_json=args.json)

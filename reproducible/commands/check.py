"""`reproducible check`: the command-line face of reproducible.check."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "build the executable twice (different paths, umask, time zone, environment order) and compare the bytes"
EXAMPLES = """examples:
  reproducible check                                  build the current tree twice; text report on stderr
  reproducible check --output repro.json --text repro.txt
  reproducible check --work-dir /var/tmp --keep       keep both builds for `reproducible compare`

Each build is a fresh clone of the source tree with its uncommitted changes, built by `audit build` in a
child process. The report compares the executables' SHA-256, every file of Nuitka's standalone tree and
the onefile payload, and explains each differing byte range: GNU build id, constants blob (and which
module's chunk), onefile payload, embedded path, timestamp or unknown. Exit 0 identical, 1 different.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", type=Path, default=Path("."), help="edgeward source tree (default: .)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where to make the build copies (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep both build copies and print where they are")
    add_report_arguments(parser)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, default=None, help="write the JSON report to FILE")
    parser.add_argument("--text", type=Path, default=None, help="write the text report to FILE as well")
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout")


def run(args: argparse.Namespace) -> int:
    from audit.progress import Progress
    from reproducible.check import check
    from reproducible.report import emit

    report = check(args.source, work_dir=args.work_dir, keep=args.keep, progress=Progress(3))
    return emit(report, output=args.output, text=args.text, as_json=args.json)

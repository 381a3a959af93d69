"""`reproducible rebuild`: the command-line face of reproducible.rebuild."""

from __future__ import annotations

import argparse
from pathlib import Path

from reproducible.commands.check import add_report_arguments

HELP = "rebuild a release from its provenance and compare with the published executable"
EXAMPLES = """examples:
  reproducible rebuild release/                       clone the recorded commit, build, compare
  reproducible rebuild release/ --repository file:///srv/git/edgeward --output rebuild.json

Reads RELEASE_DIR/edgeward.intoto.json (source repository and commit, build flags) and edgeward.build.json,
clones that commit into a fresh directory, builds it with `audit build` and compares the result with the
published executable (whose SHA-256 must match the provenance's subject). Exit 0 identical, 1 different,
2 when the release directory or the repository cannot be read.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("release_dir", type=Path, metavar="RELEASE_DIR")
    parser.add_argument("--repository", default="", help="clone from here instead of the recorded repository URL")
    parser.add_argument(
        "--build-env-from",
        type=Path,
        default=Path("."),
        help="copy .cache/build-env from this tree when present (default: .)",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="where to clone and build (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the rebuild and print where it is")
    add_report_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from audit.progress import Progress
    from reproducible.rebuild import rebuild
    from reproducible.report import emit

    report = rebuild(
        args.release_dir,
        repository=args.repository,
        build_env_from=args.build_env_from,
        work_dir=args.work_dir,
        keep=args.keep,
        progress=Progress(3),
    )
    return emit(report, output=args.output, text=args.text, as_json=args.json)

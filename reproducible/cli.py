"""`reproducible check | rebuild | compare`. The only module of the package that exits.

Exit codes: 0 identical, 1 the builds differ (the report says where and why), 2 usage, input or environment
error. Each command lives in `reproducible/commands/<command>.py` with `HELP`, `EXAMPLES`,
`add_arguments(parser)` and `run(args) -> int`, importing its heavy modules inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from audit.errors import AuditError
from reproducible import __version__

COMMANDS = ("check", "rebuild", "compare")

EXAMPLES = """examples:
  reproducible check --output repro/                 build twice, differently, and compare
  reproducible rebuild release/ --output repro/      rebuild a release from its provenance
  reproducible compare build-a/ build-b/ --json      compare two build outputs already on disk
"""


def _command(name: str) -> ModuleType:
    return importlib.import_module(f"reproducible.commands.{name}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reproducible",
        description="edgeward reproducibility: build twice or rebuild a release, and explain every differing byte",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"reproducible {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = _command(name)
        command = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog=module.EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        code = int(_command(args.command).run(args))
    except AuditError as exc:
        print(f"reproducible {args.command}: {exc.diagnostics()}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

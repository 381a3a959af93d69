"""The one command-line dispatcher of the release path, shared by `audit`, `evidence` and `reproducible`.

Each tool is a list of command modules with `HELP`, `EXAMPLES`, `add_arguments(parser)` and
`run(args) -> int`. Modules import their heavy libraries inside `run`, so `--help` stays fast. Errors are
one tree (audit.errors): `AuditError` exits 2 and `Finding` exits 1, each printed with its diagnostics.
This is the only place of the three tools that exits.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from audit.errors import AuditError


@dataclass(frozen=True)
class Tool:
    prog: str
    description: str
    version: str
    examples: str
    commands: tuple[str, ...]
    module_pattern: str  # e.g. "audit.{name}.command"

    def command(self, name: str) -> ModuleType:
        return importlib.import_module(self.module_pattern.format(name=name))

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog=self.prog,
            description=self.description,
            epilog=self.examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("--version", action="version", version=f"{self.prog} {self.version}")
        sub = parser.add_subparsers(dest="command", required=True)
        for name in self.commands:
            module = self.command(name)
            command = sub.add_parser(
                name,
                help=module.HELP,
                description=module.HELP,
                epilog=module.EXAMPLES,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            module.add_arguments(command)
        return parser


def run_tool(tool: Tool, argv: Sequence[str] | None = None) -> None:
    args = tool.parser().parse_args(argv)
    try:
        code = int(tool.command(args.command).run(args))
    except AuditError as exc:
        print(f"{tool.prog} {args.command}: {exc.diagnostics()}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

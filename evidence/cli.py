"""`evidence trail` (and later `pack`, `verify`). The only module of evidence/ that exits.

Exit codes: 0 ok, 1 a finding (a broken audit hash chain: the report is still written), 2 usage or input error.
Each command lives in `evidence/<command>/command.py` with `HELP`, `EXAMPLES`, `add_arguments(parser)` and
`run(args) -> int`, exactly like audit/cli.py; adding a command is one module plus its name in `COMMANDS`.
Command modules import their heavy parts inside `run`, so `evidence --help` stays fast. Errors are the
release path's one tree (audit.errors): `AuditError` exits 2, `Finding` exits 1, each with its diagnostics.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from audit.errors import AuditError
from evidence import __version__

COMMANDS = ("trail", "pack", "verify")

EXAMPLES = """examples:
  evidence trail /var/log/edgeward/traces.jsonl /var/log/edgeward/audit.jsonl
  evidence trail /var/log/edgeward/ --output trail.html --json trail.json --window 300
  evidence pack release/0.1.0 --key release.pem --verify-key release.pub --output pack/ --archive pack.tar.gz
  evidence verify pack.tar.gz --key release.pub
"""


def _command(name: str) -> ModuleType:
    return importlib.import_module(f"evidence.{name}.command")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evidence",
        description="edgeward DORA evidence: audit-trail reports, signed evidence packs and their verification",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"evidence {__version__}")
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
        print(f"evidence {args.command}: {exc.diagnostics()}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

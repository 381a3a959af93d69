"""`audit build | sbom | scan | provenance | sign | verify | release`. The only module of the release path that exits.

Exit codes: 0 ok, 1 a finding (failed verification, failed gate), 2 usage, input or environment error.
Each command lives in `audit/<command>/command.py` with `HELP`, `EXAMPLES`, `add_arguments(parser)` and
`run(args) -> int`; those modules import their heavy libraries inside `run`, so `audit --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from audit import __version__
from audit.errors import AuditError

COMMANDS = ("build", "sbom", "scan", "provenance", "sign", "verify", "release")

EXAMPLES = """examples:
  audit build --output dist/                         compile the server into dist/edgeward
  audit sbom dist/edgeward --output dist/edgeward.cdx.json
  audit scan dist/edgeward.cdx.json --advisories osv/ --fail-on high
  audit provenance dist/edgeward --output dist/edgeward.intoto.json
  audit sign dist/edgeward --key release.pem
  audit verify dist/edgeward --key release.pub --source-repo https://git.example/edgeward
  audit release --output release/ --key release.pem --advisories osv/
"""


def _command(name: str) -> ModuleType:
    return importlib.import_module(f"audit.{name}.command")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audit",
        description="edgeward release audit toolchain: build, SBOM, scan, provenance, signatures, verification",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"audit {__version__}")
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
        print(f"audit {args.command}: {exc.diagnostics()}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

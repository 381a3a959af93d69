"""`evidence trail` (and later `pack`, `verify`). The only module of evidence/ that exits.

Exit codes: 0 ok, 1 a finding (a broken audit hash chain: the report is still written), 2 usage or input error.
Each command lives in `evidence/<command>/command.py` with `HELP`, `EXAMPLES`, `add_arguments(parser)` and
`run(args) -> int`, exactly like audit/cli.py; adding a command is one module plus its name in `COMMANDS`.
Command modules import their heavy parts inside `run`, so `evidence --help` stays fast. Errors are the
release path's one tree (audit.errors): `AuditError` exits 2, `Finding` exits 1, each with its diagnostics.
"""

from __future__ import annotations

from audit.dispatch import Tool, run_tool
from evidence import __version__

COMMANDS = ("trail", "pack", "verify")

EXAMPLES = """examples:
  evidence trail /var/log/edgeward/traces.jsonl /var/log/edgeward/audit.jsonl
  evidence trail /var/log/edgeward/ --output trail.html --json trail.json --window 300
  evidence pack release/0.1.0 --key release.pem --verify-key release.pub --output pack/ --archive pack.tar.gz
  evidence verify pack.tar.gz --key release.pub
"""


TOOL = Tool(
    prog="evidence",
    description="edgeward DORA evidence: audit-trail reports, signed evidence packs and their verification",
    version=__version__,
    examples=EXAMPLES,
    commands=COMMANDS,
    module_pattern="evidence.{name}.command",
)


def main(argv: list[str] | None = None) -> None:
    run_tool(TOOL, argv)

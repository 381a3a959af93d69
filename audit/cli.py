"""`audit build | sbom | scan | provenance | sign | verify | release`. The only module of the release path that exits.

Exit codes: 0 ok, 1 a finding (failed verification, failed gate), 2 usage, input or environment error.
Each command lives in `audit/<command>/command.py` with `HELP`, `EXAMPLES`, `add_arguments(parser)` and
`run(args) -> int`; those modules import their heavy libraries inside `run`, so `audit --help` stays fast.
"""

from __future__ import annotations

from audit import __version__
from audit.dispatch import Tool, run_tool

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


TOOL = Tool(
    prog="audit",
    description="edgeward release audit toolchain: build, SBOM, scan, provenance, signatures, verification",
    version=__version__,
    examples=EXAMPLES,
    commands=COMMANDS,
    module_pattern="audit.{name}.command",
)


def main(argv: list[str] | None = None) -> None:
    run_tool(TOOL, argv)

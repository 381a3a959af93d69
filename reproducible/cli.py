"""`reproducible check | rebuild | compare`. The only module of the package that exits.

Exit codes: 0 identical, 1 the builds differ (the report says where and why), 2 usage, input or environment
error. Each command lives in `reproducible/commands/<command>.py` with `HELP`, `EXAMPLES`,
`add_arguments(parser)` and `run(args) -> int`, importing its heavy modules inside `run`.
"""

from __future__ import annotations

from audit.dispatch import Tool, run_tool
from reproducible import __version__

COMMANDS = ("check", "rebuild", "compare")

EXAMPLES = """examples:
  reproducible check --output repro/                 build twice, differently, and compare
  reproducible rebuild release/ --output repro/      rebuild a release from its provenance
  reproducible compare build-a/ build-b/ --json      compare two build outputs already on disk
"""


TOOL = Tool(
    prog="reproducible",
    description="edgeward reproducibility: build twice or rebuild a release, and explain every differing byte",
    version=__version__,
    examples=EXAMPLES,
    commands=COMMANDS,
    module_pattern="reproducible.commands.{name}",
)


def main(argv: list[str] | None = None) -> None:
    run_tool(TOOL, argv)

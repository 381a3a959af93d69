"""`audit provenance EXE`: CLI shell around audit.provenance.build_provenance; heavy imports wait until run()."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "write SLSA v1 provenance (in-toto Statement v1) for the executable"
EXAMPLES = """examples:
  audit provenance dist/edgeward                            writes dist/edgeward.intoto.json
  audit provenance dist/edgeward --sbom dist/edgeward.cdx.json --builder-id https://ci.example/runners/7
  audit provenance dist/edgeward --output -                 print the statement
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("executable", type=Path, metavar="EXE", help="the Nuitka onefile executable")
    parser.add_argument(
        "--output", "-o", metavar="FILE", help="where to write (default: EXE.intoto.json; '-' = stdout)"
    )
    parser.add_argument("--sbom", type=Path, metavar="FILE", help="CycloneDX JSON SBOM (default: EXE.cdx.json)")
    parser.add_argument("--builder-id", metavar="URI", help="builder identity (default: the build record's)")
    parser.add_argument("--build-info", type=Path, metavar="FILE", help="build record (default: EXE.build.json)")
    parser.add_argument("--report", type=Path, metavar="FILE", help="Nuitka report (default: EXE.nuitka-report.xml)")


def run(args: argparse.Namespace) -> int:
    from audit.buildinfo import build_info_path, load_build_info, report_path
    from audit.errors import AuditError
    from audit.files import write_atomic
    from audit.progress import Progress
    from audit.provenance.statement import build_provenance, dumps

    exe: Path = args.executable
    if not exe.is_file():
        raise AuditError(f"{exe}: no such executable")
    progress = Progress(1)
    with progress.step("provenance"):
        build_info = load_build_info(args.build_info or build_info_path(exe))
        sbom = args.sbom or exe.with_name(f"{exe.name}.cdx.json")
        statement = build_provenance(exe, build_info, sbom, args.report or report_path(exe), args.builder_id)
    document = dumps(statement)
    if build_info.source_dirty:
        progress.note("warning: built from a dirty source tree (recorded as externalParameters.source.dirty=true)")
    if args.output == "-":
        sys.stdout.buffer.write(document)
        return 0
    output = Path(args.output) if args.output else exe.with_name(f"{exe.name}.intoto.json")
    progress.note(f"wrote {output} (sha256 {write_atomic(output, document)})")
    return 0

"""`audit sbom EXE`: CLI shell around audit.sbom.build_sbom; heavy imports wait until run()."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "write a CycloneDX 1.6 SBOM of exactly what is inside the executable"
EXAMPLES = """examples:
  audit sbom dist/edgeward                                  writes dist/edgeward.cdx.json
  audit sbom dist/edgeward --format xml --output sbom.xml
  SOURCE_DATE_EPOCH=1767225600 audit sbom dist/edgeward --lock requirements.lock --output -
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("executable", type=Path, metavar="EXE", help="the Nuitka onefile executable")
    parser.add_argument("--output", "-o", metavar="FILE", help="where to write (default: EXE.cdx.json; '-' = stdout)")
    parser.add_argument("--format", choices=("json", "xml"), default="json", help="serialisation (default: json)")
    parser.add_argument("--lock", type=Path, metavar="FILE", help="runtime lock (default: the build record's)")
    parser.add_argument("--build-info", type=Path, metavar="FILE", help="build record (default: EXE.build.json)")
    parser.add_argument("--report", type=Path, metavar="FILE", help="Nuitka report (default: EXE.nuitka-report.xml)")


def run(args: argparse.Namespace) -> int:
    from audit.buildinfo import build_info_path, load_build_info, report_path
    from audit.errors import AuditError
    from audit.files import write_atomic
    from audit.progress import Progress
    from audit.sbom.api import build_sbom, load_checked_lock

    exe: Path = args.executable
    if not exe.is_file():
        raise AuditError(f"{exe}: no such executable")
    progress = Progress(2)
    with progress.step("sbom: read build record and lock"):
        build_info = load_build_info(args.build_info or build_info_path(exe))
        lock = load_checked_lock(args.lock or Path(build_info.lock_file), build_info)
    with progress.step("sbom: inventory, serialise, validate"):
        document = build_sbom(exe, build_info, args.report or report_path(exe), lock, fmt=args.format)
    if args.output == "-":
        sys.stdout.buffer.write(document)
        return 0
    output = Path(args.output) if args.output else exe.with_name(f"{exe.name}.cdx.{args.format}")
    digest = write_atomic(output, document)
    if args.format == "json":
        progress.note(_summary(document))
    progress.note(f"wrote {output} (sha256 {digest})")
    return 0


def _summary(document: bytes) -> str:
    import json

    purls = [str(c.get("purl", "")) for c in json.loads(document).get("components", ())]
    python = sum(p.startswith("pkg:pypi/") for p in purls)
    native = sum(p.startswith(("pkg:deb/", "pkg:generic/")) for p in purls)
    return f"{python} Python distributions, {native} native libraries and runtimes"

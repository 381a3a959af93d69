"""`evidence trail FILES...`: CLI shell around evidence.trail.read_trail; the work is imported inside run()."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "audit-trail report (HTML + JSON) from the edge's OTLP span files and hash-chained audit files"
EXAMPLES = """examples:
  evidence trail /var/log/edgeward/traces.jsonl /var/log/edgeward/audit.jsonl
        rotated files (traces.jsonl.20250101T000000Z ...) are included; writes trail.html and trail.json
  evidence trail /var/log/edgeward/ --output report.html --json -       the JSON on stdout
  evidence trail traces.jsonl audit.jsonl --window 300 --max-5xx-rate 0.02 --min-requests 100

exit codes: 0 ok; 1 the audit hash chain is broken (the report is still written and names the first
broken link); 2 usage or input error (one line naming the file and line)
"""


def _positive(kind: type[float] | type[int]):  # type: ignore[no-untyped-def]
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
        return value

    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a share between 0 and 1, like 0.05: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="span files, audit files or directories (recognised by content)"
    )
    parser.add_argument(
        "--output", "-o", default="trail.html", metavar="FILE", help="the HTML report (default: %(default)s)"
    )
    parser.add_argument(
        "--json", default="trail.json", metavar="FILE", help="the JSON report; '-' = stdout (default: %(default)s)"
    )
    parser.add_argument(
        "--window",
        type=_positive(float),
        default=60.0,
        metavar="SECONDS",
        help="time window for charts and incidents (default: %(default)s; doubled when the trail is long)",
    )
    parser.add_argument(
        "--max-5xx-rate",
        type=_rate,
        default=0.05,
        metavar="SHARE",
        help="5xx share of requests that makes a window an incident candidate (default: %(default)s)",
    )
    parser.add_argument(
        "--max-error-rate",
        type=_rate,
        default=0.10,
        metavar="SHARE",
        help="share of spans with status ERROR that does the same (default: %(default)s)",
    )
    parser.add_argument(
        "--min-requests",
        type=_positive(int),
        default=20,
        metavar="N",
        help="windows with fewer requests are never candidates (default: %(default)s)",
    )
    parser.add_argument(
        "--top", type=_positive(int), default=10, metavar="N", help="rows per top table (default: %(default)s)"
    )
    parser.add_argument(
        "--no-rotated", action="store_true", help="read only the files named, not their rotated siblings"
    )
    parser.add_argument(
        "--skip-damaged",
        action="store_true",
        help="count span lines that do not decode (e.g. torn by a crash) instead of stopping",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress or summary on stderr")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from audit.errors import AuditError
    from audit.files import write_atomic
    from evidence.trail.aggregate import Settings
    from evidence.trail.read import read_trail
    from evidence.trail.report import render_html, render_json
    from evidence.trail.units import NS

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    try:
        settings = Settings(
            window_ns=int(args.window * NS),
            max_5xx_rate=args.max_5xx_rate,
            max_error_rate=args.max_error_rate,
            min_requests=args.min_requests,
            top=args.top,
        )
    except ValueError as exc:
        raise AuditError(str(exc)) from None
    report, chains = read_trail(
        args.files, settings, include_rotated=not args.no_rotated, skip_damaged=args.skip_damaged, progress=say
    )
    html = render_html(report)
    document = render_json(report)
    write_atomic(Path(args.output), html)
    if args.json == "-":
        sys.stdout.buffer.write(document)
    else:
        write_atomic(Path(args.json), document)

    totals = report["totals"]
    say(
        f"{totals['requests']:,} requests, {totals['spans']:,} spans, {report['denials']['total']:,} denied,"
        f" {totals['rate_5xx'] * 100:.2f}% 5xx, {len(report['incidents'])} incident candidates;"
        f" wrote {args.output}" + ("" if args.json == "-" else f" and {args.json}")
    )
    if report["sources"]["damaged_lines"]:
        say(f"warning: {report['sources']['damaged_lines']} damaged span lines skipped")
    if not chains:
        say("audit chain: not checked (no audit files given)")
    for chain in chains:
        say(f"audit chain: {chain}")
    return 0 if all(chain.ok for chain in chains) else 1

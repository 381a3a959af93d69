"""The IO shell around the aggregator: read each file a line at a time, decode, feed, verify the chains.

One pass over the span files, one pass over each audit trail's records and
one more for its hash chain (`ingress.telemetry.auditchain.verify_chain`, the
server's own verifier, reused rather than re-implemented). Memory is the
aggregator's bounded state plus one line.

A line that cannot be decoded stops the run with an `InputError` naming
the file and line (exit 2), unless `skip_damaged` is set: then it is
counted, the first few are listed in the report, and the run goes on. A
crash mid-append leaves such a line (a torn batch that the next append
terminates); audit lines are never skipped here, since the chain check
names a damaged audit line as its first broken link.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from evidence.trail.aggregate import Settings, TrailAggregator
from evidence.trail.inputs import InputError, lines, resolve
from evidence.trail.otlp import DecodeError, decode_audit, decode_spans
from ingress.telemetry.auditchain import AuditError as ChainReadError
from ingress.telemetry.auditchain import ChainReport, verify_chain

DAMAGED_LISTED = 20


def _quiet(_: str) -> None:
    pass


def read_trail(
    paths: Sequence[str],
    settings: Settings | None = None,
    *,
    include_rotated: bool = True,
    skip_damaged: bool = False,
    progress: Callable[[str], None] = _quiet,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[dict[str, Any], list[ChainReport]]:
    """The report for `paths` (files or directories), and the chain reports (for the exit code)."""
    inputs = resolve(paths, include_rotated=include_rotated)
    if not inputs.spans and not inputs.audit_trails:
        raise InputError(", ".join(paths), 0, "no span or audit records in these files (all empty)")
    trail = TrailAggregator(settings)
    damaged: list[str] = []
    damaged_count = 0
    last_note = clock()
    for number, path in enumerate(inputs.spans, 1):
        progress(f"[spans {number}/{len(inputs.spans)}] {path}")
        for line_number, line in lines(path):
            try:
                resource, spans = decode_spans(line)
            except DecodeError as exc:
                if not skip_damaged:
                    raise InputError(path, line_number, str(exc), hint="--skip-damaged counts such lines") from None
                damaged_count += 1
                if len(damaged) < DAMAGED_LISTED:
                    damaged.append(f"{path}:{line_number}: {exc}")
                continue
            trail.add_spans(resource, spans)
            if line_number % 64 == 0 and clock() - last_note >= 5.0:
                last_note = clock()
                progress(f"      {trail.requests + trail.client_spans:,} spans so far")

    chains: list[ChainReport] = []
    for number, files in enumerate(inputs.audit_trails, 1):
        progress(f"[audit {number}/{len(inputs.audit_trails)}] {', '.join(os.path.basename(f) for f in files)}")
        for path in files:
            for _, line in lines(path):
                try:
                    record = decode_audit(line)
                except DecodeError:
                    continue  # the chain check below names it as the first broken link
                trail.add_audit(record)
        try:
            chain = verify_chain(files)
        except ChainReadError as exc:
            raise InputError(files[0], 0, str(exc)) from None
        trail.add_chain(chain)
        chains.append(chain)

    sources = {
        "span_files": inputs.spans,
        "audit_trails": inputs.audit_trails,
        "empty_files": inputs.empty,
        "damaged_lines": damaged_count,
        "damaged_listed": damaged,
    }
    return trail.report(sources), chains

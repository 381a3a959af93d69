"""Range header evaluation (RFC 9110 §14), pure.

A syntactically invalid Range is ignored (the full response is sent), as
RFC 9110 allows; so is one with more than MAX_RANGES parts, which closes
the many-small-ranges amplification trick. Overlapping and adjacent ranges
are coalesced.
"""

from __future__ import annotations

MAX_RANGES = 16

Ranges = list[tuple[int, int]]  # inclusive (first, last)


class Unsatisfiable(Exception):
    pass


def parse_ranges(header: bytes, size: int) -> Ranges | None:
    """Return the ranges to send, None to ignore the header, or raise Unsatisfiable."""
    unit, sep, spec = header.partition(b"=")
    if not sep or unit.strip().lower() != b"bytes":
        return None
    # Empty list elements (`bytes=0-1,,5-6`) are ignored, as RFC 9110 §5.6.1.2 requires.
    items = [item for item in (raw.strip() for raw in spec.split(b",")) if item]
    if not items or len(items) > MAX_RANGES:
        return None
    if size == 0:
        # No range of an empty representation can be described by a 206
        # (`bytes 0--1/0` is not a Content-Range); send the empty 200 instead.
        return None
    out: Ranges = []
    for item in items:
        first_s, dash, last_s = item.partition(b"-")
        if not dash:
            return None
        if first_s:
            if not first_s.isdigit() or (last_s and not last_s.isdigit()):
                return None
            first = int(first_s)
            if last_s and int(last_s) < first:
                return None
            if first >= size:
                continue  # valid syntax, but not satisfiable (e.g. `bytes=99999999-`)
            last = min(int(last_s), size - 1) if last_s else size - 1
            out.append((first, last))
        else:
            if not last_s.isdigit():
                return None
            suffix = int(last_s)
            if suffix == 0:
                continue
            out.append((max(0, size - suffix), size - 1))
    if not out:
        raise Unsatisfiable
    out.sort()
    merged: Ranges = [out[0]]
    for first, last in out[1:]:
        prev_first, prev_last = merged[-1]
        if first <= prev_last + 1:
            merged[-1] = (prev_first, max(prev_last, last))
        else:
            merged.append((first, last))
    return merged

"""Where two files differ, as coalesced byte ranges.

Same-sized files are compared position by position (a build id, a reordered constant or a timestamp
changes bytes in place). Files of different sizes are reported as one range between the longest common
prefix and the longest common suffix: past an insertion every position differs, and a positional diff
would only list noise.
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCK = 4096
GAP = 16  # differing bytes closer than this are one range: a changed 8-byte value often keeps a middle byte
LIMIT = 200  # ranges listed per file; the rest are counted


@dataclass(frozen=True)
class Range:
    offset: int
    length: int
    length_b: int


@dataclass(frozen=True)
class Ranges:
    listed: tuple[Range, ...]
    total: int
    bytes_differing: int


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    n = 0
    while n < limit and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return n


def differing_ranges(a: bytes, b: bytes, *, gap: int = GAP, limit: int = LIMIT) -> Ranges:
    if len(a) != len(b):
        prefix = 0
        shortest = min(len(a), len(b))
        while prefix < shortest and a[prefix] == b[prefix]:
            prefix += 1
        suffix = _common_suffix(a, b, shortest - prefix)
        span = Range(prefix, len(a) - prefix - suffix, len(b) - prefix - suffix)
        return Ranges((span,), 1, max(span.length, span.length_b))
    listed: list[Range] = []
    total = 0
    differing = 0
    start = end = -1
    view_a, view_b = memoryview(a), memoryview(b)
    for block in range(0, len(a), BLOCK):
        if view_a[block : block + BLOCK] == view_b[block : block + BLOCK]:
            continue
        for i in range(block, min(block + BLOCK, len(a))):
            if a[i] == b[i]:
                continue
            differing += 1
            if end >= 0 and i - end < gap:
                end = i + 1
                continue
            if end >= 0:
                total += 1
                if len(listed) < limit:
                    listed.append(Range(start, end - start, end - start))
            start, end = i, i + 1
    if end >= 0:
        total += 1
        if len(listed) < limit:
            listed.append(Range(start, end - start, end - start))
    return Ranges(tuple(listed), total, differing)

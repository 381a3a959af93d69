"""What a differing byte range is: GNU build id, constants blob, onefile payload, embedded path, timestamp.

Each range is classified from what both builds know about themselves (their bytes, the paths they ran
under, when they ran), most specific first:

  (1) inside `.note.gnu.build-id`: the linker's digest of the output, so a symptom of another difference
      unless it is the only one;
  (2) an embedded path: either build's own directory appears in or around the range;
  (3) a timestamp: the differing bytes read as a 4- or 8-byte little-endian count of seconds (or an
      8-byte count of nanoseconds) fall inside each build's own run time, give or take a day;
  (4) inside Nuitka's constants blob: named by the module whose chunk holds it;
  (5) inside the onefile payload: a packed file differs (the payload entries say which);
  (6) otherwise unknown, with the section it is in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from reproducible.elf import BUILD_ID_SECTION, Section, gnu_build_id, section_at, sections
from reproducible.layout import Chunk, constants_chunks, payload_start
from reproducible.ranges import Range, Ranges

CONTEXT = 256
# Past this a range is a moved or resized block, not a value: nearby paths and times say nothing about it.
VALUE_RANGE = 1024
SLACK = 86400.0

BUILD_ID = "build-id"
PATH = "path"
TIMESTAMP = "timestamp"
CONSTANTS = "constants"
PAYLOAD = "payload"
UNKNOWN = "unknown"
KINDS = (BUILD_ID, PATH, TIMESTAMP, CONSTANTS, PAYLOAD, UNKNOWN)


@dataclass(frozen=True)
class Region:
    offset: int
    length: int
    length_b: int
    kind: str
    section: str
    detail: str


@dataclass(frozen=True)
class Evidence:
    """One build's side of a differing file: its bytes and what the build knows about itself."""

    data: bytes
    paths: tuple[str, ...]
    window: tuple[float, float]


class _View:
    def __init__(self, evidence: Evidence) -> None:
        self.evidence = evidence
        self.sections: tuple[Section, ...] = sections(evidence.data) or ()
        self.build_id = gnu_build_id(evidence.data, self.sections)
        self.chunks: tuple[Chunk, ...] = constants_chunks(evidence.data) if self.sections else ()
        self.payload = payload_start(evidence.data) if self.sections else -1

    def section_name(self, offset: int) -> str:
        found = section_at(self.sections, offset)
        return found.name if found is not None else ""

    def payload_holds(self, offset: int) -> bool:
        if self.payload < 0 or offset < self.payload:
            return False
        found = section_at(self.sections, self.payload)
        return found is None or found.holds(offset)

    def path_near(self, offset: int, length: int) -> str:
        window = self.evidence.data[max(0, offset - CONTEXT) : offset + length + CONTEXT]
        for path in sorted(self.evidence.paths, key=len, reverse=True):
            if path and path.encode() in window:
                return path
        return ""


def _in_window(value: int, window: tuple[float, float]) -> bool:
    return window[0] - SLACK <= value <= window[1] + SLACK


def _timestamp(a: _View, b: _View, span: Range) -> str:
    if span.length != span.length_b or span.length > 8:
        return ""
    for size, scale, unit in ((8, 1_000_000_000, "ns"), (8, 1, "s"), (4, 1, "s")):
        first = max(0, span.offset + span.length - size)
        for start in range(first, span.offset + 1):
            raw_a = a.evidence.data[start : start + size]
            raw_b = b.evidence.data[start : start + size]
            if len(raw_a) < size or len(raw_b) < size:
                continue
            value_a = int.from_bytes(raw_a, "little") // scale
            value_b = int.from_bytes(raw_b, "little") // scale
            if _in_window(value_a, a.evidence.window) and _in_window(value_b, b.evidence.window):
                return f"{size}-byte time in {unit} at {start}: {value_a} vs {value_b}"
    return ""


_ISO_TIME = re.compile(rb"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")


def _text_time_at(view: _View, offset: int, length: int) -> tuple[str, float] | None:
    """An ISO 8601 time written as text that covers [offset, offset + length), as build records hold."""
    data = view.evidence.data
    start = max(0, offset - 40)
    for match in _ISO_TIME.finditer(data, start, min(len(data), offset + length + 40)):
        if match.start() <= offset and offset + length <= match.end():
            text = match.group().decode("ascii").replace("Z", "+00:00")
            try:
                return text, datetime.fromisoformat(text).timestamp()
            except ValueError:
                return None
    return None


def _text_timestamp(a: _View, b: _View, span: Range) -> str:
    if max(span.length, span.length_b) > 32:
        return ""
    time_a = _text_time_at(a, span.offset, span.length)
    time_b = _text_time_at(b, span.offset, span.length_b)
    if time_a is None or time_b is None:
        return ""
    if _in_window(round(time_a[1]), a.evidence.window) and _in_window(round(time_b[1]), b.evidence.window):
        return f"time as text: {time_a[0]} vs {time_b[0]}"
    return ""


def resized_sections(a: tuple[Section, ...], b: tuple[Section, ...]) -> str:
    """ "name +delta" for every section whose size differs: a grown blob moves every address after it."""
    sizes = {s.name: s.size for s in b}
    changed = [f"{s.name} {sizes[s.name] - s.size:+d}" for s in a if s.name in sizes and sizes[s.name] != s.size]
    return ", ".join(changed)


def _classify(a: _View, b: _View, span: Range, resized: str) -> Region:
    section = a.section_name(span.offset)

    def region(kind: str, detail: str) -> Region:
        return Region(span.offset, span.length, span.length_b, kind, section, detail)

    # (1) The build id note.
    if section == BUILD_ID_SECTION:
        return region(BUILD_ID, f"{a.build_id} vs {b.build_id}")
    # (2) Either build's own path, in or around the range.
    small = max(span.length, span.length_b) <= VALUE_RANGE
    path_a = a.path_near(span.offset, span.length) if small else ""
    path_b = b.path_near(span.offset, span.length_b) if small else ""
    if path_a or path_b:
        return region(PATH, f"{path_a or '?'} vs {path_b or '?'}")
    # (3) A time inside each build's own run.
    when = _timestamp(a, b, span) or _text_timestamp(a, b, span)
    if when:
        return region(TIMESTAMP, when)
    # (4) Nuitka's constants blob.
    chunk = next((c for c in a.chunks if c.holds(span.offset)), None)
    if chunk is not None:
        return region(CONSTANTS, f"{chunk.describe()} (+{span.offset - chunk.offset} of {chunk.length} bytes)")
    # (5) The onefile payload.
    if a.payload_holds(span.offset):
        return region(PAYLOAD, "inside the zstd-compressed onefile payload; see the payload entries")
    # (6) Nothing known.
    if span.length != span.length_b:
        return region(
            UNKNOWN, f"sizes differ: {span.length} vs {span.length_b} bytes between the common prefix and suffix"
        )
    if not a.sections:
        return region(UNKNOWN, "not ELF")
    moved = f"; section sizes differ ({resized}), so addresses after them move" if resized else ""
    return region(UNKNOWN, (f"in {section}" if section else "outside any ELF section") + moved)


def explain(a: Evidence, b: Evidence, ranges: Ranges) -> tuple[Region, ...]:
    view_a, view_b = _View(a), _View(b)
    resized = resized_sections(view_a.sections, view_b.sections)
    return tuple(_classify(view_a, view_b, span, resized) for span in ranges.listed)

"""Just enough ELF to say which section a byte offset falls in, and to read the GNU build id.

Parsed with `struct` rather than readelf: the comparer must run where binutils is missing, and it reads
only the section headers. ELF64 little-endian (what this project builds); anything else is "not ELF".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION = struct.Struct("<IIQQQQIIQQ")
SHT_NOBITS = 8
BUILD_ID_SECTION = ".note.gnu.build-id"


@dataclass(frozen=True)
class Section:
    name: str
    offset: int
    size: int

    def holds(self, offset: int) -> bool:
        return self.offset <= offset < self.offset + self.size


def sections(data: bytes) -> tuple[Section, ...] | None:
    """The sections that occupy file bytes, or None when `data` is not a well-formed ELF64 LE file."""
    if len(data) < _HEADER.size or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    fields = _HEADER.unpack_from(data)
    phoff, phentsize, phnum = fields[5], fields[9], fields[10]
    shoff, shentsize, shnum, shstrndx = fields[6], fields[11], fields[12], fields[13]
    if shentsize != _SECTION.size or shoff + shnum * shentsize > len(data) or shstrndx >= max(shnum, 1):
        return None
    raw = [_SECTION.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    names_at, names_size = raw[shstrndx][4], raw[shstrndx][5]
    names = data[names_at : names_at + names_size]
    # The headers are no section, but a changed segment size shows up there first.
    found = [Section("(ELF header)", 0, _HEADER.size), Section("(program headers)", phoff, phnum * phentsize)]
    for name_offset, kind, _flags, _addr, offset, size, *_rest in raw:
        if kind == SHT_NOBITS or size == 0 or offset + size > len(data):
            continue
        end = names.find(b"\0", name_offset)
        name = names[name_offset : end if end >= 0 else len(names)].decode("ascii", "replace")
        found.append(Section(name, offset, size))
    return tuple(sorted(found, key=lambda s: (s.offset, s.name)))


def section_at(found: tuple[Section, ...], offset: int) -> Section | None:
    return next((s for s in found if s.holds(offset)), None)


def gnu_build_id(data: bytes, found: tuple[Section, ...]) -> str:
    """The build id's hex (the note's descriptor), or "" when there is none."""
    note = next((s for s in found if s.name == BUILD_ID_SECTION), None)
    if note is None or note.size < 12:
        return ""
    namesz, descsz, _kind = struct.unpack_from("<III", data, note.offset)
    start = note.offset + 12 + ((namesz + 3) & ~3)
    return data[start : start + descsz].hex()

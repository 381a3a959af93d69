"""Where Nuitka puts what inside its binaries, found from the bytes alone.

Constants blob (Nuitka 4.3 `tools/data_composer/DataComposer.py`, linked with incbin into `.rodata`):
a chain of chunks, one per `.const` file in name order, each `<name> NUL <u32 length> <length bytes>`;
the first is ".bytecode" (frozen stdlib bytecode), the unnamed one holds the global constants and the
rest are named after their module. Finding the chain tells which module's constants a changed byte is in.

Onefile payload: "KA" + "Y" + a zstd frame (see audit/sbom/payload.py), incbin'd into the bootstrap's
`.rodata`; a difference inside it is a difference of a packed file, compared entry by entry elsewhere.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

_FIRST_CHUNK = b".bytecode\0"
_NAME = re.compile(rb"[A-Za-z0-9_.\-]{0,200}\Z")
PAYLOAD_MARKERS = (b"KAY\x28\xb5\x2f\xfd", b"KAX")


@dataclass(frozen=True)
class Chunk:
    name: str
    offset: int
    length: int

    def holds(self, offset: int) -> bool:
        return self.offset <= offset < self.offset + self.length

    def describe(self) -> str:
        if self.name == ".bytecode":
            return "chunk .bytecode (frozen standard-library bytecode)"
        if not self.name:
            return "the global constants chunk"
        return f"module {self.name}"


def _walk(data: bytes, start: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    position = start
    while position < len(data):
        end = data.find(b"\0", position, position + 202)
        if end < 0 or not _NAME.match(data[position:end]) or end + 5 > len(data):
            break
        (length,) = struct.unpack_from("<I", data, end + 1)
        body = end + 5
        if body + length > len(data):
            break
        chunks.append(Chunk(data[position:end].decode("ascii"), body, length))
        position = body + length
    return chunks


def constants_chunks(data: bytes) -> tuple[Chunk, ...]:
    """The longest valid chunk chain starting at a ".bytecode" name (empty when there is none)."""
    best: list[Chunk] = []
    position = data.find(_FIRST_CHUNK)
    while position >= 0:
        chain = _walk(data, position)
        if len(chain) > len(best):
            best = chain
        position = data.find(_FIRST_CHUNK, position + 1)
    return tuple(best) if len(best) >= 2 else ()


def payload_start(data: bytes) -> int:
    """Offset of the onefile payload's "KA" marker, or -1."""
    found = [data.find(marker) for marker in PAYLOAD_MARKERS]
    hits = [f for f in found if f >= 0]
    return min(hits) if hits else -1

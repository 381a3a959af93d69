"""The files inside a Nuitka onefile executable, hashed as they will be unpacked.

The SBOM must give the hash of each bundled shared library *as built* (Nuitka patches rpaths, so the
system copy is not the same bytes), and the executable is the only artefact that certainly holds them.
Payload layout (Nuitka 4.3 `tools/onefile_compressor/OnefileCompressor.py`, POSIX, not `--onefile-as-archive`):

  "KA" <Y|X> <stream> <u64 little-endian: length from "KA" to the end of the stream>
  stream (one zstd frame when Y) = entries, then a lone NUL:
    <path UTF-8> NUL <flags u8: 1=executable, 2=symlink>
    symlink:   <target UTF-8> NUL
    otherwise: <u64 size> [<u32 crc32> when the onefile uses a cached unpack directory] <bytes>

Nuitka either appends that blob to the bootstrap binary (so the file ends with the u64) or, with
`onefile_resource_mode="incbin"` (the 4.3 default on Linux), links it into the bootstrap as a constant.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from audit.errors import AuditError

_MAGIC = b"KA"
_ZSTD_FRAME = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
_MAX_NAME = 4096


class _Malformed(Exception):
    """This candidate is not a payload (or is damaged); the caller tries the next one or reports."""


@dataclass(frozen=True)
class PayloadFile:
    path: str
    size: int
    sha256: str
    link_target: str = ""


class _Stream:
    """Sequential reads from the entry stream starting at `start` ("KA" offset), knowing where it ended."""

    def __init__(self, handle: BinaryIO, start: int, compressed: bool) -> None:
        self.handle = handle
        self.start = start
        self.decompressor = zstandard.ZstdDecompressor().decompressobj() if compressed else None
        self.buffer = bytearray()
        self.fed = 0
        handle.seek(start + 3)

    def _fill(self) -> bool:
        if self.decompressor is not None and self.decompressor.eof:
            return False
        chunk = self.handle.read(_CHUNK if self.decompressor is not None else 1 << 16)
        if not chunk:
            return False
        self.fed += len(chunk)
        if self.decompressor is None:
            self.buffer += chunk
        else:
            try:
                self.buffer += self.decompressor.decompress(chunk)
            except zstandard.ZstdError as exc:
                raise _Malformed(f"does not decompress: {exc}") from None
        return True

    def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise _Malformed("ends inside an entry")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def cstring(self) -> str:
        raw = bytearray()
        while (byte := self.read(1)) != b"\0":
            raw += byte
            if len(raw) > _MAX_NAME:
                raise _Malformed("has an over-long file name")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed("has a file name that is not UTF-8") from None

    def end(self) -> int:
        """File offset just past the stream; only meaningful once the terminator was read."""
        if self.decompressor is None:
            return self.start + 3 + self.fed - len(self.buffer)
        while not self.decompressor.eof:
            if not self._fill():
                raise _Malformed("zstd frame does not end")
        if self.buffer:
            raise _Malformed("has data after the terminator")
        return self.start + 3 + self.fed - len(self.decompressor.unused_data)


def _parse(handle: BinaryIO, start: int, checksums: bool) -> dict[str, PayloadFile]:
    # (1) "KA" then the compression indicator; Y must be followed by a zstd frame (else: archive layout).
    handle.seek(start)
    header = handle.read(7)
    if header[:2] != _MAGIC or header[2:3] not in (b"Y", b"X"):
        raise _Malformed("has no KA marker")
    if header[2:3] == b"Y" and header[3:7] != _ZSTD_FRAME:
        raise _Malformed("is in --onefile-as-archive layout, which is not supported")
    stream = _Stream(handle, start, compressed=header[2:3] == b"Y")
    # (2) Entries until the empty name; every regular file is hashed as it streams past.
    files: dict[str, PayloadFile] = {}
    while name := stream.cstring():
        (flags,) = stream.read(1)
        if flags & 2:
            files[name] = PayloadFile(name, 0, "", link_target=stream.cstring())
            continue
        (size,) = struct.unpack("<Q", stream.read(8))
        if checksums:
            stream.read(4)
        digest = hashlib.sha256()
        missing = size
        while missing:
            chunk = stream.read(min(missing, _CHUNK))
            digest.update(chunk)
            missing -= len(chunk)
        files[name] = PayloadFile(name, size, digest.hexdigest())
    # (3) The u64 after the stream must give the stream's own length: that is what makes this the payload
    # and not some bytes that happen to start with "KA".
    end = stream.end()
    handle.seek(end)
    trailer = handle.read(8)
    if len(trailer) != 8 or struct.unpack("<Q", trailer)[0] != end - start:
        raise _Malformed("length trailer does not match")
    return files


def _candidates(handle: BinaryIO) -> list[int]:
    """Where a payload may start: where the appended-layout trailer points, then every embedded marker."""
    size = handle.seek(0, 2)
    found: list[int] = []
    if size >= 16:
        handle.seek(size - 8)
        (length,) = struct.unpack("<Q", handle.read(8))
        if 0 < length <= size - 8:
            found.append(size - 8 - length)
    handle.seek(0)
    overlap = b""
    offset = 0
    while chunk := handle.read(_CHUNK):
        data = overlap + chunk
        base = offset - len(overlap)
        for marker in (b"KAY" + _ZSTD_FRAME, b"KAX"):
            position = data.find(marker)
            while position != -1:
                found.append(base + position)
                position = data.find(marker, position + 1)
        offset += len(chunk)
        overlap = data[-6:]
    return list(dict.fromkeys(found))


def read_payload(exe: Path, *, checksums: bool) -> dict[str, PayloadFile]:
    """Every file the executable unpacks, by path relative to the unpack directory.

    `checksums` comes from the Nuitka report (cached unpack directory); a wrong value shows up as a
    malformed payload, which is reported rather than guessed around.
    """
    reasons: list[str] = []
    try:
        with exe.open("rb") as handle:
            for start in _candidates(handle):
                try:
                    return _parse(handle, start, checksums)
                except _Malformed as exc:
                    reasons.append(f"at {start}: {exc}")
    except OSError as exc:
        raise AuditError(f"{exe}: cannot read: {exc.strerror or exc}") from None
    detail = f" ({'; '.join(reasons[:3])})" if reasons else ""
    raise AuditError(
        f"{exe}: no Nuitka onefile payload{detail}", hint="pass the onefile executable `audit build` wrote"
    )

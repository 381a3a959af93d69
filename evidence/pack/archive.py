"""The deterministic archive: the same files and time give the same bytes, on any machine with the same zlib.

Tar (USTAR) with members in sorted order, no directory entries, a fixed top directory, one mtime for every
member, uid/gid 0, empty user and group names, mode 0644 (0755 only for names in EXECUTABLE), then gzip with
mtime 0, no file name and a fixed compression level. Reading is the inverse plus one check that makes any
changed byte visible: the archive must be exactly the canonical archive of what it contains (padding,
unused header fields and gzip header bytes included), so a flip that tar or gzip would ignore is still
refused.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from collections.abc import Mapping

from audit.errors import Finding
from evidence.pack.manifest import is_pack_name

TOP = "evidence-pack"
LEVEL = 9
EXECUTABLE: frozenset[str] = frozenset()
MAX_MEMBER_BYTES = 64 << 20
MAX_TOTAL_BYTES = 256 << 20


def tar_bytes(files: Mapping[str, bytes], mtime: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(f"{TOP}/{name}")
            info.size = len(data)
            info.mtime = mtime
            info.mode = 0o755 if name in EXECUTABLE else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def archive_bytes(files: Mapping[str, bytes], mtime: int) -> bytes:
    """gzip(tar) with a fixed header: mtime 0, no name (`gzip.compress` writes exactly that)."""
    return gzip.compress(tar_bytes(files, mtime), compresslevel=LEVEL, mtime=0)


def _gunzip_one_member(data: bytes, what: str) -> bytes:
    # 1. Exactly one gzip member and nothing after it: gzip.decompress would silently accept a second one.
    if data[:3] != b"\x1f\x8b\x08":
        raise Finding(f"{what}: not a gzip archive")
    try:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = decompressor.decompress(data, MAX_TOTAL_BYTES + 1)
    except zlib.error as exc:
        raise Finding(f"{what}: damaged gzip stream ({exc})") from exc
    if len(out) > MAX_TOTAL_BYTES or decompressor.unconsumed_tail:
        raise Finding(f"{what}: larger than {MAX_TOTAL_BYTES} bytes unpacked")
    if not decompressor.eof:
        raise Finding(f"{what}: truncated gzip stream")
    if decompressor.unused_data:
        raise Finding(f"{what}: {len(decompressor.unused_data)} bytes after the gzip stream")
    return out


def read_archive(data: bytes, what: str) -> tuple[dict[str, bytes], int]:
    """The files in a pack archive and their common mtime; Finding (naming `what`) unless it is canonical."""
    raw = _gunzip_one_member(data, what)
    files: dict[str, bytes] = {}
    mtimes: set[int] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                # 2. Regular files under the top directory, with safe, unique names.
                name = member.name.removeprefix(TOP + "/")
                if not member.isreg() or not member.name.startswith(TOP + "/") or not is_pack_name(name):
                    raise Finding(f"{what}: unexpected member {member.name[:80]!r}")
                if name in files:
                    raise Finding(f"{what}: {name} appears twice")
                if member.size > MAX_MEMBER_BYTES:
                    raise Finding(f"{what}: {name} is larger than {MAX_MEMBER_BYTES} bytes")
                handle = tar.extractfile(member)
                if handle is None:
                    raise Finding(f"{what}: {name} cannot be read")
                files[name] = handle.read()
                mtimes.add(int(member.mtime))
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise Finding(f"{what}: not a valid tar archive ({exc})") from exc
    if not files:
        raise Finding(f"{what}: holds no files")
    if len(mtimes) != 1:
        raise Finding(f"{what}: members disagree on their time")
    mtime = mtimes.pop()
    # 3. Canonical: rebuilt from its own contents, the archive must be byte-identical (tar, then gzip).
    canonical_tar = tar_bytes(files, mtime)
    if raw != canonical_tar:
        raise Finding(f"{what}: not the canonical archive of its contents (tar bytes differ)")
    if data != gzip.compress(canonical_tar, compresslevel=LEVEL, mtime=0):
        raise Finding(f"{what}: not the canonical archive of its contents (gzip bytes differ)")
    return files, mtime

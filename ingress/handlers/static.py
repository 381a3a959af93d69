"""Static files, with the hot path reduced to a dict lookup.

Each file is resolved once, then held as an `_Entry` whose complete
HTTP/1.1 responses (status line, headers and body as one bytes object) are
rebuilt only when the Date tick moves or the file changes, which is checked
by `stat` at most once a second. A plain GET for a cached file therefore
costs one dict lookup and one `transport.write` of bytes that already exist.

Files above `inline_max_bytes` are not held in memory; the entry keeps them
open and the connection streams them (sendfile on plain TCP, mmap slices on
TLS). On a plain listener, files from SENDFILE_MIN up go out by sendfile even
when held, because copying them through the socket buffer costs more than
the syscall saves.
"""

from __future__ import annotations

import hashlib
import os
import resource
import secrets
import stat
import urllib.parse
from email.utils import formatdate

from ingress.clock import Clock
from ingress.config.model import StaticSite
from ingress.handlers import conditional
from ingress.handlers.mime import content_type
from ingress.handlers.negotiate import choose_encoding
from ingress.handlers.ranges import Unsatisfiable, parse_ranges
from ingress.protocol.errorpages import error_response
from ingress.protocol.events import FileBody, FileSource, Request, Response
from ingress.protocol.http1 import status_line

_SLOW_HEADERS = frozenset(
    {
        b"range",
        b"if-none-match",
        b"if-modified-since",
        b"if-match",
        b"if-unmodified-since",
        b"accept-encoding",
    }
)
_SIDECARS = ((b"br", ".br"), (b"zstd", ".zst"), (b"gzip", ".gz"))
_MAX_ENTRIES = 8192
_MAX_INLINE_TOTAL = 256 << 20
SENDFILE_MIN = 32 * 1024
# Open files the cache may hold, leaving most descriptors for connections.
# Past the budget, streamed files are opened per request instead.
FD_BUDGET = max(16, min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4))

_Stamp = tuple[int, int, int]


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class _Variant:
    """One encoding of a file, with its responses pre-serialised per Date tick."""

    __slots__ = ("_full", "_head", "_preamble", "body", "etag", "fs", "headers", "size", "source", "stamp")

    def __init__(
        self,
        fs: str,
        st: os.stat_result,
        body: bytes | None,
        source: FileSource | None,
        headers: list[tuple[bytes, bytes]],
        etag: bytes,
    ) -> None:
        self.fs = fs
        self.stamp = _stamp(st)
        self.size = st.st_size
        self.body = body
        self.source = source
        self.etag = etag
        self.headers = headers
        self._preamble = b""
        self._head = Response(200, headers)
        self._full: Response | None = None

    def _rebuild(self, preamble: bytes) -> None:
        block = b"".join(n + b": " + v + b"\r\n" for n, v in self.headers)
        head = status_line(200) + preamble + block + b"\r\n"
        self._head = Response(200, self.headers, b"", head)
        if self.source is not None:
            body = FileBody(self.source, ((0, self.size),), self.size)
            self._full = Response(200, self.headers, body, head)
        elif self.body is not None:
            self._full = Response(200, self.headers, self.body, head + self.body)
        else:
            self._full = None  # opened per request: the descriptor budget is spent
        self._preamble = preamble

    def full(self, preamble: bytes) -> Response:
        if preamble is not self._preamble:
            self._rebuild(preamble)
        full = self._full
        if full is None:
            return Response(200, self.headers, FileBody(self.opened(), ((0, self.size),), self.size), self._head.wire)
        return full

    def head(self, preamble: bytes) -> Response:
        if preamble is not self._preamble:
            self._rebuild(preamble)
        return self._head

    def opened(self) -> FileSource:
        """The cached source, or the file opened now; raises _Stale if it is no longer this file."""
        if self.source is not None:
            return self.source
        fd = os.open(self.fs, os.O_RDONLY | os.O_CLOEXEC)
        if _stamp(os.fstat(fd)) != self.stamp:
            os.close(fd)
            raise _Stale(self.fs)
        return FileSource(fd, self.size)

    def slice(self, first: int, length: int) -> bytes | tuple[int, int]:
        return self.body[first : first + length] if self.body is not None else (first, length)


class _Stale(Exception):
    """The file changed between revalidation and sending; resolve it again."""


class _Entry:
    __slots__ = ("content_type", "identity", "mtime", "tick", "variants")

    def __init__(
        self,
        identity: _Variant,
        variants: dict[bytes, _Variant],
        ctype: bytes,
        mtime: int,
        tick: int,
    ) -> None:
        self.identity = identity
        self.variants = variants
        self.content_type = ctype
        self.mtime = mtime
        self.tick = tick

    def stamps(self) -> list[tuple[str, _Stamp]]:
        return [(v.fs, v.stamp) for v in (self.identity, *self.variants.values())]


class StaticHandler:
    def __init__(self, site: StaticSite, extra_headers: list[tuple[bytes, bytes]], clock: Clock, tls: bool) -> None:
        self.site = site
        self.tls = tls
        self.root = os.path.realpath(site.root)
        self._root_prefix = self.root.rstrip("/") + "/"
        self.extra_headers = extra_headers
        self.clock = clock
        self.boundary = secrets.token_hex(12).encode("ascii")
        self._cache: dict[str, _Entry] = {}
        self._inline_total = 0

    # hot path -----------------------------------------------------------
    def handle(self, request: Request, path: str) -> Response:
        entry = self._cache.get(path)
        if entry is None or entry.tick != self.clock.tick:
            found = self._revalidate(path, request, entry)
            if isinstance(found, Response):
                return found
            entry = found
        headers = request.headers
        try:
            if _SLOW_HEADERS.isdisjoint(headers):
                variant = entry.identity
                if request.method == "HEAD":
                    return variant.head(self.clock.preamble)
                return variant.full(self.clock.preamble)
            return self._conditional(entry, request)
        except (_Stale, OSError):
            self._forget(path, entry)
            return error_response(503, [(b"Retry-After", b"1")])

    # negotiation, conditionals and ranges ------------------------------------
    def _conditional(self, entry: _Entry, request: Request) -> Response:
        headers = request.headers
        variant = entry.identity
        if entry.variants:
            coding = choose_encoding(headers.get(b"accept-encoding"), tuple(entry.variants))
            if coding:
                variant = entry.variants[coding]
        verdict = conditional.evaluate(headers, variant.etag, entry.mtime, request.method)
        if verdict == 304:
            keep = (b"ETag", b"Last-Modified", b"Vary", b"Cache-Control")
            return Response(304, [(n, v) for n, v in variant.headers if n in keep] + self.extra_headers)
        if verdict:
            return error_response(verdict)
        preamble = self.clock.preamble
        range_header = headers.get(b"range")
        if range_header is None or request.method != "GET":
            return variant.head(preamble) if request.method == "HEAD" else variant.full(preamble)
        if_range = headers.get(b"if-range")
        if if_range is not None and not conditional.if_range_allows(if_range, variant.etag, entry.mtime):
            return variant.full(preamble)
        try:
            ranges = parse_ranges(range_header, variant.size)
        except Unsatisfiable:
            return error_response(416, [(b"Content-Range", b"bytes */%d" % variant.size)])
        if ranges is None:
            return variant.full(preamble)
        return self._partial(entry, variant, ranges)

    def _partial(self, entry: _Entry, variant: _Variant, ranges: list[tuple[int, int]]) -> Response:
        common = [(n, v) for n, v in variant.headers if n not in (b"Content-Length", b"Content-Type")]
        size = variant.size
        parts: list[bytes | tuple[int, int]] = []
        if len(ranges) == 1:
            first, last = ranges[0]
            total = last - first + 1
            headers = [
                (b"Content-Type", entry.content_type),
                (b"Content-Length", b"%d" % total),
                (b"Content-Range", b"bytes %d-%d/%d" % (first, last, size)),
                *common,
            ]
            parts.append(variant.slice(first, total))
        else:
            total = 0
            for first, last in ranges:
                part_head = b"\r\n--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n" % (
                    self.boundary,
                    entry.content_type,
                    first,
                    last,
                    size,
                )
                parts += (part_head, variant.slice(first, last - first + 1))
                total += len(part_head) + last - first + 1
            closing = b"\r\n--%s--\r\n" % self.boundary
            parts.append(closing)
            total += len(closing)
            headers = [
                (b"Content-Type", b"multipart/byteranges; boundary=" + self.boundary),
                (b"Content-Length", b"%d" % total),
                *common,
            ]
        if variant.body is not None:
            return Response(206, headers, b"".join(p for p in parts if isinstance(p, bytes)))
        return Response(206, headers, FileBody(variant.opened(), tuple(parts), total))

    # resolution (cold path) ------------------------------------------------
    def _revalidate(self, path: str, request: Request, old: _Entry | None) -> _Entry | Response:
        if old is not None:
            try:
                same = all(_stamp(os.stat(fs)) == st for fs, st in old.stamps())
            except OSError:
                same = False
            if same and self._sidecars_unchanged(old):
                old.tick = self.clock.tick
                return old
            self._forget(path, old)
        return self._resolve(path, request)

    def _sidecars_unchanged(self, entry: _Entry) -> bool:
        if not self.site.precompressed:
            return True
        present = {enc for enc, ext in _SIDECARS if os.path.isfile(entry.identity.fs + ext)}
        return present == set(entry.variants)

    def _forget(self, path: str, entry: _Entry) -> None:
        self._cache.pop(path, None)
        for v in (entry.identity, *entry.variants.values()):
            if v.body is not None:
                self._inline_total -= len(v.body)

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self._root_prefix)

    def _resolve(self, path: str, request: Request) -> _Entry | Response:
        for segment in path.split("/"):
            if segment.startswith(".") and not self.site.dotfiles and segment != ".well-known":
                return error_response(404)
        wanted = self.root + path
        if path.endswith("/"):
            wanted += self.site.index
        real = os.path.realpath(wanted)
        if not self._inside(real):
            return error_response(403)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            return error_response(404)
        except NotADirectoryError:
            return error_response(404)
        except PermissionError:
            return error_response(403)
        if stat.S_ISDIR(st.st_mode):
            if path.endswith("/"):
                return error_response(404)
            location = urllib.parse.quote(path + "/").encode("ascii")
            if request.query:
                location += b"?" + request.query
            return error_response(301, [(b"Location", location)])
        if not stat.S_ISREG(st.st_mode):
            return error_response(404)
        try:
            identity = self._variant(real, b"", None)
        except PermissionError:
            return error_response(403)
        except OSError:
            return error_response(404)
        variants: dict[bytes, _Variant] = {}
        if self.site.precompressed:
            for encoding, ext in _SIDECARS:
                sidecar = real + ext
                try:
                    side_st = os.stat(sidecar)
                except OSError:
                    continue
                if not stat.S_ISREG(side_st.st_mode) or side_st.st_mtime_ns < st.st_mtime_ns:
                    continue  # a stale sidecar would serve old content
                if not self._inside(os.path.realpath(sidecar)):
                    continue
                try:
                    variants[encoding] = self._variant(sidecar, encoding, real)
                except OSError:
                    continue
        if variants:
            vary = [(b"Vary", b"Accept-Encoding")]
            identity.headers += vary
            for v in variants.values():
                v.headers += vary
        entry = _Entry(identity, variants, content_type(real), int(st.st_mtime), self.clock.tick)
        if len(self._cache) >= _MAX_ENTRIES:
            oldest = next(iter(self._cache))
            self._forget(oldest, self._cache[oldest])
        self._cache[path] = entry
        return entry

    def _variant(self, fs: str, encoding: bytes, original: str | None) -> _Variant:
        fd = os.open(fs, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            size = st.st_size
            inline = size <= self.site.inline_max_bytes and self._inline_total + size <= _MAX_INLINE_TOTAL
            body = _read_exactly(fd, size) if inline else None
            wanted = body is None or (not self.tls and size >= SENDFILE_MIN)
            source = FileSource(fd, size) if wanted and FileSource.live < FD_BUDGET else None
        except BaseException:
            os.close(fd)
            raise
        if source is None:
            os.close(fd)
        if body is not None:
            etag = b'"%s"' % hashlib.blake2b(body, digest_size=12).hexdigest().encode("ascii")
            self._inline_total += len(body)
        else:
            etag = b'"%x-%x-%x"' % (st.st_ino, st.st_mtime_ns, st.st_size)
        headers = [
            (b"Content-Type", content_type(original or fs)),
            (b"Content-Length", b"%d" % size),
            (b"ETag", etag),
            (b"Last-Modified", formatdate(int(st.st_mtime), usegmt=True).encode("ascii")),
            (b"Accept-Ranges", b"bytes"),
        ]
        if encoding:
            headers.append((b"Content-Encoding", encoding))
        if self.site.cache_control:
            headers.append((b"Cache-Control", self.site.cache_control.encode("latin-1")))
        headers.extend(self.extra_headers)
        return _Variant(fs, st, body, source, headers, etag)


def _read_exactly(fd: int, size: int) -> bytes:
    data = os.pread(fd, size, 0)
    if len(data) != size:
        raise OSError("file changed while it was read")
    return data

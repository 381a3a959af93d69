"""Conditional request evaluation (RFC 9110 §13.2.2), pure."""

from __future__ import annotations

from datetime import UTC
from email.utils import parsedate_to_datetime


def _etags(header: bytes) -> list[bytes]:
    return [t.strip() for t in header.split(b",") if t.strip()]


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def strong_match(header: bytes, etag: bytes) -> bool:
    if header.strip() == b"*":
        return True
    return any(t == etag and not t.startswith(b"W/") for t in _etags(header))


def weak_match(header: bytes, etag: bytes) -> bool:
    if header.strip() == b"*":
        return True
    target = _opaque(etag)
    return any(_opaque(t) == target for t in _etags(header))


def http_date_seconds(header: bytes) -> int | None:
    """Seconds since the epoch, or None if invalid. Every HTTP-date is GMT (RFC 9110 §5.6.7),
    including the obsolete asctime form, which `parsedate_to_datetime` returns as naive local time."""
    try:
        when = parsedate_to_datetime(header.decode("latin-1"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def evaluate(headers: dict[bytes, bytes], etag: bytes, mtime: int, method: str) -> int:
    """0 to proceed, or 304/412 to answer instead, in the RFC's order of precedence."""
    if_match = headers.get(b"if-match")
    if if_match is not None:
        if not strong_match(if_match, etag):
            return 412
    else:
        ius = headers.get(b"if-unmodified-since")
        if ius is not None:
            when = http_date_seconds(ius)
            if when is not None and mtime > when:
                return 412
    inm = headers.get(b"if-none-match")
    if inm is not None:
        if weak_match(inm, etag):
            return 304 if method in ("GET", "HEAD") else 412
    elif method in ("GET", "HEAD"):
        ims = headers.get(b"if-modified-since")
        if ims is not None:
            when = http_date_seconds(ims)
            if when is not None and mtime <= when:
                return 304
    return 0


def if_range_allows(header: bytes, etag: bytes, mtime: int) -> bool:
    """True when the Range should be honoured (the representation is unchanged)."""
    value = header.strip()
    if value.startswith(b'"'):
        return value == etag
    if value.startswith(b"W/"):
        return False
    when = http_date_seconds(value)
    return when is not None and when == mtime

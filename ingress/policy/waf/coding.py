"""Request bodies sent with a Content-Encoding, decoded for inspection within a bound.

A compressed body is opaque to patterns and looks random to the entropy
gate, so an attack could hide in gzip and a clean compressed upload would
be refused. gzip and deflate (the codings zlib reads) are decoded, never
to more than the inspection limit plus one byte, so a decompression bomb
costs no more memory than a plain body of that size. Any other coding
(br, zstd, compress, or several stacked) cannot be inspected and is
refused: a firewall that lets through what it cannot read is no firewall.
The origin still receives the body exactly as sent.
"""

from __future__ import annotations

import zlib

_GZIP = frozenset({b"gzip", b"x-gzip"})
_DEFLATE = b"deflate"


class Undecodable(Exception):
    """A coding this firewall cannot read (`unsupported`), or a body that is not valid in it."""

    def __init__(self, unsupported: bool) -> None:
        super().__init__("unsupported content coding" if unsupported else "corrupt compressed body")
        self.unsupported = unsupported


def decoded(coding: bytes, body: bytes, limit: int, whole: bool = True) -> tuple[bytes, bool]:
    """(the first `limit` decoded bytes, whether the decoded body is longer than `limit`).

    `coding` is the Content-Encoding field value; `identity` (or empty) returns the body.
    `whole` is False when `body` is only the start of what was sent, which then may end
    mid-stream. Raises Undecodable.
    """
    name = coding.strip().lower()
    if not name or name == b"identity":
        return body[:limit], len(body) > limit
    if name in _GZIP:
        return _inflate(body, zlib.MAX_WBITS | 16, limit, whole)
    if name == _DEFLATE:
        # RFC 9110 §8.4.1.2: zlib-wrapped; some clients send it raw, which browsers accept too.
        try:
            return _inflate(body, zlib.MAX_WBITS, limit, whole)
        except Undecodable:
            return _inflate(body, -zlib.MAX_WBITS, limit, whole)
    raise Undecodable(unsupported=True)


def _inflate(body: bytes, wbits: int, limit: int, whole: bool) -> tuple[bytes, bool]:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise Undecodable(unsupported=False) from None
    if len(out) > limit:
        return out[:limit], True
    if whole and not inflater.eof:
        raise Undecodable(unsupported=False)  # cut short: not a whole compressed body
    return out, False

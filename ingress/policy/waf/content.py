"""Which kind of body a Content-Type announces, compared on type boundaries.

`application/json; charset=utf-8` and `application/problem+json` are JSON;
`application/jsonx` and `application/json-seq` are not, and neither is a
type that merely starts with the same letters. The parameters after `;`
never change the kind.
"""

from __future__ import annotations

import enum


class BodyKind(enum.Enum):
    JSON = "json"
    FORM = "form"
    MULTIPART = "multipart"
    TEXT = "text"
    BINARY = "binary"


_TEXTUAL = frozenset(
    {
        b"application/xml",
        b"application/javascript",
        b"application/x-javascript",
        b"application/graphql",
        b"application/x-yaml",
        b"application/yaml",
        b"application/x-php",
        b"application/sql",
    }
)


def media_type(content_type: bytes) -> bytes:
    """`type/subtype` in lower case, without parameters or surrounding whitespace."""
    return content_type.partition(b";")[0].strip().lower()


def body_kind(content_type: bytes) -> BodyKind:
    mt = media_type(content_type)
    if mt == b"application/json" or (mt.startswith(b"application/") and mt.endswith(b"+json")):
        return BodyKind.JSON
    if mt == b"application/x-www-form-urlencoded":
        return BodyKind.FORM
    if mt == b"multipart/form-data":
        return BodyKind.MULTIPART
    if not mt or mt.startswith(b"text/") or mt in _TEXTUAL or mt.endswith(b"+xml"):
        return BodyKind.TEXT
    return BodyKind.BINARY

"""JSON bodies: valid or refused, within structure limits, and the bytes of their string literals.

Validity comes from the C parser (`json.loads`). The limits are checked on
the raw text instead of by walking the parsed document, which costs a
Python step per value: escaped backslashes and quotes are removed, then
the text splits on `"` into alternating outside / inside-string pieces,
and the outside pieces, with everything but `{}[]:,` deleted, are the
document's skeleton. Its colons bound the keys of any object, its commas
the elements of any array, and removing innermost bracket pairs once per
level measures the depth (linear, at most `max_depth` passes). Only a
document whose skeleton exceeds a bound is walked, to find whether a
single object or array really does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ingress.policy.waf import verdict as v

_SKELETON_DELETE = bytes(b for b in range(256) if b not in b"{}[]:,")
_SKELETON_QUOTED_DELETE = bytes(b for b in range(256) if b not in b'{}[]:,"')
_PARENS = bytes.maketrans(b"{[}]", b"(())")


@dataclass(frozen=True, slots=True)
class JsonLimits:
    max_depth: int = 32
    max_keys: int = 1000
    max_string_length: int = 65536
    max_array_items: int = 10000


def _unescaped(body: bytes) -> bytes:
    """`body` with `\\\\` and `\\"` removed, so that every remaining `"` delimits a string.

    Without a backslash right before a quote, every quote already delimits one (an escaped
    backslash elsewhere cannot move a quote's meaning), so most bodies are returned as they are.
    """
    if b'\\"' not in body:
        return body
    return body.replace(b"\\\\", b"").replace(b'\\"', b"")


def split(body: bytes) -> list[bytes]:
    """`body` cut at its unescaped quotes: even pieces lie outside strings, odd ones inside."""
    return _unescaped(body).split(b'"')


def string_bytes(pieces: list[bytes]) -> bytes:
    """The bytes inside the string literals (keys and values), as written, escapes aside."""
    return b"".join(pieces[1::2])


def _skeleton(body: bytes) -> bytes:
    """Structure outside strings, without cutting the body into a piece per string.

    Keeping only structure and quotes leaves `""` for every string without structure characters
    inside (nearly all of them; in valid JSON a closing quote is never followed by an opening
    one, so each `""` is one string); only the few strings left need a split.
    """
    quoted = _unescaped(body).translate(None, _SKELETON_QUOTED_DELETE).replace(b'""', b"")
    return b"".join(quoted.split(b'"')[0::2]) if b'"' in quoted else quoted


def _depth_exceeds(skeleton: bytes, max_depth: int) -> bool:
    parens = skeleton.translate(_PARENS, b":,")
    if parens.count(b"(") <= max_depth:
        return False
    for _ in range(max_depth):
        parens = parens.replace(b"()", b"")
        if not parens:
            return False
    return True


def check(body: bytes, limits: JsonLimits, pieces: list[bytes] | None = None) -> str | None:
    """The id of the check `body` fails (json-invalid, json-depth, ...), or None.

    `pieces` is `split(body)` when the caller has it already.
    """
    # 1. Parse. Depth beyond the interpreter's recursion limit is a depth failure, not a crash.
    try:
        doc = json.loads(body.decode("utf-8"))
    except RecursionError:
        return v.JSON_DEPTH
    except ValueError:
        return v.JSON_INVALID
    # 2. The skeleton outside strings, and the bounds it gives.
    skeleton = _skeleton(body) if pieces is None else b"".join(pieces[0::2]).translate(None, _SKELETON_DELETE)
    if _depth_exceeds(skeleton, limits.max_depth):
        return v.JSON_DEPTH
    keys_ok = skeleton.count(b":") <= limits.max_keys
    items_ok = skeleton.count(b",") + 1 <= limits.max_array_items
    # A literal holds at least one byte per character it decodes to; escapes aside, its length
    # as written is a bound, and the body's always is.
    strings_ok = len(body) <= limits.max_string_length
    if not strings_ok and body.find(b"\\") < 0:
        if pieces is None:
            pieces = split(body)
        strings_ok = max(map(len, pieces[1::2]), default=0) <= limits.max_string_length
    if keys_ok and items_ok and strings_ok:
        return None
    # 3. Some bound exceeded: walk the document to see whether one object, array or string does.
    return _walk(doc, limits)


def _walk(doc: Any, limits: JsonLimits) -> str | None:
    stack = [doc]
    max_string = limits.max_string_length
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if len(node) > limits.max_keys:
                return v.JSON_KEYS
            for key in node:
                if len(key) > max_string:
                    return v.JSON_STRING
            values: Any = node.values()
        elif isinstance(node, list):
            if len(node) > limits.max_array_items:
                return v.JSON_ARRAY
            values = node
        else:
            continue
        for value in values:
            if isinstance(value, str):
                if len(value) > max_string:
                    return v.JSON_STRING
            elif isinstance(value, dict | list):
                stack.append(value)
    if isinstance(doc, str) and len(doc) > max_string:
        return v.JSON_STRING
    return None

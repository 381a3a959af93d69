"""Shannon entropy of a byte string, decided against a threshold without counting every byte value.

Counting all 256 byte values costs tens of nanoseconds per byte in Python,
so the gate bounds the entropy first. With the bytes split into groups g
holding fractions p_g and using K_g distinct values each,
H = H(p) + sum_g p_g * H(g) <= H(p) + sum_g p_g * log2 K_g.

1. Groups of known size (letters, digits and space: 63 values; other
   printable ASCII: 35; the rest), measured with one `translate` each and
   charged their full size: text, JSON string values, base64 and JWTs (64
   symbols, at most 6 bits) stay under 6.5 bits by this alone.
2. Non-ASCII input split further into UTF-8 continuation and lead bytes,
   each charged only the values actually present (a memchr per value):
   Cyrillic or CJK text uses a handful of lead bytes, so it clears here.
3. Only input neither bound clears (random, compressed or encrypted bytes)
   is counted exactly, on at most EXACT_SAMPLE evenly spaced bytes so that
   the cost stays bounded; sampling lowers the estimate slightly, never
   raises it.
"""

from __future__ import annotations

import collections
import math

EXACT_SAMPLE = 2048

_ALNUM_SPACE = bytes(b for b in range(256) if chr(b).isascii() and (chr(b).isalnum() or b == 0x20))
_PUNCT = bytes(b for b in range(0x21, 0x7F) if b not in _ALNUM_SPACE) + b"\t\n\r"
_CONTROL = bytes(b for b in range(0x80) if b not in _ALNUM_SPACE and b not in _PUNCT)
_CONTINUATION = bytes(range(0x80, 0xC0))
_LEAD = bytes(range(0xC0, 0x100))
_LOG2_ALNUM = math.log2(len(_ALNUM_SPACE))
_LOG2_PUNCT = math.log2(len(_PUNCT))
_LOG2_REST = math.log2(256 - len(_ALNUM_SPACE) - len(_PUNCT))
_CHARS = tuple(chr(b) for b in range(256))


def shannon(data: bytes) -> float:
    """Bits per byte; 0.0 for empty input."""
    n = len(data)
    if not n:
        return 0.0
    h = 0.0
    for c in collections.Counter(data).values():
        p = c / n
        h -= p * math.log2(p)
    return h


def _grouped(n: int, groups: list[tuple[int, float]]) -> float:
    h = 0.0
    for size, bits in groups:
        if size:
            p = size / n
            h += p * (bits - math.log2(p))
    return h


def _present(text: str, values: bytes) -> int:
    # A memchr per value on the latin-1 text; `in` on bytes takes a far slower path.
    chars = _CHARS
    return sum(1 for v in values if chars[v] in text)


def exceeds(data: bytes, threshold: float) -> bool:
    """Whether the entropy of `data` is above `threshold` bits per byte."""
    n = len(data)
    if not n:
        return False
    # (1) Group sizes, each group charged every value it could hold.
    other = data.translate(None, _ALNUM_SPACE)
    rest = other.translate(None, _PUNCT) if other else other
    alnum, punct = n - len(other), len(other) - len(rest)
    if _grouped(n, [(alnum, _LOG2_ALNUM), (punct, _LOG2_PUNCT), (len(rest), _LOG2_REST)]) <= threshold:
        return False
    # (2) The rest split like UTF-8, each part charged the values it actually uses.
    if rest:
        lead = rest.translate(None, _CONTINUATION + _CONTROL)
        control = rest.translate(None, _CONTINUATION + _LEAD)
        cont = len(rest) - len(lead) - len(control)
        text = data.decode("latin-1")
        groups = [(alnum, _LOG2_ALNUM), (punct, _LOG2_PUNCT)]
        for size, values in ((cont, _CONTINUATION), (len(lead), _LEAD), (len(control), _CONTROL)):
            if size:
                groups.append((size, math.log2(_present(text, values))))
        if _grouped(n, groups) <= threshold:
            return False
    # (3) Exact, on a bounded sample.
    if n > EXACT_SAMPLE:
        data = data[:: -(-n // EXACT_SAMPLE)]
    return shannon(data) > threshold

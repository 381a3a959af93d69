"""Accept-Encoding negotiation (RFC 9110 §12.5.3), pure."""

from __future__ import annotations

# Preference among codings the client rates equally: smallest output first.
PREFERENCE = (b"br", b"zstd", b"gzip")


def parse_accept_encoding(header: bytes) -> dict[bytes, float]:
    weights: dict[bytes, float] = {}
    for item in header.split(b","):
        coding, _, params = item.partition(b";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params.split(b";"):
            key, _, value = param.partition(b"=")
            if key.strip().lower() == b"q":
                try:
                    q = max(0.0, min(1.0, float(value.strip())))
                except ValueError:
                    q = 0.0
        weights[coding] = q
    return weights


def choose_encoding(header: bytes | None, available: tuple[bytes, ...]) -> bytes:
    """The best coding in `available` the client accepts, or b"" for identity."""
    if not header or not available:
        return b""
    weights = parse_accept_encoding(header)
    star = weights.get(b"*")
    best, best_q = b"", 0.0
    for coding in PREFERENCE:
        if coding not in available:
            continue
        q = weights.get(coding, star if star is not None else 0.0)
        if coding == b"gzip" and b"x-gzip" in weights and coding not in weights:
            q = weights[b"x-gzip"]
        if q > best_q:
            best, best_q = coding, q
    if not best:
        return b""
    identity_q = weights.get(b"identity", star if star is not None else 1.0)
    return best if best_q >= identity_q or identity_q == 0.0 else b""

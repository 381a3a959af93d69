"""Is a Host header (or :authority) a well-formed `host[:port]`?

llhttp, h2 and aioquic keep control characters out of field values, and
HTTP/1.1 already refuses a missing or repeated Host; none of them looks at
what the value says. Anything that is not a reg-name, an IPv4 address or
a bracketed IPv6 literal, with an optional numeric port, is refused here
with 400 before policy rules or routes (which match host names) see it:
`a.example.com@b.example`, `x/../y`, spaces, a second colon, percent-escapes.

The character check is one C-level pass (`bytes.translate` deleting every
allowed byte: anything left over is not allowed), and it runs once per
distinct Host, since the router memoises its answer.
"""

from __future__ import annotations

import string

# RFC 3986 reg-name characters (unreserved and sub-delims), without pct-encoded: no DNS name needs one.
_NAME = (string.ascii_letters + string.digits + "-._~!$&'()*+,;=").encode("ascii")
_IPV6 = (string.hexdigits + ":.").encode("ascii")
_DIGITS = string.digits.encode("ascii")


def _port_ok(port: bytes) -> bool:
    """Digits for a TCP port; RFC 9110 allows an empty port after the colon."""
    return not port or (len(port) <= 5 and not port.translate(None, _DIGITS) and int(port) <= 65535)


def valid_host(host: str) -> bool:
    """`host` as the protocols pass it on (the field value decoded as latin-1). Empty is not valid."""
    try:
        raw = host.encode("latin-1")
    except UnicodeEncodeError:
        return False
    if not raw:
        return False
    if raw[0] == 0x5B:  # "[": an IPv6 literal (IPvFuture and zone ids are not taken)
        end = raw.find(b"]")
        literal = raw[1:end]
        if end < 0 or b":" not in literal or literal.translate(None, _IPV6):
            return False
        rest = raw[end + 1 :]
        return not rest or (rest[0] == 0x3A and _port_ok(rest[1:]))
    name, colon, port = raw.rpartition(b":")
    if not colon:
        name = raw
    elif not _port_ok(port):
        return False
    # ":" left over in the name means a second colon; "." must separate non-empty labels.
    # (`find`, not `in`: see routing.normalize_path.)
    return bool(name) and not name.translate(None, _NAME) and name[0] != 0x2E and name.find(b"..") < 0

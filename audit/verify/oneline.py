"""Making untrusted text safe to print in a one-line answer.

File names come from the release directory and error texts from cryptography and sigstore quote
certificate subjects: both are chosen by whoever wrote the release. Printed raw, a newline (or a Unicode
line separator a log viewer honours) lets them append a forged `audit verify: OK: ...` line to a failure,
and operators grep deploy logs for exactly that line. So every such text is escaped here, injectively
(the backslash is escaped too), before it becomes part of a message.
"""

from __future__ import annotations

import unicodedata

# Cc: C0/C1 controls and DEL (\n \r \x0b \x0c \x1c-\x1e \x85 ...); Zl/Zp: U+2028/U+2029; Cf: invisible
# format characters such as bidi overrides, which reorder what a terminal shows; Cs: lone surrogates.
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def oneline(text: str, *, escape_backslash: bool = True) -> str:
    """`text` with every line break, control and format character escaped: it always prints as one line.

    `escape_backslash=False` is for a last pass over a message whose parts were escaped already: it leaves
    their escapes as they are (no `\\\\x0a`) and still guarantees one line.
    """
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\" if escape_backslash else char)
        elif unicodedata.category(char) in _UNSAFE:
            out.append(_escape(char))
        else:
            out.append(char)
    return "".join(out)

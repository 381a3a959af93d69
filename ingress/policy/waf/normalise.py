"""Undo the encodings attackers hide payloads behind, in linear time and without regular expressions.

Input is text that is already lower case (bytes lowered, then decoded as
latin-1, one character per byte). Every decoder here keeps it lower case:
the characters it produces are lowered as they are made. Each decoder is
a `split` or `find` walk whose pieces are each touched once, so a pass is
linear in its input, whatever the input; `decode_once` runs them all in
the order the layers are usually stacked (transport %-encoding, then
JSON/JavaScript escapes, then HTML entities, then SQL comments) and
`collapse` makes whitespace canonical so one pattern covers tabs, line
breaks, non-breaking spaces and comment-separated keywords alike.

Characters that could smuggle a pattern past matching are mapped as they
are decoded: NUL disappears (`uni%00on` is `union` to some parsers),
full-width forms become ASCII (`%EF%BC%9C` is `<` after NFKC), and overlong
UTF-8 (`%C0%AE`) becomes the ASCII it encodes.
"""

from __future__ import annotations

import html.entities

# The character between inputs joined for one scan: outside ASCII, so no pattern contains it
# and none can match across two inputs; not whitespace, so collapsing keeps it.
SEPARATOR = "\u00b6"

# The UTF-8 lead bytes (as latin-1 characters) of the overlong and full-width forms `fold_utf8` maps.
FOLD_LEADS = ("\xc0", "\xc1", "\xe0", "\xef")
_HEX = "0123456789abcdef"
_REPLACEMENT = "\ufffd"


def char(cp: int) -> str:
    """The character a decoder emits for code point `cp`, already normalised."""
    if cp < 0x80:
        return chr(cp).lower() if cp else ""
    if 0xFF01 <= cp <= 0xFF5E:  # full-width ASCII, folded by NFKC
        return chr(cp - 0xFEE0).lower()
    if 0xD800 <= cp <= 0xDFFF or cp > 0x10FFFF:
        return _REPLACEMENT
    return chr(cp)


# Code points that collapse to a space (besides ASCII whitespace).
_SPACES = frozenset({0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000})


def inert(cp: int) -> bool:
    """Whether decoding to `cp` can make no new match: a non-ASCII letter or symbol.

    No pattern contains one, and no pattern can run across one, so a pass whose every
    decoding is inert (`\\u00e9` in JSON written ASCII-only) needs no new scan.
    """
    return cp >= 0x80 and cp not in _SPACES and not 0xFF01 <= cp <= 0xFF5E


# "%xx" (lower case hex, since input is lowered) to the character it encodes.
_PERCENT = {f"{a}{b}": char(int(a + b, 16)) for a in _HEX for b in _HEX}


_HEX_SET = frozenset(_HEX)


def _hex4(text: str) -> int:
    """The value of exactly four hex digits at the start of `text`, or -1."""
    head = text[:4]
    # int() alone would also take "0x1f", " 1f" and "1_f".
    if len(head) == 4 and _HEX_SET.issuperset(head):
        return int(head, 16)
    return -1


def url_decode(s: str) -> str:
    """%XX and IIS-style %uXXXX. `+` is handled separately (see decode_once)."""
    return _url_decode(s)[0]


def _url_decode(s: str) -> tuple[str, bool]:
    parts = s.split("%")
    out = [parts[0]]
    append = out.append
    active = False
    for p in parts[1:]:
        c = _PERCENT.get(p[:2])
        if c is not None:
            # A byte: even above 0x7f it may be part of an overlong or full-width sequence.
            active = True
            append(c)
            append(p[2:])
        elif p[:1] == "u" and (cp := _hex4(p[1:5])) >= 0:
            active = active or not inert(cp)
            append(char(cp))
            append(p[5:])
        else:
            append("%")
            append(p)
    return "".join(out), active


_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "b": " ", "f": " ", "v": " ", "/": "/", '"': '"', "'": "'", "0": ""}


def backslash_decode(s: str) -> str:
    """JSON and JavaScript escapes: \\uXXXX, \\u{X..}, \\xXX, \\n and friends, \\\\ ."""
    return _backslash_decode(s)[0]


def _backslash_decode(s: str) -> tuple[str, bool]:
    parts = s.split("\\")
    out = [parts[0]]
    append = out.append
    active = False
    n = len(parts)
    i = 1
    while i < n:
        p = parts[i]
        i += 1
        if not p:
            # An escaped backslash: emit it, and what follows the pair is literal text.
            active = True
            append("\\")
            if i < n:
                append(parts[i])
                i += 1
            continue
        c = p[0]
        if c == "u":
            head = p[1:5]
            if len(head) == 4 and _HEX_SET.issuperset(head):
                cp = int(head, 16)
                if cp >= 0x80 and cp not in _SPACES and not 0xFF01 <= cp <= 0xFF5E:
                    # Inert, and the common case, so spelt out here rather than calling char().
                    append(_REPLACEMENT if 0xD800 <= cp <= 0xDFFF else chr(cp))
                else:
                    active = True
                    append(char(cp))
                append(p[5:])
                continue
            if p[1:2] == "{":
                end = p.find("}", 2, 10)
                digits = p[2:end] if end > 2 else ""
                if digits and all(d in _HEX for d in digits):
                    cp = int(digits, 16)
                    active = active or not inert(cp)
                    append(char(cp))
                    append(p[end + 1 :])
                    continue
        elif c == "x":
            hx = _PERCENT.get(p[1:3])
            if hx is not None:
                active = True
                append(hx)
                append(p[3:])
                continue
        else:
            simple = _SIMPLE.get(c)
            if simple is not None:
                active = True
                append(simple)
                append(p[1:])
                continue
        append("\\")
        append(p)
    return "".join(out), active


def _entity_table() -> dict[str, str]:
    """HTML5 named references (with their semicolon), keyed by lower-cased name.

    Lowering the input lowers `&NewLine;` too, so names are matched without
    case; where two names differ only in case, the lower-case one wins.
    """
    table: dict[str, str] = {}
    for name, value in html.entities.html5.items():
        if not name.endswith(";"):
            continue
        key = name[:-1].lower()
        if key in table and name[:-1] != key:
            continue
        table[key] = "".join(char(ord(c)) for c in value)
    return table


_ENTITIES = _entity_table()
_DEC = "0123456789"


def html_decode(s: str) -> str:
    """&name; &#NNN; &#xHH; — numeric ones with or without the semicolon, as browsers accept them."""
    return _html_decode(s)[0]


def _html_decode(s: str) -> tuple[str, bool]:
    parts = s.split("&")
    out = [parts[0]]
    append = out.append
    active = False
    for p in parts[1:]:
        if p[:1] == "#":
            if p[1:2] == "x":
                body = p[2:]
                rest = body.lstrip(_HEX)
                base = 16
            else:
                body = p[1:]
                rest = body.lstrip(_DEC)
                base = 10
            digits = body[: len(body) - len(rest)]
            if not digits:
                append("&")
                append(p)
                continue
            digits = digits.lstrip("0") or "0"
            cp = int(digits, base) if len(digits) <= 7 else 0x110000
            active = active or not inert(cp)
            append(char(cp) if cp else _REPLACEMENT)
            append(rest[1:] if rest[:1] == ";" else rest)
            continue
        semi = p.find(";", 1, 33)
        value = _ENTITIES.get(p[:semi]) if semi > 0 else None
        if value is None:
            append("&")
            append(p)
        else:
            active = active or not all(inert(ord(c)) for c in value)
            append(value)
            append(p[semi + 1 :])
    return "".join(out), active


def strip_sql_comments(s: str) -> str:
    """`/* … */` becomes one space (`union/**/select`); MySQL's `/*!50000 … */` keeps what it runs."""
    i = s.find("/*")
    if i < 0:
        return s
    out: list[str] = []
    pos = 0
    while i >= 0:
        j = s.find("*/", i + 2)
        if j < 0:
            break
        out.append(s[pos:i])
        out.append(" ")
        if s[i + 2 : i + 3] == "!":
            out.append(s[i + 3 : j].lstrip(_DEC))
            out.append(" ")
        pos = j + 2
        i = s.find("/*", pos)
    out.append(s[pos:])
    return "".join(out)


def _continuation(c: str) -> int:
    o = ord(c) if c else 0
    return o & 0x3F if 0x80 <= o <= 0xBF else -1


def fold_utf8(s: str) -> str:
    """Overlong UTF-8 for ASCII (`\\xc0\\xae` is `.`) and full-width ASCII, as bytes decoded to latin-1."""
    for lead in FOLD_LEADS:
        if lead not in s:
            continue
        parts = s.split(lead)
        out = [parts[0]]
        append = out.append
        for p in parts[1:]:
            a = _continuation(p[:1])
            cp = -1
            used = 0
            if lead in ("\xc0", "\xc1"):
                if a >= 0:
                    cp = ((ord(lead) & 0x1F) << 6) | a
                    used = 1
            else:
                b = _continuation(p[1:2])
                if a >= 0 and b >= 0:
                    cp = ((ord(lead) & 0x0F) << 12) | (a << 6) | b
                    used = 2
                    if (lead == "\xe0" and cp >= 0x80) or (lead == "\xef" and not 0xFF01 <= cp <= 0xFF5E):
                        cp = -1
            if cp < 0:
                append(lead)
                append(p)
            else:
                append(char(cp))
                append(p[used:])
        s = "".join(out)
    return s


def needs_decoding(s: str, plus: bool) -> bool:
    """Whether any decoder could change `s`: for the common clean input, a few memchr scans and no copy."""
    return (
        "%" in s
        or "\\" in s
        or ("&" in s and ("&#" in s or ";" in s))
        or ("*" in s and "/*" in s)
        or (plus and "+" in s)
        or (not s.isascii() and _has_fold_lead(s))
    )


def _has_fold_lead(s: str) -> bool:
    return "\xc0" in s or "\xc1" in s or "\xe0" in s or "\xef" in s


def decode_once(s: str, plus: bool) -> tuple[str, bool]:
    """One layer of every encoding, and whether it could have made a new match.

    Applied up to three times to catch double and triple encoding. `plus` decodes `+` as a
    space, as form encoding (queries, form bodies) does; elsewhere a plus is itself (a phone
    number in JSON, base64 in a cookie). The flag is False when every change was inert (see
    `inert`), which spares a scan of the whole text for JSON written with \\u escapes.
    """
    active = False
    if plus and "+" in s:
        s = s.replace("+", " ")
        active = True
    if "%" in s:
        s, changed = _url_decode(s)
        active = active or changed
    if "\\" in s:
        s, changed = _backslash_decode(s)
        active = active or changed
    if "&" in s and ("&#" in s or ";" in s):  # a named reference needs its semicolon here
        s, changed = _html_decode(s)
        active = active or changed
    if "*" in s and "/*" in s:
        stripped = strip_sql_comments(s)
        active = active or stripped != s
        s = stripped
    if not s.isascii() and _has_fold_lead(s):
        folded = fold_utf8(s)
        active = active or folded != s
        s = folded
    return s, active


# Unicode spaces as UTF-8 bytes read as latin-1, after "\xe2\x80": U+2000-U+200A, U+2028, U+2029, U+202F.
_E2_80_SPACES = frozenset("\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\xa8\xa9\xaf")


def _utf8_spaces(s: str) -> str:
    """NBSP, NEL and the Unicode spaces, still as UTF-8 byte pairs or triples, become a space."""
    if "\xc2" in s:
        s = s.replace("\xc2\xa0", " ").replace("\xc2\x85", " ")
    if "\xe3" in s and "\xe3\x80\x80" in s:
        s = s.replace("\xe3\x80\x80", " ")
    if "\xe2" in s:
        parts = s.split("\xe2\x80")
        if len(parts) > 1:
            out = [parts[0]]
            for p in parts[1:]:
                out.append(" " if p[:1] in _E2_80_SPACES else "\xe2\x80")
                out.append(p[1:] if p[:1] in _E2_80_SPACES else p)
            s = "".join(out)
    return s


def collapse(s: str) -> str:
    """Every run of whitespace (tabs, line breaks, NBSP, Unicode spaces) becomes one space."""
    if not s.isascii():
        s = _utf8_spaces(s)
    return " ".join(s.split())


def needs_collapse(s: str) -> bool:
    """Whether `collapse` would change `s` (bar leading and trailing spaces): a few memchr scans."""
    return (
        "\n" in s
        or "\t" in s
        or "\r" in s
        or "\x0b" in s
        or "\x0c" in s
        or "\x1c" in s
        or "\x1d" in s
        or "\x1e" in s
        or "\x1f" in s
        or (not s.isascii() and _has_other_space(s))
        or "  " in s
    )


def _has_other_space(s: str) -> bool:
    """Non-ASCII whitespace: NBSP and NEL, Unicode spaces (decoded), or their UTF-8 bytes (not yet)."""
    if "\x85" in s or "\xa0" in s:
        return True
    if ("\xe2" in s or "\xe3" in s) and _utf8_spaces(s) != s:
        return True
    # On a latin-1 string these find nothing without reading it: the characters cannot be there.
    return any(c in s for c in _WIDE_SPACES)


_WIDE_SPACES = tuple(chr(cp) for cp in (0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000))


def line_form(s: str) -> str:
    """Whitespace collapsed except line breaks, which stay (as one \\n): where header injection shows."""
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(" ".join(line.split()) for line in s.split("\n"))

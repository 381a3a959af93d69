"""Every pattern of a set in one Aho-Corasick automaton, and the normalise-then-match loop around it.

One automaton per (set, exclusions), so a scan costs one pass over the
text whatever the number of patterns, and no input can make it backtrack.
`scan` matches the text as sent (lower-cased, whitespace collapsed), then
after each decoding pass that changed something, up to three passes.
Several inputs are scanned together, joined by a separator no pattern
contains; the match position tells which input it was in.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import ahocorasick_rs

from ingress.policy.waf import normalise as n
from ingress.policy.waf.patterns import Pattern

MAX_PASSES = 3

# Decoding a long text touches only what its encoded sequences are near: such a text is decoded
# and rescanned as windows around them (see `_windows`) unless they are too many to be worth it.
WINDOWED_MIN = 1024
MAX_TRIGGERS = 64
# The most characters one encoded sequence spans from its first character: an HTML entity
# (`&` + a 31-character name + `;`); `%xx`, `\\uXXXX`, `\\u{XXXXXX}` and overlong UTF-8 are shorter.
_REACH = 33


class Matcher:
    """One automaton (ahocorasick_rs, a DFA: about 2.5 ns a byte here, a third of a trie walk's cost)."""

    def __init__(self, patterns: Sequence[Pattern]) -> None:
        self.patterns = tuple(patterns)
        self._find = None
        if self.patterns:
            automaton = ahocorasick_rs.AhoCorasick(
                [p.text for p in self.patterns], implementation=ahocorasick_rs.Implementation.DFA
            )
            self._find = automaton.find_matches_as_indexes
        # Patterns that can only match where a decoded request-head value breaks a line.
        self.has_line_patterns = any(p.text.startswith("\n") for p in self.patterns)
        self.longest = max((len(p.text) for p in self.patterns), default=0)

    def first(self, text: str) -> tuple[Pattern, int] | None:
        """The first pattern found in `text`, with the index of its last character."""
        find = self._find
        if find is not None:
            found = find(text)
            if found:
                index, _start, end = found[0]
                return self.patterns[index], end - 1
        return None

    def scan(self, texts: Sequence[str], plus: bool, lines: bool) -> tuple[Pattern, int, int] | None:
        """Match `texts` (lower case) as sent and decoded: (pattern, index into texts, decoding passes).

        `plus` decodes `+` as a space (queries and form bodies); `lines` also matches the
        patterns that start with a line break (request-head values, where one never belongs).
        """
        # 1. As sent. One look at the joined text tells whether any input needs collapsing or
        # decoding, so a clean request costs one scan and a few memchr calls, whatever its size.
        joined = texts[0] if len(texts) == 1 else n.SEPARATOR.join(texts)
        current: list[_Entry] | None = None
        if n.needs_collapse(joined):
            current = [_Entry(i, t, _collapsed(t)) for i, t in enumerate(texts)]
            hit = self._scan_joined(current)
        else:
            found = self.first(joined)
            hit = None if found is None else (found[0], _index_at([len(t) for t in texts], found[1]))
        if hit is None and lines and self.has_line_patterns and ("\n" in joined or "\r" in joined):
            hit = self._scan_lines(current or [_Entry(i, t, t) for i, t in enumerate(texts)])
        if hit is not None:
            return hit[0], hit[1], 0
        if not n.needs_decoding(joined, plus):
            return None
        if current is None:
            current = [_Entry(i, t, t) for i, t in enumerate(texts)]
        current = self._windowed(current, plus)
        # 2. Each pass decodes only what the previous one changed, and scans only what it changed
        # in a way that could make a new match.
        for passes in range(1, MAX_PASSES + 1):
            decoded = []
            for e in current:
                if n.needs_decoding(e.collapsed, plus):
                    d, active = n.decode_once(e.collapsed, plus)
                    if d != e.collapsed:
                        # An inert pass adds no whitespace, so what it decoded is still collapsed.
                        decoded.append(_Entry(e.index, d, _collapsed(d) if active else d, active))
            if not decoded:
                break
            current = decoded
            scanned = [e for e in current if e.active]
            if not scanned:
                # Every change was inert: non-ASCII characters, none of which starts an encoding
                # or completes one (overlong UTF-8 was folded within the pass), so another pass
                # would decode nothing more. JSON written with \u escapes stops here.
                break
            hit = self._scan_joined(scanned)
            if hit is None and lines and self.has_line_patterns:
                hit = self._scan_lines(scanned)
            if hit is not None:
                return hit[0], hit[1], passes
        return None

    def _windowed(self, entries: list[_Entry], plus: bool) -> list[_Entry]:
        """`entries` with each long one replaced by the windows of it that decoding can change."""
        if all(len(e.collapsed) < WINDOWED_MIN for e in entries):
            return entries
        out: list[_Entry] = []
        for e in entries:
            parts = _windows(e.collapsed, plus, self.longest) if len(e.collapsed) >= WINDOWED_MIN else None
            if parts is None:
                out.append(e)
            else:
                out.extend(_Entry(e.index, part, part) for part in parts)
        return out

    def _scan_joined(self, items: list[_Entry]) -> tuple[Pattern, int] | None:
        if len(items) == 1:
            found = self.first(items[0].collapsed)
            return None if found is None else (found[0], items[0].index)
        found = self.first(n.SEPARATOR.join([e.collapsed for e in items]))
        if found is None:
            return None
        return found[0], items[_index_at([len(e.collapsed) for e in items], found[1])].index

    def _scan_lines(self, items: list[_Entry]) -> tuple[Pattern, int] | None:
        for e in items:
            if "\n" in e.text or "\r" in e.text:
                found = self.first(n.line_form(e.text))
                if found is not None:
                    return found[0], e.index
        return None


class _Entry:
    """One input in one pass: where it came from, its text decoded so far, and that collapsed."""

    __slots__ = ("active", "collapsed", "index", "text")

    def __init__(self, index: int, text: str, collapsed: str, active: bool = True) -> None:
        self.index = index
        self.text = text
        self.collapsed = collapsed
        self.active = active


def _windows(text: str, plus: bool, context: int) -> list[str] | None:
    """The stretches of `text` a decoding pass could turn into a new match, or None to decode it whole.

    A match made by decoding contains a decoded character, and reaches at most `context`
    (the longest pattern) characters either side of it; the characters around it decode to
    at most as many as they are, so taking `context` raw characters either side of every
    encoded sequence, and merging what overlaps, keeps every such match whole in one
    window. A SQL comment counts as one sequence up to its end. Later passes decode inside
    the windows, whose context only grows as sequences shrink. None when the triggers are
    many (a form body) or the windows would cover most of the text anyway.
    """
    # "/*" only where a "*" is: a two-character search reads the whole text at a few times memchr's cost.
    triggers = ["%", "\\", "&", "/*"] if "*" in text else ["%", "\\", "&"]
    if plus:
        triggers.append("+")
    if not text.isascii():
        triggers += [lead for lead in n.FOLD_LEADS if lead in text]
    size = len(text)
    spans: list[tuple[int, int]] = []
    find = text.find
    for t in triggers:
        # `find` steps from one to the next at memchr speed; `count` would read every character.
        i = find(t)
        while i >= 0:
            if len(spans) == MAX_TRIGGERS:
                return None
            end = i + _REACH
            if t == "/*":
                close = find("*/", i + 2)
                end = size if close < 0 else close + 2
            spans.append((max(0, i - context), min(size, end + context)))
            i = find(t, i + 1)
    if not spans:
        return []
    spans.sort()
    merged = [list(spans[0])]
    for start, end in spans[1:]:
        last = merged[-1]
        if start <= last[1]:
            last[1] = max(last[1], end)
        else:
            merged.append([start, end])
    if sum(end - start for start, end in merged) > size // 2:
        return None
    return [text[start:end] for start, end in merged]


def _index_at(lengths: list[int], pos: int) -> int:
    """Which of several texts joined by one separator each holds position `pos`."""
    starts = []
    at = 0
    for length in lengths:
        starts.append(at)
        at += length + 1
    return bisect.bisect_right(starts, pos) - 1


def _collapsed(t: str) -> str:
    return n.collapse(t) if n.needs_collapse(t) else t

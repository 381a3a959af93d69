"""Pattern sets: versioned text files shipped inside the package, validated line by line.

A pattern file is data an operator reviews, so its format is plain lines
(see the header of `patterns/balanced.txt`) and every mistake is refused
with the file and line that hold it: a repeated id, an empty pattern, an
unknown category, an id that does not name its category, a bad escape.
Files are read with importlib.resources, so they load the same from a
source tree, a wheel or a single compiled executable.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Callable
from dataclasses import dataclass

from ingress.errors import EdgewardError

CATEGORIES = (
    "sqli",
    "xss",
    "cmdi",
    "traversal",
    "ssrf",
    "ldap",
    "xxe",
    "ssti",
    "crlf",
    "log4shell",
    "proto",
    "nosqli",
    "deser",
)
BUILTIN_SETS = ("balanced", "aggressive")
MIN_PATTERN_CHARS = 3

_ID = re.compile(r"^([a-z0-9]+)-([0-9]{3})$")
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_ESCAPES = {"s": " ", "n": "\n", "\\": "\\"}


class PatternFileError(EdgewardError):
    """A pattern file that must not be used; names the file and line."""

    def __init__(self, source: str, line: int, message: str) -> None:
        self.source = source
        self.line = line
        self.message = message
        super().__init__(f"{source}:{line}: {message}" if line else f"{source}: {message}")


@dataclass(frozen=True, slots=True)
class Pattern:
    id: str
    category: str
    text: str
    # Where it was defined, for messages about it.
    source: str
    line: int


@dataclass(frozen=True, slots=True)
class PatternSet:
    name: str
    version: str
    patterns: tuple[Pattern, ...]

    def ids(self) -> frozenset[str]:
        return frozenset(p.id for p in self.patterns)


def _unescape(raw: str, source: str, line: int) -> str:
    if "\\" not in raw:
        return raw
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = raw[i + 1 : i + 2]
        if nxt not in _ESCAPES:
            shown = "\\" + nxt if nxt else "\\ at the end"
            raise PatternFileError(source, line, f"unknown escape {shown!r}; use \\s (space), \\n or \\\\")
        out.append(_ESCAPES[nxt])
        i += 2
    return "".join(out)


def parse_pattern_file(
    text: str, source: str, include: Callable[[str], PatternSet] | None = None, name: str = ""
) -> PatternSet:
    """Parse one pattern file; `include` resolves `include <set>` lines (None: includes are refused)."""
    version = ""
    category = ""
    patterns: list[Pattern] = []
    seen_ids: dict[str, str] = {}
    seen_texts: dict[str, str] = {}

    def add(p: Pattern) -> None:
        if p.id in seen_ids:
            raise PatternFileError(source, p.line, f"duplicate id {p.id!r} (also {seen_ids[p.id]})")
        if p.text in seen_texts:
            raise PatternFileError(source, p.line, f"pattern {p.text!r} of {p.id} repeats {seen_texts[p.text]}")
        seen_ids[p.id] = f"{p.source}:{p.line}"
        seen_texts[p.text] = p.id
        patterns.append(p)

    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if not version:
            keyword, _, value = line.partition(" ")
            if keyword != "version" or not value.strip():
                raise PatternFileError(source, number, "the first line must be `version <version>`")
            version = value.strip()
            continue
        if line.startswith("version "):
            raise PatternFileError(source, number, "a second version line; a file has exactly one")
        if line.startswith("include "):
            if category:
                raise PatternFileError(source, number, "include must come before the first [category]")
            target = line.partition(" ")[2].strip()
            if include is None:
                raise PatternFileError(source, number, f"cannot include {target!r} here")
            try:
                included = include(target)
            except LookupError as exc:
                raise PatternFileError(source, number, str(exc.args[0])) from None
            for p in included.patterns:
                add(p)
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise PatternFileError(source, number, f"{line!r}: a category header is [name]")
            category = line[1:-1].strip()
            if category not in CATEGORIES:
                known = ", ".join(CATEGORIES)
                raise PatternFileError(source, number, f"unknown category {category!r}; known: {known}")
            continue
        if not category:
            raise PatternFileError(source, number, "pattern before the first [category] header")
        pid, _, rest = line.partition(" ")
        m = _ID.match(pid)
        if m is None:
            raise PatternFileError(source, number, f"{pid!r} is not an id like {category}-001")
        if m.group(1) != category:
            raise PatternFileError(source, number, f"id {pid!r} is under [{category}]; ids start with their category")
        pattern = _unescape(rest.strip(), source, number).lower()
        if not pattern.strip():
            raise PatternFileError(source, number, f"{pid}: empty pattern")
        if len(pattern) < MIN_PATTERN_CHARS:
            raise PatternFileError(source, number, f"{pid}: {pattern!r} is shorter than {MIN_PATTERN_CHARS} characters")
        if not pattern.isascii():
            raise PatternFileError(
                source, number, f"{pid}: patterns are ASCII; write other bytes %-encoded, as in %e5%98%8a"
            )
        if "  " in pattern.replace("\n", " "):
            raise PatternFileError(
                source, number, f"{pid}: inputs have whitespace collapsed to one space, so two never match"
            )
        add(Pattern(pid, category, pattern, source, number))
    if not version:
        raise PatternFileError(source, 0, "empty file; the first line must be `version <version>`")
    if not patterns:
        raise PatternFileError(source, 0, "no patterns")
    return PatternSet(name, version, tuple(patterns))


def _read_builtin(name: str) -> str:
    resource = importlib.resources.files("ingress.policy.waf").joinpath("patterns").joinpath(f"{name}.txt")
    return resource.read_text(encoding="utf-8")


@functools.cache
def load_pattern_set(name: str) -> PatternSet:
    """A built-in set by name, parsed once per process; LookupError for a name that is not one."""
    return _load(name, ())


def _load(name: str, stack: tuple[str, ...]) -> PatternSet:
    source = f"ingress/policy/waf/patterns/{name}.txt"
    if not _NAME.match(name) or name not in BUILTIN_SETS:
        raise LookupError(f"no pattern set {name!r}; sets: {', '.join(BUILTIN_SETS)}")
    if name in stack:
        raise LookupError(f"include cycle: {' -> '.join((*stack, name))}")

    def include(target: str) -> PatternSet:
        return _load(target, (*stack, name))

    try:
        text = _read_builtin(name)
    except (OSError, UnicodeDecodeError) as exc:
        raise PatternFileError(source, 0, f"cannot read: {exc}") from exc
    return parse_pattern_file(text, source, include, name)

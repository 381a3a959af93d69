"""Which files a trail is made of, what each one holds, and their lines one at a time.

The operator names files or directories. A configured file (`traces.jsonl`,
`audit.jsonl`) brings its rotated siblings with it, `{path}.{UTC stamp}[-N]`
as ingress/telemetry/rotating.py names them, oldest first, unless
`include_rotated` is off; a rotated file named on its own is just that file;
a directory means every file in it except `.lock` files and dot files. Each
file is recognised by its first bytes: `{"resourceSpans"` is an OTLP JSON
Lines span file, `{"resourceLogs"` an audit file; an empty file is noted and
skipped. Audit files are grouped into trails by rotation base and put in
chain order (`auditchain.chain_files`), which is what `verify_chain` needs.

Lines are read one at a time with a size cap, so memory is one line (one
telemetry batch as the server wrote it), never a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from audit.errors import AuditError
from ingress.telemetry.auditchain import chain_files
from ingress.telemetry.rotating import rotated_files, rotation_base

MAX_LINE_BYTES: Final = 256 * 1024 * 1024
"""A longer line is refused rather than read: the server's batches are a few MB at most."""

_SNIFF_BYTES: Final = 256
_KIND: Final = re.compile(rb'\s*\{\s*"(resourceSpans|resourceLogs)"')


class InputError(AuditError):
    """An input that cannot be read or is not what the server writes; names the file and line."""

    def __init__(self, path: str, line: int, problem: str, *, hint: str = "") -> None:
        super().__init__(f"{path}:{line}: {problem}" if line else f"{path}: {problem}", hint=hint)
        self.path = path
        self.line = line
        self.problem = problem


@dataclass
class Inputs:
    spans: list[str] = field(default_factory=list)
    audit_trails: list[list[str]] = field(default_factory=list)  # each in chain order
    empty: list[str] = field(default_factory=list)


def resolve(args: Sequence[str], *, include_rotated: bool = True) -> Inputs:
    """Expand directories and rotated siblings, recognise each file, and group the audit files into trails."""
    chosen: list[str] = []
    seen: set[str] = set()

    def take(path: str) -> None:
        full = os.path.abspath(path)
        if full not in seen:
            seen.add(full)
            chosen.append(full)

    for arg in args:
        if os.path.isdir(arg):
            names = sorted(n for n in os.listdir(arg) if not n.startswith(".") and not n.endswith(".lock"))
            files = [os.path.join(arg, n) for n in names if os.path.isfile(os.path.join(arg, n))]
            if not files:
                raise InputError(arg, 0, "no files in this directory")
            for path in files:
                take(path)
            continue
        if not os.path.exists(arg):
            raise InputError(arg, 0, "no such file")
        if include_rotated and rotation_base(arg) is None:
            for path in rotated_files(arg):
                take(path)
        take(arg)

    found = Inputs()
    audit_groups: dict[str, list[str]] = {}
    for path in chosen:
        kind = sniff(path)
        if kind == "spans":
            found.spans.append(path)
        elif kind == "audit":
            audit_groups.setdefault(rotation_base(path) or path, []).append(path)
        else:
            found.empty.append(path)
    for base in sorted(audit_groups):
        members = set(audit_groups[base])
        ordered = [path for path in chain_files(base) if path in members]
        ordered += [path for path in audit_groups[base] if path not in ordered]
        found.audit_trails.append(ordered)
    return found


def sniff(path: str) -> str:
    """ "spans", "audit" or "empty"; InputError for anything else."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as exc:
        raise InputError(path, 0, f"cannot read: {exc.strerror}") from None
    if not head.strip():
        return "empty"
    match = _KIND.match(head)
    if match is None:
        raise InputError(
            path,
            1,
            "neither an OTLP JSON Lines span file (resourceSpans) nor an audit file (resourceLogs)",
            hint="name the server's [telemetry.files] traces and [audit] file, or the directory holding them",
        )
    return "spans" if match[1] == b"resourceSpans" else "audit"


def lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its newline) for every non-blank line of `path`."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - a generator's lifetime, closed by the with below
    except OSError as exc:
        raise InputError(path, 0, f"cannot read: {exc.strerror}") from None
    with handle:
        number = 0
        while True:
            try:
                raw = handle.readline(MAX_LINE_BYTES + 1)
            except OSError as exc:
                raise InputError(path, number + 1, f"cannot read: {exc.strerror}") from None
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise InputError(path, number, f"line longer than {MAX_LINE_BYTES} bytes")
            line = raw.rstrip(b"\r\n")
            if line.strip():
                yield number, line

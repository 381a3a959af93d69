"""Checking the audit trail's hash chain, and naming the first link that is broken.

Each record (one OTLP JSON line) carries `audit.seq`, one more than the
record before it, and `audit.prev_sha256`, the SHA-256 of the previous
record's exact line bytes without the newline (64 zeros before the first
record ever). The chain runs on across restarts, processes and rotated
files, so the files are checked as one sequence: the rotated ones in time
order, then the current one (`chain_files`).

What the chain proves, and what it cannot:

- Editing a record, deleting one, reordering records, or inserting a line
  is detected, and the report names the first broken link (file, line,
  seq and what is wrong), not just "invalid".
- The newest record is linked by nothing yet: editing it, or cutting
  records off the end of the trail, leaves a valid (shorter) chain. So does
  deleting the oldest files, though the report then starts past seq 1.
- The chain has no key: someone who can write the file can rewrite it
  from any record on, recomputing every hash, and it verifies.

Those are answered by anchors kept elsewhere: every record is also
exported as an OTLP log with the same `audit.seq` and `audit.prev_sha256`,
so a collector holds copies the file must agree with, and the last sha256
this check prints can be written into a ticket or an evidence pack.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ingress.errors import EdgewardError
from ingress.telemetry.rotating import rotated_files, rotation_base

ZERO_SHA256 = "0" * 64
SEQ = "audit.seq"
PREV = "audit.prev_sha256"
_HEX = frozenset("0123456789abcdef")


class AuditError(EdgewardError):
    """Audit files that cannot be read or found; a broken chain is a `ChainReport`, not an error."""


def read_link(line: bytes) -> tuple[int, str]:
    """`audit.seq` and `audit.prev_sha256` of one record line; ValueError saying what is wrong otherwise."""
    try:
        item = json.loads(line)
    except ValueError:
        raise ValueError("not a JSON line") from None
    try:
        (resource_logs,) = item["resourceLogs"]
        (scope_logs,) = resource_logs["scopeLogs"]
        (record,) = scope_logs["logRecords"]
        attrs: dict[str, Any] = {a["key"]: a["value"] for a in record.get("attributes", ())}
    except (KeyError, TypeError, ValueError):
        raise ValueError("not an audit record: not one OTLP log record (LogsData JSON)") from None
    try:
        seq = int(attrs[SEQ]["intValue"])
        prev = attrs[PREV]["stringValue"]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"not an audit record: no {SEQ} or {PREV}") from None
    if not isinstance(prev, str) or len(prev) != 64 or not set(prev) <= _HEX:
        raise ValueError(f"not an audit record: {PREV} is not a SHA-256 in lower-case hex")
    if seq < 1:
        raise ValueError(f"not an audit record: {SEQ} is {seq}; it starts at 1")
    return seq, prev


def chain_files(path: str) -> list[str]:
    """The files of one audit trail in chain order: rotated files oldest first, then the current file.

    `path` is the configured file (whether or not it exists now), one of its
    rotated files, or a directory holding exactly one trail.
    """
    if os.path.isdir(path):
        path = _only_base(path)
    base = rotation_base(path) or path
    files = rotated_files(base)
    if os.path.exists(base):
        files.append(os.path.abspath(base))
    return files


def resolve_files(args: Sequence[str]) -> list[str]:
    """What `ingress audit-verify` checks: one base path or directory means its whole trail; several, those files."""
    if len(args) == 1 and (os.path.isdir(args[0]) or rotation_base(args[0]) is None):
        files = chain_files(args[0])
        if not files:
            raise AuditError(f"{args[0]}: no audit file there, and no rotated files of it")
        return files
    return list(args)


def _only_base(directory: str) -> str:
    names = [n for n in os.listdir(directory) if not n.startswith(".")]
    locked = {n[: -len(".lock")] for n in names if n.endswith(".lock")}
    bases = {rotation_base(n) or n for n in names if not n.endswith(".lock")}
    candidates = (bases & locked) or bases
    if len(candidates) != 1:
        found = ", ".join(sorted(candidates)) or "nothing"
        raise AuditError(f"{directory}: expected the files of one audit trail, found {found}; name the file")
    return os.path.join(directory, candidates.pop())


class Entry(NamedTuple):
    """One line of the trail: where it is, its link fields, and its own hash; `error` when it is no record."""

    file: str
    line: int
    raw: bytes
    seq: int
    prev: str
    sha256: str
    error: str


class Break(NamedTuple):
    """The first broken link: the line to look at and what is wrong there."""

    file: str
    line: int
    seq: int  # 0 when the line carries no readable seq
    problem: str

    def __str__(self) -> str:
        seq = f" (seq {self.seq})" if self.seq else ""
        return f"{self.file}:{self.line}{seq}: {self.problem}"


@dataclass(frozen=True)
class ChainReport:
    files: tuple[str, ...]
    records: int  # records checked before the break (all of them when the chain holds)
    first_seq: int
    last_seq: int
    last_sha256: str  # of the last record checked
    broken: Break | None

    @property
    def ok(self) -> bool:
        return self.broken is None

    def __str__(self) -> str:
        if self.broken is not None:
            return f"broken: {self.broken}"
        if not self.records:
            return "ok: 0 records"
        return f"ok: {self.records} records, seq {self.first_seq}..{self.last_seq}, last sha256 {self.last_sha256}"

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": list(self.files),
            "records": self.records,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_sha256": self.last_sha256,
            "broken": self.broken._asdict() if self.broken is not None else None,
        }


class _Stream:
    """The trail's lines across files, with one line of look-ahead."""

    def __init__(self, paths: Sequence[str]) -> None:
        self._lines = self._read(paths)
        self._ahead: list[Entry] = []

    @staticmethod
    def _read(paths: Sequence[str]) -> Iterator[Entry]:
        for path in paths:
            try:
                f = open(path, "rb")  # noqa: SIM115 - a generator's lifetime, closed by the with below
            except OSError as exc:
                raise AuditError(f"cannot read {path}: {exc.strerror}") from None
            with f:
                for number, raw in enumerate(f, 1):
                    line = raw[:-1] if raw.endswith(b"\n") else raw
                    sha = hashlib.sha256(line).hexdigest()
                    try:
                        seq, prev = read_link(line)
                    except ValueError as exc:
                        yield Entry(path, number, line, 0, "", sha, str(exc))
                    else:
                        yield Entry(path, number, line, seq, prev, sha, "")

    def next(self) -> Entry | None:
        if self._ahead:
            return self._ahead.pop()
        return next(self._lines, None)

    def peek(self) -> Entry | None:
        if not self._ahead:
            entry = next(self._lines, None)
            if entry is None:
                return None
            self._ahead.append(entry)
        return self._ahead[0]

    def find_seq(self, low: int, high: int) -> Entry | None:
        """The first later record whose seq is in [low, high); consumes the stream (the walk stops after)."""
        while (entry := self.next()) is not None:
            if not entry.error and low <= entry.seq < high:
                return entry
        return None


def verify_chain(paths: Sequence[str]) -> ChainReport:
    """Walk every line of `paths` (in chain order) and report the first broken link, if any.

    Raises AuditError only when a file cannot be read.
    """
    stream = _Stream(paths)
    before: Entry | None = None  # the record before `prev`, to recognise an inserted line
    prev: Entry | None = None
    count = 0
    first = 0
    while (entry := stream.next()) is not None:
        broken = _check(before, prev, entry, stream)
        if broken is not None:
            return _report(paths, count, first, prev, broken)
        count += 1
        first = first or entry.seq
        before, prev = prev, entry
    return _report(paths, count, first, prev, None)


def _report(paths: Sequence[str], count: int, first: int, last: Entry | None, broken: Break | None) -> ChainReport:
    return ChainReport(
        files=tuple(paths),
        records=count,
        first_seq=first,
        last_seq=last.seq if last is not None else 0,
        last_sha256=last.sha256 if last is not None else "",
        broken=broken,
    )


def _at(entry: Entry, problem: str) -> Break:
    return Break(entry.file, entry.line, entry.seq, problem)


def _check(before: Entry | None, prev: Entry | None, entry: Entry, stream: _Stream) -> Break | None:
    """Whether `entry` links to `prev`; if not, which line is to blame, judged from its neighbours."""
    # (1) A line that is not an audit record at all.
    if entry.error:
        return _at(entry, entry.error)
    # (2) The first line checked: only the very first record of a trail has a known predecessor (none).
    if prev is None:
        if entry.seq == 1 and entry.prev != ZERO_SHA256:
            return _at(entry, f"record edited: the first record's {PREV} must be 64 zeros")
        return None
    expected = prev.seq + 1
    linked = entry.prev == prev.sha256
    # (3) The expected successor, linked: the chain holds here.
    if entry.seq == expected and linked:
        return None
    # (4) Linked to the previous line but numbered wrongly: its seq was changed.
    if linked:
        return _at(entry, f"record edited: {SEQ} is {entry.seq} but it follows seq {prev.seq}")
    # (5) The right number but not linked: the previous record was edited, or this one was, or it was inserted.
    if entry.seq == expected:
        after = stream.peek()
        if after is not None and not after.error and after.seq == entry.seq and after.prev == prev.sha256:
            return _at(entry, f"record inserted: the next record links past it to seq {prev.seq}")
        if after is not None and not after.error and after.seq == expected + 1 and after.prev != entry.sha256:
            return _at(entry, f"record edited: its {PREV} no longer matches the previous record, nor its hash the next")
        return _at(prev, f"record edited: its hash no longer matches the next record's {PREV}")
    # (6) A gap in the numbers: records were moved (one from the gap comes later) or deleted.
    if entry.seq > expected:
        later = stream.find_seq(expected, entry.seq)
        if later is not None:
            return _at(
                entry, f"records out of order: seq {entry.seq} comes before seq {later.seq} ({later.file}:{later.line})"
            )
        missing = entry.seq - expected
        what = "record missing" if missing == 1 else f"{missing} records missing"
        return _at(entry, f"{what} between seq {prev.seq} and {entry.seq}")
    # (7) A number already seen: a replayed line, a line inserted before this one, or a reordering.
    if entry.raw == prev.raw:
        return _at(entry, "record duplicated: the same line again")
    if before is not None and entry.seq == before.seq + 1 and entry.prev == before.sha256:
        return _at(prev, f"record inserted: the next record links past it to seq {before.seq}")
    return _at(entry, f"records out of order: seq {entry.seq} after seq {prev.seq}")

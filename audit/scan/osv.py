"""OSV range evaluation for PyPI, as pure functions: records and a version in, a verdict out.

This is where a wrong answer becomes a false "not affected", so it has no I/O, no clock and no
globals, and everything it cannot decide exactly raises `Undecidable` instead of guessing: the
caller turns that into "package could not be checked", which fails the scan.

Rules follow the OSV schema's evaluation pseudocode (ossf.github.io/osv-schema/#evaluation):
a version is affected by an `affected[]` entry when it is in the entry's `versions` list OR inside
one of its SEMVER/ECOSYSTEM ranges; PyPI strings are ordered by PEP 440 (packaging.version).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

from audit.pypi import normalise_name

ECOSYSTEM = "PyPI"

_EVENT_KINDS = ("introduced", "fixed", "last_affected", "limit")
# Events at the same version: an interval that opens and closes at one point is empty, so the
# closing events sort after the opening one (the pseudocode leaves ties unspecified).
_TIE_ORDER = {"introduced": 0, "fixed": 1, "last_affected": 2, "limit": 3}


class Undecidable(Exception):
    """A record names the package but cannot be evaluated for it (bad version string, GIT-only range, ...)."""

    def __init__(self, record_id: str, reason: str) -> None:
        super().__init__(f"{record_id}: {reason}")
        self.record_id = record_id
        self.reason = reason


@dataclass(frozen=True)
class _Event:
    kind: str
    raw: str
    version: Version | None  # None only for introduced "0" and limit "*"


def _parse(record_id: str, raw: object, what: str) -> Version:
    if not isinstance(raw, str):
        raise Undecidable(record_id, f"{what} is not a string: {raw!r}")
    try:
        return Version(raw)
    except InvalidVersion:
        raise Undecidable(record_id, f"{what} {raw!r} is not a PEP 440 version") from None


def _events(record_id: str, range_: Mapping[str, Any]) -> list[_Event]:
    raw_events = range_.get("events")
    if not isinstance(raw_events, list) or not raw_events:
        raise Undecidable(record_id, "range has no events")
    events: list[_Event] = []
    for raw in raw_events:
        # (1) Exactly one of introduced/fixed/last_affected/limit per event object (OSV schema).
        kinds = [kind for kind in _EVENT_KINDS if isinstance(raw, Mapping) and kind in raw]
        if len(kinds) != 1:
            raise Undecidable(record_id, f"event {raw!r} must have exactly one of {', '.join(_EVENT_KINDS)}")
        kind = kinds[0]
        value = raw[kind]
        # (2) "0" sorts before every version; limit "*" means no limit.
        if (kind == "introduced" and value == "0") or (kind == "limit" and value == "*"):
            events.append(_Event(kind, value, None))
        else:
            events.append(_Event(kind, str(value), _parse(record_id, value, f"{kind} version")))
    return events


def _sort_key(event: _Event) -> tuple[int, Version, int]:
    zero = Version("0")
    if event.version is None:
        return (0 if event.kind == "introduced" else 2, zero, _TIE_ORDER[event.kind])
    return (1, event.version, _TIE_ORDER[event.kind])


def _before_limits(version: Version, events: Sequence[_Event]) -> bool:
    """BeforeLimits: no limit (or limit "*") means unbounded; otherwise below at least one limit."""
    limits = [event for event in events if event.kind == "limit"]
    if not limits or any(event.version is None for event in limits):
        return True
    return any(event.version is not None and version < event.version for event in limits)


def _closes(event: _Event, version: Version) -> bool:
    if event.version is None:
        return False
    if event.kind == "fixed":
        return version >= event.version
    return event.kind == "last_affected" and version > event.version


def included_in_range(version: Version, range_: Mapping[str, Any], record_id: str = "?") -> bool:
    """IncludedInRanges for one ECOSYSTEM/SEMVER range, steps numbered as in the OSV pseudocode."""
    events = _events(record_id, range_)
    # (1) A version at or above every limit is outside the range whatever the other events say.
    if not _before_limits(version, events):
        return False
    # (2) Walk the events in version order; each one at or below the version flips the state.
    vulnerable = False
    for event in sorted(events, key=_sort_key):
        # (2a) introduced "0" or at/below the version opens an affected interval.
        if event.kind == "introduced" and (event.version is None or version >= event.version):
            vulnerable = True
        # (2b) fixed (exclusive) or last_affected (inclusive) at/below the version closes it.
        elif _closes(event, version):
            vulnerable = False
        # (2c) limit events only bound the range (step 1); they do not close intervals here.
    return vulnerable


def _in_versions(version: Version, listed: object) -> bool:
    if not isinstance(listed, list):
        return False
    for item in listed:
        # A listed string that is not PEP 440 cannot equal a version pip-audit sends (it parsed it).
        try:
            if Version(str(item)) == version:
                return True
        except InvalidVersion:
            continue
    return False


def _names_package(entry: Mapping[str, Any], name: str) -> bool:
    package = entry.get("package")
    if not isinstance(package, Mapping):
        return False
    # Ecosystem must be exactly "PyPI": a same-named npm or Debian package is a different project.
    return package.get("ecosystem") == ECOSYSTEM and normalise_name(str(package.get("name", ""))) == name


def entry_affects(record_id: str, entry: Mapping[str, Any], version: Version) -> bool:
    """One `affected[]` entry that already names the package: is `version` affected?"""
    # (1) The explicit `versions` list and the ranges are ORed; neither takes precedence.
    if _in_versions(version, entry.get("versions")):
        return True
    ranges = entry.get("ranges") or []
    if not isinstance(ranges, list):
        raise Undecidable(record_id, "ranges is not a list")
    evaluable = bool(entry.get("versions"))
    for range_ in ranges:
        if not isinstance(range_, Mapping):
            raise Undecidable(record_id, f"range {range_!r} is not an object")
        kind = range_.get("type")
        # (2) GIT ranges need the repository's commit graph; the versions list or an ECOSYSTEM range
        #     of the same entry carries the answer for PyPI, so they are skipped, not guessed.
        if kind == "GIT":
            continue
        # (3) ECOSYSTEM (and SEMVER, whose strings PyPI versions parse as) ordered by PEP 440.
        if kind not in ("ECOSYSTEM", "SEMVER"):
            raise Undecidable(record_id, f"unknown range type {kind!r}")
        evaluable = True
        if included_in_range(version, range_, record_id):
            return True
    # (4) An entry with nothing evaluable (say GIT ranges only) cannot say "not affected".
    if not evaluable:
        raise Undecidable(record_id, "affected entry has no versions list and no ECOSYSTEM/SEMVER range")
    return False


def is_withdrawn(record: Mapping[str, Any]) -> bool:
    return bool(record.get("withdrawn"))


def record_affects(record: Mapping[str, Any], name: str, version: Version) -> bool:
    """Does this OSV record affect PyPI project `name` (any spelling) at `version`? Withdrawn: never."""
    record_id = str(record.get("id", "?"))
    if is_withdrawn(record):
        return False
    wanted = normalise_name(name)
    entries = record.get("affected") or []
    if not isinstance(entries, list):
        raise Undecidable(record_id, "affected is not a list")
    return any(
        entry_affects(record_id, entry, version)
        for entry in entries
        if isinstance(entry, Mapping) and _names_package(entry, wanted)
    )


def matching(records: Iterable[Mapping[str, Any]], name: str, version: Version) -> list[Mapping[str, Any]]:
    """Every non-withdrawn record affecting `name` at `version`, sorted by id (the server's answer)."""
    found = [record for record in records if record_affects(record, name, version)]
    return sorted(found, key=lambda record: str(record.get("id", "")))


def fix_versions(record: Mapping[str, Any], name: str) -> list[str]:
    """All `fixed` versions the record gives for the package, PEP 440 sorted.

    pip-audit keeps only the first ECOSYSTEM range and compares names unnormalised; this reads
    every range of every entry naming the project, so a backported fix is not lost.
    """
    wanted = normalise_name(name)
    found: set[Version] = set()
    for entry in record.get("affected") or []:
        if not isinstance(entry, Mapping) or not _names_package(entry, wanted):
            continue
        for range_ in entry.get("ranges") or []:
            if not isinstance(range_, Mapping) or range_.get("type") not in ("ECOSYSTEM", "SEMVER"):
                continue
            for event in range_.get("events") or []:
                if isinstance(event, Mapping) and "fixed" in event:
                    try:
                        found.add(Version(str(event["fixed"])))
                    except InvalidVersion:
                        continue
    return [str(version) for version in sorted(found)]


def ids_of(record: Mapping[str, Any]) -> frozenset[str]:
    """The record's id and aliases: a VEX statement or a pip-audit result may use any of them."""
    aliases = record.get("aliases") or []
    return frozenset({str(record.get("id", "")), *(str(alias) for alias in aliases if isinstance(alias, str))}) - {""}


def names_in(record: Mapping[str, Any]) -> frozenset[str]:
    """Normalised PyPI project names the record has `affected[]` entries for (the server's index key)."""
    names: set[str] = set()
    for entry in record.get("affected") or []:
        package = entry.get("package") if isinstance(entry, Mapping) else None
        if isinstance(package, Mapping) and package.get("ecosystem") == ECOSYSTEM and package.get("name"):
            names.add(normalise_name(str(package["name"])))
    return frozenset(names)

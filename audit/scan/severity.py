"""Severity of an OSV record: CVSS base scores from its vectors, else the database's own word.

pip-audit reports no severity, so the gate needs this. When a record carries several ratings
(a CVSS 3.1 and a 4.0 vector, a GHSA word) the worst one wins: the gate must not pass a finding
because the mildest of its ratings was picked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from audit.scan.model import SEVERITIES, UNKNOWN, Severity

# GitHub's words (GHSA `database_specific.severity`) and the usual synonyms.
_WORDS = {
    "low": "low",
    "moderate": "medium",
    "medium": "medium",
    "high": "high",
    "critical": "critical",
    "none": "none",
}


def level_of_score(score: float) -> str:
    """CVSS v3/v4 qualitative rating scale."""
    if score == 0.0:
        return "none"
    if score < 4.0:
        return "low"
    if score < 7.0:
        return "medium"
    if score < 9.0:
        return "high"
    return "critical"


def _from_vector(kind: str, vector: str) -> Severity | None:
    import cvss

    try:
        if kind == "CVSS_V3":
            score = float(cvss.CVSS3(vector).base_score)
        elif kind == "CVSS_V4":
            score = float(cvss.CVSS4(vector).base_score)
        elif kind == "CVSS_V2":
            score = float(cvss.CVSS2(vector).base_score)
        else:
            return None
    except cvss.CVSSError:
        return None
    return Severity(level=level_of_score(score), score=score, source=vector)


def _ratings(record: Mapping[str, Any]) -> Iterable[Severity]:
    entries: list[Any] = list(record.get("severity") or [])
    for affected in record.get("affected") or []:
        if isinstance(affected, Mapping):
            entries.extend(affected.get("severity") or [])
    for entry in entries:
        if isinstance(entry, Mapping) and isinstance(entry.get("score"), str):
            rating = _from_vector(str(entry.get("type")), entry["score"])
            if rating is not None:
                yield rating
    specific = record.get("database_specific")
    if isinstance(specific, Mapping) and isinstance(specific.get("severity"), str):
        word = specific["severity"]
        if word.lower() in _WORDS:
            yield Severity(level=_WORDS[word.lower()], score=None, source=f"database_specific.severity {word}")


def _rank(rating: Severity) -> tuple[int, float]:
    return (SEVERITIES.index(rating.level), rating.score if rating.score is not None else -1.0)


def severity_of(records: Iterable[Mapping[str, Any]], missing: str) -> Severity:
    """The worst rating across `records` (one finding may be several merged records), or unknown."""
    ratings = [rating for record in records for rating in _ratings(record)]
    if not ratings:
        return Severity(level=UNKNOWN, score=None, source=missing)
    return max(ratings, key=_rank)

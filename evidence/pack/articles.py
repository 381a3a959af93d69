"""The DORA article map: which artefact in the pack evidences which requirement, and what is missing.

A table, not prose, so an auditor (and a test) can see every article, every artefact it relies on and
every gap. An artefact that is absent from this pack turns into a gap by name; requirements no artefact
of an edge server can evidence (governance, board approval, contracts) are gaps always, stated as such
rather than left out. Regulation (EU) 2022/2554 (DORA); RTS 2024/1774 (ICT risk management framework);
ITS 2024/2956 (register of information).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Article:
    article: str
    title: str
    requirement: str
    artefacts: tuple[str, ...]  # evidence keys (see assemble.EVIDENCE): present -> evidence, absent -> gap
    standing_gaps: tuple[str, ...]  # what no artefact of this pack can evidence


ARTICLES: tuple[Article, ...] = (
    Article(
        "Art. 5-6",
        "Governance; ICT risk management framework",
        "A documented ICT risk management framework covering this ICT asset, its protection and its evidence.",
        ("asset", "article_map", "config"),
        ("management body approval and the framework document itself are organisational records outside this pack",),
    ),
    Article(
        "Art. 8",
        "Identification",
        "Identify and classify ICT assets and their dependencies; keep the inventory current.",
        ("asset", "sbom", "register"),
        (),
    ),
    Article(
        "Art. 9",
        "Protection and prevention",
        "ICT security policies and tools: strong authentication, encryption in transit, integrity of software.",
        ("tls", "config", "scan", "signatures", "verification", "reproducible"),
        (),
    ),
    Article(
        "Art. 10",
        "Detection",
        "Mechanisms to detect anomalous activity and ICT-related incidents promptly.",
        ("trail", "bench"),
        ("alerting thresholds and the monitoring service live in operations, not in the release",),
    ),
    Article(
        "Art. 11-12",
        "Response and recovery; backup and restoration",
        "ICT business continuity: response and recovery plans, tested; restorable known-good software.",
        ("provenance", "reproducible", "changes", "signatures"),
        ("business continuity and recovery plans and their test records are not produced by the release path",),
    ),
    Article(
        "Art. 17-19",
        "ICT-related incident management, classification and reporting",
        "Record, classify (RTS 2024/1772) and report major ICT-related incidents.",
        ("trail",),
        (
            "only partially evidenced: the audit-trail report gives incident candidates and classification inputs;"
            " the incident register and the reports sent to the authority are kept elsewhere",
        ),
    ),
    Article(
        "Art. 24-25",
        "Digital operational resilience testing",
        "A testing programme: vulnerability assessments, scans, performance and scenario-based tests.",
        ("tests", "scan", "tls", "bench", "reproducible"),
        ("threat-led penetration testing (Art. 26) is out of scope of a release pack",),
    ),
    Article(
        "Art. 28",
        "ICT third-party risk",
        "A register of information on ICT third-party providers and the dependencies they supply.",
        ("register", "sbom", "scan"),
        ("contracts, exit strategies and provider due diligence are not evidenced by the software itself",),
    ),
)


def article_map(present: dict[str, list[str]], titles: dict[str, str]) -> list[dict[str, Any]]:
    """One row per article: evidence (artefact key -> pack files), gaps (missing artefacts, standing gaps)."""
    rows: list[dict[str, Any]] = []
    for art in ARTICLES:
        evidence = [{"evidence": titles[k], "files": present[k]} for k in art.artefacts if present.get(k)]
        gaps = [f"missing: {titles[k]}" for k in art.artefacts if not present.get(k)]
        rows.append(
            {
                "article": art.article,
                "title": art.title,
                "requirement": art.requirement,
                "evidence": evidence,
                "gaps": gaps + list(art.standing_gaps),
            }
        )
    return rows

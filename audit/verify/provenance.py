"""What the operator expects the provenance to say, and the check that it does.

The provenance is only read after its signature verified; these checks turn "someone trusted signed a
statement" into "this executable was built by that builder from that commit".
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any

from audit.errors import Finding
from audit.sign.dsse import loads_strict
from audit.verify.oneline import oneline

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Expectations:
    """Operator expectations; None means "not checked" (the report says what was checked)."""

    artefact: str = "edgeward"
    builder_id: str | None = None
    source_repo: str | None = None
    source_commit: str | None = None

    @property
    def constrains_provenance(self) -> bool:
        return any(v is not None for v in (self.builder_id, self.source_repo, self.source_commit))


@dataclass(frozen=True)
class ProvenanceFacts:
    builder_id: str
    source_repo: str
    source_commit: str
    source_dirty: bool | None
    checked: tuple[str, ...]


def _get(obj: Any, path: tuple[str, ...], what: str) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            raise Finding(f"{what}: missing {'.'.join(path)}")
        obj = obj[key]
    return obj


def _text(obj: Any, path: tuple[str, ...], what: str) -> str:
    value = _get(obj, path, what)
    if not isinstance(value, str):
        raise Finding(f"{what}: {'.'.join(path)} is not a string")
    return value


def subject_digest(statement: Any, name: str, what: str) -> str:
    """The sha256 of the one subject called `name` (several, or none, is a Finding)."""
    subjects = _get(statement, ("subject",), what)
    if not isinstance(subjects, list):
        raise Finding(f"{what}: subject is not a list")
    matches = [s for s in subjects if isinstance(s, dict) and s.get("name") == name]
    if len(matches) != 1:
        raise Finding(f"{what}: {'no' if not matches else 'more than one'} subject named {oneline(name)}")
    # Exactly 64 lowercase hex digits, as SHA256SUMS: one spelling per digest, nothing normalised.
    digest = _text(matches[0], ("digest", "sha256"), f"{what}: subject {name}")
    if SHA256_HEX.fullmatch(digest) is None:
        raise Finding(f"{what}: subject {name} sha256 {oneline(digest)} is not 64 lowercase hex digits")
    return digest


def check_provenance(payload: bytes, digest: str, expect: Expectations, what: str) -> ProvenanceFacts:
    """Check a verified provenance statement against the executable's digest and the operator's expectations."""
    # 1. An in-toto Statement v1 carrying SLSA provenance v1, nothing else.
    statement = loads_strict(payload, what)
    if _get(statement, ("_type",), what) != STATEMENT_TYPE:
        raise Finding(f"{what}: _type is not {STATEMENT_TYPE}")
    if _get(statement, ("predicateType",), what) != SLSA_PROVENANCE_V1:
        raise Finding(f"{what}: predicateType is not {SLSA_PROVENANCE_V1}")
    # 2. The subject named like the executable has the executable's SHA-256 (constant-time comparison).
    claimed = subject_digest(statement, expect.artefact, what)
    if not hmac.compare_digest(claimed.encode(), digest.encode()):
        raise Finding(f"{expect.artefact}: sha256 {digest} does not match provenance subject {claimed}")
    predicate = _get(statement, ("predicate",), what)
    builder = _text(predicate, ("runDetails", "builder", "id"), what)
    source = _get(predicate, ("buildDefinition", "externalParameters", "source"), what)
    repo = _text(source, ("repository",), what)
    commit = _text(source, ("commit",), what)
    dirty = source.get("dirty") if isinstance(source, dict) else None
    checked = ["subject"]
    # 3. The builder is the one the operator trusts to have run the build.
    if expect.builder_id is not None:
        if builder != expect.builder_id:
            raise Finding(f"{what}: builder id {oneline(builder)} is not {oneline(expect.builder_id)}")
        checked.append("builder")
    # 4. The source repository and commit are the ones the operator expects (exact; commits case-insensitive).
    if expect.source_repo is not None:
        if repo != expect.source_repo:
            raise Finding(f"{what}: source repository {oneline(repo)} is not {oneline(expect.source_repo)}")
        checked.append("source repository")
    if expect.source_commit is not None:
        if commit.lower() != expect.source_commit.lower():
            raise Finding(f"{what}: source commit {oneline(commit)} is not {oneline(expect.source_commit)}")
        checked.append("source commit")
    return ProvenanceFacts(builder, repo, commit, dirty if isinstance(dirty, bool) else None, tuple(checked))

"""The change summary since the previous release tag: `git log` and `git diff --stat` up to the provenance commit."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from audit.errors import AuditError


def _git(source: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise AuditError(f"git {' '.join(args[:2])} failed in {source}: {done.stderr.strip()[:200]}")
    return done.stdout


def change_summary(source: Path, previous_tag: str, commit: str) -> dict[str, Any]:
    if previous_tag.startswith("-") or not commit or commit.startswith("-"):
        raise AuditError(f"--previous-tag {previous_tag!r}: not a tag name")
    base = _git(source, "rev-parse", "--verify", f"{previous_tag}^{{commit}}").strip()
    head = _git(source, "rev-parse", "--verify", f"{commit}^{{commit}}").strip()
    log = _git(source, "log", "--no-merges", "--format=%H%x09%an%x09%aI%x09%s", f"{base}..{head}")
    commits = []
    for line in log.splitlines():
        sha, author, when, subject = [*line.split("\t", 3), "", "", ""][:4]
        commits.append({"commit": sha, "author": author, "date": when, "subject": subject})
    stat = _git(source, "diff", "--shortstat", base, head).strip()
    files = _git(source, "diff", "--name-status", base, head).splitlines()
    return {
        "previous_tag": previous_tag,
        "from": base,
        "to": head,
        "commits": commits,
        "diffstat": stat,
        "files": [line.replace("\t", " ") for line in files],
    }

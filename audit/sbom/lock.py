"""The runtime lock file (`uv pip compile --generate-hashes` format), read as the SBOM and provenance need it.

The lock is the only place that says which wheel bytes were allowed into the build: the SBOM copies its
hashes onto each bundled distribution, and the provenance lists every locked distribution that shipped.
The `# via` comments are kept because they say which distributions the project asked for directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from audit.errors import AuditError
from audit.pypi import normalise_name

_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:(?P<hex>[0-9a-f]{64})\b")


@dataclass(frozen=True)
class LockedDist:
    """One pinned distribution: `hashes` are the SHA-256 of every file (wheels, sdist) the lock allows."""

    name: str
    version: str
    hashes: tuple[str, ...]
    via: tuple[str, ...]

    @property
    def direct(self) -> bool:
        """Asked for by the project itself (uv writes `# via <project> (pyproject.toml)`)."""
        return any(entry.endswith("(pyproject.toml)") or entry.startswith("-r ") for entry in self.via)


@dataclass(frozen=True)
class Lock:
    path: Path
    dists: dict[str, LockedDist]

    def get(self, name: str) -> LockedDist | None:
        return self.dists.get(normalise_name(name))


@dataclass
class _Block:
    name: str
    version: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)
    in_via: bool = False

    def freeze(self, path: Path) -> LockedDist:
        if not self.hashes:
            raise AuditError(
                f"{path}: {self.name}=={self.version} has no --hash", hint="regenerate the lock with --generate-hashes"
            )
        return LockedDist(normalise_name(self.name), self.version, tuple(sorted(set(self.hashes))), tuple(self.via))


def parse_lock(text: str, path: Path) -> Lock:
    """Parse `name==version \\` blocks with their `--hash=sha256:` continuation lines and `# via` comments.

    A block without a hash is refused: a lock without hashes proves nothing about the bytes that were built.
    """
    blocks: list[_Block] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        current = blocks[-1] if blocks else None
        if raw[:1].isalnum():
            match = _REQUIREMENT.match(line)
            if match is None:
                raise AuditError(f"{path}:{number}: not a pinned requirement: {line[:80]}")
            blocks.append(_Block(match["name"], match["version"], _HASH.findall(line)))
        elif line.startswith("--hash="):
            found = _HASH.findall(line)
            if current is None or not found:
                raise AuditError(f"{path}:{number}: a --hash=sha256: line must follow a requirement: {line[:80]}")
            current.hashes.extend(found)
        elif line.startswith("#") and current is not None:
            body = line.lstrip("#").strip()
            if body.startswith("via"):
                current.in_via = True
                body = body[3:].strip()
            if current.in_via and body:
                current.via.append(body)
        # anything else (index options, header comments) says nothing about what was built
    dists: dict[str, LockedDist] = {}
    for block in blocks:
        dist = block.freeze(path)
        dists[dist.name] = dist
    if not dists:
        raise AuditError(f"{path}: no pinned requirements", hint="pass the runtime lock (requirements.lock)")
    return Lock(path, dists)


def load_lock(path: Path) -> Lock:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the lock file: {exc.strerror}", hint="pass --lock FILE") from None
    return parse_lock(text, path)

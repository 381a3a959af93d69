"""Where the build came from: repository, commit, whether the tree was dirty, and the build id.

The build id is a digest of every input, taken from the working tree (not the commit), so a dirty build can
never carry a clean build's id. It names the extraction directory and is printed by `ingress version`.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from audit.buildinfo import Tool
from audit.digest import sha256_file

# What decides the executable's bytes, relative to the source tree. Tests and tools are not in it, and
# neither is pyproject.toml: of it only the version reaches the executable, and that is hashed itself.
INPUTS = ("ingress", "build", "requirements.lock")


@dataclass(frozen=True)
class Source:
    repository: str
    commit: str
    dirty: bool


def _git(source: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def describe_source(source: Path, repository: str = "") -> Source:
    """The repository URL is the `origin` remote unless given; without git, the tree's file URL and no commit."""
    commit = _git(source, "rev-parse", "HEAD")
    dirty = bool(_git(source, "status", "--porcelain", "--untracked-files=all", "--", *INPUTS)) if commit else True
    if not repository:
        repository = _git(source, "config", "--get", "remote.origin.url") or source.resolve().as_uri()
    return Source(repository=repository, commit=commit, dirty=dirty)


def input_files(source: Path) -> list[Path]:
    """Files git tracks or would track (ignored caches don't change the id; a new module does), else every file."""
    listed = _git(source, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *INPUTS)
    if listed:
        names = sorted(name for name in listed.split("\0") if name)
        return [source / name for name in names if (source / name).is_file()]
    files: list[Path] = []
    for name in INPUTS:
        path = source / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in sorted(path.rglob("*")) if p.is_file() and "__pycache__" not in p.parts)
    return files


def build_id(source: Path, version: str, flags: tuple[str, ...], tools: tuple[Tool, ...]) -> str:
    digest = hashlib.sha256(f"edgeward-build-id-v1\0version {version}\0".encode())
    for path in input_files(source):
        digest.update(f"file {path.relative_to(source).as_posix()} {sha256_file(path)}\0".encode())
    for flag in flags:
        digest.update(f"flag {flag}\0".encode())
    for tool in tools:
        if tool.name != "ccache":  # ccache changes how fast, not what
            digest.update(f"tool {tool.name} {tool.version}\0".encode())
    return digest.hexdigest()

"""What this running program is: its build id and, when compiled, the digest of its own executable.

An operator who verified a release's signature wants to know the process on the edge node runs those
exact bytes. `ingress version` prints the SHA-256 of the file the kernel executed (read through
/proc/<pid>/exe, so a file renamed or replaced since start cannot lie), to compare with SHA256SUMS.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path

# Written into the executable by `audit build` (see audit/build/nuitka.py); absent when run from source.
_BUILD_MODULE = "_edgeward_build"


def build_id() -> str:
    try:
        module = importlib.import_module(_BUILD_MODULE)
    except ImportError:
        return "source"
    return str(module.BUILD_ID)


def _executed_file() -> Path | None:
    """The onefile binary that started us: Nuitka's bootstrap is our parent and names itself in the env."""
    if build_id() == "source":
        return None
    parent = os.environ.get("NUITKA_ONEFILE_PARENT", "")
    if parent.isdigit():
        path = Path(f"/proc/{parent}/exe")
        if path.exists():
            return path
    return Path("/proc/self/exe")


def own_digest() -> tuple[str, str] | None:
    """(hex SHA-256, path) of the executable, or None when running from source."""
    path = _executed_file()
    if path is None:
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    try:
        shown = os.readlink(path)
    except OSError:
        shown = str(path)
    return digest.hexdigest(), shown

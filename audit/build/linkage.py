"""Check what the executable links against: an edge node must need nothing but the C library to run it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from audit.errors import AuditError, Finding

# Shared objects an edge node always has. vdso is the kernel's, not a file.
ALLOWED = ("linux-vdso.so", "libc.so", "libm.so", "ld-linux")
_NAME = re.compile(r"^\s*(\S+)")


def linked_libraries(executable: Path) -> list[str]:
    try:
        done = subprocess.run(["ldd", str(executable)], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise AuditError(f"cannot run ldd on {executable}: {exc}", hint="install libc-bin") from None
    if done.returncode != 0 and "not a dynamic executable" in (done.stdout + done.stderr):
        return []
    names = []
    for line in done.stdout.splitlines():
        match = _NAME.match(line)
        if match:
            names.append(Path(match.group(1)).name)
    return names


def check_linkage(executable: Path) -> list[str]:
    """The libraries the executable needs; a Finding if any is not the C library, libm or the loader."""
    names = linked_libraries(executable)
    foreign = [name for name in names if not name.startswith(ALLOWED)]
    if foreign:
        raise Finding(
            f"{executable.name} links {', '.join(foreign)}; only the C library, libm and the loader are allowed"
        )
    return [name for name in names if not name.startswith("linux-vdso")]

"""Writing release files atomically: a crash never leaves half an SBOM or half a signature to publish."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from audit.digest import sha256_bytes
from audit.errors import AuditError


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> str:
    """Write, fsync, then rename into place; returns the SHA-256 hex of what was written."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise AuditError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise AuditError(f"{path}: cannot write: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_bytes(data)

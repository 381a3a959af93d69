"""sslyze's own virtualenv (.cache/sslyze-env), made on demand from evidence/tls/requirements-sslyze.lock.

sslyze pins cryptography 46 and nassl, which conflict with the server's cryptography pin, so it never
shares the development virtualenv: it runs as a subprocess from this one, rebuilt when the lock changes
(the marker holds the lock's digest, like audit/build/environment.py's build environment).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from audit.errors import AuditError

LOCK = Path(__file__).with_name("requirements-sslyze.lock")
ENV_DIR = ".cache/sslyze-env"
_MARKER = ".edgeward-sslyze-env"


def _key() -> str:
    return hashlib.sha256(f"{sys.version}\0".encode() + LOCK.read_bytes()).hexdigest()


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise AuditError(f"{what} failed (exit {done.returncode}): {' | '.join(tail)}")


def sslyze_python(root: Path, note: object = None) -> Path:
    """The interpreter of the sslyze environment under `root`, creating or refreshing it when the lock changed."""
    env = root / ENV_DIR
    python = env / "bin" / "python"
    key = _key()
    marker = env / _MARKER
    if python.is_file() and marker.is_file() and marker.read_text().strip() == key:
        return python
    shutil.rmtree(env, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(env)], "creating the sslyze environment")
    _run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--require-hashes", "-r", str(LOCK)],
        f"installing {LOCK.name}",
    )  # fmt: skip
    marker.write_text(key + "\n")
    return python

"""The clean build environment: exactly requirements.lock plus the compiler, nothing from a developer's venv.

Nuitka follows every import it can resolve, optional ones included: built from a development virtualenv,
the executable picks up whatever else happens to be installed there (an optional `idna` behind
service-identity, say). So the release is compiled in a virtualenv made only from the hash-pinned
runtime lock and the pinned Nuitka toolchain (build/requirements-nuitka.lock), reused while both
locks and the interpreter are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from audit.errors import AuditError
from audit.progress import Progress
from audit.pypi import normalise_name

RUNTIME_LOCK = "requirements.lock"
TOOLCHAIN_LOCK = "build/requirements-nuitka.lock"
ENV_DIR = ".cache/build-env"
_MARKER = ".edgeward-build-env"
# pip's own record of what it installed from the runtime lock, with each archive's SHA-256.
INSTALL_REPORT = "install-report.json"


def _key(source: Path) -> str:
    digest = hashlib.sha256(f"layout 2\0{sys.version}\0".encode())  # bump when the environment's layout changes
    for name in (RUNTIME_LOCK, TOOLCHAIN_LOCK):
        try:
            digest.update((source / name).read_bytes())
        except OSError as exc:
            raise AuditError(
                f"{source / name}: cannot read ({exc.strerror})", hint="run from the source tree"
            ) from None
    return digest.hexdigest()


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise AuditError(f"{what} failed (exit {done.returncode}): {' | '.join(tail)}")


def build_python(source: Path, progress: Progress) -> Path:
    """The build environment's interpreter, creating or refreshing the environment when a lock changed."""
    env = source / ENV_DIR
    python = env / "bin" / "python"
    key = _key(source)
    marker = env / _MARKER
    if python.is_file() and marker.is_file() and marker.read_text().strip() == key:
        progress.note(f"build environment {ENV_DIR} is current")
        return python
    progress.note(f"creating the build environment {ENV_DIR} from {RUNTIME_LOCK} and {TOOLCHAIN_LOCK}")
    shutil.rmtree(env, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(env)], "creating the build virtualenv")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    report = ["--report", str(env / INSTALL_REPORT)]
    _run([*pip, *report, "--require-hashes", "-r", str(source / RUNTIME_LOCK)], f"installing {RUNTIME_LOCK}")
    _run([*pip, "--require-hashes", "-r", str(source / TOOLCHAIN_LOCK)], f"installing {TOOLCHAIN_LOCK}")
    marker.write_text(key + "\n")
    return python


def installed_archives(python: Path) -> dict[str, str]:
    """Normalised distribution name -> SHA-256 of the exact wheel pip installed from the runtime lock.

    The lock allows one file per platform; the provenance should name the one that went into the build.
    """
    path = python.parent.parent / INSTALL_REPORT
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AuditError(
            f"{path}: cannot read pip's install report: {exc}", hint=f"delete {ENV_DIR} and rebuild"
        ) from None
    archives: dict[str, str] = {}
    for item in report.get("install", []):
        name = normalise_name(str(item["metadata"]["name"]))
        digest = item.get("download_info", {}).get("archive_info", {}).get("hashes", {}).get("sha256", "")
        if digest:
            archives[name] = str(digest)
    return archives


def installed_version(python: Path, distribution: str) -> str:
    probe = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AuditError(f"{distribution} is not installed in the build environment {python.parent.parent}")
    return done.stdout.strip()

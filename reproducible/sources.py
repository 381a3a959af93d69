"""Fresh copies of the source tree to build from, so each build sees its own path and nothing left behind.

A build from a copy must still be the same source: the copy is a git clone (so the commit and the dirty
flag recorded in the build are the real ones) with the working tree's uncommitted changes laid over it.
The clean build environment (`.cache/build-env`) is copied along when present, because creating it
needs a package index; `audit build` still checks that it matches the locks and rebuilds it otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from audit.build.environment import ENV_DIR
from audit.errors import AuditError


def git(cwd: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise AuditError(f"git {' '.join(args)}: {exc}", hint="install git") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-2:]
        raise AuditError(f"git {' '.join(args[:2])} in {cwd} failed: {' | '.join(tail)}")
    return done.stdout


def _is_top_level(source: Path) -> bool:
    try:
        return Path(git(source, "rev-parse", "--show-toplevel").strip()).resolve() == source.resolve()
    except AuditError:
        return False


def copy_build_env(source: Path, dest: Path) -> None:
    env = source / ENV_DIR
    if env.is_dir():
        shutil.copytree(env, dest / ENV_DIR, symlinks=True, dirs_exist_ok=True)


def copy_working_tree(source: Path, dest: Path) -> None:
    """Clone `source` into `dest` (which must not exist) and lay the uncommitted changes over the clone."""
    source = source.resolve()
    if not _is_top_level(source):
        ignore = shutil.ignore_patterns(".git", ".cache", "__pycache__", "dist", ".venv")
        shutil.copytree(source, dest, symlinks=True, ignore=ignore)
        copy_build_env(source, dest)
        return
    git(dest.parent, "clone", "--quiet", "--shared", str(source), str(dest))
    # (1) Tracked files with their working-tree bytes, and untracked files git would not ignore.
    listed = git(source, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in sorted(n for n in listed.split("\0") if n):
        origin = source / name
        target = dest / name
        if origin.is_symlink() or not origin.exists():
            continue
        if origin.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    # (2) Files deleted in the working tree are deleted in the copy too.
    for name in git(source, "ls-files", "-z", "--deleted").split("\0"):
        if name:
            (dest / name).unlink(missing_ok=True)
    copy_build_env(source, dest)


def clone_commit(repository: str, commit: str, dest: Path) -> None:
    """A clone of `repository` at `commit` in `dest` (a directory this package created and owns)."""
    git(dest.parent, "clone", "--quiet", "--no-checkout", repository, str(dest))
    git(dest, "checkout", "--quiet", "--detach", commit)

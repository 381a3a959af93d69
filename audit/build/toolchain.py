"""The versions of the tools that shape the executable's bytes, for the build id, the SBOM and the provenance.

Everything is read from the running build environment rather than configured, because the record must say
what was used, not what was meant to be used.
"""

from __future__ import annotations

import os
import platform
import shutil
import ssl
import subprocess

from audit.buildinfo import Tool
from audit.errors import AuditError


def _command_version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def toolchain(nuitka: str) -> tuple[Tool, ...]:
    """python, nuitka, gcc, glibc and openssl (the one Python's `ssl` links, which the executable bundles).

    The build environment shares this interpreter's base installation, so its Python and OpenSSL are these.
    """
    gcc = _command_version(["gcc", "-dumpfullversion"])
    if not gcc:
        raise AuditError("gcc was not found", hint="install gcc (apt-get install gcc); Nuitka compiles C")
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    openssl = ssl.OPENSSL_VERSION.split()[1] if ssl.OPENSSL_VERSION.startswith("OpenSSL ") else ssl.OPENSSL_VERSION
    tools = [
        Tool("python", platform.python_version()),
        Tool("nuitka", nuitka),
        Tool("gcc", gcc),
        Tool("glibc", libc.removeprefix("glibc ")),
        Tool("openssl", openssl),
    ]
    if shutil.which("ccache"):
        version = _command_version(["ccache", "--version"]).splitlines()
        tools.append(Tool("ccache", version[0].split()[-1] if version else "unknown"))
    return tuple(tools)


def missing_build_tools() -> list[str]:
    """What Nuitka's onefile mode needs on Linux and cannot fetch by itself."""
    return [name for name in ("gcc", "patchelf") if shutil.which(name) is None]

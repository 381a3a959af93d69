"""dpkg (Debian, Ubuntu): `dpkg-query -S` for the owner, `-W` for the version, DEP-5 copyright for the licence.

Merged-/usr systems install under /usr/lib but the loader (and so Nuitka) may report /lib: both
spellings are asked before giving up.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path

from packageurl import PackageURL

from audit.errors import AuditError
from audit.sbom.licenses import FoundLicense, dep5_license
from audit.sbom.system.interface import SystemPackage

_OWNER = re.compile(r"^(?P<packages>[^:\s][^:]*(?::[a-z0-9-]+)?(?:, [^:\s][^:]*(?::[a-z0-9-]+)?)*): (?P<path>/.*)$")
_TIMEOUT = 30


def _spellings(path: str) -> list[str]:
    out = [path]
    real = os.path.realpath(path)
    for candidate in (path, real):
        out.append(candidate)
        if candidate.startswith("/usr/"):
            out.append(candidate.removeprefix("/usr"))
        elif candidate.startswith(("/lib", "/bin", "/sbin")):
            out.append("/usr" + candidate)
    return list(dict.fromkeys(out))


def _query(*args: str) -> str | None:
    try:
        done = subprocess.run(["dpkg-query", *args], capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AuditError(f"dpkg-query {args[0]} failed: {exc}") from None
    return done.stdout if done.returncode == 0 else None


class DpkgDatabase:
    name = "dpkg"

    def __init__(self, doc_root: Path = Path("/usr/share/doc")) -> None:
        self.doc_root = doc_root

    def owner(self, path: str) -> SystemPackage | None:
        for spelling in _spellings(path):
            package = self._owner_of(spelling)
            if package is not None:
                return self._describe(package)
        return None

    @cache  # noqa: B019 - one database per run; the cache is the point
    def _owner_of(self, path: str) -> str | None:
        out = _query("-S", path)
        if out is None:
            return None
        for line in out.splitlines():
            match = _OWNER.match(line)
            if match and match["path"] == path:
                # Several owners ("a, b: path") happen for shared directories, not for libraries; take the first.
                return match["packages"].split(", ")[0]
        return None

    @cache  # noqa: B019
    def _describe(self, package: str) -> SystemPackage:
        out = _query("-W", "-f=${Package}\\t${Version}\\t${Architecture}\\n", package)
        fields = (out or "").splitlines()[0].split("\t") if out else []
        if len(fields) != 3:
            raise AuditError(f"dpkg-query -W {package}: unexpected answer {out!r}")
        name, version, arch = fields
        purl = PackageURL(type="deb", namespace="debian", name=name, version=version, qualifiers={"arch": arch})
        return SystemPackage(name=name, version=version, purl=purl.to_string(), license=self._license(name))

    def _license(self, package: str) -> FoundLicense:
        try:
            text = (self.doc_root / package / "copyright").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return FoundLicense()
        return dep5_license(text)

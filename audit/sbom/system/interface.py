"""The one question the SBOM asks a package manager: which package, at which version, owns this file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from audit.sbom.licenses import FoundLicense


@dataclass(frozen=True)
class SystemPackage:
    """`purl` is complete (type, namespace, version, qualifiers) so callers never assemble one by hand."""

    name: str
    version: str
    purl: str
    license: FoundLicense


class PackageDatabase(Protocol):
    name: str

    def owner(self, path: str) -> SystemPackage | None:
        """The package that installed `path`, or None when no package did (or nobody can tell)."""
        ...

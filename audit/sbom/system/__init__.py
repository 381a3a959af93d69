"""Who installed a bundled system library: one file per package manager (only dpkg for now)."""

from __future__ import annotations

import shutil

from audit.sbom.system.interface import PackageDatabase, SystemPackage

__all__ = ["PackageDatabase", "SystemPackage", "default_database"]


def default_database() -> PackageDatabase:
    """dpkg where it exists; elsewhere a database that knows nothing, so libraries become pkg:generic."""
    if shutil.which("dpkg-query"):
        from audit.sbom.system.dpkg import DpkgDatabase

        return DpkgDatabase()
    from audit.sbom.system.unknown import UnknownDatabase

    return UnknownDatabase()

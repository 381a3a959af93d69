"""For machines without a package manager we can ask: every library is reported as pkg:generic."""

from __future__ import annotations

from audit.sbom.system.interface import SystemPackage


class UnknownDatabase:
    name = "none"

    def owner(self, path: str) -> SystemPackage | None:
        return None

"""One exception tree for the request path.

Exceptions carry what the caller needs to act: a config problem carries the
file and key path, a protocol error carries the status to answer with. Only
the CLI turns them into exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass


class EdgewardError(Exception):
    """Base of every error the server raises on purpose."""

    def diagnostics(self) -> str:
        return str(self)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where it is and how to fix it."""

    source: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        key = f"{self.path}: " if self.path else ""
        return f"{where}{key}{self.message}"


class ConfigError(EdgewardError):
    """A config that must not be served; lists every problem, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ProtocolError(EdgewardError):
    """The peer broke the protocol; `status_hint` is the answer to give, if any."""

    def __init__(self, status_hint: int, reason: str) -> None:
        self.status_hint = status_hint
        self.reason = reason
        super().__init__(f"{status_hint}: {reason}")


class TLSMaterialError(EdgewardError):
    """A certificate, key or CA bundle that cannot be used."""

"""One exception tree for the release path.

Every error carries its advice: the CLI prints `diagnostics()` and picks the exit code from the class,
so no module below the CLI exits or prints.
"""

from __future__ import annotations


class AuditError(Exception):
    """Base of every error the release path raises on purpose; exit code 2 (usage, input or environment)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def diagnostics(self) -> str:
        text = str(self)
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class Finding(AuditError):
    """The tool worked and the answer is no: a failed verification, a failed gate; exit code 1.

    The message is one line naming exactly what did not match, because operators grep it in deploy logs.
    """

    exit_code = 1

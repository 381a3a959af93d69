"""The signing axis: one interface, one file per way of holding a key (keys.py, x509.py, sigstore_keyless.py).

A signer decides the *format* of what it writes (a detached signature and DSSE envelopes for keys held by
the release team; Sigstore bundles for keyless), so callers hand it artefacts and payloads and get back the
paths it wrote. File names come from `audit.sign.names`, which `audit verify` reads too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType


class Signer(ABC):
    """Signs release artefacts; a context manager so online signers can release sessions."""

    @property
    @abstractmethod
    def description(self) -> str:
        """Who signs, for summaries: never a secret."""

    @abstractmethod
    def sign_artefact(self, path: Path) -> Path:
        """Write a signature over the file's bytes beside it; return the path written."""

    @abstractmethod
    def sign_payload(self, payload: bytes, payload_type: str, name: str, directory: Path) -> Path:
        """Write a signed envelope over `payload`, named after the document `name`, in `directory`."""

    def write_material(self, directory: Path) -> list[Path]:
        """Write what a verifier needs besides the trust policy (e.g. the certificate chain)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook; most signers hold no session
        """Release sessions or cached credentials; the default holds none."""

    def __enter__(self) -> Signer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

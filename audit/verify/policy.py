"""Trust policies: small composable objects deciding who may have signed a file.

Modelled on sigstore-python's `verify/policy.py`: leaves check one kind of trust (keys, a CA plus an identity,
a Sigstore identity); `AllOf` and `AnyOf` combine them; an empty combination denies. There is no no-op policy:
every verification path checks a signature.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from audit.errors import Finding
from audit.verify.evidence import Evidence, Verified


class Policy(ABC):
    @abstractmethod
    def verify(self, evidence: Evidence) -> Verified:
        """Return who signed `evidence`, or raise Finding with one line naming what did not match."""

    @abstractmethod
    def describe(self) -> str:
        """The trust this policy stands for, for reports."""


class AllOf(Policy):
    """Every child must accept; the signers add up. With no children, denies."""

    def __init__(self, children: Sequence[Policy]) -> None:
        self.children = tuple(children)

    def describe(self) -> str:
        return "all of (" + "; ".join(c.describe() for c in self.children) + ")"

    def verify(self, evidence: Evidence) -> Verified:
        if not self.children:
            raise Finding(f"{evidence.name}: empty trust policy (an empty policy denies)")
        results = [child.verify(evidence) for child in self.children]
        payloads = {r.payload for r in results if r.payload is not None}
        if len(payloads) > 1:
            raise Finding(f"{evidence.name}: policies verified different payloads")
        first = next((r for r in results if r.payload is not None), results[0])
        signers = tuple(s for r in results for s in r.signers)
        files = tuple(dict.fromkeys(f for r in results for f in r.files))
        return Verified(signers=signers, payload=first.payload, payload_type=first.payload_type, files=files)


class AnyOf(Policy):
    """At least one child must accept. With no children, denies.

    Every child is tried, not just the first that accepts: the caller refuses any signature file no
    accepting child checked, so a second signature (say a Sigstore bundle beside a key's `.sig`) counts only
    when some child verified it.
    """

    def __init__(self, children: Sequence[Policy]) -> None:
        self.children = tuple(children)

    def describe(self) -> str:
        return "any of (" + "; ".join(c.describe() for c in self.children) + ")"

    def verify(self, evidence: Evidence) -> Verified:
        if not self.children:
            raise Finding(f"{evidence.name}: empty trust policy (an empty policy denies)")
        reasons = []
        results = []
        for child in self.children:
            try:
                results.append(child.verify(evidence))
            except Finding as exc:
                reasons.append(str(exc))
        if not results:
            raise Finding(f"{evidence.name}: no trust policy accepts it ({'; '.join(reasons)})")
        payloads = {r.payload for r in results if r.payload is not None}
        if len(payloads) > 1:
            raise Finding(f"{evidence.name}: policies verified different payloads")
        first = next((r for r in results if r.payload is not None), results[0])
        signers = tuple(dict.fromkeys(s for r in results for s in r.signers))
        files = tuple(dict.fromkeys(f for r in results for f in r.files))
        return Verified(signers=signers, payload=first.payload, payload_type=first.payload_type, files=files)

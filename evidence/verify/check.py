"""Verifying an evidence pack: a directory or its archive, against the operator's trust policy.

Trust first, then meaning: the manifest is read only after its signature verified and the signed payload
is byte-identical to manifest.json. Then every file is compared with the manifest (constant-time), and
every difference is reported by name: modified, missing, or added. An archive must also be the canonical
archive of its contents (evidence.pack.archive), so no byte of it can change unnoticed.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from audit.digest import sha256_bytes
from audit.errors import Finding
from audit.sign.dsse import parse_envelope
from audit.verify.artefacts import verify_evidence
from audit.verify.evidence import Evidence
from audit.verify.oneline import oneline
from audit.verify.policy import Policy
from evidence.pack import manifest as mf
from evidence.pack.archive import read_archive

CHAIN = "signing-chain.pem"
MAX_FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class PackReport:
    files: int
    signers: tuple[str, ...]
    problems: tuple[str, ...]  # one line per file that differs; empty when the pack verifies

    @property
    def ok(self) -> bool:
        return not self.problems


def read_directory(directory: Path) -> dict[str, bytes]:
    """Every regular file under `directory` by relative POSIX name; anything else is a Finding naming it."""
    files: dict[str, bytes] = {}
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        if path.is_symlink():
            raise Finding(f"{oneline(name)}: a symbolic link (a pack holds regular files only)")
        if path.is_dir():
            continue
        if not path.is_file():
            raise Finding(f"{oneline(name)}: not a regular file")
        if not mf.is_pack_name(name):
            raise Finding(f"{oneline(name)}: added (not a pack file name)")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise Finding(f"{oneline(name)}: larger than {MAX_FILE_BYTES} bytes")
        files[name] = path.read_bytes()
    return files


def _chain(files: Mapping[str, bytes]) -> tuple[x509.Certificate, ...]:
    if CHAIN not in files:
        return ()
    try:
        return tuple(x509.load_pem_x509_certificates(files[CHAIN]))
    except ValueError as exc:
        raise Finding(f"{CHAIN}: not PEM certificates") from exc


def verify_files(files: Mapping[str, bytes], policy: Policy) -> PackReport:
    """The in-memory core, shared by directories and archives."""
    # 1. The manifest and its signature exist.
    if mf.MANIFEST not in files:
        raise Finding(f"{mf.MANIFEST}: missing")
    sources = [n for n in (mf.ENVELOPE, mf.BUNDLE) if n in files]
    if not sources:
        raise Finding(f"{mf.ENVELOPE}: missing")
    # 2. The signature verifies under the policy, and what it signed is exactly manifest.json (constant-time,
    #    in verify_evidence). The chain (for X.509) comes from the pack and is untrusted until the policy
    #    validates it against the operator's CA.
    envelope = parse_envelope(files[mf.ENVELOPE], mf.ENVELOPE) if mf.ENVELOPE in files else None
    evidence = Evidence(
        name=mf.MANIFEST,
        artefact=Path(mf.MANIFEST),
        digest=sha256_bytes(files[mf.MANIFEST]),
        source=", ".join(sources),
        envelope=envelope,
        bundle=files.get(mf.BUNDLE),
        chain=_chain(files),
        payload_types=frozenset({mf.PAYLOAD_TYPE}),
        envelope_source=mf.ENVELOPE if envelope else "",
        bundle_source=mf.BUNDLE if mf.BUNDLE in files else "",
    )
    verified = verify_evidence(policy, evidence, document=True)
    payload = verified.payload if verified.payload is not None else files[mf.MANIFEST]
    # 3. Only now is the manifest read, strictly.
    expected = mf.parse_manifest(payload)
    # 4. Every file against the manifest: modified, missing, added; every one named, sorted.
    problems: list[str] = []
    for name in sorted(set(expected) | set(files) - mf.OUTSIDE):
        if name not in files:
            problems.append(f"{oneline(name)}: missing")
        elif name not in expected:
            problems.append(f"{oneline(name)}: added (not in the signed manifest)")
        else:
            actual = sha256_bytes(files[name])
            if not hmac.compare_digest(actual.encode(), expected[name].encode()):
                problems.append(f"{oneline(name)}: modified (sha256 {actual}, manifest {expected[name]})")
    return PackReport(files=len(expected), signers=verified.signers, problems=tuple(problems))


def verify_pack(path: Path, policy: Policy) -> PackReport:
    """A pack directory, or a pack archive (.tar.gz)."""
    if path.is_dir():
        return verify_files(read_directory(path), policy)
    if not path.is_file():
        raise Finding(f"{oneline(str(path))}: not found")
    data = path.read_bytes()
    return verify_archive(data, path.name, policy)


def verify_archive(data: bytes, what: str, policy: Policy) -> PackReport:
    files, _ = read_archive(data, oneline(what))
    report = verify_files(files, policy)
    # Name both the archive and the file inside it, so the operator knows where to look.
    problems = tuple(f"{oneline(what)}: {p}" for p in report.problems)
    return PackReport(report.files, report.signers, problems)

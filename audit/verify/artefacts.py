"""`audit verify`: one executable with its signatures, or a whole release directory.

Order of the checks: trust first, then meaning. Nothing in a statement is read before its signature
verified under the operator's policy, and every digest comparison is constant-time.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509

from audit.digest import sha256_bytes, sha256_file
from audit.errors import AuditError, Finding
from audit.sign.dsse import b64decode, parse_envelope
from audit.sign.names import (
    BUNDLE_SUFFIX,
    CHAIN_NAME,
    ENVELOPE_SUFFIX,
    PAYLOAD_TYPE_CYCLONEDX,
    PAYLOAD_TYPE_INTOTO,
    PROVENANCE_SUFFIX,
    SBOM_SUFFIX,
    SIGNATURE_SUFFIX,
    SUMS_NAME,
    bundle_name,
    envelope_name,
    signature_name,
)
from audit.verify import checksums
from audit.verify.evidence import Evidence, Verified
from audit.verify.policy import Policy
from audit.verify.provenance import Expectations, ProvenanceFacts, check_provenance, short
from audit.verify.report import SignatureCheck, VerifyReport


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise Finding(f"{path.name}: missing") from exc
    except OSError as exc:
        raise Finding(f"{path.name}: cannot read ({exc.strerror})") from exc


def load_chain(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path))
    except ValueError as exc:
        raise Finding(f"{path.name}: not PEM certificates") from exc
    return tuple(certs)


def _detached_signature(path: Path) -> bytes:
    # Exactly base64 (canonical) and one optional trailing newline: no other byte may vary.
    data = _read(path)
    body = data[:-1] if data.endswith(b"\n") else data
    if not body or not body.isascii() or b"\n" in body:
        raise Finding(f"{path.name}: not a base64 signature")
    return b64decode(body.decode("ascii"), path.name)


def payload_types_for(name: str) -> frozenset[str]:
    return frozenset({PAYLOAD_TYPE_CYCLONEDX if name.endswith(SBOM_SUFFIX) else PAYLOAD_TYPE_INTOTO})


def kind_of(path: Path) -> str:
    """`signature`, `envelope` or `bundle`, from the contract's suffixes (and sigstore-python's `.sigstore`)."""
    name = path.name
    if name.endswith((BUNDLE_SUFFIX, ".sigstore")):
        return "bundle"
    if name.endswith(ENVELOPE_SUFFIX):
        return "envelope"
    if name.endswith(SIGNATURE_SUFFIX):
        return "signature"
    raise AuditError(
        f"{name}: cannot tell what kind of signature this is", hint="name it .sig, .dsse.json or .sigstore.json"
    )


def gather(
    name: str,
    artefact: Path,
    signature_files: Mapping[Path, str] | Iterable[Path],
    chain: tuple[x509.Certificate, ...],
    payload_types: frozenset[str] = frozenset(),
) -> Evidence:
    """Read (not yet trust) every signature over one file; `signature_files` maps a path to its kind."""
    kinds = dict(signature_files) if isinstance(signature_files, Mapping) else {p: kind_of(p) for p in signature_files}
    signature = envelope = bundle = None
    sources = []
    for path, kind in kinds.items():
        sources.append(path.name)
        if kind == "bundle":
            bundle = _read(path)
        elif kind == "envelope":
            envelope = parse_envelope(_read(path), path.name)
        else:
            signature = _detached_signature(path)
    if not sources:
        raise Finding(f"{name}: no signature")
    digest = sha256_file(artefact) if artefact.is_file() else ""
    return Evidence(
        name=name,
        artefact=artefact,
        digest=digest,
        source=", ".join(sources),
        signature=signature,
        envelope=envelope,
        bundle=bundle,
        chain=chain,
        payload_types=payload_types,
    )


def verify_evidence(policy: Policy, evidence: Evidence, *, document: bool) -> Verified:
    """Apply the policy; for a document, a signed payload must be the document's exact bytes."""
    verified = policy.verify(evidence)
    if document and verified.payload is not None and evidence.digest:
        signed = sha256_bytes(verified.payload)
        if not hmac.compare_digest(signed.encode(), evidence.digest.encode()):
            raise Finding(
                f"{evidence.name}: sha256 {short(evidence.digest)} does not match the payload "
                f"signed in {evidence.source} ({short(signed)})"
            )
    return verified


def _existing(paths: Iterable[Path]) -> list[Path]:
    return [p for p in paths if p.is_file()]


def verify_artefact(
    executable: Path,
    policy: Policy,
    expect: Expectations,
    *,
    signature: Path | None = None,
    bundle: Path | None = None,
    provenance: Path | None = None,
    chain: Path | None = None,
) -> VerifyReport:
    """Verify one executable: its signature(s), then its provenance if given or found beside it."""
    # 1. The executable's digest (streamed).
    if not executable.is_file():
        raise Finding(f"{executable.name}: missing")
    digest = sha256_file(executable)
    directory = executable.parent
    # 2. Its signatures: those named, else the contract's names beside it (.sig, .sigstore.json).
    sig_files: dict[Path, str] = {}
    if signature is not None:
        sig_files[signature] = "signature"
    if bundle is not None:
        sig_files[bundle] = "bundle"
    if not sig_files:
        sig_files = {
            p: kind_of(p)
            for p in _existing([directory / signature_name(executable.name), directory / bundle_name(executable.name)])
        }
    if not sig_files:
        raise Finding(f"{executable.name}: no signature ({signature_name(executable.name)} or bundle) found")
    chain_path = chain or (directory / CHAIN_NAME if (directory / CHAIN_NAME).is_file() else None)
    certs = load_chain(chain_path) if chain_path else ()
    # 3. The signature verifies under the policy (which also fixes who signed).
    evidence = gather(executable.name, executable, sig_files, certs)
    verified = verify_evidence(policy, evidence, document=False)
    checks = [SignatureCheck(evidence.source, executable.name, verified.signers)]
    # 4. The provenance: named, or the contract's names beside the executable.
    statement_name = executable.name + PROVENANCE_SUFFIX
    prov_files = (
        [provenance]
        if provenance
        else _existing([directory / envelope_name(statement_name), directory / bundle_name(statement_name)])
    )
    facts: ProvenanceFacts | None = None
    if prov_files:
        facts, check = _verify_provenance(directory / statement_name, prov_files, certs, policy, digest, expect)
        checks.append(check)
    elif expect.constrains_provenance:
        raise Finding(f"{executable.name}: no provenance ({envelope_name(statement_name)}) to check expectations")
    return VerifyReport(expect.artefact, digest, policy.describe(), tuple(checks), facts)


def _verify_provenance(
    statement_path: Path,
    signature_files: list[Path],
    certs: tuple[x509.Certificate, ...],
    policy: Policy,
    digest: str,
    expect: Expectations,
) -> tuple[ProvenanceFacts, SignatureCheck]:
    # 5. The provenance signature verifies under the same policy; its payload is the statement (and equals
    #    the statement file when that file is present too).
    evidence = gather(statement_path.name, statement_path, signature_files, certs, frozenset({PAYLOAD_TYPE_INTOTO}))
    verified = verify_evidence(policy, evidence, document=True)
    payload = verified.payload if verified.payload is not None else _read(statement_path)
    # 6. Only now is the statement read: subject digest, builder, source.
    facts = check_provenance(payload, digest, expect, statement_path.name)
    return facts, SignatureCheck(evidence.source, statement_path.name, verified.signers)


def _subject_of(signature: str, files: set[str]) -> str:
    """The file a signature file covers, by the contract's names (see audit.sign.names)."""
    if signature.endswith(SIGNATURE_SUFFIX):
        candidates = [signature.removesuffix(SIGNATURE_SUFFIX)]
    else:
        stem = signature.removesuffix(ENVELOPE_SUFFIX).removesuffix(BUNDLE_SUFFIX)
        candidates = [stem + ".json", stem]
    found = [c for c in candidates if c in files]
    if len(found) != 1:
        raise Finding(f"{signature}: covers {candidates[0]}, which is {'missing' if not found else 'ambiguous'}")
    return found[0]


def verify_release(directory: Path, policy: Policy, expect: Expectations) -> VerifyReport:
    """Verify a release directory as `audit release` lays it out (see the contract's file names)."""
    # 1. Inventory: a release is a flat directory of regular files; anything else is unexplained.
    if not directory.is_dir():
        raise Finding(f"{directory}: not a directory")
    files: set[str] = set()
    for path in directory.iterdir():
        if path.is_symlink() or not path.is_file():
            raise Finding(f"{path.name}: not a regular file")
        files.add(path.name)
    certs = load_chain(directory / CHAIN_NAME) if CHAIN_NAME in files else ()
    # 2. The checksum statement verifies under the policy: it is the one signature that covers every file.
    sums_signatures = [n for n in (envelope_name(SUMS_NAME), bundle_name(SUMS_NAME)) if n in files]
    if not sums_signatures:
        raise Finding(f"{envelope_name(SUMS_NAME)}: missing")
    sums_path = directory / SUMS_NAME
    sums = _read(sums_path)
    evidence = gather(
        SUMS_NAME, sums_path, [directory / n for n in sums_signatures], certs, frozenset({PAYLOAD_TYPE_INTOTO})
    )
    verified = verify_evidence(policy, evidence, document=False)
    if verified.payload is None:
        raise Finding(f"{evidence.source}: does not carry the signed checksum statement")
    checks = [SignatureCheck(evidence.source, SUMS_NAME, verified.signers)]
    # 3. SHA256SUMS parses strictly, and its bytes and lines are exactly what the signed statement says.
    entries = checksums.parse_sums(sums)
    checksums.check_statement(verified.payload, sums, entries, evidence.source)
    # 4. Every other file is listed, every listed file is present, every digest matches.
    exempt = frozenset({SUMS_NAME, *sums_signatures})
    checksums.check_directory(directory, sorted(files), entries, exempt)
    # 5. Every other signature file verifies under the policy; the executable's and the provenance's must exist.
    exe = expect.artefact
    statement_name = exe + PROVENANCE_SUFFIX
    covered: dict[str, list[str]] = {}
    for name in sorted(files - exempt):
        if name.endswith((SIGNATURE_SUFFIX, ENVELOPE_SUFFIX, BUNDLE_SUFFIX)):
            covered.setdefault(_subject_of(name, files), []).append(name)
    for required in (exe, statement_name, *(n for n in files if n.endswith(SBOM_SUFFIX))):
        if required not in covered:
            raise Finding(f"{required}: {'missing' if required not in files else 'not signed'}")
    exe_digest = entries[exe]
    facts: ProvenanceFacts | None = None
    for subject in sorted(covered):
        sig_paths = [directory / n for n in covered[subject]]
        if subject == statement_name:
            facts, check = _verify_provenance(directory / subject, sig_paths, certs, policy, exe_digest, expect)
            checks.append(check)
            continue
        is_document = subject != exe
        types = payload_types_for(subject) if is_document else frozenset()
        evidence = gather(subject, directory / subject, sig_paths, certs, types)
        verified = verify_evidence(policy, evidence, document=is_document)
        checks.append(SignatureCheck(evidence.source, subject, verified.signers))
    if facts is None:  # unreachable: the provenance is required above; kept so the type is exact
        raise Finding(f"{statement_name}: not verified")
    return VerifyReport(exe, exe_digest, policy.describe(), tuple(checks), facts, tuple(sorted(entries)))

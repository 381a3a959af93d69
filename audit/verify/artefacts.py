"""`audit verify`: one executable with its signatures, or a whole release directory.

Order of the checks: trust first, then meaning. Nothing in a statement is read before its signature
verified under the operator's policy, and every digest comparison is constant-time. Every signature file
that is found is verified (or the answer is no): a report never lists a file that was not checked.
Names from the directory reach messages escaped (`oneline`), so a failure is always exactly one line.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509

from audit.digest import sha256_bytes
from audit.errors import AuditError, Finding
from audit.sign.dsse import b64decode, parse_envelope
from audit.sign.names import (
    BUNDLE_SUFFIX,
    CHAIN_NAME,
    ENVELOPE_SUFFIX,
    EXECUTABLE_NAME,
    PAYLOAD_TYPE_CYCLONEDX,
    PAYLOAD_TYPE_INTOTO,
    PROVENANCE_SUFFIX,
    SBOM_SUFFIX,
    SIGNATURE_SUFFIX,
    SUMS_NAME,
    bundle_name,
    envelope_name,
    is_release_file_name,
    signature_name,
)
from audit.verify import checksums
from audit.verify.checksums import file_digest
from audit.verify.evidence import Evidence, Verified
from audit.verify.oneline import oneline
from audit.verify.policy import Policy
from audit.verify.provenance import Expectations, ProvenanceFacts, check_provenance
from audit.verify.report import SignatureCheck, VerifyReport


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise Finding(f"{oneline(path.name)}: missing") from exc
    except OSError as exc:
        raise Finding(f"{oneline(path.name)}: cannot read ({exc.strerror})") from exc


def load_chain(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path))
    except ValueError as exc:
        raise Finding(f"{oneline(path.name)}: not PEM certificates") from exc
    return tuple(certs)


def _detached_signature(path: Path) -> bytes:
    # Exactly base64 (canonical) and one optional trailing newline: no other byte may vary.
    data = _read(path)
    body = data[:-1] if data.endswith(b"\n") else data
    if not body or not body.isascii() or b"\n" in body:
        raise Finding(f"{oneline(path.name)}: not a base64 signature")
    return b64decode(body.decode("ascii"), oneline(path.name))


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
        f"{oneline(name)}: cannot tell what kind of signature this is",
        hint="name it .sig, .dsse.json or .sigstore.json",
    )


def gather(
    name: str,
    artefact: Path,
    signature_files: Mapping[Path, str] | Iterable[Path],
    chain: tuple[x509.Certificate, ...],
    payload_types: frozenset[str] = frozenset(),
) -> Evidence:
    """Read (not yet trust) every signature over one file; `signature_files` maps a path to its kind.

    At most one file of each kind: a second one could not be checked alongside the first, and an unchecked
    signature file must never be reported as checked.
    """
    kinds = dict(signature_files) if isinstance(signature_files, Mapping) else {p: kind_of(p) for p in signature_files}
    signature = envelope = bundle = None
    sources: dict[str, str] = {}
    for path, kind in kinds.items():
        shown = oneline(path.name)
        if kind in sources:
            raise Finding(f"{oneline(name)}: two {kind} files ({sources[kind]}, {shown}); only one can be checked")
        sources[kind] = shown
        if kind == "bundle":
            bundle = _read(path)
        elif kind == "envelope":
            envelope = parse_envelope(_read(path), shown)
        else:
            signature = _detached_signature(path)
    if not sources:
        raise Finding(f"{oneline(name)}: no signature")
    digest = file_digest(artefact) if artefact.is_file() else ""
    return Evidence(
        name=oneline(name),
        artefact=artefact,
        digest=digest,
        source=", ".join(sources.values()),
        signature=signature,
        envelope=envelope,
        bundle=bundle,
        chain=chain,
        payload_types=payload_types,
        signature_source=sources.get("signature", ""),
        envelope_source=sources.get("envelope", ""),
        bundle_source=sources.get("bundle", ""),
    )


def verify_evidence(policy: Policy, evidence: Evidence, *, document: bool) -> Verified:
    """Apply the policy; every signature file must have been checked by it; a signed payload must be the
    document's exact bytes."""
    # 1. The policy decides who signed (and raises a one-line Finding if nobody it trusts did).
    verified = policy.verify(evidence)
    # 2. Every signature file found must have been verified: a file the policy cannot check (a Sigstore bundle
    #    under a keys policy, say) is refused by name, never listed as "checked".
    unchecked = [s for s in evidence.sources if s not in verified.files]
    if unchecked:
        raise Finding(f"{unchecked[0]}: not verified by the trust policy (remove it, or trust its signer too)")
    # 3. For a document, the signed payload is the document's exact bytes (constant-time).
    if document and verified.payload is not None and evidence.digest:
        signed = sha256_bytes(verified.payload)
        if not hmac.compare_digest(signed.encode(), evidence.digest.encode()):
            raise Finding(
                f"{evidence.name}: sha256 {evidence.digest} does not match the payload "
                f"signed in {evidence.source} ({signed})"
            )
    return verified


def is_edgeward_executable(path: Path) -> bool:
    """The contract's executable: named `edgeward`, or any ELF file (a renamed build is still the build)."""
    if path.name == EXECUTABLE_NAME:
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError as exc:
        raise Finding(f"{oneline(path.name)}: cannot read ({exc.strerror})") from exc


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
    no_provenance_unsafe: bool = False,
) -> VerifyReport:
    """Verify one file: its signatures, then its provenance.

    Provenance is required for the edgeward executable (see `is_edgeward_executable`): a signature alone
    says "the release key signed this once", so without the provenance's subject, builder and commit any
    older signed build would verify too (a rollback). Only `no_provenance_unsafe` waives that. Any other file
    (a Sigstore test vector, a tool) is a plain signature check unless provenance is given or expected.
    """
    # 1. The file's digest (streamed).
    if not executable.is_file():
        raise Finding(f"{oneline(executable.name)}: missing")
    digest = file_digest(executable)
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
        name = oneline(executable.name)
        raise Finding(f"{name}: no signature ({oneline(signature_name(executable.name))} or bundle) found")
    chain_path = chain or (directory / CHAIN_NAME if (directory / CHAIN_NAME).is_file() else None)
    certs = load_chain(chain_path) if chain_path else ()
    # 3. The signature verifies under the policy (which also fixes who signed).
    evidence = gather(executable.name, executable, sig_files, certs)
    verified = verify_evidence(policy, evidence, document=False)
    checks = [SignatureCheck(", ".join(verified.files), evidence.name, verified.signers)]
    # 4. The provenance: named, or the contract's names beside the executable; required for the edgeward
    #    executable unless the operator waived it by name (--no-provenance-unsafe).
    statement_name = executable.name + PROVENANCE_SUFFIX
    prov_files = (
        [provenance]
        if provenance
        else _existing([directory / envelope_name(statement_name), directory / bundle_name(statement_name)])
    )
    facts: ProvenanceFacts | None = None
    skipped = ""
    if no_provenance_unsafe:
        if expect.constrains_provenance or provenance is not None:
            raise AuditError("--no-provenance-unsafe contradicts --provenance, --builder-id and --source-*")
        skipped = "not checked (--no-provenance-unsafe): any older signed build would also verify"
    elif prov_files:
        facts, check = _verify_provenance(directory / statement_name, prov_files, certs, policy, digest, expect)
        checks.append(check)
    elif expect.constrains_provenance or is_edgeward_executable(executable):
        where = oneline(envelope_name(statement_name))
        raise Finding(f"{oneline(executable.name)}: no provenance ({where}) found; it is required for the executable")
    else:
        skipped = "not applicable (not the edgeward executable: signature and digest only)"
    return VerifyReport(expect.artefact, digest, policy.describe(), tuple(checks), facts, provenance_note=skipped)


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
    payload = verified.payload
    if payload is None:
        # Signed by digest (detached or message signature): the statement is the file whose digest verified,
        # so the bytes read now must still have that digest.
        payload = _read(statement_path)
        if not hmac.compare_digest(sha256_bytes(payload).encode(), evidence.digest.encode()):
            raise Finding(f"{evidence.name}: changed while it was being verified")
    # 6. Only now is the statement read: subject digest, builder, source.
    facts = check_provenance(payload, digest, expect, evidence.name)
    return facts, SignatureCheck(", ".join(verified.files), evidence.name, verified.signers)


def _subject_of(signature: str, files: set[str]) -> str:
    """The file a signature file covers, by the contract's names (see audit.sign.names)."""
    if signature.endswith(SIGNATURE_SUFFIX):
        candidates = [signature.removesuffix(SIGNATURE_SUFFIX)]
    else:
        stem = signature.removesuffix(ENVELOPE_SUFFIX).removesuffix(BUNDLE_SUFFIX)
        candidates = [stem + ".json", stem]
    found = [c for c in candidates if c in files]
    if len(found) != 1:
        state = "missing" if not found else "ambiguous"
        raise Finding(f"{oneline(signature)}: covers {oneline(candidates[0])}, which is {state}")
    return found[0]


def verify_release(directory: Path, policy: Policy, expect: Expectations) -> VerifyReport:
    """Verify a release directory as `audit release` lays it out (see the contract's file names)."""
    # 1. Inventory: a release is a flat directory of regular files; anything else is unexplained.
    #    Names follow the signer's rule (audit.sign.names), so none can break a message or a SHA256SUMS line.
    if not directory.is_dir():
        raise Finding(f"{oneline(str(directory))}: not a directory")
    files: set[str] = set()
    try:
        paths = sorted(directory.iterdir())
    except OSError as exc:
        raise Finding(f"{oneline(str(directory))}: cannot list ({exc.strerror})") from exc
    for path in paths:
        if path.is_symlink() or not path.is_file():
            raise Finding(f"{oneline(path.name)}: not a regular file")
        if not is_release_file_name(path.name):
            raise Finding(f"{oneline(path.name)}: not a release file name (letters, digits, . _ + - only)")
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
    checks = [SignatureCheck(", ".join(verified.files), SUMS_NAME, verified.signers)]
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
        checks.append(SignatureCheck(", ".join(verified.files), subject, verified.signers))
    if facts is None:  # unreachable: the provenance is required above; kept so the type is exact
        raise Finding(f"{statement_name}: not verified")
    return VerifyReport(exe, exe_digest, policy.describe(), tuple(checks), facts, tuple(sorted(entries)))

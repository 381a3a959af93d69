"""`audit verify`: check an executable (or a release directory) against the operator's trust policy."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from audit.errors import AuditError, Finding
from audit.verify.oneline import oneline

if TYPE_CHECKING:
    from audit.verify.policy import Policy

HELP = "verify an executable's signature, digest and provenance (or a whole release directory)"

EXAMPLES = """examples:
  audit verify dist/edgeward --key release.pub --builder-id https://ci.example/edgeward \\
      --source-repo https://git.example/edgeward --source-commit 0123456789abcdef0123456789abcdef01234567
  audit verify --release dist/ --key release.pub --json
  audit verify --release dist/ --ca corp-ca.pem --cert-identity release@bank.example
  audit verify app.txt --bundle app.txt.sigstore.json --sigstore-identity you@example.com \\
      --sigstore-issuer https://github.com/login/oauth --staging --offline

trust policy (every kind given must hold; an empty policy denies):
  --key PUB (repeatable; --threshold N distinct keys for DSSE envelopes)
  --ca CA.pem --cert-identity ID (an email matches SAN emails only, a URI ("://") SAN URIs only;
      codeSigning EKU on the leaf, and on every CA certificate that has an EKU; valid --at or now)
  --sigstore-identity ID --sigstore-issuer URL [--staging] [--offline | --trusted-root FILE]
      --offline uses the trust root embedded in the installed sigstore package, never the user's cache

every signature file found (FILE.sig, FILE.sigstore.json, *.dsse.json, ...) must verify under the policy,
or the answer is no: a signature the policy cannot check is refused by name, never listed as checked.

provenance: FILE named edgeward, or any ELF executable, must come with signed provenance
(FILE.intoto.dsse.json or FILE.intoto.sigstore.json, or --provenance); without it any older signed build
would verify (a rollback). --no-provenance-unsafe waives that. Any other file (e.g. a Sigstore test
vector) is a plain signature check unless --provenance or --builder-id/--source-* is given.

exit status: 0 verified, 1 one line naming what did not match, 2 usage or input error.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", type=Path, help="the executable (omit with --release)")
    parser.add_argument("--release", type=Path, metavar="DIR", help="verify a release directory, SHA256SUMS included")
    found = parser.add_argument_group("signatures (default: the contract's names beside FILE)")
    found.add_argument("--signature", type=Path, metavar="SIG", help="detached signature (FILE.sig)")
    found.add_argument("--bundle", type=Path, metavar="BUNDLE", help="Sigstore bundle over FILE")
    found.add_argument("--provenance", type=Path, metavar="ENV", help="signed provenance (.dsse.json or bundle)")
    found.add_argument("--chain", type=Path, metavar="PEM", help="signing-chain.pem for --ca")
    trust = parser.add_argument_group("trust policy")
    trust.add_argument("--key", type=Path, action="append", default=[], metavar="PUB", help="trusted public key")
    trust.add_argument("--threshold", type=int, default=1, help="distinct trusted keys needed (default 1)")
    trust.add_argument("--ca", type=Path, metavar="CA.pem", help="trusted CA certificate(s)")
    trust.add_argument("--cert-identity", metavar="ID", help="expected SAN email or URI of the signing certificate")
    trust.add_argument("--at", metavar="RFC3339", help="check certificate validity at this time (default now)")
    trust.add_argument("--sigstore-identity", metavar="ID", help="expected Sigstore certificate identity")
    trust.add_argument("--sigstore-issuer", metavar="URL", help="expected OIDC issuer of that identity")
    trust.add_argument("--staging", action="store_true", help="Sigstore staging instead of production")
    trust.add_argument(
        "--offline", action="store_true", help="Sigstore: the trust root embedded in the sigstore package, no network"
    )
    trust.add_argument(
        "--trusted-root", type=Path, metavar="FILE", help="Sigstore: pin this trusted_root.json (implies --offline)"
    )
    expect = parser.add_argument_group("provenance expectations")
    expect.add_argument("--builder-id", help="expected runDetails.builder.id")
    expect.add_argument("--source-repo", help="expected source repository URL")
    expect.add_argument("--source-commit", help="expected source commit")
    expect.add_argument("--subject", help="provenance subject name (default: edgeward, or FILE's name)")
    expect.add_argument(
        "--no-provenance-unsafe",
        action="store_true",
        help="accept the executable on its signature alone (unsafe: any older signed build verifies too)",
    )
    parser.add_argument("--json", action="store_true", help="print a machine report on stdout")


def _when(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise AuditError(f"--at {text}: not an RFC 3339 time") from exc
    if when.tzinfo is None:
        raise AuditError(f"--at {text}: needs a timezone", hint="e.g. 2025-01-31T12:00:00Z")
    return when


def build_policy(args: argparse.Namespace) -> Policy:
    """Every kind of trust the operator named must hold (AllOf); naming none is a usage error."""
    from audit.verify.keys import TrustedKeys
    from audit.verify.policy import AllOf
    from audit.verify.sigstore_identity import SigstoreIdentity
    from audit.verify.x509 import CertificateIdentity

    parts: list[Policy] = []
    if args.key:
        parts.append(TrustedKeys.from_files(args.key, threshold=args.threshold))
    if args.ca or args.cert_identity:
        if not (args.ca and args.cert_identity):
            raise AuditError("--ca and --cert-identity go together")
        parts.append(CertificateIdentity.from_files(args.ca, args.cert_identity, at=_when(args.at)))
    elif args.at:
        raise AuditError("--at only applies with --ca")
    if args.sigstore_identity or args.sigstore_issuer:
        parts.append(
            SigstoreIdentity(
                args.sigstore_identity,
                args.sigstore_issuer,
                staging=args.staging,
                offline=args.offline,
                trusted_root=args.trusted_root,
            )
        )
    elif args.staging or args.offline or args.trusted_root:
        raise AuditError("--staging, --offline and --trusted-root only apply with --sigstore-identity")
    if not parts:
        raise AuditError(
            "no trust policy", hint="pass --key PUB, or --ca CA.pem --cert-identity ID, or --sigstore-identity/-issuer"
        )
    return parts[0] if len(parts) == 1 else AllOf(parts)


def run(args: argparse.Namespace) -> int:
    from audit.verify.artefacts import verify_artefact, verify_release
    from audit.verify.provenance import Expectations

    if (args.file is None) == (args.release is None):
        raise AuditError("give either FILE or --release DIR")
    if args.release and (args.signature or args.bundle or args.provenance or args.chain):
        raise AuditError("--release finds signatures by their contract names; drop --signature/--bundle/--provenance")
    if args.release and args.no_provenance_unsafe:
        raise AuditError("--no-provenance-unsafe does not apply to --release: a release always carries provenance")
    policy = build_policy(args)
    subject = args.subject or (args.file.name if args.file else "edgeward")
    expect = Expectations(
        artefact=subject, builder_id=args.builder_id, source_repo=args.source_repo, source_commit=args.source_commit
    )
    try:
        if args.release:
            report = verify_release(args.release, policy, expect)
        else:
            report = verify_artefact(
                args.file,
                policy,
                expect,
                signature=args.signature,
                bundle=args.bundle,
                provenance=args.provenance,
                chain=args.chain,
                no_provenance_unsafe=args.no_provenance_unsafe,
            )
    except Finding as exc:
        # The last line of defence for the one-line answer: messages are escaped where they are made, and
        # once more here, so no text from the release can add a line (or a forged "OK") to the output.
        raise Finding(f"FAIL: {oneline(str(exc), escape_backslash=False)}") from exc
    except AuditError as exc:
        raise AuditError(
            oneline(str(exc), escape_backslash=False), hint=oneline(exc.hint, escape_backslash=False)
        ) from exc
    print(report.summary(), file=sys.stderr)
    if args.json:
        sys.stdout.write(report.to_json())
    return 0

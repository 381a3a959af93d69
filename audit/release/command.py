"""`audit release`: the command-line face of audit.release.assemble."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HELP = "produce a signed release directory: executable, SBOM, scan, provenance, signatures, SHA256SUMS, summary"
EXAMPLES = """examples:
  audit release --output release/0.1.0 --key release.pem --key-passphrase-env RELEASE_KEY_PASS --advisories osv/
  audit release --output rel/ --key signer.key --cert signer.pem --chain intermediates.pem --advisories osv/
  audit release --output rel/ --sigstore --online                 keyless, with a network and an OIDC token

Takes the executable `audit build` made (default dist/edgeward, with its .build.json and
.nuitka-report.xml), then: SBOM, vulnerability scan (offline with --advisories; the gate stops an
unsafe release before anything is signed), provenance, SUMMARY.md, signatures, SHA256SUMS and its
signed statement, and finally verifies the directory the way `audit verify --release` will.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executable", type=Path, default=Path("dist/edgeward"), help="default: dist/edgeward")
    parser.add_argument("--output", type=Path, required=True, help="a new (or empty) directory for the release")
    parser.add_argument("--lock", type=Path, default=Path("requirements.lock"), help="the build's lock file")
    signing = parser.add_argument_group("signing (one of: a key, a key with an X.509 certificate, Sigstore)")
    signing.add_argument("--key", type=Path, help="ECDSA P-256 or Ed25519 private key (PEM)")
    signing.add_argument("--key-passphrase-env", metavar="NAME", help="environment variable holding the passphrase")
    signing.add_argument("--cert", type=Path, help="the signing certificate for --key, from your own CA")
    signing.add_argument("--chain", type=Path, help="intermediate certificates up to (not including) your root")
    signing.add_argument("--sigstore", action="store_true", help="sign keyless with Sigstore (needs network + OIDC)")
    signing.add_argument("--identity-token", help="OIDC token for --sigstore (default: $SIGSTORE_IDENTITY_TOKEN)")
    signing.add_argument("--staging", action="store_true", help="use Sigstore's staging instance")
    scanning = parser.add_argument_group("scan")
    scanning.add_argument("--advisories", type=Path, metavar="DIR", help="offline OSV advisory directory")
    scanning.add_argument("--online", action="store_true", help="scan online even with --advisories")
    scanning.add_argument("--vex", type=Path, action="append", default=[], metavar="FILE", help="VEX (repeatable)")
    scanning.add_argument("--fail-on", choices=("low", "medium", "high", "critical"), default="high")


def _verify_hint(args: argparse.Namespace, name: str, builder_id: str, repo: str, commit: str) -> str:
    trust = "--sigstore-identity ID --sigstore-issuer URL" if args.sigstore else "--key release.pub"
    if args.cert:
        trust = "--ca your-root-ca.pem --cert-identity ID"
    parts = ["audit verify --release .", trust, f"--builder-id {shlex.quote(builder_id)}"]
    parts.append(f"--source-repo {shlex.quote(repo)}")
    if commit:
        parts.append(f"--source-commit {commit}")
    return " \\\n  ".join(parts) + f"\n./{name} version   # prints the same sha256"


def run(args: argparse.Namespace) -> int:
    from audit.buildinfo import build_info_path, load_build_info
    from audit.progress import Progress
    from audit.release.assemble import STEPS, ScanOptions, make_release
    from audit.scan.command import NATIVE_PURL_TYPES
    from audit.sign import load_signer

    info = load_build_info(build_info_path(args.executable))
    signer = load_signer(
        key=args.key,
        passphrase_env=args.key_passphrase_env,
        cert=args.cert,
        chain=args.chain,
        sigstore=args.sigstore,
        identity_token=args.identity_token,
        staging=args.staging,
    )
    scan = ScanOptions(
        advisories=args.advisories,
        vex=args.vex,
        fail_on=args.fail_on,
        online=True if args.online else None,
        out_of_scope=NATIVE_PURL_TYPES,
    )
    hint = _verify_hint(args, info.executable, info.builder_id, info.source_repository, info.source_commit)
    with signer:
        release = make_release(
            args.executable,
            args.output,
            lock=args.lock,
            signer=signer,
            scan=scan,
            progress=Progress(STEPS),
            verify_hint=hint,
        )
    print(f"{release.directory}: {len(release.files)} files; {release.verified}", file=sys.stderr)
    return 0

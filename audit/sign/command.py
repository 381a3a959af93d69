"""`audit sign`: sign the executable, its provenance and SBOM; or generate a release key."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from audit.errors import AuditError

HELP = "sign the executable (detached signature) and its provenance and SBOM (DSSE), or generate a key"

EXAMPLES = """examples:
  audit sign --generate-key ed25519 --output release.pem --key-passphrase-env RELEASE_KEY_PASS
  RELEASE_KEY_PASS=... audit sign dist/edgeward --key release.pem --key-passphrase-env RELEASE_KEY_PASS
  audit sign dist/edgeward --key signer.key.pem --cert signer.pem --chain intermediates.pem
  audit sign dist/edgeward --sigstore                   keyless, OIDC token detected in CI
  audit sign dist/edgeward --key release.pem --checksums  also SHA256SUMS + SHA256SUMS.dsse.json over dist/

writes beside FILE (see the release contract):
  keys / X.509:  FILE.sig, FILE.intoto.dsse.json, FILE.cdx.dsse.json (+ signing-chain.pem with --cert)
  --sigstore:    FILE.sigstore.json, FILE.intoto.sigstore.json, FILE.cdx.sigstore.json
The passphrase is read from the environment variable named by --key-passphrase-env, never from argv.
--sigstore needs the network (Fulcio, Rekor) and an OIDC token: ambient CI credentials, --identity-token,
or SIGSTORE_IDENTITY_TOKEN (prefer the variable: argv is visible to other users).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", type=Path, help="the executable to sign")
    keys = parser.add_argument_group("offline keys")
    keys.add_argument("--key", type=Path, metavar="KEY.pem", help="Ed25519 or ECDSA P-256 PEM private key")
    keys.add_argument("--key-passphrase-env", metavar="NAME", help="environment variable holding the passphrase")
    keys.add_argument("--cert", type=Path, metavar="LEAF.pem", help="signing certificate (codeSigning EKU)")
    keys.add_argument("--chain", type=Path, metavar="PEM", help="intermediate certificates up to your CA")
    keyless = parser.add_argument_group("Sigstore keyless (online)")
    keyless.add_argument("--sigstore", action="store_true", help="sign keyless with Sigstore (Fulcio + Rekor)")
    keyless.add_argument(
        "--identity-token",
        metavar="TOKEN",
        default=os.environ.get("SIGSTORE_IDENTITY_TOKEN"),
        help="OIDC token (default: $SIGSTORE_IDENTITY_TOKEN, then ambient detection)",
    )
    keyless.add_argument("--staging", action="store_true", help="use Sigstore's staging instance")
    what = parser.add_argument_group("what to sign")
    what.add_argument("--provenance", type=Path, help="provenance statement (default FILE.intoto.json if present)")
    what.add_argument("--sbom", type=Path, help="CycloneDX SBOM (default FILE.cdx.json if present)")
    what.add_argument("--checksums", action="store_true", help="then write and sign SHA256SUMS over FILE's directory")
    gen = parser.add_argument_group("key generation")
    gen.add_argument("--generate-key", choices=("ed25519", "ecdsa-p256"), help="write a new key pair and exit")
    gen.add_argument("--output", type=Path, metavar="KEY.pem", help="private key path; KEY.pub is written beside it")
    gen.add_argument("--unencrypted-key-unsafe", action="store_true", help="write the private key unencrypted")
    parser.add_argument("--json", action="store_true", help="print the written files as JSON on stdout")


def _generate(args: argparse.Namespace) -> list[Path]:
    from audit.sign.keygen import generate_key
    from audit.sign.load import passphrase_from_env

    if args.output is None or args.file is not None:
        raise AuditError("--generate-key takes --output KEY.pem and no FILE")
    passphrase = passphrase_from_env(args.key_passphrase_env)
    if passphrase is not None and args.unencrypted_key_unsafe:
        raise AuditError("--unencrypted-key-unsafe contradicts --key-passphrase-env")
    unsafe = args.unencrypted_key_unsafe
    return list(generate_key(args.generate_key, args.output, passphrase=passphrase, unencrypted_unsafe=unsafe))


def _sign(args: argparse.Namespace) -> list[Path]:
    from audit.sign.load import load_signer
    from audit.sign.names import PAYLOAD_TYPE_CYCLONEDX, PAYLOAD_TYPE_INTOTO
    from audit.sign.release import default_statements, sign_release_files, write_checksums

    if args.file is None:
        raise AuditError("no file to sign", hint="audit sign dist/edgeward --key release.pem")
    if args.output or args.unencrypted_key_unsafe:
        raise AuditError("--output and --unencrypted-key-unsafe only apply with --generate-key")
    if not args.file.is_file():
        raise AuditError(f"{args.file}: not a file")
    statements = default_statements(args.file)
    if args.provenance:
        statements = {p: t for p, t in statements.items() if t != PAYLOAD_TYPE_INTOTO}
        statements[args.provenance] = PAYLOAD_TYPE_INTOTO
    if args.sbom:
        statements = {p: t for p, t in statements.items() if t != PAYLOAD_TYPE_CYCLONEDX}
        statements[args.sbom] = PAYLOAD_TYPE_CYCLONEDX
    with load_signer(
        key=args.key,
        passphrase_env=args.key_passphrase_env,
        cert=args.cert,
        chain=args.chain,
        sigstore=args.sigstore,
        identity_token=args.identity_token if args.sigstore else None,
        staging=args.staging,
    ) as signer:
        written = sign_release_files(args.file, statements, signer)
        if args.checksums:
            written += write_checksums(args.file.parent, signer)
        print(f"audit sign: signed as {signer.description}", file=sys.stderr)
    return written


def run(args: argparse.Namespace) -> int:
    written = _generate(args) if args.generate_key else _sign(args)
    for path in written:
        print(f"  wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps({"written": [str(p) for p in written]}, indent=2))
    return 0

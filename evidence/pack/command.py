"""`evidence pack RELEASE_DIR`: CLI shell around evidence.pack.assemble; the work is imported inside run()."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "assemble a signed DORA evidence pack (directory, index.html, pack.json, deterministic archive) from a release"
EXAMPLES = """examples:
  evidence pack release/0.1.0 --key release.pem --verify-key release.pub --output pack/ \\
      --archive edgeward-0.1.0-evidence.tar.gz --config edge.toml --tls-assess --junit junit.xml \\
      --reproducible repro.json --bench bench/results --previous-tag v0.0.9 --source . --asset asset.toml
  evidence pack release/ --key k.pem --cert k.crt --chain inter.pem --ca root.pem \\
      --cert-identity release@bank.example --output pack/

Every piece of evidence not given (config, junit, reproducible, bench, previous tag, asset facts, TLS,
trail) is listed as a gap in the article map and the index. The release is verified first with the
operator policy (--verify-key, or --ca/--cert-identity); a failure stops the pack (exit 1).
The pack's time is SOURCE_DATE_EPOCH, or the build's finishedOn.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("release", type=Path, metavar="RELEASE_DIR", help="a directory `audit release` made")
    parser.add_argument("--output", type=Path, help="write the pack directory here (new or empty)")
    parser.add_argument("--archive", type=Path, metavar="FILE.tar.gz", help="write the deterministic archive here")
    given = parser.add_argument_group("evidence (each one missing is a gap)")
    given.add_argument("--config", type=Path, help="the release config (TOML); secrets are redacted")
    given.add_argument("--junit", type=Path, help="JUnit XML of the suite run against this build")
    given.add_argument("--reproducible", type=Path, help="report JSON of `reproducible check`")
    given.add_argument("--bench", type=Path, metavar="DIR", help="bench results directory (*.json)")
    given.add_argument("--previous-tag", metavar="TAG", help="git tag of the previous release")
    given.add_argument("--source", type=Path, default=Path("."), help="git checkout for --previous-tag (default .)")
    given.add_argument("--asset", type=Path, help="TOML: owner, location, classification, business_functions, "
                       "end_of_support")  # fmt: skip
    given.add_argument("--trail", type=Path, action="append", default=[], metavar="PATH", help="span/audit files")
    tls = parser.add_argument_group("TLS assessment")
    tls.add_argument("--tls-assess", action="store_true", help="run the executable on --config and scan it")
    tls.add_argument("--tls-report", type=Path, metavar="FILE", help="a tls-assessment.json made earlier instead")
    tls.add_argument("--tls-ca", type=Path, metavar="PEM", help="CA to validate the served chain against")
    tls.add_argument("--client-cert", type=Path, help="client certificate for mTLS listeners")
    tls.add_argument("--client-key", type=Path, help="its key (unencrypted PEM)")
    signing = parser.add_argument_group("signing the manifest (as for `audit release`)")
    signing.add_argument("--key", type=Path, help="ECDSA P-256 or Ed25519 private key (PEM)")
    signing.add_argument("--key-passphrase-env", metavar="NAME", help="environment variable holding the passphrase")
    signing.add_argument("--cert", type=Path, help="the signing certificate for --key")
    signing.add_argument("--chain", type=Path, help="intermediate certificates")
    policy = parser.add_argument_group("verifying the release first (the operator's policy)")
    policy.add_argument("--verify-key", type=Path, action="append", default=[], metavar="PUB")
    policy.add_argument("--ca", type=Path, metavar="CA.pem")
    policy.add_argument("--cert-identity", metavar="ID")


def run(args: argparse.Namespace) -> int:
    from audit.errors import AuditError
    from audit.sign import load_signer
    from audit.verify.command import build_policy
    from evidence.pack.assemble import PackInputs, build_pack, write_directory

    if args.output is None and args.archive is None:
        raise AuditError("nothing to write", hint="pass --output DIR and/or --archive FILE.tar.gz")
    if args.tls_assess and args.tls_report:
        raise AuditError("--tls-assess and --tls-report exclude each other")
    if bool(args.client_cert) != bool(args.client_key):
        raise AuditError("--client-cert and --client-key go together")
    if not (args.release / "edgeward.build.json").is_file():
        raise AuditError(f"{args.release}: not a release directory (no edgeward.build.json)")
    policy_args = argparse.Namespace(
        key=args.verify_key, threshold=1, ca=args.ca, cert_identity=args.cert_identity, at=None,
        sigstore_identity=None, sigstore_issuer=None, staging=False, offline=False, trusted_root=None,
    )  # fmt: skip
    policy = build_policy(policy_args)
    inputs = PackInputs(
        release=args.release, policy=policy, config=args.config, junit=args.junit, reproducible=args.reproducible,
        bench=args.bench, previous_tag=args.previous_tag, source=args.source, asset=args.asset,
        trail=tuple(args.trail), tls_assess=args.tls_assess, tls_report=args.tls_report, tls_ca=args.tls_ca,
        client_cert=args.client_cert, client_key=args.client_key, root=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    started = time.monotonic()

    def step(text: str) -> None:
        print(f"evidence pack: {text} ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)

    signer = load_signer(key=args.key, passphrase_env=args.key_passphrase_env, cert=args.cert, chain=args.chain)
    with signer:
        pack = build_pack(inputs, signer, step)
    if args.output is not None:
        write_directory(pack.files, args.output)
    if args.archive is not None:
        from audit.files import write_atomic

        write_atomic(args.archive, pack.archive())
    gaps = pack.info["gaps"]
    step(f"{len(pack.files)} files, {len(gaps)} gaps; wrote " + " and ".join(
        str(p) for p in (args.output, args.archive) if p is not None))  # fmt: skip
    return 0

"""`evidence verify PACK`: check an evidence pack's signature, then every digest, and that nothing was added."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "verify an evidence pack (directory or .tar.gz): signature, every file's digest, nothing added or missing"
EXAMPLES = """examples:
  evidence verify pack/ --key release.pub
  evidence verify edgeward-0.1.0-evidence.tar.gz --key release.pub
  evidence verify pack/ --ca corp-ca.pem --cert-identity release@bank.example

exit status: 0 verified; 1 a signature that does not verify, or one line per file that was modified,
added or removed (each naming the file); 2 usage or input error
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pack", type=Path, metavar="PACK", help="pack directory or archive")
    trust = parser.add_argument_group("trust policy (as for `audit verify`; an empty policy denies)")
    trust.add_argument("--key", type=Path, action="append", default=[], metavar="PUB", help="trusted public key")
    trust.add_argument("--threshold", type=int, default=1, help="distinct trusted keys needed (default 1)")
    trust.add_argument("--ca", type=Path, metavar="CA.pem", help="trusted CA certificate(s)")
    trust.add_argument("--cert-identity", metavar="ID", help="expected SAN email or URI of the signing certificate")
    trust.add_argument("--at", metavar="RFC3339", help="check certificate validity at this time (default now)")
    trust.add_argument("--sigstore-identity", metavar="ID", help="expected Sigstore certificate identity")
    trust.add_argument("--sigstore-issuer", metavar="URL", help="expected OIDC issuer of that identity")
    trust.add_argument("--staging", action="store_true", help="Sigstore staging instead of production")
    trust.add_argument("--offline", action="store_true", help="Sigstore: the embedded trust root, no network")
    trust.add_argument("--trusted-root", type=Path, metavar="FILE", help="Sigstore: pin this trusted_root.json")


def run(args: argparse.Namespace) -> int:
    from audit.errors import Finding
    from audit.verify.command import build_policy
    from evidence.verify.check import verify_pack

    policy = build_policy(args)
    try:
        report = verify_pack(args.pack, policy)
    except Finding as exc:
        raise Finding(f"FAIL: {exc}") from exc
    if not report.ok:
        for line in report.problems:
            print(f"FAIL: {line}", file=sys.stderr)
        return 1
    print(f"evidence verify: OK: {report.files} files match the signed manifest; signed by {', '.join(report.signers)}",
          file=sys.stderr)  # fmt: skip
    return 0

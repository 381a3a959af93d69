"""Run sslyze (in its own environment) against loopback listeners and reduce its JSON to the facts we keep.

sslyze's raw output (hundreds of KiB: every rejected suite, ephemeral keys, every trust store's verdict)
is reduced to what an auditor reads: versions accepted, suites per version, key exchange groups, the
certificate chain (subject, issuer, validity, key type, SHA-256 fingerprint) and the client certificate
requirement. `parse_scan` is pure, so it is tested on a recorded fragment without a network.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audit.errors import AuditError

VERSIONS = (
    ("ssl_2_0_cipher_suites", "SSL 2.0"),
    ("ssl_3_0_cipher_suites", "SSL 3.0"),
    ("tls_1_0_cipher_suites", "TLS 1.0"),
    ("tls_1_1_cipher_suites", "TLS 1.1"),
    ("tls_1_2_cipher_suites", "TLS 1.2"),
    ("tls_1_3_cipher_suites", "TLS 1.3"),
)
COMMANDS = ("--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3", "--certinfo", "--elliptic_curves")


def run_sslyze(
    python: Path,
    targets: list[str],
    *,
    ca: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    timeout: float = 240,
) -> dict[str, Any]:
    # JSON goes to a file: with --quiet, sslyze 6 prints nothing for `--json_out=-`.
    out = Path(tempfile.mkdtemp(prefix="edgeward-sslyze-")) / "scan.json"
    argv = [str(python), "-m", "sslyze", f"--json_out={out}", "--quiet", "--mozilla_config", "disable", *COMMANDS]
    if ca is not None:
        argv += ["--certinfo_ca_file", str(ca)]
    if client_cert is not None and client_key is not None:
        argv += ["--cert", str(client_cert), "--key", str(client_key)]
    try:
        done = subprocess.run([*argv, *targets], capture_output=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AuditError(f"sslyze did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise AuditError(f"sslyze failed (exit {done.returncode}): {' | '.join(tail)}")
    try:
        result: dict[str, Any] = json.loads(out.read_bytes())
    except (OSError, ValueError):
        raise AuditError("sslyze wrote no JSON") from None
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    return result


def _certificate(cert: Mapping[str, Any]) -> dict[str, Any]:
    key = cert.get("public_key", {})
    key_type = str(key.get("algorithm", "")).removesuffix("PublicKey")
    if key.get("ec_curve_name"):
        key_type += f" {key['ec_curve_name']}"
    elif key.get("key_size"):
        key_type += f" {key['key_size']}"
    san = cert.get("subject_alternative_name", {}) or {}
    return {
        "subject": (cert.get("subject") or {}).get("rfc4514_string", ""),
        "issuer": (cert.get("issuer") or {}).get("rfc4514_string", ""),
        "not_valid_before": cert.get("not_valid_before"),
        "not_valid_after": cert.get("not_valid_after"),
        "key": key_type,
        "signature": (cert.get("signature_algorithm_oid") or {}).get("name", ""),
        "san": sorted([*san.get("dns_names", []), *san.get("ip_addresses", [])]),
        "fingerprint_sha256_b64": cert.get("fingerprint_sha256", ""),
    }


def parse_server(result: Mapping[str, Any]) -> dict[str, Any]:
    """One server's facts from sslyze's `server_scan_results[i]`."""
    status = result.get("connectivity_status")
    if status != "COMPLETED":
        return {"scan": "not connected", "error": str(result.get("connectivity_error_trace") or status)[:300]}
    connectivity = result.get("connectivity_result") or {}
    scan = result.get("scan_result") or {}
    protocols: dict[str, list[str]] = {}
    accepted_versions: list[str] = []
    incomplete: list[str] = []
    for key, label in VERSIONS:
        attempt = scan.get(key) or {}
        if attempt.get("status") != "COMPLETED":
            incomplete.append(label)
            continue
        res = attempt.get("result") or {}
        suites = [s["cipher_suite"]["name"] for s in res.get("accepted_cipher_suites", [])]
        if res.get("is_tls_version_supported") and suites:
            accepted_versions.append(label)
            protocols[label] = sorted(suites)
    curves_attempt = scan.get("elliptic_curves") or {}
    curves = [c["name"] for c in ((curves_attempt.get("result") or {}).get("supported_curves") or [])]
    chain: list[dict[str, Any]] = []
    cert_attempt = scan.get("certificate_info") or {}
    deployments = (cert_attempt.get("result") or {}).get("certificate_deployments") or []
    if deployments:
        chain = [_certificate(c) for c in deployments[0].get("received_certificate_chain", [])]
    return {
        "scan": "completed",
        "versions": accepted_versions,
        "cipher_suites": protocols,
        "groups": sorted(curves),
        "certificate_chain": chain,
        "client_auth_requirement": connectivity.get("client_auth_requirement"),
        "incomplete_checks": incomplete,
    }


def parse_scan(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """ "host:port" -> facts, for every server sslyze scanned."""
    out: dict[str, dict[str, Any]] = {}
    for result in raw.get("server_scan_results", []):
        where = result.get("server_location") or {}
        out[f"{where.get('ip_address') or where.get('hostname')}:{where.get('port')}"] = parse_server(result)
    return out

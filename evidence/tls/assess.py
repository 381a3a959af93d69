"""The TLS assessment: start the release, scan every TLS listener, stop it; a deterministic JSON document.

Ports and times are left out of the document on purpose (they differ on every run and say nothing about
the configuration), so the same release and config give the same assessment, and the pack stays
reproducible. HTTP/3 (QUIC) listeners are not scanned by sslyze; that is stated in the document.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from evidence.tls.environment import LOCK, sslyze_python
from evidence.tls.probe import probe
from evidence.tls.serve import REWRITES, RunningServer
from evidence.tls.sslyze import parse_scan, run_sslyze

SCHEMA = "https://edgeward.dev/evidence-pack/tls-assessment/v1"


def assess(
    executable: Path,
    config: Path,
    *,
    root: Path,
    ca: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
) -> dict[str, Any]:
    python = sslyze_python(root)
    with (
        tempfile.TemporaryDirectory(prefix="edgeward-tls-") as scratch,
        RunningServer(executable, config, Path(scratch)) as server,
    ):
        tls_listeners = [lst for lst in server.raw.get("listeners", []) if lst.get("tls")]
        if not tls_listeners:
            raise AuditError(f"{config}: no TLS listener to assess")
        addresses = {lst["name"]: server.address(lst["name"]) for lst in tls_listeners}
        targets = [f"{host}:{port}" for host, port in addresses.values()]
        scanned = parse_scan(run_sslyze(python, targets, ca=ca, client_cert=client_cert, client_key=client_key))
        listeners = []
        for listener in tls_listeners:
            host, port = addresses[listener["name"]]
            tls = listener["tls"]
            listeners.append(
                {
                    "listener": listener["name"],
                    "configured": {
                        "min_version": tls.get("min_version", "1.2"),
                        "alpn": tls.get("alpn", ["h2", "http/1.1"]),
                        "client_auth": tls.get("client_auth", "off"),
                        "http3": bool(listener.get("quic", {}).get("enabled", True)),
                    },
                    "sslyze": scanned.get(f"{host}:{port}", {"scan": "missing from sslyze output"}),
                    "direct": probe((host, port)),
                }
            )
    version = next((line.split("==")[1].split()[0] for line in LOCK.read_text().splitlines()
                    if line.startswith("sslyze==")), "unknown")  # fmt: skip
    return {
        "schema": SCHEMA,
        "tool": f"sslyze {version} (evidence/tls/requirements-sslyze.lock) + Python ssl handshakes",
        "method": "the released executable serving its release config on loopback, scanned from outside",
        "config_rewrites": list(REWRITES),
        "not_measured": ["HTTP/3 (QUIC) handshakes: sslyze scans TCP only"],
        "listeners": listeners,
    }


def summary(assessment: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per listener for the index and pack.json."""
    rows = []
    for item in assessment.get("listeners", []):
        scan = item.get("sslyze", {})
        direct = item.get("direct", {})
        rows.append(
            {
                "listener": item.get("listener"),
                "versions": scan.get("versions", []),
                "suites": sum(len(v) for v in scan.get("cipher_suites", {}).values()),
                "alpn": direct.get("alpn_selected", {}).get("h2 http/1.1"),
                "client_auth": scan.get("client_auth_requirement"),
                "no_cert_refused": direct.get("client_certificate_enforced"),
                "leaf": (scan.get("certificate_chain") or [{}])[0].get("subject", ""),
            }
        )
    return rows

"""The ICT asset inventory record (DORA Art. 8; RTS 2024/1774 Art. 4 fields).

The release knows identifier, version, interdependencies and external exposure (from the build record,
the SBOM and the config's listeners); owner, location, classification, business functions and end of
support are facts about the bank, so they come from the operator's asset file, and each one missing is a
gap named in the record rather than a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OPERATOR_FIELDS = ("owner", "location", "classification", "business_functions", "end_of_support")
ALLOWED = frozenset({*OPERATOR_FIELDS, "identifier", "notes"})


def check_asset_file(data: Mapping[str, Any]) -> list[str]:
    """Problems in an asset TOML (unknown keys, wrong types): the caller turns them into a usage error."""
    problems = [f"unknown key {key!r} (allowed: {', '.join(sorted(ALLOWED))})" for key in data if key not in ALLOWED]
    functions = data.get("business_functions")
    if functions is not None and not (isinstance(functions, list) and all(isinstance(f, str) for f in functions)):
        problems.append("business_functions must be a list of strings")
    for key in ("owner", "location", "classification", "identifier", "notes"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"{key} must be a string")
    if "end_of_support" in data and not isinstance(data["end_of_support"], str):
        problems.append("end_of_support must be a date written as a string (YYYY-MM-DD)")
    return problems


def asset_record(
    operator: Mapping[str, Any] | None,
    release: Mapping[str, str],
    bom: Mapping[str, Any],
    exposure: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    given = dict(operator or {})
    dependencies = sorted({f"{c.get('name')}@{c.get('version')}" for c in bom.get("components", []) if c.get("name")})
    record: dict[str, Any] = {
        "identifier": given.get("identifier") or f"edgeward-{release['version']}-{release['build_id'][:16]}",
        "name": "edgeward edge ingress server",
        "type": "software (ICT asset supporting network security and traffic termination)",
        "version": release["version"],
        "build_id": release["build_id"],
        "executable_sha256": release["executable_sha256"],
        "interdependencies": dependencies,
        "external_exposure": exposure if exposure is not None else "unknown: no --config given",
    }
    gaps = []
    for key in OPERATOR_FIELDS:
        if key in given:
            record[key] = given[key]
        else:
            record[key] = None
            gaps.append(key)
    if "notes" in given:
        record["notes"] = given["notes"]
    record["gaps"] = [f"{key}: not given (--asset FILE)" for key in gaps]
    return record


def exposure_of(raw_config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Listeners as the release config binds them: address, TLS, mTLS, HTTP/3 (the asset's network face)."""
    out = []
    for listener in raw_config.get("listeners", []):
        tls = listener.get("tls")
        quic = listener.get("quic", {})
        host = str(listener.get("address", "")).rpartition(":")[0].strip("[]")
        out.append(
            {
                "listener": listener.get("name"),
                "address": listener.get("address"),
                "loopback_only": host in ("127.0.0.1", "::1", "localhost"),
                "tls": tls is not None,
                "client_auth": (tls or {}).get("client_auth", "off") if tls else None,
                "http3": bool(tls) and bool(quic.get("enabled", True)),
            }
        )
    admin = raw_config.get("admin", {})
    if admin.get("enabled", True):
        out.append({"listener": "admin", "address": admin.get("address", "127.0.0.1:9901"), "tls": False})
    return out

"""Third-party register rows (DORA Art. 28) from the SBOM, in the style of ITS 2024/2956's templates.

Criticality and substitutability are rules, not opinions, so they are the same for every release:

- critical: the component terminates or carries the traffic or its security (TLS, cryptography, HTTP
  parsing and framing, the event loop, the interpreter, OpenSSL); a fault there is an outage or a breach.
- important: on the request path but not security-bearing (JWT, telemetry, protobuf, QUIC header codec).
- supporting: everything else (typing helpers, certificate bundles, native support libraries).

Substitutability: "difficult" for the interpreter, OpenSSL and cryptography (no drop-in alternative),
"moderate" for protocol stacks (an alternative exists but needs code changes), "easy" otherwise.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

CRITICAL = frozenset(
    {"cryptography", "pyopenssl", "openssl", "libssl3", "cpython", "python", "h2", "hpack", "hyperframe",
     "httptools", "aioquic", "uvloop", "service-identity", "cffi", "idna"}
)  # fmt: skip
IMPORTANT = frozenset(
    {"pyjwt", "opentelemetry-api", "opentelemetry-sdk", "opentelemetry-proto", "opentelemetry-semantic-conventions",
     "protobuf", "pylsqpack", "attrs"}
)  # fmt: skip
DIFFICULT = frozenset({"cpython", "python", "openssl", "libssl3", "cryptography"})
MODERATE = frozenset({"h2", "hpack", "hyperframe", "httptools", "aioquic", "uvloop", "pyopenssl", "pylsqpack"})

COLUMNS = (
    "provider",
    "component",
    "version",
    "purl",
    "licence",
    "criticality",
    "substitutability",
    "function",
    "sha256",
)


def _licence(component: Mapping[str, Any]) -> str:
    names = []
    for entry in component.get("licenses", []):
        if "expression" in entry:
            names.append(str(entry["expression"]))
        lic = entry.get("license", {})
        names.append(str(lic.get("id") or lic.get("name") or ""))
    return " AND ".join(n for n in dict.fromkeys(names) if n) or "unknown"


def _provider(component: Mapping[str, Any], ecosystem: str) -> str:
    for key in ("supplier", "publisher", "author"):
        value = component.get(key)
        if isinstance(value, dict) and value.get("name"):
            return str(value["name"])
        if isinstance(value, str) and value:
            return value
    name = str(component.get("name", ""))
    return {
        "pypi": f"PyPI project {name}",
        "deb": f"Debian package {name}",
    }.get(ecosystem, f"upstream project {name}")


def _ecosystem(purl: str) -> str:
    if purl.startswith("pkg:pypi/"):
        return "pypi"
    if purl.startswith("pkg:deb/"):
        return "deb"
    return "generic"


def _criticality(key: str) -> str:
    return "critical" if key in CRITICAL else "important" if key in IMPORTANT else "supporting"


def _substitutability(key: str) -> str:
    return "difficult" if key in DIFFICULT else "moderate" if key in MODERATE else "easy"


def register_rows(bom: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per bundled component (deduplicated by purl), sorted by purl."""
    rows: dict[str, dict[str, str]] = {}
    for component in bom.get("components", []):
        purl = str(component.get("purl", ""))
        name = str(component.get("name", ""))
        ecosystem = _ecosystem(purl)
        key = name.lower().split(".so")[0]
        if ecosystem == "deb":
            key = purl.rsplit("/", maxsplit=1)[-1].split("@", maxsplit=1)[0].lower()
        hashes = sorted(h["content"] for h in component.get("hashes", []) if h.get("alg") == "SHA-256")
        rows[purl or name] = {
            "provider": _provider(component, ecosystem),
            "component": name,
            "version": str(component.get("version", "")),
            "purl": purl,
            "licence": _licence(component),
            "criticality": _criticality(key),
            "substitutability": _substitutability(key),
            "function": "bundled in the edgeward executable",
            "sha256": " ".join(hashes),
        }
    return [rows[k] for k in sorted(rows)]


def register_csv(rows: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")

"""The pack manifest: every file's SHA-256 under one schema version, the one document that gets signed.

The manifest is canonical JSON (sorted keys, fixed separators, one trailing newline), so the same files
always give the same bytes, and parsing is strict (duplicate keys, unknown fields, non-hex digests and
unsafe names are refused): two different manifests can never mean the same thing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from audit.digest import sha256_bytes
from audit.errors import Finding
from audit.sign.dsse import loads_strict

SCHEMA = "https://edgeward.dev/evidence-pack/v1"
PAYLOAD_TYPE = "application/vnd.edgeward.evidence-manifest+json"
MANIFEST = "manifest.json"
ENVELOPE = "manifest.dsse.json"
BUNDLE = "manifest.sigstore.json"
# Files about the manifest, not in it: the manifest itself and its signature.
OUTSIDE = frozenset({MANIFEST, ENVELOPE, BUNDLE})

_COMPONENT = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]*")
_HEX = re.compile(r"[0-9a-f]{64}")
MAX_DEPTH = 3


def is_pack_name(name: str) -> bool:
    """A relative POSIX path of portable components (no `..`, no leading dot or dash, no separators inside)."""
    parts = name.split("/")
    return 0 < len(parts) <= MAX_DEPTH and all(_COMPONENT.fullmatch(p) for p in parts)


def manifest_bytes(files: Mapping[str, bytes]) -> bytes:
    """Canonical manifest over `files` (name -> content); the manifest and its signatures are left out."""
    digests = {name: sha256_bytes(data) for name, data in sorted(files.items()) if name not in OUTSIDE}
    body = {"schema": SCHEMA, "files": digests}
    return (json.dumps(body, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def parse_manifest(payload: bytes, what: str = MANIFEST) -> dict[str, str]:
    """name -> sha256 hex from a signed manifest; any deviation from the schema is a Finding naming it."""
    data = loads_strict(payload, what)
    if not isinstance(data, dict) or set(data) != {"schema", "files"}:
        raise Finding(f"{what}: expected exactly the fields 'schema' and 'files'")
    if data["schema"] != SCHEMA:
        raise Finding(f"{what}: schema {str(data['schema'])[:80]!r} is not {SCHEMA}")
    files = data["files"]
    if not isinstance(files, dict) or not files:
        raise Finding(f"{what}: 'files' must be a non-empty object")
    out: dict[str, str] = {}
    for name, digest in files.items():
        if not isinstance(name, str) or not is_pack_name(name) or name in OUTSIDE:
            raise Finding(f"{what}: unsafe file name {str(name)[:80]!r}")
        if not isinstance(digest, str) or not _HEX.fullmatch(digest):
            raise Finding(f"{what}: {name}: not a lowercase hex SHA-256")
        out[name] = digest
    return out

"""File names of signatures in a release directory.

They are part of the contract (signer, `audit release` and `audit verify` find files by name alone), so they are
computed in one place: a renamed suffix here is a renamed suffix everywhere.
"""

from __future__ import annotations

import re

PAYLOAD_TYPE_INTOTO = "application/vnd.in-toto+json"
PAYLOAD_TYPE_CYCLONEDX = "application/vnd.cyclonedx+json"

SIGNATURE_SUFFIX = ".sig"
ENVELOPE_SUFFIX = ".dsse.json"
BUNDLE_SUFFIX = ".sigstore.json"
CHAIN_NAME = "signing-chain.pem"
SUMS_NAME = "SHA256SUMS"
PROVENANCE_SUFFIX = ".intoto.json"
SBOM_SUFFIX = ".cdx.json"

SUMS_PREDICATE_TYPE = "https://edgeward.dev/release-checksums/v1"

EXECUTABLE_NAME = "edgeward"

# The names a release file may have, for the signer (which lists them in SHA256SUMS) and the verifier (which
# parses SHA256SUMS and inventories the directory) alike: one rule, so the signer never publishes a release
# the verifier refuses. Portable characters only: no separator, space, control or line break can appear in a
# SHA256SUMS line or in a message, and no leading '.' or '-' (hidden files, `..`, names read as options).
RELEASE_FILE_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]*")
RELEASE_FILE_NAME_RULE = "letters, digits and . _ + - only, not starting with . or -"


def _stem(name: str) -> str:
    # `edgeward.intoto.json` is signed as `edgeward.intoto.dsse.json`, not `edgeward.intoto.json.dsse.json`:
    # the envelope replaces the document's own `.json`, as the contract's examples do.
    return name.removesuffix(".json")


def signature_name(name: str) -> str:
    """Detached signature over an artefact's bytes: `edgeward` -> `edgeward.sig`."""
    return name + SIGNATURE_SUFFIX


def envelope_name(name: str) -> str:
    """DSSE envelope over a document: `edgeward.intoto.json` -> `edgeward.intoto.dsse.json`."""
    return _stem(name) + ENVELOPE_SUFFIX


def bundle_name(name: str) -> str:
    """Sigstore bundle: `edgeward` -> `edgeward.sigstore.json`, `edgeward.cdx.json` -> `edgeward.cdx.sigstore.json`."""
    return _stem(name) + BUNDLE_SUFFIX


def is_signature_file(name: str) -> bool:
    return name.endswith((SIGNATURE_SUFFIX, ENVELOPE_SUFFIX, BUNDLE_SUFFIX))


def is_release_file_name(name: str) -> bool:
    """Whether `name` may appear in a release directory and in SHA256SUMS (see RELEASE_FILE_NAME)."""
    return RELEASE_FILE_NAME.fullmatch(name) is not None and len(name) <= 255

"""DSSE: the secure-systems-lab vectors, PAE, strict parsing and threshold rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from audit.errors import AuditError, Finding
from audit.sign.algorithms import keyid
from audit.sign.dsse import Envelope, b64decode, pae, parse_envelope
from audit.sign.keys import KeySigner
from audit.verify.dsse import TrustedKey, verify_envelope

VECTORS = json.loads((Path(__file__).parent / "vectors" / "dsse" / "vectors.json").read_text())
KEYS = {
    name: ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(k["seed"])).public_key()
    for name, k in VECTORS["keys"].items()
}
INTOTO = "application/vnd.in-toto+json"


def _run(vector: dict[str, Any]) -> str:
    trusted = [TrustedKey.of(KEYS[name], name) for name in vector["trustedKeys"]]
    try:
        envelope = parse_envelope(json.dumps(vector["envelope"]).encode())
        verify_envelope(envelope, trusted, payload_types=vector["supportedPayloadTypes"], threshold=vector["threshold"])
    except Finding:
        return "reject"
    return "accept"


def test_vector_keys_are_the_rfc8032_keys() -> None:
    for name, key in KEYS.items():
        assert key.public_bytes_raw().hex() == VECTORS["keys"][name]["public"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=[v["id"] for v in VECTORS["vectors"]])
def test_vector(vector: dict[str, Any]) -> None:
    assert _run(vector) == vector["expect"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=[v["id"] for v in VECTORS["vectors"]])
def test_vector_pae(vector: dict[str, Any]) -> None:
    envelope = parse_envelope(json.dumps(vector["envelope"]).encode())
    if vector["id"] == "payload-type-swapped":
        # The vector's PAE is the one originally signed (in-toto type); the envelope claims another type.
        assert pae(INTOTO, envelope.payload).hex() == vector["pae"]
        assert envelope.pae().hex() != vector["pae"]
    else:
        assert envelope.pae().hex() == vector["pae"]


def test_vectors_cover_both_outcomes() -> None:
    assert {v["expect"] for v in VECTORS["vectors"]} == {"accept", "reject"}
    assert len(VECTORS["vectors"]) == 9


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("ä", b"\x00") == b"DSSEv1 2 \xc3\xa4 1 \x00"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("-_-_Pj8=", b"\xfb\xff\xbf>?"), ("-_-_Pj8", b"\xfb\xff\xbf>?"), ("+/+/Pj8=", b"\xfb\xff\xbf>?"), ("", b"")],
)
def test_base64_accepts_both_alphabets_padded_or_not(text: str, expected: bytes) -> None:
    assert b64decode(text, "x") == expected


@pytest.mark.parametrize("text", ["Pj9=", "-_+/Pj8=", "Pj8==", "P j8=", "Pj8=\n", "Pj8=Pj8=", "é"])
def test_base64_rejects_non_canonical_and_mixed(text: str) -> None:
    with pytest.raises(Finding):
        b64decode(text, "x")


def _single() -> dict[str, Any]:
    return json.loads(json.dumps(VECTORS["vectors"][0]["envelope"]))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.update(extra=1),
        lambda e: e.pop("payloadType"),
        lambda e: e.pop("signatures"),
        lambda e: e.update(signatures=[]),
        lambda e: e["signatures"][0].update(cert="x"),
        lambda e: e["signatures"][0].pop("sig"),
        lambda e: e.update(payload=1),
        lambda e: e["signatures"][0].update(keyid=None),
    ],
    ids=["unknown", "no-type", "no-signatures", "empty-signatures", "unknown-sig-field", "no-sig", "int", "null-keyid"],
)
def test_strict_parsing(mutate: Any) -> None:
    envelope = _single()
    mutate(envelope)
    with pytest.raises(Finding):
        parse_envelope(json.dumps(envelope).encode())


def test_duplicate_json_keys_rejected() -> None:
    text = json.dumps(_single())
    doubled = text.replace('"payloadType"', '"payloadType": "x", "payloadType"', 1)
    with pytest.raises(Finding, match="duplicate"):
        parse_envelope(doubled.encode())


def test_keyid_must_match_exactly() -> None:
    envelope = _single()
    envelope["signatures"][0]["keyid"] = "a"  # the trusted key is named "A"
    parsed = parse_envelope(json.dumps(envelope).encode())
    with pytest.raises(Finding, match="no signature verifies"):
        verify_envelope(parsed, [TrustedKey.of(KEYS["A"], "A")], payload_types=[INTOTO])


def test_wrong_key_rejected_and_empty_policy_denies() -> None:
    parsed = parse_envelope(json.dumps(_single()).encode())
    with pytest.raises(Finding):
        verify_envelope(parsed, [TrustedKey.of(KEYS["B"], "A")], payload_types=[INTOTO])
    with pytest.raises(Finding, match="empty policy"):
        verify_envelope(parsed, [], payload_types=[INTOTO])
    with pytest.raises(AuditError, match="threshold"):
        verify_envelope(parsed, [TrustedKey.of(KEYS["A"], "A")], payload_types=[INTOTO], threshold=0)


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p256"])
def test_round_trip_and_keyid_is_spki_sha256(kind: str) -> None:
    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    signer = KeySigner(key)
    envelope = signer.envelope(b'{"a": 1}', INTOTO)
    assert envelope.signatures[0].keyid == keyid(key.public_key()) == signer.keyid
    parsed = parse_envelope(envelope.to_json().encode())
    assert parsed == envelope
    result = verify_envelope(parsed, [TrustedKey.of(key.public_key())], payload_types=[INTOTO])
    assert result.payload == b'{"a": 1}'
    other = Envelope(parsed.payload + b" ", parsed.payload_type, parsed.signatures)
    with pytest.raises(Finding):
        verify_envelope(other, [TrustedKey.of(key.public_key())], payload_types=[INTOTO])

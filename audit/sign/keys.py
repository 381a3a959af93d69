"""Signing with a private key held by the release team (Ed25519 or ECDSA P-256, PEM, optionally encrypted).

Writes `<artefact>.sig` (base64 of the raw signature, so `openssl dgst -sha256 -verify` works for ECDSA) and
`<document>.dsse.json` envelopes whose keyid is the SHA-256 of the public key's SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
from pathlib import Path

from audit.files import write_atomic
from audit.sign import algorithms
from audit.sign.dsse import Envelope, Signature
from audit.sign.names import envelope_name, signature_name
from audit.sign.signer import Signer


class KeySigner(Signer):
    def __init__(self, key: algorithms.PrivateKey) -> None:
        self._key = key
        self.public_key: algorithms.PublicKey = key.public_key()
        self.keyid = algorithms.keyid(self.public_key)

    @classmethod
    def from_file(cls, path: Path, passphrase: bytes | None = None) -> KeySigner:
        return cls(algorithms.load_private_key(path, passphrase))

    @property
    def description(self) -> str:
        return f"{algorithms.algorithm_name(self.public_key)} key {self.keyid[:16]}"

    def sign_bytes(self, data: bytes) -> bytes:
        return algorithms.sign_bytes(self._key, data)

    def envelope(self, payload: bytes, payload_type: str) -> Envelope:
        unsigned = Envelope(payload=payload, payload_type=payload_type, signatures=())
        signature = Signature(sig=self.sign_bytes(unsigned.pae()), keyid=self.keyid)
        return Envelope(payload=payload, payload_type=payload_type, signatures=(signature,))

    def sign_artefact(self, path: Path) -> Path:
        signature = algorithms.sign_file(self._key, path)
        out = path.with_name(signature_name(path.name))
        write_atomic(out, base64.b64encode(signature) + b"\n")
        return out

    def sign_payload(self, payload: bytes, payload_type: str, name: str, directory: Path) -> Path:
        out = directory / envelope_name(name)
        write_atomic(out, self.envelope(payload, payload_type).to_json().encode("utf-8"))
        return out

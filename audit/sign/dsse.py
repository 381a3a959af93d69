"""DSSE envelopes (https://github.com/secure-systems-lab/dsse): the format, not the trust decision.

Parsing is strict because an envelope is attacker-controlled input on the edge node: unknown or missing
fields, duplicate JSON keys and non-canonical base64 are refused, so two different files can never parse to
the same envelope and "flip any byte" always changes what is verified. Verification with trusted keys and a
threshold lives in `audit.verify.dsse`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from audit.errors import Finding

MAX_SIGNATURES = 16


@dataclass(frozen=True)
class Signature:
    sig: bytes
    keyid: str = ""


@dataclass(frozen=True)
class Envelope:
    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...]

    def pae(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def to_json(self) -> str:
        """Standard base64 with padding, as the DSSE spec writes; keyid is omitted when empty."""
        signatures: list[dict[str, str]] = []
        for signature in self.signatures:
            entry = {"keyid": signature.keyid} if signature.keyid else {}
            entry["sig"] = base64.b64encode(signature.sig).decode("ascii")
            signatures.append(entry)
        body = {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": signatures,
        }
        return json.dumps(body, indent=2) + "\n"


def pae(payload_type: str, payload: bytes) -> bytes:
    """Pre-Authentication Encoding: `DSSEv1 SP LEN(type) SP type SP LEN(body) SP body`, LEN in bytes, decimal."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def b64decode(text: str, what: str) -> bytes:
    """Base64 in either alphabet, padded or not, as DSSE allows; but only the canonical encoding of the bytes.

    Each variant is tried strictly (no skipped characters, no mixed alphabets), and the result must re-encode
    to exactly `text`: otherwise a changed trailing bit would decode to the same bytes and a tampered envelope
    would still verify.
    """
    if not text.isascii():
        raise Finding(f"{what}: not base64")
    raw = text.encode("ascii")
    unpadded = raw.rstrip(b"=")
    for altchars in (None, b"-_"):
        try:
            decoded = base64.b64decode(unpadded + b"=" * (-len(unpadded) % 4), altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
        canonical = base64.b64encode(decoded, altchars=altchars)
        if raw in (canonical, canonical.rstrip(b"=")):
            return decoded
    raise Finding(f"{what}: not canonical base64")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def loads_strict(data: bytes, what: str) -> Any:
    """JSON that rejects duplicate keys and non-UTF-8 bytes; the error names the file, not the content."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Finding(f"{what}: not valid JSON ({_first_line(exc)})") from exc


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _fields(obj: Any, required: Sequence[str], optional: Sequence[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise Finding(f"{what}: expected a JSON object")
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise Finding(f"{what}: unknown field {unknown[0]!r}")
    missing = [name for name in required if name not in obj]
    if missing:
        raise Finding(f"{what}: missing field {missing[0]!r}")
    return obj


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise Finding(f"{what}: expected a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Finding(f"{what}: not valid Unicode") from exc
    return value


def parse_envelope(data: bytes, what: str = "envelope") -> Envelope:
    """Parse a DSSE envelope's JSON; every deviation is a Finding naming the field."""
    obj = _fields(loads_strict(data, what), ("payload", "payloadType", "signatures"), (), what)
    payload = b64decode(_string(obj["payload"], f"{what}: payload"), f"{what}: payload")
    payload_type = _string(obj["payloadType"], f"{what}: payloadType")
    raw_signatures = obj["signatures"]
    if not isinstance(raw_signatures, list) or not raw_signatures:
        raise Finding(f"{what}: signatures must be a non-empty list")
    if len(raw_signatures) > MAX_SIGNATURES:
        raise Finding(f"{what}: more than {MAX_SIGNATURES} signatures")
    signatures: list[Signature] = []
    for index, raw in enumerate(raw_signatures):
        where = f"{what}: signatures[{index}]"
        entry = _fields(raw, ("sig",), ("keyid",), where)
        keyid = _string(entry.get("keyid", ""), f"{where}.keyid")
        sig = b64decode(_string(entry["sig"], f"{where}.sig"), f"{where}.sig")
        signatures.append(Signature(sig=sig, keyid=keyid))
    return Envelope(payload=payload, payload_type=payload_type, signatures=tuple(signatures))

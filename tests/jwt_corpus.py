"""Keys, providers and an attack corpus for JWT verification, generated fresh for each test session.

Every attack is a token a verifier must refuse, with the reason it must
give. Keys are real (RSA 2048, P-256, Ed25519, a random HMAC secret), so a
refusal is never an accident of a fake key. Tokens that need a broken
structure are assembled by hand (`forge`); tokens that need a valid
signature over hostile content are signed for real (`sign`, `sign_raw`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

from ingress.config.policy import JWTKey, JWTProvider

ISSUER = "https://idp.bank.example"
AUDIENCE = "payments-api"
NOW = 1_750_000_000.0  # every test passes this clock in; nothing depends on the wall clock

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def self_signed(key: PrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@dataclass
class Material:
    """Our issuer's keys (on disk as the server would read them) and an attacker's."""

    dir: Path
    rsa: RSAPrivateKey
    ec: EllipticCurvePrivateKey
    ed: Ed25519PrivateKey
    secret: bytes
    attacker: RSAPrivateKey
    files: dict[str, Path] = field(default_factory=dict)

    def keys(self) -> tuple[JWTKey, ...]:
        return (
            JWTKey(alg="RS256", file=str(self.files["rsa"]), kid="rsa-1"),
            JWTKey(alg="PS256", file=str(self.files["rsa"]), kid="ps-1"),
            JWTKey(alg="ES256", file=str(self.files["ec"]), kid="ec-1"),
            JWTKey(alg="EdDSA", file=str(self.files["ed"]), kid="ed-1"),
            JWTKey(alg="HS256", file=str(self.files["secret"]), kid="hs-1"),
        )

    def private(self, kid: str) -> PrivateKey | bytes:
        keys: dict[str, PrivateKey | bytes] = {
            "rsa-1": self.rsa,
            "ps-1": self.rsa,
            "ec-1": self.ec,
            "ed-1": self.ed,
            "hs-1": self.secret,
        }
        return keys[kid]


def make_material(directory: Path) -> Material:
    directory.mkdir(parents=True, exist_ok=True)
    m = Material(
        dir=directory,
        rsa=rsa.generate_private_key(65537, 2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
        ed=ed25519.Ed25519PrivateKey.generate(),
        secret=os.urandom(32),
        attacker=rsa.generate_private_key(65537, 2048),
    )
    for name, key in (("rsa", m.rsa), ("ec", m.ec), ("ed", m.ed)):
        m.files[name] = directory / f"{name}.pem"
        m.files[name].write_bytes(public_pem(key))
    m.files["secret"] = directory / "hs256.secret"
    m.files["secret"].write_bytes(m.secret)
    m.files["secret"].chmod(0o600)
    return m


def provider(m: Material, **overrides: Any) -> JWTProvider:
    base = JWTProvider(name="idp", issuer=ISSUER, audiences=(AUDIENCE, "other-api"), keys=m.keys())
    return replace(base, **overrides)


def claims(**overrides: Any) -> dict[str, Any]:
    """A token that passes; `None` as a value removes that claim."""
    out: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 300,
        "roles": ["teller"],
    }
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


def sign(m: Material, payload: dict[str, Any], key: str = "ec-1", **header: Any) -> bytes:
    """A token correctly signed by our key `key`; header `kid` and `alg` follow that key unless given."""
    alg = header.pop("alg", {"rsa-1": "RS256", "ps-1": "PS256", "ec-1": "ES256", "ed-1": "EdDSA", "hs-1": "HS256"}[key])
    header.setdefault("kid", key)
    return jwt.encode(payload, m.private(key), algorithm=alg, headers=header).encode("ascii")


def forge(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, signature: bytes = b"") -> bytes:
    """Assemble a token by hand; bytes are taken as the exact JSON text."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return b64(h) + b"." + b64(p) + b"." + b64(signature)


def sign_raw(key: PrivateKey, header: bytes, payload: bytes) -> bytes:
    """A real signature over exact header and payload bytes (for duplicate-member JSON PyJWT would not emit)."""
    signing_input = b64(header) + b"." + b64(payload)
    if isinstance(key, rsa.RSAPrivateKey):
        sig = jwt.get_algorithm_by_name("RS256").sign(signing_input, key)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        sig = jwt.get_algorithm_by_name("ES256").sign(signing_input, key)
    else:
        sig = jwt.get_algorithm_by_name("EdDSA").sign(signing_input, key)
    return signing_input + b"." + b64(sig)


@dataclass(frozen=True)
class Attack:
    name: str
    token: bytes
    reason: str
    provider: dict[str, Any] = field(default_factory=dict)  # overrides of the corpus provider


def attack_corpus(m: Material, trap_url: str) -> list[Attack]:
    """Tokens that must be refused. `trap_url` points at a socket that must never see a connection."""
    good = claims()
    ok = sign(m, good)
    ok_head, ok_body, ok_sig = ok.split(b".")
    attacker_pub = m.attacker.public_key()
    attacker_jwk = RSAAlgorithm.to_jwk(attacker_pub, as_dict=True)
    attacker_cert = base64.b64encode(self_signed(m.attacker, "attacker").public_bytes(serialization.Encoding.DER))
    rsa_only_no_kid = {"keys": (JWTKey(alg="RS256", file=str(m.files["rsa"])),)}
    rsa_pem = public_pem(m.rsa)

    def hs256_with(secret: bytes, header: dict[str, Any]) -> bytes:
        signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(good).encode())
        return signing_input + b"." + b64(hmac.new(secret, signing_input, hashlib.sha256).digest())

    attacks = [
        # `none`, in every spelling, signed or not.
        *(
            Attack(f"alg {alg} {'with' if sig else 'without'} signature", forge({"alg": alg}, good, sig), "bad_alg")
            for alg in ("none", "None", "NONE", "nOnE")
            for sig in (b"", b"\x01" * 32)
        ),
        Attack("alg none naming our kid", forge({"alg": "none", "kid": "rsa-1"}, good), "bad_alg"),
        Attack("alg none, single key", forge({"alg": "none"}, good), "bad_alg", rsa_only_no_kid),
        Attack("empty signature", ok_head + b"." + ok_body + b".", "bad_signature"),
        Attack("stripped signature segment", ok_head + b"." + ok_body, "malformed"),
        # Algorithm confusion: HMAC keyed with the RSA public key the verifier holds.
        Attack("HS256 with RSA PEM as secret", hs256_with(rsa_pem, {"alg": "HS256", "kid": "rsa-1"}), "bad_alg"),
        Attack(
            "HS256 with RSA PEM as secret, single key",
            hs256_with(rsa_pem, {"alg": "HS256"}),
            "bad_alg",
            rsa_only_no_kid,
        ),
        Attack(
            "HS256 with DER as secret",
            hs256_with(
                m.rsa.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
                {"alg": "HS256", "kid": "rsa-1"},
            ),
            "bad_alg",
        ),
        Attack("ES384 header on ES256 key", forge({"alg": "ES384", "kid": "ec-1"}, good, b"x" * 96), "bad_alg"),
        Attack("PS256 header on RS256 key", sign(m, good, "rsa-1", alg="PS256"), "bad_alg"),
        Attack("RS256 header on PS256 key", sign(m, good, "ps-1", alg="RS256"), "bad_alg"),
        Attack("alg missing", forge({"kid": "ec-1"}, good, b"x"), "malformed"),
        Attack("alg not a string", forge({"alg": ["ES256"], "kid": "ec-1"}, good, b"x"), "malformed"),
        # kid is a dict key here, nothing more.
        Attack("kid path traversal", sign(m, good, "ec-1", kid="../../dev/null"), "unknown_key"),
        Attack("kid SQL injection", sign(m, good, "ec-1", kid="x' UNION SELECT 'secret' --"), "unknown_key"),
        Attack("kid unknown", sign(m, good, "ec-1", kid="ec-2"), "unknown_key"),
        Attack("kid not a string", forge({"alg": "ES256", "kid": 1}, good, b"x"), "malformed"),
        Attack("no kid with several keys", jwt.encode(good, m.ec, algorithm="ES256").encode(), "unknown_key"),
        # Key material offered by the token itself is never fetched or used.
        Attack(
            "jku to attacker",
            jwt.encode(good, m.attacker, "RS256", headers={"kid": "rsa-1", "jku": trap_url}).encode(),
            "bad_signature",
        ),
        Attack(
            "jku with attacker kid",
            jwt.encode(good, m.attacker, "RS256", headers={"kid": "evil", "jku": trap_url}).encode(),
            "unknown_key",
        ),
        Attack(
            "x5u to attacker",
            jwt.encode(good, m.attacker, "RS256", headers={"kid": "rsa-1", "x5u": trap_url}).encode(),
            "bad_signature",
        ),
        Attack(
            "x5c with attacker certificate",
            jwt.encode(good, m.attacker, "RS256", headers={"kid": "rsa-1", "x5c": [attacker_cert.decode()]}).encode(),
            "bad_signature",
        ),
        Attack(
            "embedded jwk",
            jwt.encode(good, m.attacker, "RS256", headers={"kid": "rsa-1", "jwk": attacker_jwk}).encode(),
            "bad_signature",
        ),
        Attack(
            "embedded jwk, single key, no kid",
            jwt.encode(good, m.attacker, "RS256", headers={"jwk": attacker_jwk}).encode(),
            "bad_signature",
            rsa_only_no_kid,
        ),
        # Signature over other content.
        Attack(
            "tampered payload",
            ok_head + b"." + b64(json.dumps(claims(sub="admin")).encode()) + b"." + ok_sig,
            "bad_signature",
        ),
        Attack(
            "signature from another token",
            sign(m, claims(sub="bob")).rsplit(b".", 1)[0] + b"." + ok_sig,
            "bad_signature",
        ),
        Attack(
            "signed by attacker",
            jwt.encode(good, m.attacker, "RS256", headers={"kid": "rsa-1"}).encode(),
            "bad_signature",
        ),
        Attack("HS256 with a guessed secret", sign(m, good, "hs-1")[:-8] + b"AAAAAAAA", "bad_signature"),
        # Claims.
        Attack("expired", sign(m, claims(exp=int(NOW) - 31)), "expired"),
        Attack("nbf in the future", sign(m, claims(nbf=int(NOW) + 31)), "not_yet_valid"),
        Attack("iat in the future", sign(m, claims(iat=int(NOW) + 31)), "issued_in_future"),
        Attack("wrong issuer", sign(m, claims(iss="https://evil.example")), "wrong_issuer"),
        Attack("issuer differs in case", sign(m, claims(iss=ISSUER.upper())), "wrong_issuer"),
        Attack("wrong audience", sign(m, claims(aud="another-api")), "wrong_audience"),
        Attack("audience list without ours", sign(m, claims(aud=["a", "b"])), "wrong_audience"),
        Attack("missing sub", sign(m, claims(sub=None)), "missing_claim"),
        Attack("missing exp", sign(m, claims(exp=None)), "missing_claim"),
        Attack("missing iss", sign(m, claims(iss=None)), "missing_claim"),
        Attack("max_age exceeded", sign(m, claims(iat=int(NOW) - 700)), "too_old", {"max_age": 600.0}),
        Attack(
            "max_age without iat", sign(m, claims(iat=None)), "missing_claim", {"max_age": 600.0, "required_claims": ()}
        ),
        Attack("exp not a number", sign(m, claims(exp="tomorrow")), "bad_claim"),
        Attack("exp a boolean", sign(m, claims(exp=True)), "bad_claim"),
        Attack(
            "exp overflows",
            sign_raw(
                m.ec, b'{"alg":"ES256","kid":"ec-1"}', json.dumps(good).replace(str(good["exp"]), "1e400").encode()
            ),
            "bad_claim",
        ),
        Attack("sub not a string", sign(m, claims(sub=7)), "bad_claim"),
        # Structure.
        Attack("oversized", sign(m, claims(pad="x" * 9000)), "too_large"),
        Attack("header not JSON", forge(b"not json", good, b"x"), "malformed"),
        Attack(
            "payload not JSON", b64(b'{"alg":"ES256","kid":"ec-1"}') + b"." + b64(b"{sub: alice}") + b".eA", "malformed"
        ),
        Attack("header a JSON array", forge(b'["ES256"]', good, b"x"), "malformed"),
        Attack("payload a JSON string", forge({"alg": "ES256", "kid": "ec-1"}, b'"alice"', b"x"), "malformed"),
        Attack("payload NaN", forge({"alg": "ES256", "kid": "ec-1"}, b'{"exp": NaN}', b"x"), "malformed"),
        Attack("header not UTF-8", forge(b'{"alg":"ES256","x":"\xff"}', good, b"x"), "malformed"),
        Attack(
            "non-base64url character",
            ok_head + b"." + ok_body.replace(ok_body[5:6], b"$", 1) + b"." + ok_sig,
            "malformed",
        ),
        Attack("standard base64 alphabet", ok + b"+/", "malformed"),
        Attack("padded segment", ok_head + b"==." + ok_body + b"." + ok_sig, "malformed"),
        Attack("impossible base64 length", ok_head + b"." + ok_body + b"A." + ok_sig, "malformed"),
        Attack("four segments", ok + b".AAAA", "malformed"),
        Attack("JWE-shaped (five segments)", b"eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d", "malformed"),
        Attack("empty token", b"", "malformed"),
        Attack("whitespace inside", ok_head + b". " + ok_body + b"." + ok_sig, "malformed"),
        Attack(
            "duplicate alg in header", forge(b'{"alg":"ES256","kid":"ec-1","alg":"none"}', good, b"x"), "duplicate_key"
        ),
        Attack(
            "duplicate sub in payload, validly signed",
            sign_raw(m.ec, b'{"alg":"ES256","kid":"ec-1"}', json.dumps(good)[:-1].encode() + b', "sub": "admin"}'),
            "duplicate_key",
        ),
        Attack(
            "duplicate member in a nested object",
            sign_raw(
                m.ec, b'{"alg":"ES256","kid":"ec-1"}', json.dumps(claims(cnf={"a": 1}))[:-2].encode() + b', "a": 2}}'
            ),
            "duplicate_key",
        ),
        Attack("unknown crit", sign(m, good, crit=["exp"], exp=1), "crit"),
        Attack("crit b64", forge({"alg": "ES256", "kid": "ec-1", "b64": False, "crit": ["b64"]}, good, b"x"), "crit"),
        Attack(
            "b64 without crit",
            sign_raw(m.ec, b'{"alg":"ES256","kid":"ec-1","b64":true}', json.dumps(good).encode()),
            "crit",
        ),
        Attack("typ missing when required", sign(m, good), "bad_typ", {"typ": "at+jwt"}),
        Attack("typ JWT when at+jwt required", sign(m, good, typ="JWT"), "bad_typ", {"typ": "at+jwt"}),
        Attack("typ not a string", sign(m, good, typ=["at+jwt"]), "bad_typ", {"typ": "at+jwt"}),
    ]
    return attacks

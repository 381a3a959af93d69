"""JWT verification: the attack corpus, every algorithm family, the cache, key loading and remote JWKS.

Unit tests of `ingress.policy.jwt` and `ingress.policy.keys`: no edge server
runs, but the remote JWKS tests fetch from a real HTTPS server on 127.0.0.1
whose certificate the test CA issued.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ingress.config.policy import JWKSSource, JWTKey, JWTProvider
from ingress.policy.jwt import JWTVerifier, Principal, TokenRefused, cert_thumbprint
from ingress.policy.keys import KeySet, PolicyMaterialError, RemoteJWKS, load_static_keys, parse_jwks
from tests.jwt_corpus import (
    AUDIENCE,
    ISSUER,
    NOW,
    Material,
    attack_corpus,
    b64,
    claims,
    make_material,
    provider,
    public_pem,
    self_signed,
    sign,
)
from tests.pki import CA, Issued

AT = "policy.jwt[0]"


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(tmp_path_factory.mktemp("jwt"))


def verifier_for(m: Material, **overrides: Any) -> JWTVerifier:
    p = provider(m, **overrides)
    return JWTVerifier(p, load_static_keys(p, AT))


@pytest.fixture
def verifier(material: Material) -> JWTVerifier:
    return verifier_for(material)


def refused(v: JWTVerifier, token: bytes, now: float = NOW) -> str:
    with pytest.raises(TokenRefused) as info:
        v.verify(token, now)
    return info.value.reason


def count_signature_checks(v: JWTVerifier, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every token that reaches PyJWT (signature verification) is recorded."""
    calls: list[bytes] = []
    real = v._pyjwt.decode

    def decode(token: bytes, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(v._pyjwt, "decode", decode)
    return calls


# -- the attack corpus ----------------------------------------------------------------------------


@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A listening socket on 127.0.0.1: any fetch of jku/x5u would leave a connection in its backlog."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def test_attack_corpus_is_refused_with_the_right_reason(material: Material, trap: socket.socket) -> None:
    port = trap.getsockname()[1]
    corpus = attack_corpus(material, f"http://127.0.0.1:{port}/keys.json")
    assert len(corpus) >= 70
    verifiers: dict[str, JWTVerifier] = {}
    wrong = []
    for attack in corpus:
        key = repr(sorted(attack.provider.items()))
        v = verifiers.setdefault(key, verifier_for(material, **attack.provider))
        try:
            v.verify(attack.token, NOW)
        except TokenRefused as exc:
            if exc.reason != attack.reason:
                wrong.append(f"{attack.name}: refused as {exc.reason} ({exc.detail}), expected {attack.reason}")
        else:
            wrong.append(f"{attack.name}: ACCEPTED, expected {attack.reason}")
    assert wrong == []
    # Nothing was fetched from the URLs the tokens offered, and no refused token was cached.
    with pytest.raises(BlockingIOError):
        trap.accept()
    assert all(len(v._cache) == 0 for v in verifiers.values())


def test_corpus_providers_accept_an_honest_token(material: Material) -> None:
    """The refusals above are the attacks' doing: each provider variant accepts a clean token."""
    for overrides in ({}, {"max_age": 600.0}, {"typ": "at+jwt"}):
        v = verifier_for(material, **overrides)
        token = sign(material, claims(), typ="at+jwt")
        assert v.verify(token, NOW).subject == "alice"
    single = verifier_for(material, keys=(JWTKey(alg="RS256", file=str(material.files["rsa"])),))
    token = jwt.encode(claims(), material.rsa, "RS256").encode()  # no kid: the single key
    assert single.verify(token, NOW).subject == "alice"


def test_typ_is_compared_case_insensitively_with_or_without_the_media_type_prefix(material: Material) -> None:
    v = verifier_for(material, typ="at+jwt")
    assert v.verify(sign(material, claims(), typ="AT+JWT"), NOW).subject == "alice"
    # RFC 9068 section 4: both spellings of the media type are the same type.
    assert v.verify(sign(material, claims(sub="bob"), typ="application/at+jwt"), NOW).subject == "bob"
    assert refused(v, sign(material, claims(), typ="JWT")) == "bad_typ"
    assert refused(v, sign(material, claims(), typ="application/jwt")) == "bad_typ"


def test_refusals_that_cannot_change_are_remembered(material: Material) -> None:
    """A forged token replayed in a loop costs one signature check, not one per request."""
    v = verifier_for(material)
    token = jwt.encode(claims(), material.attacker, "RS256", headers={"kid": "rsa-1"}).encode()
    assert refused(v, token) == "bad_signature"
    misses = v.cache_misses
    assert refused(v, token) == "bad_signature"
    assert v.cache_misses == misses  # answered from the refusal memo


def test_size_limit_comes_before_any_decoding(material: Material) -> None:
    v = verifier_for(material, max_token_bytes=100)
    assert refused(v, b"!" * 101) == "too_large"  # not "malformed": nothing was looked at
    assert refused(v, b"!" * 100) == "malformed"


def test_leeway_applies_to_every_time_claim(material: Material, verifier: JWTVerifier) -> None:
    t = int(NOW)
    assert verifier.verify(sign(material, claims(exp=t - 29)), NOW)
    assert verifier.verify(sign(material, claims(nbf=t + 29)), NOW)
    assert verifier.verify(sign(material, claims(iat=t + 29)), NOW)
    strict = verifier_for(material, leeway=0.0)
    assert refused(strict, sign(material, claims(exp=t))) == "expired"
    assert refused(strict, sign(material, claims(nbf=t + 1))) == "not_yet_valid"
    assert refused(strict, sign(material, claims(iat=t + 1))) == "issued_in_future"


def test_any_configured_audience_is_accepted(material: Material, verifier: JWTVerifier) -> None:
    assert verifier.verify(sign(material, claims(aud="other-api")), NOW)
    assert verifier.verify(sign(material, claims(aud=["x", AUDIENCE])), NOW)


# -- algorithm families ---------------------------------------------------------------------------


def _fresh_key(alg: str) -> Any:
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(65537, 2048)
    if alg.startswith("ES"):
        return ec.generate_private_key({"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg])
    return None


@pytest.mark.parametrize(
    "alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed448"]
)
def test_each_public_key_algorithm_verifies(alg: Any, tmp_path: Path) -> None:
    private: Any
    if alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    elif alg == "Ed448":
        private, alg = ed448.Ed448PrivateKey.generate(), "EdDSA"
    else:
        private = _fresh_key(alg)
    pem = tmp_path / "key.pem"
    pem.write_bytes(public_pem(private))
    p = JWTProvider(name="idp", issuer=ISSUER, audiences=(AUDIENCE,), keys=(JWTKey(alg=alg, file=str(pem), kid="k"),))
    v = JWTVerifier(p, load_static_keys(p, AT))
    token = jwt.encode(claims(roles=["a"]), private, alg, headers={"kid": "k"}).encode()
    assert v.verify(token, NOW) == Principal("alice", frozenset({"a"}), None, NOW + 300, ISSUER)
    head, _, sig = token.split(b".")
    tampered = head + b"." + b64(json.dumps(claims(sub="mallory")).encode()) + b"." + sig
    assert refused(v, tampered) == "bad_signature"


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_each_hmac_algorithm_verifies(alg: Any, tmp_path: Path) -> None:
    secret = b"s" * {"HS256": 32, "HS384": 48, "HS512": 64}[alg]
    (tmp_path / "secret").write_bytes(secret + b"\n")  # one trailing newline is not part of the secret
    p = JWTProvider(
        name="idp", issuer=ISSUER, audiences=(AUDIENCE,), keys=(JWTKey(alg=alg, file=str(tmp_path / "secret")),)
    )
    v = JWTVerifier(p, load_static_keys(p, AT))
    assert v.verify(jwt.encode(claims(), secret, alg).encode(), NOW).subject == "alice"
    assert refused(v, jwt.encode(claims(), secret + b"\n", alg).encode()) == "bad_signature"


def test_a_certificate_file_gives_its_public_key(material: Material, tmp_path: Path) -> None:
    cert = tmp_path / "issuer.pem"
    cert.write_bytes(self_signed(material.rsa, "issuer").public_bytes(serialization.Encoding.PEM))
    v = verifier_for(material, keys=(JWTKey(alg="RS256", file=str(cert), kid="rsa-1"),))
    assert v.verify(sign(material, claims(), "rsa-1"), NOW).subject == "alice"


def test_keys_are_objects_not_pem(material: Material) -> None:
    keys = load_static_keys(provider(material), AT)
    assert isinstance(keys["rsa-1"].key, rsa.RSAPublicKey)
    assert isinstance(keys["ec-1"].key, ec.EllipticCurvePublicKey)
    assert isinstance(keys["ed-1"].key, ed25519.Ed25519PublicKey)
    assert keys["hs-1"].key == material.secret
    assert keys.get("../../dev/null") is None and keys.single is None and len(keys) == 5


# -- the cache ------------------------------------------------------------------------------------


def test_a_cache_hit_skips_the_signature_check(
    material: Material, verifier: JWTVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = count_signature_checks(verifier, monkeypatch)
    token = sign(material, claims(), "rsa-1")
    first = verifier.verify(token, NOW)
    for i in range(100):
        assert verifier.verify(token, NOW + i) is first
    assert len(checks) == 1
    assert (verifier.cache_hits, verifier.cache_misses) == (100, 1)


def test_a_cached_token_still_expires(material: Material, verifier: JWTVerifier) -> None:
    token = sign(material, claims(exp=int(NOW) + 60))
    verifier.verify(token, NOW)
    assert verifier.verify(token, NOW + 89.9)  # exp + leeway not reached
    assert refused(verifier, token, NOW + 90) == "expired"
    assert token not in verifier._cache


def test_a_cached_token_is_not_valid_before_its_time(material: Material, verifier: JWTVerifier) -> None:
    token = sign(material, claims(nbf=int(NOW) + 20, iat=int(NOW) + 20))
    verifier.verify(token, NOW)  # inside the leeway
    assert refused(verifier, token, NOW - 100) == "not_yet_valid"


def test_max_age_bounds_a_cached_token(material: Material) -> None:
    v = verifier_for(material, max_age=60.0, leeway=0.0)
    token = sign(material, claims(iat=int(NOW), exp=int(NOW) + 3600))
    v.verify(token, NOW)
    assert v.verify(token, NOW + 59)
    assert refused(v, token, NOW + 61) == "too_old"


def test_the_cache_is_bounded_oldest_first(material: Material, monkeypatch: pytest.MonkeyPatch) -> None:
    v = verifier_for(material, cache_size=2)
    checks = count_signature_checks(v, monkeypatch)
    tokens = [sign(material, claims(sub=f"user{i}")) for i in range(3)]
    for token in tokens:
        v.verify(token, NOW)
    assert list(v._cache) == tokens[1:]
    v.verify(tokens[0], NOW)
    assert len(checks) == 4 and list(v._cache) == [tokens[2], tokens[0]]


def test_refused_tokens_are_remembered_apart_and_cache_size_zero_caches_nothing(
    material: Material, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = verifier_for(material)
    checks = count_signature_checks(v, monkeypatch)
    bad = sign(material, claims(aud="elsewhere"))
    for _ in range(3):
        assert refused(v, bad) == "wrong_audience"
    assert len(checks) == 1 and not v._cache  # refused once, then remembered as refused, never as valid
    early = sign(material, claims(nbf=int(NOW) + 3600))
    for _ in range(2):
        assert refused(v, early) == "not_yet_valid"
    assert len(checks) == 3  # a refusal time can reverse is checked again each time
    off = verifier_for(material, cache_size=0)
    token = sign(material, claims())
    off.verify(token, NOW)
    off.verify(token, NOW)
    assert off.cache_hits == 0 and not off._cache


# -- principal: roles, subject, binding -----------------------------------------------------------


def test_roles_from_lists_nested_objects_and_scope_strings(material: Material) -> None:
    v = verifier_for(material, role_claims=("roles", "realm_access.roles", "scope", "https://bank.example/roles"))
    token = sign(
        material,
        claims(
            roles=["teller", 7, None, "", {"x": 1}, "auditor"],
            realm_access={"roles": ["approver"]},
            scope="payments:read  payments:write",
            **{"https://bank.example/roles": ["namespaced"]},
        ),
    )
    assert v.verify(token, NOW).roles == {
        "teller",
        "auditor",
        "approver",
        "payments:read",
        "payments:write",
        "namespaced",
    }


def test_roles_absent_or_of_the_wrong_shape_are_none(material: Material) -> None:
    v = verifier_for(material, role_claims=("roles", "realm_access.roles", "a.b.c"))
    token = sign(material, claims(roles={"admin": True}, realm_access="admin", a={"b": 3}))
    assert v.verify(token, NOW).roles == frozenset()


def test_subject_and_expiry_when_not_required(material: Material) -> None:
    v = verifier_for(material, required_claims=())
    token = sign(material, claims(sub=None, exp=None))
    p = v.verify(token, NOW)
    assert p.subject == "" and p.expires == math.inf
    assert v.verify(token, NOW + 10**9) is p  # cached for as long as it is valid: always


def test_certificate_thumbprint_binding(material: Material, verifier: JWTVerifier, ca: CA) -> None:
    issued = ca.issue("client-jwt", ["client.bank.example"], client=True)
    cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    der_hex = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert der_hex == issued.fingerprint.hex()
    thumb = cert_thumbprint(der_hex)
    assert thumb == b64(issued.fingerprint).decode() and "=" not in thumb and len(thumb) == 43
    assert JWTVerifier.cert_thumbprint(der_hex) == thumb
    bound = verifier.verify(sign(material, claims(cnf={"x5t#S256": thumb})), NOW)
    assert bound.thumbprint == thumb
    assert verifier.verify(sign(material, claims(cnf={"x5t#S256": 5})), NOW).thumbprint is None
    assert verifier.verify(sign(material, claims(cnf="x")), NOW).thumbprint is None


# -- finding the token ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Bearer abc.def.ghi", b"abc.def.ghi"),
        (b"bearer abc.def.ghi", b"abc.def.ghi"),
        (b"BEARER abc.def.ghi", b"abc.def.ghi"),
        (b"Bearer   abc.def.ghi", b"abc.def.ghi"),  # 1*SP (RFC 6750 §2.1)
        (b"  Bearer abc.def.ghi \t", b"abc.def.ghi"),  # field-value whitespace is not part of it
        (b"Bearer a-b_c.d~e+f/g==", b"a-b_c.d~e+f/g=="),  # the whole b64token charset
    ],
)
def test_bearer_tokens_are_found(verifier: JWTVerifier, value: bytes, expected: bytes) -> None:
    assert verifier.token({b"authorization": value}) == expected


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer",
        b"Bearer ",
        b"Bearer abc def",  # two tokens
        b"Bearer abc, Bearer def",  # two Authorization fields, joined
        b"Bearer\tabc",  # HTAB is not SP
        b"Bearer abc=def",  # = only at the end
        b"Bearer abc;def",
        b'Bearer "abc"',
        b"Bearer ab\xffc",
        b"Basic YWxpY2U6cGFzcw==",
        b"Bearerabc",
        b"Token abc",
        b"",
    ],
)
def test_anything_else_in_authorization_is_malformed(verifier: JWTVerifier, value: bytes) -> None:
    with pytest.raises(TokenRefused) as info:
        verifier.token({b"authorization": value, b"cookie": b"session=abc.def.ghi"})
    assert info.value.reason == "malformed"


def test_cookie_is_the_fallback(material: Material) -> None:
    v = verifier_for(material, cookie="session")
    assert v.token({}) is None
    assert v.token({b"cookie": b"theme=dark; session=abc.def.ghi; lang=en"}) == b"abc.def.ghi"
    assert v.token({b"cookie": b'session="abc.def.ghi"'}) == b"abc.def.ghi"
    assert v.token({b"cookie": b"theme=dark"}) is None
    assert v.token({b"cookie": b"session="}) is None
    assert v.token({b"cookie": b"Session=abc"}) is None  # cookie names are case-sensitive
    assert v.token({b"authorization": b"Bearer x.y.z", b"cookie": b"session=abc"}) == b"x.y.z"
    with pytest.raises(TokenRefused, match="malformed"):
        v.token({b"cookie": b"session=abc; session=evil"})
    assert verifier_for(material).token({b"cookie": b"session=abc"}) is None  # no cookie configured


# -- key material errors --------------------------------------------------------------------------


def _material_error(keys: tuple[JWTKey, ...], **overrides: Any) -> PolicyMaterialError:
    p = JWTProvider(name="idp", issuer=ISSUER, audiences=(AUDIENCE,), keys=keys, **overrides)
    with pytest.raises(PolicyMaterialError) as info:
        load_static_keys(p, AT)
    return info.value


def test_missing_key_file(tmp_path: Path, material: Material) -> None:
    ok = JWTKey(alg="ES256", file=str(material.files["ec"]), kid="a")
    err = _material_error((ok, JWTKey(alg="RS256", file=str(tmp_path / "nope.pem"), kid="b")))
    assert err.path == "policy.jwt[0].keys[1].file"
    assert str(err).startswith("policy.jwt[0].keys[1].file: ") and "nope.pem does not exist" in str(err)


@pytest.mark.parametrize(
    ("alg", "key", "words"),
    [
        ("RS256", "ec", ["EC secp256r1", "RS256 needs an RSA key"]),
        ("ES256", "rsa", ["RSA 2048-bit", "ES256 needs an EC P-256 key"]),
        ("ES384", "ec", ["EC secp256r1", "ES384 needs an EC P-384 key"]),
        ("EdDSA", "rsa", ["EdDSA needs an Ed25519 or Ed448 key"]),
        ("PS256", "ed", ["Ed25519", "PS256 needs an RSA key"]),
    ],
)
def test_key_type_must_fit_its_algorithm(material: Material, alg: Any, key: str, words: list[str]) -> None:
    err = _material_error((JWTKey(alg=alg, file=str(material.files[key])),))
    assert err.path == "policy.jwt[0].keys[0].file"
    for word in [str(material.files[key]), *words]:
        assert word in str(err)


def test_short_rsa_keys_are_refused(tmp_path: Path) -> None:
    small = tmp_path / "rsa1024.pem"
    small.write_bytes(public_pem(rsa.generate_private_key(65537, 1024)))
    err = _material_error((JWTKey(alg="RS256", file=str(small)),))
    assert "RSA 1024-bit" in str(err) and "at least 2048 bits" in str(err)


def test_private_keys_are_refused_where_public_keys_belong(material: Material, tmp_path: Path) -> None:
    pem = tmp_path / "private.pem"
    pem.write_bytes(
        material.ec.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert "holds a private key" in str(_material_error((JWTKey(alg="ES256", file=str(pem)),)))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"hello")
    assert "no PEM public key or certificate" in str(_material_error((JWTKey(alg="ES256", file=str(garbage)),)))


@pytest.mark.parametrize(("alg", "length"), [("HS256", 31), ("HS384", 47), ("HS512", 63)])
def test_short_hmac_secrets_are_refused(tmp_path: Path, alg: Any, length: int) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"k" * length)
    err = _material_error((JWTKey(alg=alg, file=str(secret)),))
    assert f"{length}-byte secret" in str(err) and str(secret) in str(err)
    assert "k" * 8 not in str(err)  # the secret itself is never in a message


@pytest.mark.parametrize("what", ["public key", "certificate", "private key"])
def test_pem_files_are_not_hmac_secrets(material: Material, tmp_path: Path, what: str) -> None:
    pem = tmp_path / "key.pem"
    if what == "public key":
        pem.write_bytes(public_pem(material.rsa))
    elif what == "certificate":
        pem.write_bytes(self_signed(material.rsa, "x").public_bytes(serialization.Encoding.PEM))
    else:
        pem.write_bytes(
            material.rsa.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    err = _material_error((JWTKey(alg="HS256", file=str(pem)),))
    expected = "holds a private key" if what == "private key" else "holds a public key"
    assert "HMAC keys are secrets, this file " + expected in str(err)


def test_kids_must_pick_exactly_one_key(material: Material) -> None:
    ec_key = str(material.files["ec"])
    err = _material_error((JWTKey(alg="ES256", file=ec_key, kid="a"), JWTKey(alg="ES256", file=ec_key, kid="a")))
    assert "two keys share kid 'a'" in str(err)
    err = _material_error((JWTKey(alg="ES256", file=ec_key, kid="a"), JWTKey(alg="ES256", file=ec_key)))
    assert "without kid" in str(err)


# -- JWKS -----------------------------------------------------------------------------------------


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        out = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        out = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        out = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**out, "kid": kid, **extra}


def jwks(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


SOURCE = JWKSSource(algorithms=("RS256", "ES256", "EdDSA"))


def test_jwks_keys_with_alg_inference(material: Material, caplog: pytest.LogCaptureFixture) -> None:
    doc = jwks(
        jwk(material.rsa, "r", alg="RS256", use="sig"),
        jwk(material.ec, "e"),  # no alg: ES256 is the one configured algorithm for P-256
        jwk(material.ed, "d", key_ops=["verify"]),
        jwk(material.attacker, "enc", use="enc"),
        jwk(material.attacker, "ops", key_ops=["encrypt"]),
        jwk(material.attacker, "rs512", alg="RS512"),
    )
    with caplog.at_level(logging.WARNING, "edgeward.policy.jwt"):
        keys = parse_jwks(doc, SOURCE, "policy.jwt[0].jwks.file", "keys.json", strict=True)
    assert {kid: k.alg for kid, k in keys.items()} == {"r": "RS256", "e": "ES256", "d": "EdDSA"}
    skipped = {r.kid for r in caplog.records}  # type: ignore[attr-defined]
    assert skipped == {"enc", "ops", "rs512"}


def test_jwks_key_without_alg_is_skipped_when_ambiguous(material: Material, caplog: pytest.LogCaptureFixture) -> None:
    source = JWKSSource(algorithms=("RS256", "PS256", "ES256"))
    with caplog.at_level(logging.WARNING, "edgeward.policy.jwt"):
        keys = parse_jwks(jwks(jwk(material.rsa, "r"), jwk(material.ec, "e")), source, "p", "f", strict=True)
    assert list(keys) == ["e"]
    assert [r.kid for r in caplog.records] == ["r"]  # type: ignore[attr-defined]
    assert "give it an alg" in caplog.records[0].why  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ({"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "alg": "HS256", "kid": "s"}, "kty oct"),
        ("private", "private key material"),
        ("weak", "RSA 1024-bit"),
        ("mismatch", "ES256 needs an EC P-256 key"),
        ({"kty": "RSA", "n": "!!", "e": "AQAB", "alg": "RS256", "kid": "bad"}, "cannot be read"),
    ],
)
def test_dangerous_jwks_keys_are_errors_in_files_and_skipped_from_urls(
    material: Material, tmp_path: Path, key: Any, words: str
) -> None:
    if key == "private":
        key = {**jwk(material.rsa, "p", alg="RS256"), **json.loads(RSAAlgorithm.to_jwk(material.rsa))}
    elif key == "weak":
        key = jwk(rsa.generate_private_key(65537, 1024), "w", alg="RS256")
    elif key == "mismatch":
        key = jwk(ec.generate_private_key(ec.SECP384R1()), "m", alg="ES256")
    doc = jwks(key, jwk(material.ec, "good", alg="ES256"))
    path = tmp_path / "keys.json"
    path.write_bytes(doc)
    source = replace(SOURCE, algorithms=("RS256", "ES256", "HS256"), file=str(path))
    p = JWTProvider(name="idp", issuer=ISSUER, audiences=(AUDIENCE,), jwks=source)
    with pytest.raises(PolicyMaterialError) as info:
        load_static_keys(p, AT)
    assert info.value.path == "policy.jwt[0].jwks.file" and str(path) in str(info.value) and words in str(info.value)
    remote = parse_jwks(doc, source, "policy.jwt[0].jwks.url", "https://idp/keys", strict=False)
    assert list(remote) == ["good"]


def test_duplicate_kids_in_jwks(material: Material) -> None:
    doc = jwks(jwk(material.ec, "k", alg="ES256"), jwk(material.ed, "k", alg="EdDSA"))
    with pytest.raises(PolicyMaterialError, match="kid 'k' appears twice"):
        parse_jwks(doc, SOURCE, "p", "keys.json", strict=True)
    assert parse_jwks(doc, SOURCE, "p", "url", strict=False)["k"].alg == "ES256"


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        (b"not json", "is not JSON"),
        (b'{"keys": {}}', 'no "keys" array'),
        (b'{"keys": [], "keys": []}', "repeats a member name"),
        (b"[]", 'no "keys" array'),
    ],
)
def test_broken_jwks_documents(doc: bytes, words: str) -> None:
    for strict in (True, False):
        with pytest.raises(PolicyMaterialError, match=words):
            parse_jwks(doc, SOURCE, "p", "keys.json", strict=strict)


def test_jwks_file_and_static_keys_together(material: Material, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(jwks(jwk(material.ed, "ed-jwks", alg="EdDSA")))
    p = provider(material, jwks=replace(SOURCE, file=str(path)))
    v = JWTVerifier(p, load_static_keys(p, AT))
    assert v.verify(jwt.encode(claims(), material.ed, "EdDSA", headers={"kid": "ed-jwks"}).encode(), NOW)
    assert v.verify(sign(material, claims(), "ec-1"), NOW)
    clash = tmp_path / "clash.json"
    clash.write_bytes(jwks(jwk(material.ec, "ec-1", alg="ES256")))
    with pytest.raises(PolicyMaterialError, match="two keys share kid 'ec-1'"):
        load_static_keys(provider(material, jwks=replace(SOURCE, file=str(clash))), AT)


def test_tokens_and_secrets_are_never_logged(
    material: Material, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "open.secret"
    secret.write_bytes(b"z" * 40)
    secret.chmod(0o644)
    with caplog.at_level(logging.DEBUG):
        p = provider(material, keys=(JWTKey(alg="HS256", file=str(secret)),))
        v = JWTVerifier(p, load_static_keys(p, AT))
        token = jwt.encode(claims(), b"z" * 40, "HS256").encode()
        v.verify(token, NOW)
        for attack in attack_corpus(material, "http://127.0.0.1:9/")[:20]:
            with pytest.raises(TokenRefused):
                v.verify(attack.token, NOW)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "readable by other users" in text  # the one warning: mode 0644
    assert "z" * 8 not in text and token.split(b".")[2].decode() not in text


# -- remote JWKS ----------------------------------------------------------------------------------


class JWKSServer:
    """An HTTPS server on 127.0.0.1 serving one JWKS document; tests change it, break it and count requests."""

    def __init__(self, cert: Issued) -> None:
        self.document = b'{"keys": []}'
        self.status = 200
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = owner.document if owner.status == 200 else b"unavailable"
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/jwk-set+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert.cert, cert.key)
        self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def jwks_server(localhost_cert: Issued) -> Iterator[JWKSServer]:
    server = JWKSServer(localhost_cert)
    yield server
    server.stop()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def run_remote(remote: RemoteJWKS, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        remote.start(asyncio.get_running_loop())
        try:
            await body()
        finally:
            remote.stop()

    asyncio.run(main())


def remote_setup(
    server: JWKSServer, ca: CA, **source: Any
) -> tuple[RemoteJWKS, JWTVerifier, ec.EllipticCurvePrivateKey, ec.EllipticCurvePrivateKey]:
    k1, k2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server.document = jwks(jwk(k1, "k1", alg="ES256"))
    first_retry = source.pop("first_retry", 1.0)
    spec = JWKSSource(algorithms=("ES256",), url=server.url, ca=str(ca.pem), **source)
    remote = RemoteJWKS(spec, "policy.jwt[0].jwks", first_retry=first_retry)
    p = JWTProvider(name="idp", issuer=ISSUER, audiences=(AUDIENCE,), jwks=spec)
    return remote, JWTVerifier(p, load_static_keys(p, AT), remote), k1, k2


def es256(key: ec.EllipticCurvePrivateKey, kid: str, **claim: Any) -> bytes:
    return jwt.encode(claims(**claim), key, "ES256", headers={"kid": kid}).encode()


def test_remote_jwks_first_fetch_and_rotation(jwks_server: JWKSServer, ca: CA) -> None:
    remote, v, k1, k2 = remote_setup(jwks_server, ca, refresh_interval=0.2)
    old, new = es256(k1, "k1"), es256(k2, "k2")
    assert len(remote.keys) == 0

    async def body() -> None:
        await until(lambda: "k1" in remote.keys)
        assert v.verify(old, NOW).subject == "alice"
        assert v.verify(old, NOW).subject == "alice" and v.cache_hits == 1
        jwks_server.document = jwks(jwk(k2, "k2", alg="ES256"))  # the provider rotates k1 out
        await until(lambda: "k2" in remote.keys)
        assert "k1" not in remote.keys
        assert refused(v, old) == "unknown_key"  # the cached verdict went with the key
        assert v.verify(new, NOW).subject == "alice"

    run_remote(remote, body)
    assert remote.failures == 0 and remote.fetches >= 2


def test_remote_jwks_keeps_the_last_good_set_and_backs_off(jwks_server: JWKSServer, ca: CA) -> None:
    remote, v, k1, _ = remote_setup(jwks_server, ca, refresh_interval=0.1, max_backoff=0.8, first_retry=0.2)
    token = es256(k1, "k1")

    async def body() -> None:
        await until(lambda: "k1" in remote.keys)
        jwks_server.status = 503
        jwks_server.requests = 0
        await asyncio.sleep(2.0)
        # A 0.1 s refresh interval would have asked ~20 times; backoff (0.2, 0.4, 0.8, 0.8 ...) asks a few.
        assert 3 <= jwks_server.requests <= 8
        assert remote.failures >= jwks_server.requests - 1
        assert "k1" in remote.keys and v.verify(token, NOW)
        jwks_server.document = b'{"keys": []}'  # an empty set is a failure too, not a reason to refuse everyone
        jwks_server.status = 200
        failures = remote.failures
        await until(lambda: remote.failures > failures)
        assert "k1" in remote.keys
        jwks_server.stop()  # connection refused from now on
        failures = remote.failures
        await until(lambda: remote.failures > failures)
        assert "k1" in remote.keys and v.verify(es256(k1, "k1", sub="bob"), NOW).subject == "bob"

    run_remote(remote, body)


def test_unknown_kid_refreshes_early_at_a_bounded_rate(jwks_server: JWKSServer, ca: CA) -> None:
    remote, v, _, k2 = remote_setup(jwks_server, ca, refresh_interval=60.0, min_refresh_interval=0.5)
    token = es256(k2, "k2")

    async def body() -> None:
        await until(lambda: remote.fetches == 1 and len(remote.keys) == 1)
        started = time.monotonic()
        jwks_server.document = jwks(jwk(k2, "k2", alg="ES256"))
        for _ in range(20):
            assert refused(v, token) == "unknown_key"
        await asyncio.sleep(0.3)
        assert remote.fetches == 1  # within min_refresh_interval of the last fetch: no early refresh
        await asyncio.sleep(max(0.0, 0.55 - (time.monotonic() - started)))
        for _ in range(20):
            with pytest.raises(TokenRefused):
                v.verify(token, NOW)
        await until(lambda: "k2" in remote.keys)
        assert v.verify(token, NOW).subject == "alice"
        await asyncio.sleep(0.2)
        assert remote.fetches == 2 and jwks_server.requests == 2

    run_remote(remote, body)


def test_an_unchanged_jwks_is_not_parsed_again(
    jwks_server: JWKSServer, ca: CA, caplog: pytest.LogCaptureFixture
) -> None:
    remote, _, k1, _ = remote_setup(jwks_server, ca, refresh_interval=0.05)
    jwks_server.document = jwks(jwk(k1, "k1", alg="ES256"), jwk(k1, "enc-key", use="enc"))

    async def body() -> None:
        await until(lambda: remote.fetches >= 5)

    with caplog.at_level(logging.INFO, "edgeward.policy.jwt"):
        run_remote(remote, body)
    events = [r.event for r in caplog.records]  # type: ignore[attr-defined]
    assert events.count("jwks_key_skipped") == 1 and events.count("jwks_keys_changed") == 1
    assert list(remote.keys) == ["k1"] and remote.failures == 0


def test_remote_jwks_verifies_the_server_certificate(jwks_server: JWKSServer, ca: CA, tmp_path: Path) -> None:
    other = CA(tmp_path / "other", "some other CA")
    remote, _, _, _ = remote_setup(jwks_server, other, refresh_interval=60.0, first_retry=60.0)

    async def body() -> None:
        await until(lambda: remote.failures == 1)

    run_remote(remote, body)
    assert len(remote.keys) == 0 and jwks_server.requests == 0


def test_remote_jwks_response_size_is_bounded(jwks_server: JWKSServer, ca: CA) -> None:
    remote, _, _, _ = remote_setup(jwks_server, ca, refresh_interval=60.0, first_retry=60.0)
    jwks_server.document = b'{"keys": [' + b" " * (1 << 20) + b"]}"

    async def body() -> None:
        await until(lambda: remote.failures == 1)

    run_remote(remote, body)
    assert len(remote.keys) == 0


def test_remote_jwks_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyMaterialError) as info:
        RemoteJWKS(JWKSSource(algorithms=("ES256",), url="https://idp/keys", ca=str(tmp_path / "no.pem")), "j")
    assert info.value.path == "j.ca"
    with pytest.raises(PolicyMaterialError, match="not an https:// URL"):
        RemoteJWKS(JWKSSource(algorithms=("ES256",), url="http://idp/keys"), "j")


def test_without_a_running_refresher_unknown_kid_is_harmless(jwks_server: JWKSServer, ca: CA) -> None:
    remote, v, k1, _ = remote_setup(jwks_server, ca)
    assert refused(v, es256(k1, "k1")) == "unknown_key"
    assert remote.fetches == 0 and KeySet().single is None

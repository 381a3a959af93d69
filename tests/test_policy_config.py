"""`[policy]` validation: exact messages naming the file, the key and the fix, from load and from `ingress check`."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.pki import CA, Issued
from tests.test_config import check, lines, problems_of, sample, write_config

POLICY: dict[str, Any] = {
    "roles": ["reader", "ops"],
    "jwt": [
        {
            "name": "idp",
            "issuer": "https://idp.test",
            "audiences": ["api"],
            "keys": [{"kid": "k1", "alg": "ES256", "file": "/nonexistent/k1.pem"}],
        }
    ],
    "rate_limits": [
        {"name": "per-ip", "key": "ip", "rate": 10.0, "burst": 20},
        {"name": "per-sub", "key": "subject", "rate": 5.0, "burst": 5},
        {"name": "per-cert", "key": "client_cert", "rate": 5.0, "burst": 5},
    ],
    "rules": [{"name": "api", "path": "/api/", "jwt": "idp", "grants": [{"roles": ["reader"]}]}],
}


def with_policy(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = sample()
    data["policy"] = copy.deepcopy(POLICY)
    change(data["policy"])
    return data


def rule(policy: dict[str, Any], **fields: Any) -> None:
    policy["rules"][0].update(fields)


CASES: list[tuple[str, Callable[[dict[str, Any]], None], list[str]]] = [
    (
        "unknown-role",
        lambda p: rule(p, grants=[{"roles": ["raeder"]}]),
        ["policy.rules[0].grants[0].roles[0]: unknown role 'raeder'; declare it in policy.roles (known: ops, reader)"],
    ),
    (
        "unknown-provider",
        lambda p: rule(p, jwt="corp"),
        ["policy.rules[0].jwt: no JWT provider named 'corp' (providers: idp)"],
    ),
    (
        "auth-without-grants",
        lambda p: rule(p, grants=[]),
        [
            "policy.rules[0].grants: the rule authenticates but grants nothing, so every request would be refused"
            " (deny by default); add grants = [{ roles = [...] }] (empty roles: any authenticated client)"
        ],
    ),
    (
        "grants-without-auth",
        lambda p: rule(p, jwt=""),
        [
            "policy.rules[0].grants: grants need an authenticated client; set jwt or client_cert = true,"
            " or remove grants"
        ],
    ),
    (
        "cert-bound-without-cert",
        lambda p: rule(p, cert_bound=True),
        [
            "policy.rules[0].cert_bound: binds a token to a client certificate, so the rule needs both jwt and"
            " client_cert = true"
        ],
    ),
    (
        "client-cert-nobody-asks-for",
        lambda p: rule(p, client_cert=True),
        [
            "policy.rules[0].client_cert: no listener asks for client certificates, so this rule refuses everyone;"
            ' set tls.client_auth = "optional" or "required" on a listener'
        ],
    ),
    (
        "subject-limit-without-jwt",
        lambda p: rule(p, jwt="", grants=[], rate_limits=["per-sub"]),
        ["policy.rules[0].rate_limits[0]: 'per-sub' is keyed by token subject; the rule needs jwt"],
    ),
    (
        "cert-limit-without-cert",
        lambda p: rule(p, rate_limits=["per-cert"]),
        [
            "policy.rules[0].rate_limits[0]: 'per-cert' is keyed by client certificate; the rule needs"
            " client_cert = true"
        ],
    ),
    (
        "unknown-limit",
        lambda p: rule(p, rate_limits=["per-ipp"]),
        ["policy.rules[0].rate_limits[0]: no rate limit named 'per-ipp'"],
    ),
    (
        "global-limit-not-by-ip",
        lambda p: p.update(global_rate_limits=["per-sub"]),
        [
            "policy.global_rate_limits[0]: 'per-sub' is keyed by subject, which is only known inside a rule;"
            " global limits are keyed by ip"
        ],
    ),
    (
        "duplicate-rule-name",
        lambda p: p["rules"].append({"name": "api", "path": "/other/"}),
        ["policy.rules[1].name: duplicate name 'api' (also policy.rules[0])"],
    ),
    (
        "identity-matching-everything",
        lambda p: p.update(identities=[{"roles": ["ops"]}]),
        ["policy.identities[0]: matches every certificate; set subject, spiffe_id, dns, email or fingerprint"],
    ),
    (
        "jwks-file-and-url",
        lambda p: p["jwt"][0].update(jwks={"algorithms": ["ES256"], "file": "/x.json", "url": "https://idp.test/k"}),
        ["policy.jwt[0].jwks: set exactly one of file or url"],
    ),
    (
        "jwks-hmac",
        lambda p: p["jwt"][0].update(jwks={"algorithms": ["HS256"], "file": "/x.json"}),
        [
            "policy.jwt[0].jwks.algorithms[0]: HS256 uses a shared secret, which a JWKS must never carry;"
            " configure it under keys"
        ],
    ),
    (
        "jwks-plain-http",
        lambda p: p["jwt"][0].update(jwks={"algorithms": ["ES256"], "url": "http://idp.test/keys"}),
        ["policy.jwt[0].jwks.url: invalid value 'http://idp.test/keys'; must match ^$|^https://"],
    ),
    (
        "alg-none",
        lambda p: p["jwt"][0]["keys"][0].update(alg="none"),
        [
            "policy.jwt[0].keys[0].alg: invalid value 'none'; expected one of 'RS256', 'RS384', 'RS512', 'PS256',"
            " 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'HS256', 'HS384', 'HS512'"
        ],
    ),
    (
        "two-keys-one-without-kid",
        lambda p: p["jwt"][0]["keys"].append({"alg": "ES256", "file": "/k2.pem"}),
        ["policy.jwt[0].keys[1].kid: with more than one key, each needs the kid tokens name it by"],
    ),
    (
        "no-keys",
        lambda p: p["jwt"][0].update(keys=[]),
        ["policy.jwt[0].keys: no verification keys; add [[...keys]] entries or a jwks source"],
    ),
    (
        "rule-host-not-a-name",
        lambda p: rule(p, host="api.*.test"),
        ["policy.rules[0].host: 'api.*.test' is not `*`, a DNS name or a *.domain wildcard"],
    ),
    (
        "rule-path-not-normalised",
        lambda p: rule(p, path="/api/../admin"),
        ["policy.rules[0].path: '/api/../admin' must be a normalised path without //, . or .. segments"],
    ),
]


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_policy_problems_are_exact(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], expected: list[str]
) -> None:
    path = write_config(tmp_path, with_policy(change))
    assert problems_of(path) == [f"{path}: {line}" for line in expected]


def test_valid_policy_loads(tmp_path: Path) -> None:
    from ingress.config import load_config

    config = load_config(write_config(tmp_path, with_policy(lambda p: None)))
    assert config.policy.rules[0].grants[0].roles == ("reader",)


# --------------------------------------------------------------------------- `ingress check` opens the key files


def _pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def cert_files(ca: CA) -> Issued:
    return ca.issue("policy-check", ["localhost"])


def _checked(tmp_path: Path, issued: Issued, key: dict[str, Any]) -> list[str]:
    data = sample(str(issued.cert), str(issued.key), str(tmp_path))
    data["policy"] = copy.deepcopy(POLICY)
    data["policy"]["jwt"][0]["keys"] = [key]
    path = write_config(tmp_path, data)
    out = check(path)
    return [line.removeprefix(f"{path}: ") for line in lines(out.stderr)] if out.returncode else []


def test_check_accepts_good_keys(tmp_path: Path, cert_files: Issued) -> None:
    pem = tmp_path / "es256.pem"
    pem.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    assert _checked(tmp_path, cert_files, {"kid": "k1", "alg": "ES256", "file": str(pem)}) == []


def test_check_refuses_bad_keys(tmp_path: Path, cert_files: Issued) -> None:
    missing = _checked(tmp_path, cert_files, {"kid": "k1", "alg": "ES256", "file": str(tmp_path / "nope.pem")})
    assert len(missing) == 1 and "nope.pem" in missing[0] and "policy.jwt[0].keys[0]" in missing[0]

    rsa_pem = tmp_path / "rsa.pem"
    rsa_pem.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    wrong_type = _checked(tmp_path, cert_files, {"kid": "k1", "alg": "ES256", "file": str(rsa_pem)})
    assert len(wrong_type) == 1 and "rsa.pem" in wrong_type[0] and "ES256" in wrong_type[0]

    # An RSA public key configured as an HMAC secret: the key-confusion setup, refused outright.
    confused = _checked(tmp_path, cert_files, {"kid": "k1", "alg": "HS256", "file": str(rsa_pem)})
    assert len(confused) == 1 and "rsa.pem" in confused[0]

    short = tmp_path / "short.secret"
    short.write_bytes(b"x" * 16)
    too_short = _checked(tmp_path, cert_files, {"kid": "k1", "alg": "HS256", "file": str(short)})
    assert len(too_short) == 1 and "short.secret" in too_short[0]

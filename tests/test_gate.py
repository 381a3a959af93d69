"""The access gate's decisions, stage by stage, on requests built in-process (no sockets).

tests/test_policy.py proves the same gate end to end over h1, h2 and h3;
here each stage is driven directly so the edge cases (path spellings,
grant semantics, the decision memo and its expiry) are cheap to cover
exhaustively. Time is the gate module's `time`, patched where expiry matters.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ingress.config.loader import parse_config
from ingress.errors import ProtocolError
from ingress.policy import gate as gate_module
from ingress.policy.gate import Gate, build_gate
from ingress.policy.rules import path_matcher
from ingress.protocol.events import Peer, Request
from ingress.routing import normalize_path
from ingress.tls.identity import ClientIdentity

ISSUER, AUDIENCE = "https://idp.test", "api"
OPS = ClientIdentity("CN=deployer", "CN=ca", "1", "aa" * 32, uri_sans=("spiffe://test/ns/ops/sa/deployer",))
CLERK = ClientIdentity("CN=clerk,O=Bank", "CN=ca", "2", "bb" * 32, email_sans=("Clerk@Bank.test",))


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path_factory.mktemp("gate") / "k1.pem"
    pem.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, pem


def make_gate(pem: Path, **policy: Any) -> Gate:
    data = {
        "listeners": [
            {
                "name": "https",
                "address": "127.0.0.1:0",
                "tls": {"certs": [{"cert": "c", "key": "k"}], "client_auth": "optional", "client_ca": ["ca"]},
            }
        ],
        "routes": [{"path": "/", "static": {"root": "/"}}],
        "policy": {
            "roles": ["reader", "writer", "ops", "audit"],
            "jwt": [
                {
                    "name": "idp",
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "keys": [{"kid": "k1", "alg": "ES256", "file": str(pem)}],
                }
            ],
            "identities": [
                {"spiffe_id": "spiffe://test/ns/ops/*", "roles": ["ops"]},
                {"email": "clerk@bank.test", "roles": ["reader"]},
            ],
            **policy,
        },
    }
    gate = build_gate(parse_config(data, "gate.toml").policy, {})
    assert gate is not None
    return gate


def token(private: ec.EllipticCurvePrivateKey, **claims: Any) -> bytes:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(payload, private, algorithm="ES256", headers={"kid": "k1"}).encode()


def request(
    path: bytes = b"/",
    method: str = "GET",
    host: str = "localhost",
    tok: bytes | None = None,
    identity: ClientIdentity | None = None,
    client: str = "192.0.2.10",
    **headers: bytes,
) -> Request:
    fields = {k.replace("_", "-").encode(): v for k, v in headers.items()}
    if tok is not None:
        fields[b"authorization"] = b"Bearer " + tok
    req = Request(method, path, b"", fields, host, "1.1", True, "https")
    req.peer = Peer(client=client, identity=identity)
    return req


def status(gate: Gate, req: Request) -> int:
    refused = gate.check(req)
    return 200 if refused is None else refused.status


# --------------------------------------------------------------------------- rule matching


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("/api/", "/api/x", True),
        ("/api/", "/api", False),
        ("/api", "/api", True),
        ("/api", "/api/x", True),
        ("/api", "/apix", False),
        ("/accounts/*/payments", "/accounts/42/payments", True),
        ("/accounts/*/payments", "/accounts/42/payments/7", True),
        ("/accounts/*/payments", "/accounts/payments", False),
        ("/accounts/*/payments", "/accounts/4/2/payments", False),
        ("/a.b/", "/aXb/c", False),  # a dot is a dot
    ],
)
def test_path_patterns(pattern: str, path: str, hit: bool) -> None:
    assert bool(path_matcher(pattern).match(path)) is hit


def test_rules_match_the_normalised_path_so_spellings_cannot_bypass(key: Any) -> None:
    _, pem = key
    rules = [{"name": "pay", "path": "/payments/", "jwt": "idp", "grants": [{"roles": ["reader"]}]}]
    gate = make_gate(pem, rules=rules)
    for raw in (b"/payments/x", b"/%70ayments/x", b"//payments/x", b"/./payments/x", b"/payments/%2e/x"):
        assert status(gate, request(raw)) == 401, raw
    assert status(gate, request(b"/other")) == 200
    # A path that does not normalise matches no rule, and routing refuses it with 400 (same function).
    for raw in (b"/a/../payments/x", b"/payments/%2e%2e/x", b"/payments/%00", b"/public/..;/payments/x"):
        assert status(gate, request(raw)) == 200
        with pytest.raises(ProtocolError) as info:
            normalize_path(raw)
        assert info.value.status_hint == 400


def test_rules_match_hosts_and_apply_in_order(key: Any) -> None:
    _, pem = key
    rules = [
        {"name": "internal", "host": "*.internal.test", "path": "/", "deny": ["0.0.0.0/0", "::/0"]},
        {"name": "admin", "host": "admin.test", "path": "/", "client_cert": True, "grants": [{"roles": ["ops"]}]},
    ]
    gate = make_gate(pem, rules=rules)
    assert status(gate, request(host="db.internal.test:8443")) == 403
    assert status(gate, request(host="a.b.internal.test")) == 403
    assert status(gate, request(host="internal.test")) == 200
    assert status(gate, request(host="ADMIN.test")) == 403
    assert status(gate, request(host="admin.test", identity=OPS)) == 200


# --------------------------------------------------------------------------- roles and grants


def test_grants_any_all_methods_and_deny_by_default(key: Any) -> None:
    private, pem = key
    rules = [
        {
            "name": "ledger",
            "path": "/ledger/",
            "jwt": "idp",
            "grants": [
                {"methods": ["GET"], "roles": ["reader", "audit"]},
                {"methods": ["POST"], "roles": ["writer", "audit"], "require": "all"},
            ],
        }
    ]
    gate = make_gate(pem, rules=rules)
    reader = token(private, roles=["reader"])
    assert status(gate, request(b"/ledger/1", tok=reader)) == 200
    assert status(gate, request(b"/ledger/1", "HEAD", tok=reader)) == 200  # GET covers HEAD
    assert status(gate, request(b"/ledger/1", "POST", tok=token(private, roles=["writer"]))) == 403
    assert status(gate, request(b"/ledger/1", "POST", tok=token(private, roles=["writer", "audit"]))) == 200
    denied = request(b"/ledger/1", "DELETE", tok=token(private, roles=["reader", "writer", "audit", "ops"]))
    assert status(gate, denied) == 403  # no grant names DELETE
    assert denied.decision is not None and denied.decision.reason == "no grant for DELETE"


def test_certificate_roles_join_token_roles(key: Any) -> None:
    private, pem = key
    rules = [
        {
            "name": "ops",
            "path": "/",
            "client_cert": True,
            "jwt": "idp",
            "grants": [{"roles": ["ops", "writer"], "require": "all"}],
        }
    ]
    gate = make_gate(pem, rules=rules)
    writer = token(private, roles=["writer"])
    assert status(gate, request(tok=writer, identity=OPS)) == 200  # ops from the certificate, writer from the token
    assert status(gate, request(tok=writer, identity=CLERK)) == 403
    assert status(gate, request(tok=token(private, roles=["writer", "ops"]), identity=CLERK)) == 200


def test_identity_mappings_match_case_insensitive_email(key: Any) -> None:
    _, pem = key
    gate = make_gate(pem, rules=[{"name": "r", "path": "/", "client_cert": True, "grants": [{"roles": ["reader"]}]}])
    allowed = request(identity=CLERK)
    assert status(gate, allowed) == 200
    assert allowed.decision is not None and allowed.decision.subject == "CN=clerk,O=Bank"
    assert status(gate, request(identity=OPS)) == 403


# --------------------------------------------------------------------------- the decision memo


def test_memo_expires_with_the_token(key: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    private, pem = key
    rules = [{"name": "r", "path": "/", "jwt": "idp", "grants": [{"roles": []}]}]
    gate = make_gate(pem, rules=rules)
    now = time.time()
    short = token(private, iat=int(now), exp=int(now) + 5)
    assert status(gate, request(tok=short)) == 200
    assert status(gate, request(tok=short)) == 200  # from the memo
    later = now + 5 + 30 + 1  # past exp plus the default 30 s leeway
    monkeypatch.setattr(gate_module.time, "time", lambda: later)
    late = request(tok=short)
    assert status(gate, late) == 401
    assert late.decision is not None and late.decision.reason == "expired"


def test_memo_forgets_when_keys_change(key: Any) -> None:
    private, pem = key
    rules = [{"name": "r", "path": "/", "jwt": "idp", "grants": [{"roles": []}]}]
    gate = make_gate(pem, rules=rules)
    tok = token(private)
    assert status(gate, request(tok=tok)) == 200
    verifier = gate.verifiers["idp"]
    verifier._static = type(verifier._static)()  # the key is withdrawn ...
    verifier._keys_changed()  # ... as a JWKS refresh would announce it
    assert status(gate, request(tok=tok)) == 401


def test_memo_still_spends_rate_limits(key: Any) -> None:
    private, pem = key
    gate = make_gate(
        pem,
        rate_limits=[{"name": "per-sub", "key": "subject", "rate": 0.001, "burst": 2}],
        rules=[{"name": "r", "path": "/", "jwt": "idp", "rate_limits": ["per-sub"], "grants": [{"roles": []}]}],
    )
    tok = token(private, sub="bob")
    assert [status(gate, request(tok=tok)) for _ in range(3)] == [200, 200, 429]
    assert status(gate, request(tok=token(private, sub="carol"))) == 200


# --------------------------------------------------------------------------- addresses and limits


def test_network_rules_and_forwarded_addresses(key: Any) -> None:
    _, pem = key
    gate = make_gate(pem, network={"deny": ["198.51.100.0/24"], "trusted_proxies": ["10.0.0.0/8"]})
    assert status(gate, request(client="198.51.100.7")) == 403
    spoofed = request(client="192.0.2.1", x_forwarded_for=b"203.0.113.5")
    assert status(gate, spoofed) == 200 and spoofed.peer.client == "192.0.2.1"  # not from a trusted proxy
    hidden = request(client="10.1.2.3", x_forwarded_for=b"198.51.100.9, 10.0.0.7")
    assert status(gate, hidden) == 403 and hidden.peer.client == "198.51.100.9"
    allowed_only = make_gate(pem, network={"allow": ["192.0.2.0/24", "2001:db8::/32"]})
    assert status(allowed_only, request(client="192.0.2.200")) == 200
    assert status(allowed_only, request(client="::ffff:192.0.2.200")) == 200
    assert status(allowed_only, request(client="2001:db8::1")) == 200
    assert status(allowed_only, request(client="203.0.113.1")) == 403


def test_global_limits_answer_429_with_retry_after(key: Any) -> None:
    _, pem = key
    gate = make_gate(
        pem,
        rate_limits=[{"name": "per-ip", "key": "ip", "rate": 0.25, "burst": 1}],
        global_rate_limits=["per-ip"],
    )
    assert status(gate, request()) == 200
    refused = gate.check(request())
    assert refused is not None and refused.status == 429
    assert dict(refused.headers)[b"Retry-After"] == b"4"
    assert status(gate, request(client="192.0.2.11")) == 200  # another address, another bucket
    assert gate.counts["rate_limited"] == 1 and gate.counts["allowed"] == 2


def test_reload_keeps_unchanged_buckets(key: Any) -> None:
    _, pem = key
    limits = {
        "rate_limits": [{"name": "per-ip", "key": "ip", "rate": 0.001, "burst": 1}],
        "global_rate_limits": ["per-ip"],
    }
    first = make_gate(pem, **limits)
    assert status(first, request()) == 200
    data_policy = parse_config(
        {
            "listeners": [{"name": "h", "address": "127.0.0.1:0"}],
            "routes": [{"path": "/", "static": {"root": "/"}}],
            "policy": limits,
        },
        "x",
    ).policy
    second = Gate(data_policy, {}, first)
    assert status(second, request()) == 429  # a reload is not a way to reset a limit
    changed = {**limits, "rate_limits": [{"name": "per-ip", "key": "ip", "rate": 0.001, "burst": 2}]}
    third_policy = parse_config(
        {
            "listeners": [{"name": "h", "address": "127.0.0.1:0"}],
            "routes": [{"path": "/", "static": {"root": "/"}}],
            "policy": changed,
        },
        "x",
    ).policy
    assert status(Gate(third_policy, {}, second), request()) == 200  # a changed limit starts afresh


def test_no_policy_means_no_gate() -> None:
    data = {"listeners": [{"name": "h", "address": "127.0.0.1:0"}], "routes": [{"path": "/", "static": {"root": "/"}}]}
    assert build_gate(parse_config(data, "x").policy, {}) is None

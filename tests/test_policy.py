"""The access gate end to end: mTLS, JWT, roles, rate limits and address rules, over HTTP/1.1, HTTP/2 and HTTP/3.

Every test runs over each protocol version (the `proto` fixture) against the
real server, with real clients: httpx (h1, h2, with client certificates
through its TLS context) and aioquic (h3, tests/h3client.py). Tokens are
minted here with PyJWT from keys generated for the run.

The counting backend is the document root behind the protected routes,
watched with inotify (tests/fswatch.py): the kernel reports every open or
read of those files by any process, so "zero backend work" for a refused
request is measured outside the server, and an allowed request to the
same kind of file shows the watcher does see work when there is some.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import base_config
from tests.fswatch import FileWatch
from tests.h3client import H3Transport
from tests.pki import CA, Issued
from tests.server import Server, wait_for

StartServer = Callable[..., Server]
ISSUER = "https://idp.edgeward.test"
AUDIENCE = "payments-api"
SPIFFE_OPS = "spiffe://edgeward.test/ns/ops/sa/deployer"
PROTECTED = ("payments", "ops", "bound", "limited", "internal")


# --------------------------------------------------------------------------- keys, tokens, certificates


@dataclass
class Keys:
    private: ec.EllipticCurvePrivateKey
    public_pem: Path
    other: ec.EllipticCurvePrivateKey  # a key the edge does not know


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("jwt-keys")
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = directory / "idp-es256.pub.pem"
    public_pem.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return Keys(private, public_pem, ec.generate_private_key(ec.SECP256R1()))


def mint(keys: Keys, key: ec.EllipticCurvePrivateKey | None = None, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key or keys.private, algorithm="ES256", headers={"kid": kid})


def thumbprint(issued: Issued) -> str:
    """RFC 8705 x5t#S256: base64url SHA-256 of the certificate DER, no padding."""
    return base64.urlsafe_b64encode(issued.fingerprint).rstrip(b"=").decode()


@dataclass
class Certs:
    deployer: Issued  # SPIFFE ID mapped to role "ops"
    alice: Issued  # trusted, but mapped to no role
    rogue: Issued  # from a CA the edge does not trust: refused in the handshake
    expired: Issued


@pytest.fixture(scope="module")
def certs(ca: CA, tmp_path_factory: pytest.TempPathFactory) -> Certs:
    rogue_ca = CA(tmp_path_factory.mktemp("rogue-ca"), name="rogue CA")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    return Certs(
        deployer=ca.issue("deployer", ["deployer.clients.test"], client=True, uris=(SPIFFE_OPS,)),
        alice=ca.issue("alice-client", ["alice.clients.test"], client=True),
        rogue=rogue_ca.issue("rogue", ["rogue.clients.test"], client=True, uris=(SPIFFE_OPS,)),
        expired=ca.issue("expired-ops", ["old.clients.test"], client=True, days=1, not_before=long_ago),
    )


# --------------------------------------------------------------------------- server


def policy_config(site: Path, cert: Issued, ca: CA, keys: Keys, log: Path, **policy: Any) -> dict[str, Any]:
    for name in PROTECTED:
        (site / name).mkdir(exist_ok=True)
    config = base_config(site, cert, access_log={"enabled": True, "path": str(log), "flush_interval": 0.1})
    config["listeners"][0]["tls"].update({"client_auth": "optional", "client_ca": [str(ca.pem)]})
    config["policy"] = {
        "roles": ["payments.read", "payments.admin", "ops"],
        "jwt": [
            {
                "name": "idp",
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "role_claims": ["roles", "scope"],
                "keys": [{"kid": "k1", "alg": "ES256", "file": str(keys.public_pem)}],
            }
        ],
        "identities": [{"spiffe_id": "spiffe://edgeward.test/ns/ops/*", "roles": ["ops"]}],
        "rate_limits": [{"name": "per-subject", "key": "subject", "rate": 0.5, "burst": 3}],
        "rules": [
            {"name": "payments", "path": "/payments/", "jwt": "idp", "grants": [{"roles": ["payments.read"]}]},
            {"name": "ops", "path": "/ops/", "client_cert": True, "grants": [{"roles": ["ops"]}]},
            {
                "name": "bound",
                "path": "/bound/",
                "jwt": "idp",
                "client_cert": True,
                "cert_bound": True,
                "grants": [{"roles": []}],
            },
            {
                "name": "limited",
                "path": "/limited/",
                "jwt": "idp",
                "rate_limits": ["per-subject"],
                "grants": [{"roles": []}],
            },
            {"name": "internal", "path": "/internal/", "deny": ["127.0.0.0/8", "::1/128"]},
        ],
        **policy,
    }
    return config


@dataclass
class Edge:
    server: Server
    log: Path
    site: Path

    def url(self, path: str) -> str:
        return f"https://localhost:{self.server.address('https')[1]}{path}"

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def metrics(self) -> str:
        return httpx.get(self.server.admin_url("/metrics"), timeout=5).text

    def fresh(self, directory: str, n: int = 1) -> list[str]:
        """New files behind `directory`, never requested before: a request for one costs an open if it is served."""
        paths = []
        for _ in range(n):
            Edge.counter += 1
            name = f"f{Edge.counter}.txt"
            (self.site / directory / name).write_text(f"{directory} {Edge.counter}\n")
            paths.append(f"/{directory}/{name}")
        return paths

    counter = 0


@pytest.fixture
def edge(start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA, keys: Keys) -> Edge:
    log = site.parent / "access.log"
    return Edge(start_server(policy_config(site, localhost_cert, ca, keys, log)), log, site)


@pytest.fixture(params=["h1", "h2", "h3"])
def proto(request: pytest.FixtureRequest, ca: CA) -> Iterator[Callable[..., httpx.Client]]:
    """A client factory for one protocol version; `cert` presents a client certificate."""
    made: list[httpx.Client] = []
    version = request.param

    def make(cert: Issued | None = None) -> httpx.Client:
        if version == "h3":
            transport = H3Transport(str(ca.pem), str(cert.cert) if cert else None, str(cert.key) if cert else None)
            client = httpx.Client(transport=transport, timeout=10.0)
        else:
            context = ssl.create_default_context(cafile=str(ca.pem))
            if cert is not None:
                context.load_cert_chain(str(cert.cert), str(cert.key))
            client = httpx.Client(verify=context, timeout=10.0, http2=version == "h2")
        made.append(client)
        return client

    make.version = {"h1": "HTTP/1.1", "h2": "HTTP/2", "h3": "HTTP/3"}[version]  # type: ignore[attr-defined]
    yield make
    for client in made:
        client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- JWT and roles


def test_bearer_token_outcomes(edge: Edge, proto: Callable[..., httpx.Client], keys: Keys) -> None:
    client = proto()
    ok = client.get(edge.url(edge.fresh("payments")[0]), headers=bearer(mint(keys, roles=["payments.read"])))
    assert ok.status_code == 200, ok.text
    assert ok.http_version == proto.version  # type: ignore[attr-defined]

    missing = client.get(edge.url(edge.fresh("payments")[0]))
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="edgeward"'  # RFC 6750 3.1: no error code

    expired = client.get(
        edge.url(edge.fresh("payments")[0]),
        headers=bearer(mint(keys, roles=["payments.read"], iat=int(time.time()) - 900, exp=int(time.time()) - 600)),
    )
    assert expired.status_code == 401
    assert expired.headers["www-authenticate"] == 'Bearer realm="edgeward", error="invalid_token"'
    assert "expired" not in expired.text.lower()  # the body says no more than the status

    forged = client.get(edge.url(edge.fresh("payments")[0]), headers=bearer(mint(keys, keys.other, roles=["x"])))
    assert forged.status_code == 401

    no_role = client.get(edge.url(edge.fresh("payments")[0]), headers=bearer(mint(keys, roles=["ops"])))
    assert no_role.status_code == 403
    assert no_role.headers["www-authenticate"] == 'Bearer realm="edgeward", error="insufficient_scope"'

    scope = client.get(edge.url(edge.fresh("payments")[0]), headers=bearer(mint(keys, scope="openid payments.read")))
    assert scope.status_code == 200  # space-separated scope claim

    malformed = client.get(edge.url(edge.fresh("payments")[0]), headers={"Authorization": "Bearer a b"})
    assert malformed.status_code == 400
    assert malformed.headers["www-authenticate"] == 'Bearer realm="edgeward", error="invalid_request"'

    basic = client.get(edge.url(edge.fresh("payments")[0]), headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert basic.status_code in (400, 401)


def test_client_certificate_roles(edge: Edge, proto: Callable[..., httpx.Client], certs: Certs) -> None:
    assert proto().get(edge.url(edge.fresh("ops")[0])).status_code == 403  # no certificate
    assert proto(certs.alice).get(edge.url(edge.fresh("ops")[0])).status_code == 403  # certificate, no role
    allowed = proto(certs.deployer).get(edge.url(edge.fresh("ops")[0]))
    assert allowed.status_code == 200
    assert allowed.text.startswith("ops ")


def test_certificate_bound_tokens(edge: Edge, proto: Callable[..., httpx.Client], keys: Keys, certs: Certs) -> None:
    bound = mint(keys, cnf={"x5t#S256": thumbprint(certs.alice)})
    assert proto(certs.alice).get(edge.url(edge.fresh("bound")[0]), headers=bearer(bound)).status_code == 200
    # The same token from another certificate's holder, from no certificate, and an unbound token.
    assert proto(certs.deployer).get(edge.url(edge.fresh("bound")[0]), headers=bearer(bound)).status_code == 401
    assert proto().get(edge.url(edge.fresh("bound")[0]), headers=bearer(bound)).status_code == 403
    assert proto(certs.alice).get(edge.url(edge.fresh("bound")[0]), headers=bearer(mint(keys))).status_code == 401


def test_rate_limit_exhaustion_and_refill(edge: Edge, proto: Callable[..., httpx.Client], keys: Keys) -> None:
    client = proto()
    token = bearer(mint(keys, sub=f"limited-{time.monotonic_ns()}"))
    statuses = [client.get(edge.url(path), headers=token).status_code for path in edge.fresh("limited", 4)]
    assert statuses == [200, 200, 200, 429]
    refused = client.get(edge.url(edge.fresh("limited")[0]), headers=token)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 2  # one token every 2 s
    # Another subject has its own bucket.
    other = bearer(mint(keys, sub="someone-else"))
    assert client.get(edge.url(edge.fresh("limited")[0]), headers=other).status_code == 200
    time.sleep(int(refused.headers["retry-after"]))
    assert client.get(edge.url(edge.fresh("limited")[0]), headers=token).status_code == 200  # refilled


def test_address_rules(edge: Edge, proto: Callable[..., httpx.Client]) -> None:
    assert proto().get(edge.url(edge.fresh("internal")[0])).status_code == 403


# --------------------------------------------------------------------------- order and proof


def test_refused_requests_reach_nothing(
    edge: Edge, proto: Callable[..., httpx.Client], keys: Keys, certs: Certs
) -> None:
    """Zero opens and zero reads behind the gate for every refusal, measured by the kernel."""
    watch = FileWatch(*(edge.site / name for name in PROTECTED))
    try:
        anonymous, alice = proto(), proto(certs.alice)
        expired = mint(keys, roles=["payments.read"], iat=int(time.time()) - 900, exp=int(time.time()) - 600)
        limited = bearer(mint(keys, sub=f"flood-{time.monotonic_ns()}"))
        for path in edge.fresh("limited", 3):  # spend the bucket
            assert anonymous.get(edge.url(path), headers=limited).status_code == 200
        refusals = [
            (anonymous, "limited", limited, 429),  # first: the bucket refills while the others run
            (anonymous, "payments", {}, 401),
            (anonymous, "payments", bearer(expired), 401),
            (anonymous, "payments", bearer(mint(keys, keys.other, roles=["payments.read"])), 401),
            (anonymous, "payments", bearer(mint(keys, roles=["ops"])), 403),
            (anonymous, "ops", {}, 403),
            (alice, "ops", {}, 403),
            (alice, "bound", bearer(mint(keys)), 401),
            (anonymous, "internal", {}, 403),
        ]
        # Files are made (which the watcher sees) before any refused request is sent.
        targets = [edge.fresh(directory)[0] for _, directory, _, _ in refusals]
        served = edge.fresh("payments")[0]
        bad_certs = [edge.fresh("ops")[0] for _ in (certs.rogue, certs.expired)]
        time.sleep(0.1)
        watch.drain()
        for (client, directory, headers, status), target in zip(refusals, targets, strict=True):
            response = client.get(edge.url(target), headers=headers)
            assert response.status_code == status, (directory, headers)
        # A bad certificate never gets as far as a request: the handshake fails.
        for cert, target in zip((certs.rogue, certs.expired), bad_certs, strict=True):
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ConnectionError)):
                proto(cert).get(edge.url(target))
        time.sleep(0.2)
        assert watch.drain() == []
        # The watcher does see work when a request is let through.
        assert anonymous.get(edge.url(served), headers=bearer(mint(keys, roles=["payments.read"]))).status_code == 200
        time.sleep(0.2)
        assert edge.site / served.lstrip("/") in watch.drain()
    finally:
        watch.close()


def test_decisions_are_logged_and_counted(edge: Edge, proto: Callable[..., httpx.Client], keys: Keys) -> None:
    client = proto()
    client.get(edge.url(edge.fresh("payments")[0]), headers=bearer(mint(keys, roles=["payments.read"])))
    client.get(edge.url(edge.fresh("payments")[0]))
    client.get(edge.url(edge.fresh("payments")[0]), headers=bearer(mint(keys, exp=int(time.time()) - 600)))
    client.get(edge.url("/hello.txt"))
    wait_for(lambda: len(edge.records()) >= 4, 5.0, "four access-log records")
    seen = [(r["status"], r["auth"], r["auth_reason"]) for r in edge.records()[-4:]]
    assert seen[0] == (200, "allowed", "granted")
    assert seen[1] == (401, "denied_jwt", "no token")
    assert seen[2][:2] == (401, "denied_jwt") and seen[2][2] == "expired"
    assert seen[3] == (200, "allowed", "no rule")
    for record in edge.records():
        assert "eyJ" not in json.dumps(record)  # no token ever reaches a log
    text = edge.metrics()
    assert 'outcome="denied_jwt"} 2' in text
    assert 'outcome="allowed"} 2' in text
    assert 'edgeward_jwt_verifications_total{worker="0",provider="idp",result="checked"} 2' in text


# --------------------------------------------------------------------------- addressing through proxies


def test_forwarded_for_only_from_trusted_proxies(
    start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA, keys: Keys
) -> None:
    deny = {"network": {"deny": ["203.0.113.0/24"]}}
    spoofed = {"X-Forwarded-For": "203.0.113.9"}
    untrusted = start_server(policy_config(site, localhost_cert, ca, keys, site.parent / "a.log", **deny))
    url = untrusted.url("http", "/hello.txt")
    assert httpx.get(url, headers=spoofed).status_code == 200  # a spoofed header from an untrusted peer is ignored
    untrusted.stop()

    trusting = {"network": {"deny": ["203.0.113.0/24"], "trusted_proxies": ["127.0.0.1"]}}
    log = site.parent / "b.log"
    trusted = start_server(policy_config(site, localhost_cert, ca, keys, log, **trusting), name="trusting")
    url = trusted.url("http", "/hello.txt")
    assert httpx.get(url, headers=spoofed).status_code == 403
    assert httpx.get(url, headers={"Forwarded": 'for="[2001:db8::1]:4711"'}).status_code == 200
    assert httpx.get(url, headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.4"}).status_code == 200
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 3, 5.0, "three records")
    clients = [json.loads(line)["client"] for line in log.read_text().splitlines()]
    assert clients[-3:] == ["203.0.113.9", "2001:db8::1", "198.51.100.4"]


# --------------------------------------------------------------------------- reload


def test_policy_reload_applies_and_bad_keys_are_refused(edge: Edge, keys: Keys, ca: CA, tmp_path: Path) -> None:
    verify = ssl.create_default_context(cafile=str(ca.pem))
    token = bearer(mint(keys, roles=["payments.read"]))
    assert httpx.get(edge.url(edge.fresh("payments")[0]), headers=token, verify=verify).status_code == 200

    # Require payments.admin instead: the same token is refused after SIGHUP, with no restart.
    config = edge.server.config
    config["policy"]["rules"][0]["grants"] = [{"roles": ["payments.admin"]}]
    edge.server.write_config(config)
    edge.server.signal(signal.SIGHUP)
    wait_for(
        lambda: httpx.get(edge.url(edge.fresh("payments")[0]), headers=token, verify=verify).status_code == 403,
        5.0,
        "the new grant",
    )

    # A key file that does not hold a key: the reload is refused and the previous policy keeps serving.
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("not a key\n")
    config["policy"]["jwt"][0]["keys"][0]["file"] = str(bad)
    edge.server.write_config(config)
    edge.server.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in edge.server.log(), 5.0, "the refusal")
    assert str(bad) in edge.server.log()
    admin = bearer(mint(keys, roles=["payments.admin"]))
    assert httpx.get(edge.url(edge.fresh("payments")[0]), headers=admin, verify=verify).status_code == 200


# --------------------------------------------------------------------------- remote JWKS, end to end


def _jwk(private: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


def test_remote_jwks_is_fetched_in_the_background_and_rotated(
    start_server: StartServer, site: Path, localhost_cert: Issued, ca: CA, keys: Keys
) -> None:
    """The server fetches its keys itself over HTTPS; a token naming a new kid triggers an early refresh."""
    from tests.test_jwt import JWKSServer

    idp = JWKSServer(localhost_cert)
    try:
        idp.document = json.dumps({"keys": [_jwk(keys.private, "k1")]}).encode()
        log = site.parent / "jwks.log"
        config = policy_config(site, localhost_cert, ca, keys, log)
        provider = config["policy"]["jwt"][0]
        del provider["keys"]
        provider["jwks"] = {"url": idp.url, "ca": str(ca.pem), "algorithms": ["ES256"], "min_refresh_interval": 1.0}
        edge = Edge(start_server(config), log, site)
        client = httpx.Client(verify=ssl.create_default_context(cafile=str(ca.pem)), timeout=10)
        with client:
            token = bearer(mint(keys, roles=["payments.read"]))
            wait_for(
                lambda: client.get(edge.url(edge.fresh("payments")[0]), headers=token).status_code == 200,
                10.0,
                "the first fetch",
            )
            # The issuer rotates to a new key; the first token naming it is refused (never waits on a fetch) ...
            idp.document = json.dumps({"keys": [_jwk(keys.private, "k1"), _jwk(keys.other, "k2")]}).encode()
            rotated = bearer(mint(keys, keys.other, kid="k2", roles=["payments.read"]))
            fetched = idp.requests
            first = client.get(edge.url(edge.fresh("payments")[0]), headers=rotated)
            assert first.status_code == 401
            # ... and asks for an early refresh, after which the new key verifies.
            wait_for(
                lambda: client.get(edge.url(edge.fresh("payments")[0]), headers=rotated).status_code == 200,
                10.0,
                "the refresh",
            )
            assert idp.requests > fetched
    finally:
        idp.stop()

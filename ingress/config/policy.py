"""Typed, frozen access-policy configuration: who may reach what, checked before any backend work.

The `[policy]` table of the config. Evaluation order (enforced by
`ingress.policy.gate`, documented here because operators read this file
through `ingress schema`): network rules, global rate limits, the first
matching rule's network rules and rate limits, client certificate, JWT,
certificate binding, identity-keyed rate limits, then roles. Only a request
that passes every stage is routed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ingress.config.meta import doc

Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384", "HS512"
]


@dataclass(frozen=True)
class JWTKey:
    alg: Algorithm = field(
        metadata=doc(
            "The one algorithm this key verifies; a token whose `alg` header differs is refused."
            " `none` does not exist here, and an HMAC key is never usable as a public key."
        )
    )
    file: str = field(
        metadata=doc(
            "RS*/PS*/ES*/EdDSA: PEM public key (or certificate). HS*: a file holding the shared secret"
            " (at least as many bytes as the hash output), readable only by the server."
        )
    )
    kid: str = field(
        default="", metadata=doc("Key ID tokens name in their `kid` header; may be empty for a single key.")
    )


@dataclass(frozen=True)
class JWKSSource:
    algorithms: tuple[Algorithm, ...] = field(
        metadata=doc(
            "Algorithms JWKS keys may verify. A key's own `alg` must be in this list; a key without one"
            " gets the single listed algorithm that fits its type, or is skipped if that is ambiguous."
        )
    )
    file: str = field(default="", metadata=doc("A JWKS document on disk; reloaded with the config."))
    url: str = field(
        default="",
        metadata=doc(
            "An https:// JWKS URL, fetched in the background (never on the request path).", pattern=r"^$|^https://"
        ),
    )
    ca: str = field(default="", metadata=doc("PEM CA bundle to verify the JWKS server; empty uses the system store."))
    refresh_interval: float = field(
        default=300.0, metadata=doc("Seconds between background refreshes of `url`.", minimum=5.0)
    )
    min_refresh_interval: float = field(
        default=30.0,
        metadata=doc("Seconds between early refreshes triggered by tokens naming an unknown `kid`.", minimum=1.0),
    )
    max_backoff: float = field(
        default=300.0, metadata=doc("Longest wait between retries after failed fetches.", minimum=1.0)
    )
    timeout: float = field(default=5.0, metadata=doc("Seconds one fetch may take.", minimum=0.1, maximum=60.0))


@dataclass(frozen=True)
class JWTProvider:
    name: str = field(metadata=doc("Name rules use in `jwt`.", pattern=r"^[a-z][a-z0-9_-]*$"))
    issuer: str = field(metadata=doc("Required `iss` claim, compared exactly."))
    audiences: tuple[str, ...] = field(metadata=doc("Accepted `aud` values; a token must name at least one."))
    keys: tuple[JWTKey, ...] = field(default=(), metadata=doc("Verification keys, each with its algorithm."))
    jwks: JWKSSource | None = field(default=None, metadata=doc("Keys from a JWKS file or URL."))
    leeway: float = field(
        default=30.0, metadata=doc("Seconds of clock skew allowed on exp, nbf and iat.", minimum=0.0, maximum=600.0)
    )
    max_age: float = field(
        default=0.0, metadata=doc("Refuse tokens issued (iat) longer ago than this; 0 turns it off.", minimum=0.0)
    )
    required_claims: tuple[str, ...] = field(
        default=("exp", "iat", "sub"), metadata=doc("Claims every token must carry.")
    )
    typ: str = field(
        default="", metadata=doc('Required `typ` header, e.g. "at+jwt" (RFC 9068); empty accepts any or none.')
    )
    max_token_bytes: int = field(
        default=8192, metadata=doc("Longer tokens are refused before any decoding.", minimum=64, maximum=65536)
    )
    cookie: str = field(
        default="", metadata=doc("Cookie to read the token from when there is no Authorization header; empty: none.")
    )
    role_claims: tuple[str, ...] = field(
        default=("roles",),
        metadata=doc(
            "Claim paths holding roles: dotted for nesting (`realm_access.roles`); a string value is"
            " split on spaces (`scope`)."
        ),
    )
    cache_size: int = field(
        default=10000,
        metadata=doc(
            "Verified tokens remembered until they expire, so a repeated token costs no signature check.", minimum=0
        ),
    )


@dataclass(frozen=True)
class IdentityRoles:
    roles: tuple[str, ...] = field(metadata=doc("Roles granted to a client certificate that matches."))
    subject: str = field(default="", metadata=doc("Subject DN (RFC 4514, as in the access log), compared exactly."))
    spiffe_id: str = field(default="", metadata=doc("SPIFFE ID; a trailing `/*` matches any path below."))
    dns: str = field(default="", metadata=doc("A DNS subjectAltName, compared case-insensitively."))
    email: str = field(default="", metadata=doc("An e-mail subjectAltName, compared case-insensitively."))
    fingerprint: str = field(
        default="", metadata=doc("SHA-256 of the certificate, hex.", pattern=r"^$|^[0-9a-fA-F]{64}$")
    )


@dataclass(frozen=True)
class RateLimit:
    name: str = field(metadata=doc("Name rules use in `rate_limits`.", pattern=r"^[a-z][a-z0-9_-]*$"))
    key: Literal["ip", "client_cert", "subject", "route"] = field(
        metadata=doc("What one bucket belongs to: client address, certificate fingerprint, JWT `sub`, or the rule.")
    )
    rate: float = field(metadata=doc("Tokens added per second.", minimum=0.001))
    burst: int = field(metadata=doc("Bucket size: requests allowed at once.", minimum=1))
    max_keys: int = field(
        default=100000,
        metadata=doc(
            "Buckets kept per worker; beyond it the least recently used go, so memory stays bounded.", minimum=16
        ),
    )


@dataclass(frozen=True)
class Grant:
    roles: tuple[str, ...] = field(default=(), metadata=doc("Roles required; empty grants any authenticated client."))
    methods: tuple[str, ...] = field(default=(), metadata=doc("Methods this grant covers; empty means all."))
    require: Literal["any", "all"] = field(default="any", metadata=doc("Whether one role or all of them are needed."))


@dataclass(frozen=True)
class PolicyRule:
    name: str = field(metadata=doc("Shown in decisions, logs and metrics.", pattern=r"^[a-z][a-z0-9_.-]*$"))
    path: str = field(
        default="/",
        metadata=doc(
            "Path prefix on the normalised path; `*` matches exactly one segment (`/accounts/*/payments`).",
            pattern=r"^/",
        ),
    )
    host: str = field(default="*", metadata=doc("Host: exact, `*.example.com`, or `*` for any host."))
    client_cert: bool = field(
        default=False, metadata=doc("Require a verified client certificate (the listener must ask for one).")
    )
    jwt: str = field(default="", metadata=doc("JWT provider whose bearer token is required; empty: none."))
    cert_bound: bool = field(
        default=False,
        metadata=doc("Require the token's `cnf.x5t#S256` to equal the client certificate's thumbprint (RFC 8705)."),
    )
    grants: tuple[Grant, ...] = field(
        default=(),
        metadata=doc("Who may do what once authenticated; a request no grant covers is refused (deny by default)."),
    )
    rate_limits: tuple[str, ...] = field(default=(), metadata=doc("Rate limits applied to requests of this rule."))
    allow: tuple[str, ...] = field(default=(), metadata=doc("If set, only these CIDRs may use this rule's paths."))
    deny: tuple[str, ...] = field(default=(), metadata=doc("CIDRs refused on this rule's paths."))


@dataclass(frozen=True)
class NetworkPolicy:
    allow: tuple[str, ...] = field(default=(), metadata=doc("If set, only clients in these CIDRs are served."))
    deny: tuple[str, ...] = field(
        default=(), metadata=doc("Clients in these CIDRs are refused (403); wins over allow.")
    )
    trusted_proxies: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Peers whose X-Forwarded-For or Forwarded (RFC 7239) headers are believed; from anyone else"
            " those headers are ignored for addressing."
        ),
    )
    max_connections_per_ip: int = field(
        default=0, metadata=doc("Open connections one client address may hold per worker; 0 means no cap.", minimum=0)
    )


@dataclass(frozen=True)
class Policy:
    roles: tuple[str, ...] = field(
        default=(), metadata=doc("Every role rules and identity mappings may name; a typo is a config error.")
    )
    network: NetworkPolicy = field(default_factory=NetworkPolicy, metadata=doc("Address rules for every request."))
    jwt: tuple[JWTProvider, ...] = field(default=(), metadata=doc("Token issuers and their keys."))
    identities: tuple[IdentityRoles, ...] = field(
        default=(), metadata=doc("Roles for client certificates, matched on subject, SAN or fingerprint.")
    )
    rate_limits: tuple[RateLimit, ...] = field(default=(), metadata=doc("Token buckets, named for use by rules."))
    global_rate_limits: tuple[str, ...] = field(
        default=(), metadata=doc("Rate limits (keyed by ip) applied to every request before rules are matched.")
    )
    rules: tuple[PolicyRule, ...] = field(
        default=(), metadata=doc("Checked in order; the first whose host and path match applies.")
    )
    realm: str = field(default="edgeward", metadata=doc("realm of WWW-Authenticate challenges.", pattern=r'^[^"\\]*$'))

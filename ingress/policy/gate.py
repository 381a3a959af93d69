"""The access gate: every request passes it before routing, so a refused request reaches nothing behind the edge.

Stages run cheapest first, so an unauthenticated flood is stopped by
address rules and rate limits before it costs a signature check:

1. the client address (from X-Forwarded-For / Forwarded only when the
   peer is a trusted proxy), then the global allow and deny lists;
2. global rate limits (keyed by address);
3. the first rule matching host and path; no rule, no further checks;
4. the rule's address lists and its address- and route-keyed limits;
5. the client certificate (verified in the handshake; here only required);
6. the bearer token (JWT), and its binding to the certificate (RFC 8705);
7. roles: the first grant covering the method must be satisfied;
8. limits keyed by certificate or token subject (a refused request spends
   nobody's tokens).

Stages 6 and 7 depend only on the Authorization header, the certificate
and the method, so their outcome is remembered per rule until the token
expires: a repeated token costs a dict lookup, not a parse.

Every outcome is a `Decision` on the request (for logs and telemetry) and
a count by outcome; only a refusal builds a response.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from dataclasses import dataclass

from ingress.config.policy import JWKSSource, JWTProvider, Policy, PolicyRule, RateLimit
from ingress.policy.answers import Answers
from ingress.policy.jwt import JWTVerifier, TokenRefused
from ingress.policy.keys import RemoteJWKS, load_static_keys
from ingress.policy.network import AddressSet, forwarded_client
from ingress.policy.ratelimit import TokenBuckets
from ingress.policy.rbac import NO_ROLES, CompiledGrant, IdentityMapper, compile_grants, grant_for
from ingress.policy.rules import RuleIndex
from ingress.protocol.events import Decision, Request, Response
from ingress.tls.identity import ClientIdentity

ALLOWED = "allowed"
DENIED_IP = "denied_ip"
DENIED_MTLS = "denied_mtls"
DENIED_JWT = "denied_jwt"
DENIED_RBAC = "denied_rbac"
RATE_LIMITED = "rate_limited"
OUTCOMES = (ALLOWED, DENIED_IP, DENIED_MTLS, DENIED_JWT, DENIED_RBAC, RATE_LIMITED)

_UNRULED = Decision(ALLOWED, "no rule")
MEMO_SIZE = 4096


@dataclass(frozen=True, slots=True)
class _Limit:
    name: str
    key: str  # ip, client_cert, subject or route
    buckets: TokenBuckets
    spec: RateLimit


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    allow: AddressSet
    deny: AddressSet
    early_limits: tuple[_Limit, ...]  # keyed by ip or route: known before authentication
    late_limits: tuple[_Limit, ...]  # keyed by client_cert or subject: known after it
    client_cert: bool
    verifier: JWTVerifier | None
    cert_bound: bool
    grants: tuple[CompiledGrant, ...]
    authenticates: bool
    allowed: Decision  # the decision of an anonymous pass, shared
    # (Authorization, certificate fingerprint, method) -> (valid until, key generation, decision, token subject)
    memo: dict[tuple[bytes | None, str, str], tuple[float, int, Decision, str]]


class Gate:
    """The policy of one config in one worker; rebuilt on reload, keeping rate-limit state that still applies."""

    def __init__(self, policy: Policy, counts: dict[str, int], previous: Gate | None = None) -> None:
        self.counts = counts
        for outcome in OUTCOMES:
            counts.setdefault(outcome, 0)
        self.answers = Answers(policy.realm)
        self.trusted = AddressSet(policy.network.trusted_proxies)
        self.allow = AddressSet(policy.network.allow)
        self.deny = AddressSet(policy.network.deny)
        kept: dict[str, _Limit] = previous.limits if previous is not None else {}
        self.limits: dict[str, _Limit] = {spec.name: _limit(spec, kept.get(spec.name)) for spec in policy.rate_limits}
        self.global_limits = tuple(self.limits[name] for name in policy.global_rate_limits)
        kept_remote = previous.remote if previous is not None else {}
        # Keyed by the source's settings: a reload that keeps them keeps the fetcher and its keys.
        self.remote: dict[JWKSSource, RemoteJWKS] = {}
        self.verifiers = {
            provider.name: self._verifier(i, provider, kept_remote) for i, provider in enumerate(policy.jwt)
        }
        self.identities = IdentityMapper(policy.identities)
        self.rules: RuleIndex[_Rule] = RuleIndex([(r.host, r.path, self._rule(r)) for r in policy.rules])
        # Address rules and global limits apply to every request; without them the gate only looks up rules.
        self.screens = bool(self.allow or self.deny or self.global_limits)

    def _verifier(self, i: int, provider: JWTProvider, kept: dict[JWKSSource, RemoteJWKS]) -> JWTVerifier:
        at = f"policy.jwt[{i}]"
        remote = None
        source = provider.jwks
        if source is not None and source.url:
            remote = kept.get(source)
            if remote is None:
                remote = RemoteJWKS(source, f"{at}.jwks")
            self.remote[source] = remote
        return JWTVerifier(provider, load_static_keys(provider, at), remote)

    def _rule(self, rule: PolicyRule) -> _Rule:
        limits = [self.limits[name] for name in rule.rate_limits]
        return _Rule(
            name=rule.name,
            allow=AddressSet(rule.allow),
            deny=AddressSet(rule.deny),
            early_limits=tuple(limit for limit in limits if limit.key in ("ip", "route")),
            late_limits=tuple(limit for limit in limits if limit.key in ("client_cert", "subject")),
            client_cert=rule.client_cert,
            verifier=self.verifiers[rule.jwt] if rule.jwt else None,
            cert_bound=rule.cert_bound,
            grants=compile_grants(rule.grants),
            authenticates=rule.client_cert or bool(rule.jwt),
            allowed=Decision(ALLOWED, "no authentication required", rule.name),
            memo={},
        )

    # lifecycle -----------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop, previous: Gate | None = None) -> None:
        """Start fetching remote key sets this gate uses; stop those only the previous gate used."""
        old = previous.remote if previous is not None else {}
        for key, remote in old.items():
            if self.remote.get(key) is not remote:
                remote.stop()
        for key, remote in self.remote.items():
            if old.get(key) is not remote:
                remote.start(loop)

    def stop(self) -> None:
        for remote in self.remote.values():
            remote.stop()

    # the request path ----------------------------------------------------------
    def check(self, request: Request) -> Response | None:
        """None lets the request through to routing; a Response refuses it."""
        peer = request.peer
        client = peer.client
        if self.trusted and client in self.trusted:
            real = forwarded_client(client, request.headers, self.trusted)
            if real != client:
                request.peer = peer = dataclasses.replace(peer, client=real, remote=client)
                client = real
        if self.screens:
            if client in self.deny or (self.allow and client not in self.allow):
                return self._refuse(request, DENIED_IP, "address refused", "", self.answers.forbidden)
            for limit in self.global_limits:
                wait = limit.buckets.take(client, time.monotonic())
                if wait:
                    return self._refuse(request, RATE_LIMITED, limit.name, "", self.answers.too_many(wait))
        rule = self.rules.match(request.host, request.path)
        if rule is None:
            request.decision = _UNRULED
            self.counts[ALLOWED] += 1
            return None
        return self._apply(rule, request, client)

    def _apply(self, rule: _Rule, request: Request, client: str) -> Response | None:
        answers = self.answers
        if (rule.deny and client in rule.deny) or (rule.allow and client not in rule.allow):
            return self._refuse(request, DENIED_IP, "address refused by rule", rule.name, answers.forbidden)
        for limit in rule.early_limits:
            wait = limit.buckets.take(client if limit.key == "ip" else rule.name, time.monotonic())
            if wait:
                return self._refuse(request, RATE_LIMITED, limit.name, rule.name, answers.too_many(wait))
        if not rule.authenticates:
            request.decision = rule.allowed
            self.counts[ALLOWED] += 1
            return None
        identity = request.peer.identity
        if rule.client_cert and identity is None:
            return self._refuse(request, DENIED_MTLS, "no client certificate", rule.name, answers.forbidden)
        verifier = rule.verifier
        credential = request.headers.get(b"authorization") if verifier is not None else None
        generation = verifier.generation if verifier is not None else 0
        memo_key = (credential, identity.sha256 if identity is not None else "", request.method)
        now = time.time()
        hit = rule.memo.get(memo_key)
        if hit is not None and now < hit[0] and hit[1] == generation:
            granted, token_subject = hit[2], hit[3]
        else:
            outcome = self._authorise(rule, request, identity, now)
            if isinstance(outcome, Response):
                return outcome
            until, granted, token_subject = outcome
            if verifier is None or credential is not None:  # a cookie token is not in the key: not memoised
                if len(rule.memo) >= MEMO_SIZE:
                    rule.memo.clear()
                rule.memo[memo_key] = (until, generation, granted, token_subject)
        for limit in rule.late_limits:
            key = token_subject if limit.key == "subject" else identity.sha256 if identity is not None else ""
            wait = limit.buckets.take(key, time.monotonic())
            if wait:
                return self._refuse(
                    request, RATE_LIMITED, limit.name, rule.name, answers.too_many(wait), granted.subject
                )
        request.decision = granted
        self.counts[ALLOWED] += 1
        return None

    def _authorise(
        self, rule: _Rule, request: Request, identity: ClientIdentity | None, now: float
    ) -> Response | tuple[float, Decision, str]:
        """Token, binding and roles: a refusal, or (valid until, the decision, the token's subject).

        The outcome depends only on the credential, the certificate and the
        method, so the caller remembers it (per rule, until the token
        expires or its keys change) and a repeated request skips all of this.
        """
        answers = self.answers
        until = math.inf
        token_subject = ""
        roles = NO_ROLES
        verifier = rule.verifier
        if verifier is not None:
            try:
                token = verifier.token(request.headers)
            except TokenRefused as exc:
                return self._refuse(request, DENIED_JWT, exc.reason, rule.name, answers.bad_request)
            if token is None:
                return self._refuse(request, DENIED_JWT, "no token", rule.name, answers.no_token)
            try:
                until, principal = verifier.verify_window(token, now)
            except TokenRefused as exc:
                return self._refuse(request, DENIED_JWT, exc.reason, rule.name, answers.invalid_token)
            if rule.cert_bound and (
                identity is None or principal.thumbprint != JWTVerifier.cert_thumbprint(identity.sha256)
            ):
                return self._refuse(request, DENIED_JWT, "certificate binding", rule.name, answers.invalid_token)
            token_subject = principal.subject
            roles = principal.roles
        subject = token_subject
        if identity is not None:
            cert_roles = self.identities.roles(identity)
            if cert_roles:
                roles = roles | cert_roles
            subject = subject or identity.subject
        grant = grant_for(rule.grants, request.method)
        if grant is None:
            return self._refuse(
                request, DENIED_RBAC, f"no grant for {request.method}", rule.name, answers.forbidden, subject
            )
        if not grant.satisfied_by(roles):
            denial = answers.insufficient_scope if verifier is not None else answers.forbidden
            return self._refuse(request, DENIED_RBAC, "missing role", rule.name, denial, subject)
        return until, Decision(ALLOWED, "granted", rule.name, subject, tuple(sorted(roles))), token_subject

    def _refuse(
        self, request: Request, outcome: str, reason: str, rule: str, response: Response, subject: str = ""
    ) -> Response:
        request.decision = Decision(outcome, reason, rule, subject)
        self.counts[outcome] += 1
        return response


def _limit(spec: RateLimit, previous: _Limit | None) -> _Limit:
    """Keep a limit's buckets across a reload when nothing about it changed, so a reload is no reset."""
    if previous is not None and previous.spec == spec:
        return previous
    return _Limit(spec.name, spec.key, TokenBuckets(spec.rate, spec.burst, spec.max_keys), spec)


def build_gate(policy: Policy, counts: dict[str, int], previous: Gate | None = None) -> Gate | None:
    """None when the policy has nothing to check, so the request path skips the gate entirely."""
    network = policy.network
    if not (policy.rules or policy.global_rate_limits or network.allow or network.deny or network.trusted_proxies):
        return None
    return Gate(policy, counts, previous)

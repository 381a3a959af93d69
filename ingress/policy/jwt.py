"""Bearer tokens: found in the request, verified once, then remembered until they expire.

The configured key decides the algorithm; the token's header only has to
agree with it. PyJWT checks the signature and the issuer, audience and
required claims; the structure is checked here first, more strictly than
PyJWT does (duplicate JSON members, `crit`, empty signatures), and the
time claims are checked here against the `now` the caller passes in, so
tests and the cache use one clock.

A verified token is cached by its bytes with the window in which it stays
valid, so a repeated token costs one dict lookup and one comparison.
"""

from __future__ import annotations

import base64
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from ingress.config.policy import JWTProvider
from ingress.errors import EdgewardError
from ingress.policy.keys import DuplicateKeyError, KeySet, RemoteJWKS, VerifyKey, strict_json

Reason = Literal[
    "malformed",
    "too_large",
    "duplicate_key",
    "crit",
    "bad_alg",
    "bad_typ",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "too_old",
    "wrong_issuer",
    "wrong_audience",
    "missing_claim",
    "bad_claim",
    "invalid",
]

# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token (the scheme is case-insensitive, RFC 9110 §11.1).
_BEARER = re.compile(rb"(?i:bearer) +([A-Za-z0-9\-._~+/]+=*)")
# RFC 7515 §2: base64url without padding.
_SEGMENT = re.compile(rb"[A-Za-z0-9_-]+")


class TokenRefused(EdgewardError):
    """A token that does not authenticate anyone; `reason` is a fixed string for logs, metrics and audit."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason: Reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    roles: frozenset[str]
    thumbprint: str | None  # cnf["x5t#S256"] as the token carries it (RFC 8705 §3.1)
    expires: float
    issuer: str


def _segment_json(segment: bytes) -> dict[str, Any]:
    try:
        value = strict_json(base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4)))
    except DuplicateKeyError:
        raise TokenRefused("duplicate_key") from None
    except ValueError:  # bad base64 (binascii.Error), UTF-8 or JSON
        raise TokenRefused("malformed") from None
    if not isinstance(value, dict):
        raise TokenRefused("malformed", "not a JSON object")
    return value


def _time_claim(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRefused("bad_claim", f"{name} is not a number")
    try:
        seconds = float(value)
    except OverflowError:
        raise TokenRefused("bad_claim", f"{name} is out of range") from None
    if not math.isfinite(seconds):
        raise TokenRefused("bad_claim", f"{name} is out of range")
    return seconds


def _roles(claims: dict[str, Any], paths: tuple[tuple[str, tuple[str, ...]], ...]) -> frozenset[str]:
    """A whole claim name wins over its dotted reading, so namespaced claims (`https://x.example/roles`) work."""
    roles: set[str] = set()
    for whole, parts in paths:
        value: Any = claims.get(whole)
        if value is None:
            value = claims
            for part in parts:
                value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            roles.update(value.split())
        elif isinstance(value, list):
            roles.update(item for item in value if isinstance(item, str) and item)
    return frozenset(roles)


def cert_thumbprint(der_sha256_hex: str) -> str:
    """RFC 8705 §3.1 form of a certificate's SHA-256, to compare with the token's `cnf.x5t#S256`."""
    return base64.urlsafe_b64encode(bytes.fromhex(der_sha256_hex)).rstrip(b"=").decode("ascii")


# PyJWT exceptions, most specific first (InvalidSignatureError is a DecodeError).
_PYJWT_REASONS: tuple[tuple[type[Exception], Reason], ...] = (
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidAlgorithmError, "bad_alg"),
    (jwt.DecodeError, "malformed"),
)


# Refusals a later request could see reversed: the clock moves on, or a JWKS refresh brings the key.
_MAY_CHANGE = frozenset({"not_yet_valid", "issued_in_future", "unknown_key"})
_REFUSED_SIZE = 4096


class JWTVerifier:
    """One provider's tokens: where to find them, how to verify them, and the cache of those that passed."""

    def __init__(self, provider: JWTProvider, static: KeySet, remote: RemoteJWKS | None = None) -> None:
        self.provider = provider
        self.cache_hits = 0
        self.cache_misses = 0
        # Bumped when the key set changes, so decisions remembered elsewhere (the gate's) expire with the cache.
        self.generation = 0
        self._static = static
        self._remote = remote
        self._max_bytes = provider.max_token_bytes
        # RFC 7515 section 4.1.9: a typ without "/" means "application/" + typ; RFC 9068 section 4
        # has resource servers accept `at+jwt` and `application/at+jwt` alike.
        self._typ = provider.typ.lower().removeprefix("application/")
        self._cookie = provider.cookie.encode("latin-1") if provider.cookie else None
        self._audiences = list(provider.audiences)
        self._leeway = provider.leeway
        self._max_age = provider.max_age
        self._role_paths = tuple((path, tuple(path.split("."))) for path in provider.role_claims)
        self._cache_size = provider.cache_size
        # token -> (valid from, valid until, principal)
        self._cache: OrderedDict[bytes, tuple[float, float, Principal]] = OrderedDict()
        # token -> why it was refused, for refusals no later check could reverse: a forged or
        # expired token replayed in a loop then costs a lookup, not a signature check each time.
        self._refused: OrderedDict[bytes, Reason] = OrderedDict()
        # Time claims are checked below against the caller's `now`; PyJWT would read the wall clock.
        self._pyjwt = jwt.PyJWT(
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_iss": True,
                "verify_aud": True,
                "verify_sub": True,
                "verify_jti": True,
                "strict_aud": False,
                "require": list(provider.required_claims),
                "enforce_minimum_key_length": True,
            }
        )
        if remote is not None:
            remote.subscribe(self._keys_changed)

    cert_thumbprint = staticmethod(cert_thumbprint)

    @property
    def remote(self) -> RemoteJWKS | None:
        """The background key fetcher, if keys come from a JWKS URL (its counters go to /metrics)."""
        return self._remote

    def _keys_changed(self) -> None:
        """A key removed from the JWKS must stop verifying at once, including tokens already cached.

        Refusals are forgotten too: a token for a key that has just been published is good now.
        """
        self._cache.clear()
        self._refused.clear()
        self.generation += 1

    def token(self, headers: dict[bytes, bytes]) -> bytes | None:
        """The bearer token of a request, or None if it carries none.

        An Authorization header that is not exactly one Bearer token is
        refused rather than ignored: falling back to the cookie then would
        let a second credential decide who the client is.
        """
        auth = headers.get(b"authorization")
        if auth is not None:
            match = _BEARER.fullmatch(auth.strip(b" \t"))
            if match is None:
                raise TokenRefused("malformed", "Authorization is not one Bearer token")
            return match.group(1)
        if self._cookie is None:
            return None
        cookie = headers.get(b"cookie")
        if not cookie:
            return None
        found: bytes | None = None
        for item in cookie.split(b";"):
            name, eq, value = item.strip(b" \t").partition(b"=")
            if eq and name == self._cookie:
                if found is not None:
                    # Two cookies of one name: a sibling subdomain may have set one (cookie tossing).
                    raise TokenRefused("malformed", "token cookie sent twice")
                found = value
        if found is not None and len(found) >= 2 and found[0] == found[-1] == 0x22:
            found = found[1:-1]
        return found or None

    def verify(self, token: bytes, now: float) -> Principal:
        """The principal a token proves, or TokenRefused. `now` is epoch seconds."""
        return self.verify_window(token, now)[1]

    def verify_window(self, token: bytes, now: float) -> tuple[float, Principal]:
        """The principal and the epoch second until which the token stays valid, or TokenRefused.

        Callers that remember their own decision about a token (the gate)
        keep it only until then.
        """
        if len(token) > self._max_bytes:
            raise TokenRefused("too_large")
        hit = self._cache.get(token)
        if hit is not None:
            if hit[0] <= now < hit[1]:
                self.cache_hits += 1
                return hit[1], hit[2]
            del self._cache[token]
        refused = self._refused.get(token)
        if refused is not None:
            raise TokenRefused(refused, "remembered")
        self.cache_misses += 1
        try:
            valid_from, valid_until, principal = self._verify(token, now)
        except TokenRefused as exc:
            if exc.reason not in _MAY_CHANGE:
                if len(self._refused) >= _REFUSED_SIZE:
                    self._refused.popitem(last=False)
                self._refused[token] = exc.reason
            raise
        if self._cache_size:
            if len(self._cache) >= self._cache_size:
                self._cache.popitem(last=False)
            self._cache[token] = (valid_from, valid_until, principal)
        return valid_until, principal

    def _key_for(self, header: dict[str, Any]) -> VerifyKey:
        remote = self._remote
        remote_keys = remote.keys if remote is not None else KeySet()
        if "kid" not in header:
            key = None
            if len(self._static) + len(remote_keys) == 1:
                key = self._static.single or remote_keys.single
            if key is None:
                raise TokenRefused("unknown_key", "no kid and more than one key")
            return key
        kid = header["kid"]
        if not isinstance(kid, str):
            raise TokenRefused("malformed", "kid is not a string")
        key = self._static.get(kid) or remote_keys.get(kid)
        if key is None:
            if remote is not None:
                remote.unknown_kid()
            raise TokenRefused("unknown_key")
        return key

    def _verify(self, token: bytes, now: float) -> tuple[float, float, Principal]:
        # (1) Structure: three base64url segments, header and payload JSON objects without repeated members.
        segments = token.split(b".")
        if len(segments) != 3:
            raise TokenRefused("malformed", "not three segments")
        head, body, signature = segments
        if not (_SEGMENT.fullmatch(head) and _SEGMENT.fullmatch(body)):
            raise TokenRefused("malformed", "not base64url")
        if signature and not _SEGMENT.fullmatch(signature):
            raise TokenRefused("malformed", "not base64url")
        header = _segment_json(head)
        _segment_json(body)

        # (2) Header: no extension we would have to understand (RFC 7515 §4.1.11), none of `none`, right typ.
        if "crit" in header or "b64" in header:
            raise TokenRefused("crit")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenRefused("malformed", "alg missing or not a string")
        if alg.lower() == "none":
            raise TokenRefused("bad_alg", "none")
        if self._typ:
            typ = header.get("typ")
            if not isinstance(typ, str) or typ.lower().removeprefix("application/") != self._typ:
                raise TokenRefused("bad_typ")

        # (3) Key by kid from our own sets only (jku, x5u, x5c and jwk headers are never read);
        #     the key's configured algorithm must be the token's.
        key = self._key_for(header)
        if alg != key.alg:
            raise TokenRefused("bad_alg", f"token says {alg[:16]!r}, key is {key.alg}")

        # (4) Signature, issuer, audience, required claims: PyJWT, with the algorithm from configuration.
        if not signature:
            raise TokenRefused("bad_signature", "empty")
        try:
            claims = self._pyjwt.decode(
                token, key.key, algorithms=[key.alg], audience=self._audiences, issuer=self.provider.issuer
            )
        except jwt.PyJWTError as exc:
            for kind, reason in _PYJWT_REASONS:
                if isinstance(exc, kind):
                    raise TokenRefused(reason, type(exc).__name__) from None
            if isinstance(exc, InvalidSubjectError | InvalidJTIError):
                raise TokenRefused("bad_claim", type(exc).__name__) from None
            raise TokenRefused("invalid", type(exc).__name__) from None

        # (5) Time, against the caller's clock, with leeway for skew.
        leeway = self._leeway
        exp = _time_claim(claims, "exp")
        nbf = _time_claim(claims, "nbf")
        iat = _time_claim(claims, "iat")
        if exp is not None and now >= exp + leeway:
            raise TokenRefused("expired")
        if nbf is not None and now < nbf - leeway:
            raise TokenRefused("not_yet_valid")
        if iat is not None and now < iat - leeway:
            raise TokenRefused("issued_in_future")
        valid_until = math.inf if exp is None else exp + leeway
        if self._max_age > 0:
            if iat is None:
                raise TokenRefused("missing_claim", "iat (max_age is set)")
            if now - iat > self._max_age + leeway:
                raise TokenRefused("too_old")
            valid_until = min(valid_until, iat + self._max_age + leeway)
        valid_from = max(-math.inf if nbf is None else nbf - leeway, -math.inf if iat is None else iat - leeway)

        # (6) Who it is.
        cnf = claims.get("cnf")
        thumbprint = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
        principal = Principal(
            subject=claims.get("sub") or "",
            roles=_roles(claims, self._role_paths),
            thumbprint=thumbprint if isinstance(thumbprint, str) else None,
            expires=math.inf if exp is None else exp,
            issuer=claims["iss"],
        )
        return valid_from, valid_until, principal

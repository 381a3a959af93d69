"""JWT verification keys: loaded once, checked against their configured algorithm, handed over as objects.

Every key carries the one algorithm configuration gave it; the token never
chooses. So loading is where the algorithm-confusion attacks are closed: an
RSA key cannot be an HMAC secret, a P-256 key cannot verify ES512, a 1024-bit
RSA key is refused, and a JWKS can never supply a shared secret. Keys are
parsed into `cryptography` objects here, so nothing is re-parsed per token.

Remote JWKS documents are fetched in a worker thread, off the request path;
a failed fetch keeps the last good set, because refusing every token while
the identity provider is briefly unreachable is an outage, while a key that
was good a minute ago is still the provider's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import logging
import os
import random
import ssl
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ingress.config.policy import JWKSSource, JWTProvider
from ingress.errors import EdgewardError

log = logging.getLogger("edgeward.policy.jwt")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey

MAX_JWKS_BYTES = 1 << 20
MIN_RSA_BITS = 2048
# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_CURVES: dict[str, type[ec.EllipticCurve]] = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
_JWK_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class PolicyMaterialError(EdgewardError):
    """A key file or JWKS that cannot be used; `path` is the config key, the message names the file and fix."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True, slots=True)
class VerifyKey:
    kid: str
    alg: str
    key: PublicKey | bytes  # bytes only for HS*: a shared secret never shares a type with a public key


class KeySet(Mapping[str, VerifyKey]):
    """Keys by kid: a plain dict lookup, so a hostile kid (`../../dev/null`, SQL) is just not found."""

    __slots__ = ("_by_kid", "single")

    def __init__(self, keys: Iterable[VerifyKey] = ()) -> None:
        by_kid: dict[str, VerifyKey] = {}
        for key in keys:
            if key.kid in by_kid:
                raise ValueError(f"duplicate kid {key.kid!r}")
            by_kid[key.kid] = key
        self._by_kid = by_kid
        self.single = next(iter(by_kid.values())) if len(by_kid) == 1 else None

    def __getitem__(self, kid: str) -> VerifyKey:
        return self._by_kid[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_kid)

    def __len__(self) -> int:
        return len(self._by_kid)

    def __repr__(self) -> str:
        return f"KeySet({', '.join(f'{k.kid!r}:{k.alg}' for k in self._by_kid.values())})"


class DuplicateKeyError(Exception):
    """Raised by `strict_json`; deliberately not a ValueError so callers can tell it from bad syntax."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise DuplicateKeyError
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes) -> Any:
    """RFC 8259 JSON with unique member names, UTF-8 only.

    Python's `json` keeps the last of duplicate members, as PyJWT does; a
    token whose `alg` or `sub` appears twice could then mean one thing to
    the issuer's parser and another to ours, so duplicates are refused.
    Raises DuplicateKeyError, or ValueError for anything else.
    """
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


# -- static keys ------------------------------------------------------------------------------------


def load_static_keys(provider: JWTProvider, at: str) -> KeySet:
    """The provider's `keys` and `jwks.file`, validated; raise PolicyMaterialError naming file, key path and fix."""
    keys: list[VerifyKey] = []
    for i, spec in enumerate(provider.keys):
        path = f"{at}.keys[{i}].file"
        material: PublicKey | bytes
        if spec.alg.startswith("HS"):
            material = _load_secret(spec.file, spec.alg, path)
        else:
            material = _load_public(spec.file, path)
            problem = fit_problem(spec.alg, material)
            if problem:
                raise PolicyMaterialError(path, f"{spec.file} holds {problem}")
        keys.append(VerifyKey(spec.kid, spec.alg, material))
    if provider.jwks is not None and provider.jwks.file:
        path = f"{at}.jwks.file"
        jwks = parse_jwks(_read(provider.jwks.file, path), provider.jwks, path, provider.jwks.file, strict=True)
        keys.extend(jwks.values())
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key.kid in seen:
            raise PolicyMaterialError(
                at, f"two keys share kid {key.kid!r}; give every key a distinct kid so a token names exactly one"
            )
        seen[key.kid] = i
    if len(keys) > 1 and "" in seen:
        raise PolicyMaterialError(
            at, "a key without kid among several keys can never be chosen; give every key a kid, or keep one key"
        )
    return KeySet(keys)


def _read(file: str, path: str) -> bytes:
    try:
        with open(file, "rb") as fh:
            return fh.read(MAX_JWKS_BYTES + 1)
    except FileNotFoundError:
        raise PolicyMaterialError(path, f"{file} does not exist; check the path") from None
    except OSError as exc:
        raise PolicyMaterialError(
            path, f"{file} cannot be read ({exc.strerror}); let the server user read it"
        ) from None


def _load_secret(file: str, alg: str, path: str) -> bytes:
    """One trailing newline is not part of the secret: `echo` and editors add it, issuers do not sign with it."""
    data = _read(file, path)
    if b"-----BEGIN " in data:
        kind = "a private key" if b"PRIVATE KEY-----" in data else "a public key"
        raise PolicyMaterialError(
            path,
            f"{file}: HMAC keys are secrets, this file holds {kind} (PEM); for {alg} give a file with the shared"
            " secret, or for a key pair set alg to RS256/ES256/EdDSA and give the public key",
        )
    secret = data.removesuffix(b"\n").removesuffix(b"\r")
    need = HMAC_MIN_BYTES[alg]
    if len(secret) < need:
        raise PolicyMaterialError(
            path,
            f"{file} holds a {len(secret)}-byte secret; {alg} needs at least {need} bytes (RFC 7518 §3.2),"
            f" e.g. `openssl rand -base64 {need} | tr -d '\\n' > {file}` on both sides",
        )
    with contextlib.suppress(OSError):
        if os.stat(file).st_mode & 0o077:
            log.warning(
                "HMAC secret file is readable by other users",
                extra={"event": "jwt_secret_mode", "config_path": path, "file": file},
            )
    return secret


def _load_public(file: str, path: str) -> PublicKey:
    data = _read(file, path)
    if b"PRIVATE KEY-----" in data:
        raise PolicyMaterialError(
            path,
            f"{file} holds a private key; the edge only verifies, so give it the public key"
            f" (`openssl pkey -in {file} -pubout`) and keep the private key with the issuer",
        )
    key: Any
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise PolicyMaterialError(path, f"{file} holds no PEM public key or certificate") from None
    if not isinstance(key, PublicKey):
        raise PolicyMaterialError(
            path, f"{file} holds a {type(key).__name__}, which JWT cannot use; use an RSA, EC or Ed25519 key"
        )
    return key


def describe(key: PublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"an RSA {key.key_size}-bit key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC {key.curve.name} key"
    return "an Ed25519 key" if isinstance(key, ed25519.Ed25519PublicKey) else "an Ed448 key"


def fit_problem(alg: str, key: PublicKey) -> str | None:
    """Why `key` must not verify `alg` (as the end of a sentence with the fix), or None if it fits."""
    if alg[:2] in ("RS", "PS"):
        if not isinstance(key, rsa.RSAPublicKey):
            return f"{describe(key)}, but {alg} needs an RSA key; use the issuer's RSA public key or change alg"
        if key.key_size < MIN_RSA_BITS:
            return f"{describe(key)}; {alg} needs at least {MIN_RSA_BITS} bits (NIST SP 800-131A); rotate the key"
        return None
    if alg in _CURVES:
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _CURVES[alg]):
            return f"{describe(key)}, but {alg} needs an EC {_JWK_CURVES[alg]} key; use that curve or change alg"
        return None
    if alg == "EdDSA":
        if not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            return f"{describe(key)}, but EdDSA needs an Ed25519 or Ed448 key; change alg to match the key"
        return None
    return f"{describe(key)}, but {alg} is not a public-key algorithm; HMAC secrets come from a secret file"


# -- JWKS ------------------------------------------------------------------------------------------


def _jwk_fits(alg: str, kty: Any, crv: Any) -> bool:
    if alg[:2] in ("RS", "PS"):
        return bool(kty == "RSA")
    if alg in _JWK_CURVES:
        return bool(kty == "EC" and crv == _JWK_CURVES[alg])
    return bool(alg == "EdDSA" and kty == "OKP" and crv in ("Ed25519", "Ed448"))


def parse_jwks(data: bytes, source: JWKSSource, path: str, origin: str, *, strict: bool) -> KeySet:
    """Usable signature keys of a JWKS document.

    `strict` (a file the operator controls): a dangerous or broken key is a
    PolicyMaterialError. Not strict (a URL): such a key is skipped with a
    warning, because one bad key the provider publishes must not take down
    the keys that work. Keys not meant for us (`use: enc`, an algorithm we
    do not accept) are skipped in both cases. A document that is not a
    JWKS at all is always an error.
    """
    if len(data) > MAX_JWKS_BYTES:
        raise PolicyMaterialError(path, f"{origin} is larger than {MAX_JWKS_BYTES} bytes; that is not a key set")
    try:
        doc = strict_json(data)
    except DuplicateKeyError:
        raise PolicyMaterialError(path, f"{origin}: a JSON object repeats a member name; fix the JWKS") from None
    except ValueError:
        raise PolicyMaterialError(path, f'{origin} is not JSON; expected a JWKS document ({{"keys": [...]}})') from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise PolicyMaterialError(path, f'{origin} has no "keys" array; expected a JWKS document (RFC 7517 §5)')

    def reject(index: int, kid: str, why: str) -> None:
        if strict:
            raise PolicyMaterialError(path, f"{origin}: keys[{index}] (kid {kid!r}) {why}")
        log.warning(
            "JWKS key refused",
            extra={"event": "jwks_key_refused", "config_path": path, "origin": origin, "kid": kid, "why": why},
        )

    def skip(kid: str, why: str) -> None:
        log.warning(
            "JWKS key skipped",
            extra={"event": "jwks_key_skipped", "config_path": path, "origin": origin, "kid": kid, "why": why},
        )

    keys: dict[str, VerifyKey] = {}
    for index, jwk in enumerate(doc["keys"]):
        if not isinstance(jwk, dict):
            reject(index, "", "is not a JSON object")
            continue
        kid = jwk.get("kid", "")
        if not isinstance(kid, str):
            reject(index, "", "has a kid that is not a string")
            continue
        kty, crv, alg = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
        # (1) A JWKS is published; a shared secret or private half in it is a leak, never a key to trust.
        if kty == "oct":
            reject(
                index,
                kid,
                "is a symmetric (kty oct) key; a JWKS never supplies a shared secret, configure HS* keys"
                " under `keys` with a secret file",
            )
            continue
        if any(member in jwk for member in _PRIVATE_JWK_MEMBERS):
            reject(index, kid, "holds private key material; publish only the public key")
            continue
        # (2) Keys for something else: encryption, or an algorithm we were not told to accept.
        use, ops = jwk.get("use"), jwk.get("key_ops")
        if use is not None and use != "sig":
            skip(kid, f"use is {use!r}, not sig")
            continue
        if isinstance(ops, list) and "verify" not in ops:
            skip(kid, "key_ops does not include verify")
            continue
        if alg is None:
            fitting = [a for a in source.algorithms if _jwk_fits(a, kty, crv)]
            if len(fitting) != 1:
                skip(kid, f"has no alg and {len(fitting)} configured algorithms fit kty {kty!r}; give it an alg")
                continue
            alg = fitting[0]
        elif alg not in source.algorithms:
            skip(kid, f"alg {alg!r} is not in jwks.algorithms")
            continue
        # (3) Build the key for exactly that algorithm and check that it fits, as for a PEM file.
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
        except jwt.PyJWTError as exc:
            reject(index, kid, f"cannot be read as a {alg} key ({type(exc).__name__})")
            continue
        if not isinstance(key, PublicKey):
            reject(index, kid, f"is not a public key for {alg}")
            continue
        problem = fit_problem(alg, key)
        if problem:
            reject(index, kid, f"is {problem}")
            continue
        # (4) One kid, one key: a token naming a kid must not get to pick between two.
        if kid in keys:
            if strict:
                raise PolicyMaterialError(path, f"{origin}: kid {kid!r} appears twice; kids must be unique")
            skip(kid, "duplicate kid; the first key with this kid is kept")
            continue
        keys[kid] = VerifyKey(kid, alg, key)
    return KeySet(keys.values())


# -- remote JWKS -----------------------------------------------------------------------------------


class _FetchFailed(Exception):
    pass


class RemoteJWKS:
    """A JWKS URL, refreshed in the background; `keys` is always the last good set.

    Fetching uses `http.client` in a worker thread rather than urllib's
    opener on purpose: the opener follows redirects (possibly off https or
    to a host the CA pins nothing about) and reads proxies from the
    environment. Here a redirect is a failed fetch.

    The refresh task runs on the loop; the fetch and the key parsing run in
    the loop's default executor, and the new set is installed back on the
    loop thread, so readers never see a half-built set and subscribers
    (verifier caches) are cleared on the thread that reads them.
    """

    def __init__(self, source: JWKSSource, at: str, *, first_retry: float = 1.0) -> None:
        self.source = source
        self.at = at
        self.fetches = 0
        self.failures = 0
        self._first_retry = first_retry
        self._keys = KeySet()
        self._listeners: list[weakref.WeakMethod[Callable[[], None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._last_start = -float("inf")
        self._digest = b""
        parts = urllib.parse.urlsplit(source.url)
        if parts.scheme != "https" or not parts.hostname:
            raise PolicyMaterialError(f"{at}.url", f"{source.url!r} is not an https:// URL with a host")
        self._host = parts.hostname
        self._port = parts.port or 443
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._shown = f"https://{parts.netloc.rpartition('@')[2]}{parts.path}"  # no credentials or query in logs
        try:
            self._tls = ssl.create_default_context(cafile=source.ca or None)
        except (OSError, ssl.SSLError) as exc:
            raise PolicyMaterialError(
                f"{at}.ca",
                f"{source.ca} is not a readable PEM CA bundle ({exc});"
                " give the CA that issued the JWKS server's certificate",
            ) from None
        self._tls.minimum_version = ssl.TLSVersion.TLSv1_2

    @property
    def keys(self) -> KeySet:
        return self._keys

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call the bound method `callback` on the loop thread whenever the key set changes.

        Held weakly: a RemoteJWKS outlives config reloads, the verifiers of
        old configs must not be kept alive (or called) by it.
        """
        self._listeners = [ref for ref in self._listeners if ref() is not None]
        self._listeners.append(weakref.WeakMethod(callback))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None:
            return
        self._loop = loop
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def unknown_kid(self) -> None:
        """A token named a kid we lack: the provider may have rotated. Refresh early, but at a bounded rate."""
        if self._loop is None or self._wake is None:
            return
        if self._loop.time() - self._last_start >= self.source.min_refresh_interval:
            self._wake.set()

    async def _run(self) -> None:
        assert self._loop is not None and self._wake is not None
        delay = 0.0
        failed_in_row = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()
            self._last_start = self._loop.time()
            if await self._refresh():
                failed_in_row = 0
                delay = self.source.refresh_interval
            else:
                failed_in_row += 1
                # Exponential backoff with jitter: many edges must not retry a recovering provider in step.
                ceiling = min(self.source.max_backoff, self._first_retry * 2 ** min(failed_in_row - 1, 30))
                delay = random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret

    async def _refresh(self) -> bool:
        assert self._loop is not None
        self.fetches += 1
        try:
            digest, keys = await self._loop.run_in_executor(None, self._fetch_and_parse, self._digest)
        except Exception as exc:  # any failure, expected or not, must leave the refresh loop running
            self.failures += 1
            log.warning(
                "JWKS fetch failed; keeping the last good key set",
                extra={
                    "event": "jwks_fetch_failed",
                    "config_path": f"{self.at}.url",
                    "url": self._shown,
                    "error": str(exc) or type(exc).__name__,
                    "keys": len(self._keys),
                },
            )
            return False
        if keys is None:
            return True
        self._digest = digest
        if keys != self._keys:
            self._keys = keys
            log.info(
                "JWKS key set changed",
                extra={"event": "jwks_keys_changed", "url": self._shown, "kids": sorted(keys)},
            )
            for ref in self._listeners:
                callback = ref()
                if callback is not None:
                    callback()
        return True

    def _fetch_and_parse(self, installed: bytes) -> tuple[bytes, KeySet | None]:
        """The document's digest and keys; no keys if it is the document already installed.

        An unchanged document is not parsed again: no key construction and
        no repeated warnings about the keys it skips, every refresh.
        """
        body = self._fetch()
        digest = hashlib.sha256(body).digest()
        if digest == installed:
            return digest, None
        keys = parse_jwks(body, self.source, f"{self.at}.url", self._shown, strict=False)
        if not keys:
            # An empty set would refuse every token; treat it as a failed fetch and keep what worked.
            raise _FetchFailed("the JWKS holds no usable key")
        return digest, keys

    def _fetch(self) -> bytes:
        deadline = time.monotonic() + self.source.timeout
        conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.source.timeout, context=self._tls)
        try:
            conn.request(
                "GET",
                self._target,
                headers={"Accept": "application/jwk-set+json, application/json", "User-Agent": "edgeward"},
            )
            resp = conn.getresponse()
            if resp.status != 200:
                raise _FetchFailed(f"HTTP {resp.status}")
            length = resp.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_JWKS_BYTES:
                raise _FetchFailed(f"response of {length} bytes exceeds {MAX_JWKS_BYTES}")
            body = bytearray()
            while chunk := resp.read1(65536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise _FetchFailed(f"response exceeds {MAX_JWKS_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise _FetchFailed(f"fetch took longer than {self.source.timeout}s")
            return bytes(body)
        finally:
            conn.close()

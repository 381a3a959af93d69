"""Which origin of a pool takes the next request.

A pick runs once per proxied request (and once per retry), so it takes
what it needs as arguments the caller already holds, allocates nothing on
the common path, and answers an index into the pool's origin list:

- `skip` is the set of origins not to use: the pool's unusable ones
  (`PoolHealth.unusable(now)`, usually the same empty set) and, on a
  retry, those already tried (`down | tried`: the only copy is made on
  the rare retry). A set probe is cheaper than calling a predicate.
- `in_flight` is the pool's per-origin count of requests in progress,
  read only by LeastRequests.

None means no origin may be used, and the caller answers 503.
"""

from __future__ import annotations

import functools
import hashlib
from bisect import bisect_right
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Protocol

from ingress.config.upstream import Upstream
from ingress.protocol.events import Request

KeyFunction = Callable[[Request], "bytes | None"]

# Ketama's choice: with 160 points per origin the share of keys each origin owns stays within a
# few percent of 1/N, while a ring of 100 origins is still only 16,000 points to build at reload.
VNODES = 160
MEMO_SIZE = 4096
MEMO_KEY_MAX = 256


class Balancer(Protocol):
    """What the proxy calls; `key_of` is None for balancers that ignore the key, so they cost no key extraction."""

    key_of: KeyFunction | None

    def pick(self, key: bytes | None, skip: AbstractSet[int], in_flight: Sequence[int]) -> int | None: ...


class RoundRobin:
    """Origins in turn.

    An origin in `skip` is walked past and the turn goes on from the one
    chosen, so the usable origins share its load evenly rather than its
    successor taking a double share.
    """

    __slots__ = ("_next", "key_of", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._next = 0
        self.key_of: KeyFunction | None = None

    def pick(self, key: bytes | None, skip: AbstractSet[int], in_flight: Sequence[int]) -> int | None:
        size = self.size
        i = self._next
        if not skip:
            self._next = i + 1 if i + 1 < size else 0
            return i
        for _ in range(size):
            if i not in skip:
                self._next = i + 1 if i + 1 < size else 0
                return i
            i = i + 1 if i + 1 < size else 0
        return None


class LeastRequests:
    """The usable origin with fewest requests in flight, ties broken in turn.

    A full scan, not power-of-two-choices: P2C exists for balancers that
    read stale, shared load figures, where always choosing the minimum makes
    every balancer pile onto the same origin. Here the counts are this
    worker's own and exact, pools are a handful of origins (a scan is tens
    of nanoseconds per origin), and P2C would cost two random draws. The
    scan starts one origin further on each pick, so among equally loaded
    origins (an idle pool) the choice rotates instead of always hitting the first.
    """

    __slots__ = ("_next", "key_of", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._next = 0
        self.key_of: KeyFunction | None = None

    def pick(self, key: bytes | None, skip: AbstractSet[int], in_flight: Sequence[int]) -> int | None:
        size = self.size
        start = self._next
        self._next = start + 1 if start + 1 < size else 0
        best = -1
        least = 0
        i = start
        for _ in range(size):
            if not (skip and i in skip):
                load = in_flight[i]
                if best < 0 or load < least:
                    best, least = i, load
                    if load == 0:
                        break  # nothing beats an idle origin
            i = i + 1 if i + 1 < size else 0
        return best if best >= 0 else None


class ConsistentHash:
    """One key, one origin, for as long as that origin is usable: a hash ring with `vnodes` points per origin.

    Points are placed by hashing the origin's *name*, not its position, so
    a reload that reorders, adds or removes origins leaves every other
    origin's points, and therefore its keys, where they were: removing one
    of N origins moves only the ~1/N of keys it owned. An unusable origin
    is walked past to the next point owned by a usable one, so the same
    holds while an origin is ejected or unhealthy, and its keys come back
    to it when it does. Requests without a key (no cookie, no header) are
    spread round robin rather than all landing on one origin.
    """

    __slots__ = ("_fallback", "_memo", "_owners", "_points", "key_of", "size")

    def __init__(self, names: Sequence[str], key_of: KeyFunction, vnodes: int = VNODES) -> None:
        ring = sorted(
            (_hash64(b"%s#%d" % (name.encode(), v)), i) for i, name in enumerate(names) for v in range(vnodes)
        )
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]
        self.size = len(names)
        self.key_of: KeyFunction | None = key_of
        self._fallback = RoundRobin(self.size)
        # Key -> ring position: the same sessions and clients come back, and a dict probe is a tenth
        # of a hash and a bisection. Cleared when full, so distinct keys cost time, never memory.
        self._memo: dict[bytes, int] = {}

    def pick(self, key: bytes | None, skip: AbstractSet[int], in_flight: Sequence[int]) -> int | None:
        if key is None:
            return self._fallback.pick(None, skip, in_flight)
        owners = self._owners
        if not owners:
            return None
        memo = self._memo
        at = memo.get(key)
        if at is None:
            at = bisect_right(self._points, _hash64(key))
            if at == len(owners):
                at = 0
            if len(key) <= MEMO_KEY_MAX:
                if len(memo) >= MEMO_SIZE:
                    memo.clear()
                memo[key] = at
        owner = owners[at]
        if not skip or owner not in skip:
            return owner
        if len(skip) >= self.size and all(i in skip for i in range(self.size)):
            return None
        # Each point's owner is usable with probability (usable / N), so the walk is short.
        last = len(owners) - 1
        i = at
        for _ in range(last):
            i = i + 1 if i < last else 0
            owner = owners[i]
            if owner not in skip:
                return owner
        return None


def _hash64(data: bytes) -> int:
    """Stable across processes and releases (unlike `hash()`), so every worker and every restart agrees on the ring."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def compile_key(hash_on: str) -> KeyFunction:
    """The function reading a request's balancing key, chosen once per config.

    `client_ip` is the client as the gate resolved it (behind trusted
    proxies, the real client). `header:NAME` is the whole field value
    (repeated fields arrive joined). `cookie:NAME` is the first cookie of
    that name, unquoted. An absent or empty key is None: hashing "" would
    send every request without one to the same origin.
    Raises ValueError for any other form.
    """
    kind, sep, name = hash_on.partition(":")
    if kind == "client_ip" and not sep:
        return _client_ip
    if kind == "header" and name:
        field = name.strip().lower().encode("latin-1")
        return functools.partial(_header, field)
    if kind == "cookie" and name:
        return functools.partial(_cookie, name.strip().encode("latin-1"))
    raise ValueError(f"hash_on must be client_ip, header:NAME or cookie:NAME, not {hash_on!r}")


@functools.lru_cache(maxsize=64)
def _compiled(hash_on: str) -> KeyFunction:
    return compile_key(hash_on)


def hash_key(hash_on: str, request: Request) -> bytes | None:
    """The balancing key of one request; for a hot loop, hold `compile_key(hash_on)` instead."""
    return _compiled(hash_on)(request)


def _client_ip(request: Request) -> bytes | None:
    client = request.peer.client
    return client.encode("latin-1") if client else None


def _header(field: bytes, request: Request) -> bytes | None:
    return request.headers.get(field) or None


def _cookie(name: bytes, request: Request) -> bytes | None:
    """RFC 6265 section 5.4: `name=value` pairs separated by `;` (and optional space); names are case-sensitive."""
    header = request.headers.get(b"cookie")
    if header is None or name not in header:
        return None
    for pair in header.split(b";"):
        key, eq, value = pair.partition(b"=")
        if eq and key.strip(b" \t") == name:
            value = value.strip(b" \t")
            if len(value) >= 2 and value[0] == 0x22 and value[-1] == 0x22:
                value = value[1:-1]
            return value or None
    return None


def build_balancer(upstream: Upstream, n_origins: int | None = None) -> Balancer:
    """The balancer of one pool, built at config load.

    `n_origins` defaults to the configured origins. The hash ring is named
    by `upstream.origins` when they match it, so it survives reordering;
    otherwise by index.
    """
    size = len(upstream.origins) if n_origins is None else n_origins
    if size < 1:
        raise ValueError(f"upstream {upstream.name!r} has no origins")
    if upstream.balance == "least_requests":
        return LeastRequests(size)
    if upstream.balance == "hash":
        names = upstream.origins if len(upstream.origins) == size else tuple(str(i) for i in range(size))
        return ConsistentHash(names, compile_key(upstream.hash_on))
    return RoundRobin(size)

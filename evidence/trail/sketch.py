"""Bounded summaries of unbounded streams: a latency histogram, a heavy-hitters counter, a distinct counter.

A trail can hold any number of spans from any number of clients, so nothing
here grows with the input. Each structure is exact while the input is small
and says so when it is not (`exact`), so a report never presents an
estimate as a count.

- `Histogram`: log-linear buckets (HdrHistogram's layout): every power of two
  is split into `SUB_BUCKETS` equal buckets, so a value is known to within
  1/64 of itself (about 1.6 %) wherever it lies between 1 ns and hours.
  Buckets are a sparse dict; all the buckets a run can ever use number
  64 octaves x 32, and in practice a few hundred. Histograms merge by adding.
- `TopCounter`: Misra-Gries heavy hitters with `capacity` counters. While
  at most `capacity` distinct keys have been seen it is an exact Counter.
  After that, a new key arriving at a full table decrements every counter
  by one (amortised O(1): each decrement removes `capacity` units of count
  that were added one at a time). A kept key's true count is between its
  counter and counter + `decrements`; any key whose true count exceeds
  total / (capacity + 1) is guaranteed to be kept. The report prints the
  bound alongside each estimated count.
- `Distinct`: K-minimum-values distinct counting. Keys are hashed to 64
  bits (BLAKE2b, so the estimate is the same in every run, unlike `hash`);
  the `k` smallest hashes are kept. Fewer than `k` distinct keys are
  counted exactly; beyond that, (k - 1) / (k-th smallest / 2^64) estimates
  the count with a relative standard error of about 1 / sqrt(k - 2).
  Sketches merge by union, so a window's sketch and a run of windows'
  sketches answer "how many distinct clients" alike.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Iterable
from typing import Final, Generic, TypeVar

SUB_BITS: Final = 5
SUB_BUCKETS: Final = 1 << SUB_BITS  # linear buckets per power of two
_HALF: Final = SUB_BUCKETS * 2


def bucket_of(value: int) -> int:
    """The histogram bucket of a non-negative integer value (values below 1 count as 1)."""
    mantissa, exponent = math.frexp(value if value > 0 else 1)  # value = mantissa * 2**exponent, 0.5 <= mantissa < 1
    return (exponent << SUB_BITS) | int((mantissa - 0.5) * _HALF)


def bucket_bounds(bucket: int) -> tuple[float, float]:
    """[lower, upper) of the values in `bucket`."""
    exponent, sub = bucket >> SUB_BITS, bucket & (SUB_BUCKETS - 1)
    return (
        math.ldexp(0.5 + sub / _HALF, exponent),
        math.ldexp(0.5 + (sub + 1) / _HALF, exponent),
    )


class Histogram:
    """Counts of values (nanoseconds here) in log-linear buckets, with the exact count, sum, min and max."""

    __slots__ = ("buckets", "count", "maximum", "minimum", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.minimum = 0
        self.maximum = 0

    def add(self, value: int) -> None:
        value = max(value, 0)
        bucket = bucket_of(value)
        self.buckets[bucket] = self.buckets.get(bucket, 0) + 1
        if not self.count or value < self.minimum:
            self.minimum = value
        if value > self.maximum:  # noqa: PLR1730 - the hot path: a compare is cheaper than max()
            self.maximum = value
        self.count += 1
        self.total += value

    def merge(self, other: Histogram) -> None:
        if not other.count:
            return
        buckets = self.buckets
        for bucket, n in other.buckets.items():
            buckets[bucket] = buckets.get(bucket, 0) + n
        self.minimum = other.minimum if not self.count else min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        self.count += other.count
        self.total += other.total

    def quantile(self, q: float) -> float:
        """The nearest-rank q-quantile, as the middle of its bucket clamped to the exact min and max; 0 when empty."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                lower, upper = bucket_bounds(bucket)
                return min(max((lower + upper) / 2, float(self.minimum)), float(self.maximum))
        return float(self.maximum)  # pragma: no cover - the counts always reach the rank

    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


K = TypeVar("K", bound=Hashable)


class TopCounter(Generic[K]):
    """Misra-Gries heavy hitters: exact below `capacity` distinct keys, bounded and conservative above."""

    __slots__ = ("capacity", "counts", "decrements", "total")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.counts: dict[K, int] = {}
        self.total = 0  # everything added, kept or not
        self.decrements = 0  # how far below its true count any kept counter may be

    def add(self, key: K, n: int = 1) -> None:
        self.total += n
        counts = self.counts
        count = counts.get(key)
        if count is not None:
            counts[key] = count + n
        elif len(counts) < self.capacity:
            counts[key] = n
        else:
            self._make_room(key, n)

    def _make_room(self, key: K, n: int) -> None:
        # (1) Take the same amount from every counter and from the newcomer: at most the smallest counter.
        counts = self.counts
        step = min(n, *counts.values())
        self.decrements += step
        # (2) Counters that reach zero leave; the newcomer takes a freed slot with what is left of it.
        for existing in [k for k, c in counts.items() if c <= step]:
            del counts[existing]
        for existing in counts:
            counts[existing] -= step
        if n > step and len(counts) < self.capacity:
            counts[key] = n - step

    @property
    def exact(self) -> bool:
        return self.decrements == 0

    def top(self, limit: int) -> list[tuple[K, int]]:
        """The `limit` largest counters, largest first, ties by key (deterministic output)."""
        return sorted(self.counts.items(), key=lambda item: (-item[1], str(item[0])))[:limit]

    def distinct_kept(self) -> int:
        return len(self.counts)


_MASK: Final = (1 << 64) - 1


def hash64(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class Distinct:
    """K-minimum-values distinct counter (see the module docstring)."""

    __slots__ = ("_hashes", "_threshold", "k", "saturated")

    def __init__(self, k: int = 1024) -> None:
        if k < 3:
            raise ValueError("k must be at least 3")
        self.k = k
        self._hashes: set[int] = set()
        self._threshold = _MASK + 1  # hashes at or above it cannot be among the k smallest
        self.saturated = False  # more than k distinct keys were seen: estimate() is an estimate

    def add(self, key: str) -> None:
        self.add_hash(hash64(key))

    def add_hash(self, value: int) -> None:
        if value >= self._threshold or value in self._hashes:
            return
        self._hashes.add(value)
        if len(self._hashes) >= 2 * self.k:
            self._trim()

    def _trim(self) -> None:
        kept = sorted(self._hashes)[: self.k]
        self._hashes = set(kept)
        self._threshold = kept[-1] + 1
        self.saturated = True

    def merge(self, other: Distinct) -> None:
        self._hashes |= other._hashes
        self._threshold = min(self._threshold, other._threshold)
        self.saturated = self.saturated or other.saturated
        if self.saturated:
            self._hashes = {h for h in self._hashes if h < self._threshold}
        if len(self._hashes) > self.k and (self.saturated or len(self._hashes) >= 2 * self.k):
            self._trim()

    def update(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.add(key)

    @property
    def exact(self) -> bool:
        return not self.saturated

    def estimate(self) -> int:
        if not self.saturated:
            return len(self._hashes)
        kth = sorted(self._hashes)[self.k - 1]
        return round((self.k - 1) * (_MASK + 1) / (kth + 1))


class CappedSet:
    """Up to `capacity` distinct names kept, the rest only counted: for lists a report prints in full."""

    __slots__ = ("capacity", "items", "overflow")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: set[str] = set()
        self.overflow = False

    def add(self, item: str) -> None:
        if item in self.items:
            return
        if len(self.items) < self.capacity:
            self.items.add(item)
        else:
            self.overflow = True

    def merge(self, other: CappedSet) -> None:
        for item in other.items:
            self.add(item)
        self.overflow = self.overflow or other.overflow

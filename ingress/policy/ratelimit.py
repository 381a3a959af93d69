"""Token buckets keyed by client, with memory bounded under a flood of distinct keys.

The clock is passed in (`now`, in seconds, monotonic), so tests step time
instead of sleeping. A bucket is refilled lazily when its key is seen, not
by a timer: an idle key costs nothing but its entry.

Memory is bounded by `max_keys`: past it, the least recently used bucket is
evicted, and if its key comes back it starts with a full bucket. That fails
open, deliberately. The alternative, refusing keys that do not fit, lets
anyone who can present many keys (many source addresses) lock out every
new client. Failing open means a client cycling through more than
`max_keys` keys escapes the per-key limit, but a client with that many
addresses was never stopped by a per-address limit (it gets a burst per
address anyway); connection caps and upstream capacity are the defence
there. A bucket that had refilled by the time it is evicted loses nothing.
`early_evictions` counts the evictions that did forget spent tokens: when
it grows, raise `max_keys` to at least (new keys per second) * burst / rate.
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBuckets:
    """One bucket of `burst` tokens per key, refilled at `rate` tokens per second."""

    __slots__ = ("_buckets", "burst", "early_evictions", "evicted", "max_keys", "rate")

    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst >= 1 and max_keys >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self.evicted = 0
        self.early_evictions = 0
        # key -> [tokens, last refill time]; a list so a hit updates in place, least recently used first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """0.0 if a token was taken; else the seconds until one will be there (send ceil() as Retry-After)."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                self._evict(now)
            buckets[key] = [self.burst - 1.0, now]
            return 0.0
        buckets.move_to_end(key)
        tokens, last = bucket
        if now > last:
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _evict(self, now: float) -> None:
        _, (tokens, last) = self._buckets.popitem(last=False)
        self.evicted += 1
        if tokens + max(0.0, now - last) * self.rate < self.burst:
            self.early_evictions += 1

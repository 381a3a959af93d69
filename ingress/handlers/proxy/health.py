"""Whether each origin of a pool may take requests: active probes and passive outlier detection.

Two independent verdicts make an origin unusable:

- *unhealthy*, from active probes: `unhealthy_threshold` failing probes in
  a row take it out, `healthy_threshold` passing ones bring it back.
  Origins start healthy, so a fresh worker serves at once rather than
  waiting a probe round.
- *ejected*, from real traffic: `consecutive_5xx` answers or
  `consecutive_failures` connect failures, resets and timeouts in a row
  eject it for a while. A passing probe does not cut an ejection short:
  the probe path can be fine while real requests fail.

The state is pure (the caller passes `now`, a monotonic float) and O(1)
per event; `PoolHealth.unusable(now)` is the set a balancer skips, kept
up to date as transitions happen rather than rebuilt per request.
Transitions, never individual probes or answers, are logged on
`edgeward.upstream`, so a flapping origin costs a log line per flap, not
per request. `ActiveChecker` is the only part that does I/O: it runs
the injected probe on the event loop and feeds the results in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet

from ingress.config.upstream import HealthCheck, OutlierDetection

log = logging.getLogger("edgeward.upstream")

# A repeat offender stays out longer each time: the n-th ejection in a row lasts n x ejection_time,
# up to this many times it (Envoy's scheme, whose default cap is also 10 x 30 s = 300 s). The streak
# is forgotten once an origin has stayed in for the longest ejection, so an old incident costs nothing.
MAX_EJECTION_MULTIPLIER = 10


class OriginHealth:
    """The counters of one origin; PoolHealth owns and changes them."""

    __slots__ = (
        "ejected_until",
        "ejections",
        "errors_5xx",
        "fails",
        "failures",
        "healthy",
        "passes",
        "readmitted_at",
        "streak",
    )

    def __init__(self) -> None:
        self.healthy = True
        self.passes = 0  # consecutive passing probes
        self.fails = 0  # consecutive failing probes
        self.errors_5xx = 0  # consecutive 5xx answers
        self.failures = 0  # consecutive connect failures, resets, timeouts
        self.ejected_until = 0.0  # 0: not ejected
        self.ejections = 0  # total, for metrics
        self.streak = 0  # ejections in a row, for the growing ejection time
        self.readmitted_at = -math.inf

    @property
    def ejected(self) -> bool:
        return self.ejected_until > 0.0


class PoolHealth:
    """The health of every origin of one pool, and the pool-wide cap on ejections.

    The cap needs the whole pool: at most `max_ejected_percent` of its
    origins are ejected at once (rounding down, so 50% of one origin is
    none), so outlier detection can never empty a pool on its own; an
    origin over the cap keeps serving and is ejected at its next failure
    once there is room. Refusals are counted in `ejections_refused`.
    """

    __slots__ = (
        "_check",
        "_next_expiry",
        "_outlier",
        "down",
        "ejected",
        "ejections_refused",
        "healthy",
        "names",
        "origins",
        "upstream",
    )

    def __init__(
        self, upstream: str, names: Sequence[str], outlier: OutlierDetection, check: HealthCheck | None = None
    ) -> None:
        self.upstream = upstream
        self.names = tuple(names)
        self.origins = [OriginHealth() for _ in names]
        self._outlier = outlier
        self._check = check if check is not None else HealthCheck()
        self.down: set[int] = set()  # unhealthy or ejected
        self.ejected = 0  # currently ejected
        self.healthy = len(self.origins)  # currently passing active checks
        self.ejections_refused = 0
        self._next_expiry = math.inf

    def __len__(self) -> int:
        return len(self.origins)

    @property
    def ejections_total(self) -> list[int]:
        return [origin.ejections for origin in self.origins]

    # what balancers ask ------------------------------------------------------------------
    def unusable(self, now: float) -> AbstractSet[int]:
        """The origins a pick must skip; the same set object every time (do not change it; copy to add to it)."""
        if now >= self._next_expiry:
            self._expire(now)
        return self.down

    def usable(self, i: int, now: float) -> bool:
        return i not in self.unusable(now)

    # passive outlier detection -------------------------------------------------------------
    def record_response(self, i: int, status: int, now: float) -> bool:
        """An answer from origin `i`; True when it got the origin ejected.

        Any answer proves the origin reachable, so it ends a run of connect failures.
        """
        origin = self.origins[i]
        origin.failures = 0
        if status < 500:
            origin.errors_5xx = 0
            return False
        origin.errors_5xx += 1
        limit = self._outlier.consecutive_5xx
        return bool(limit) and origin.errors_5xx >= limit and self.eject(i, now)

    def record_failure(self, i: int, now: float) -> bool:
        """No answer from origin `i` (connect failure, reset, timeout); True when it got the origin ejected."""
        origin = self.origins[i]
        origin.failures += 1
        limit = self._outlier.consecutive_failures
        return bool(limit) and origin.failures >= limit and self.eject(i, now)

    def eject(self, i: int, now: float) -> bool:
        """Take origin `i` out for a while, unless it already is or the pool's cap is reached."""
        origin = self.origins[i]
        if now >= self._next_expiry:
            self._expire(now)  # the cap counts only ejections still running
        if origin.ejected:
            return False
        outlier = self._outlier
        if (self.ejected + 1) * 100 > outlier.max_ejected_percent * len(self.origins):
            self.ejections_refused += 1
            return False
        base = outlier.ejection_time
        if now - origin.readmitted_at >= base * MAX_EJECTION_MULTIPLIER:
            origin.streak = 0
        origin.streak = min(origin.streak + 1, MAX_EJECTION_MULTIPLIER)
        seconds = base * origin.streak
        origin.ejected_until = now + seconds
        origin.ejections += 1
        self.ejected += 1
        self.down.add(i)
        self._next_expiry = min(self._next_expiry, origin.ejected_until)
        log.warning(
            "origin %s of %s ejected for %.0f s",
            self.names[i],
            self.upstream,
            seconds,
            extra={
                "event": "upstream.ejected",
                "upstream": self.upstream,
                "origin": self.names[i],
                "seconds": seconds,
                "ejected": self.ejected,
            },
        )
        return True

    def _expire(self, now: float) -> None:
        """Readmit every origin whose ejection is over, with its counters reset so one more error is not enough."""
        following = math.inf
        for i, origin in enumerate(self.origins):
            until = origin.ejected_until
            if not until:
                continue
            if until > now:
                following = min(following, until)
                continue
            origin.ejected_until = 0.0
            origin.readmitted_at = until
            origin.errors_5xx = origin.failures = 0
            self.ejected -= 1
            if origin.healthy:
                self.down.discard(i)
            log.info(
                "origin %s of %s readmitted",
                self.names[i],
                self.upstream,
                extra={"event": "upstream.readmitted", "upstream": self.upstream, "origin": self.names[i]},
            )
        self._next_expiry = following

    # active checks ---------------------------------------------------------------------------
    def record_probe(self, i: int, passed: bool, now: float) -> bool:
        """One probe's outcome for origin `i`; True when it changed the origin's healthy state."""
        origin = self.origins[i]
        check = self._check
        if passed:
            origin.fails = 0
            origin.passes += 1
            if origin.healthy or origin.passes < check.healthy_threshold:
                return False
            origin.healthy = True
            self.healthy += 1
            if not origin.ejected:
                self.down.discard(i)
            log.info(
                "origin %s of %s is healthy",
                self.names[i],
                self.upstream,
                extra={"event": "upstream.healthy", "upstream": self.upstream, "origin": self.names[i]},
            )
            return True
        origin.passes = 0
        origin.fails += 1
        if not origin.healthy or origin.fails < check.unhealthy_threshold:
            return False
        origin.healthy = False
        self.healthy -= 1
        self.down.add(i)
        log.warning(
            "origin %s of %s is unhealthy after %d failed probes",
            self.names[i],
            self.upstream,
            origin.fails,
            extra={"event": "upstream.unhealthy", "upstream": self.upstream, "origin": self.names[i]},
        )
        return True


Probe = Callable[[int], Awaitable[int]]


class ActiveChecker:
    """Probes every origin of a pool every `interval` seconds on the event loop, and tells PoolHealth.

    Each origin has its own task, first probed after a random fraction of
    the interval, so the origins of a pool and the workers of a host do
    not probe in lockstep; after that the period is fixed (measured from
    one probe's start to the next), which keeps the spread. A probe that
    overruns delays the next instead of overlapping it. `probe(i)` is
    injected (the proxy's own client, with the check's path and Host): it
    returns the status and raises on any failure; `timeout` is applied
    here. Nothing is logged per probe: PoolHealth logs transitions.
    A check without a path is off, and `start()` does nothing.
    """

    __slots__ = ("_clock", "_rng", "_stopping", "_tasks", "config", "loop", "pool", "probe")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: HealthCheck,
        pool: PoolHealth,
        probe: Probe,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.loop = loop
        self.config = config
        self.pool = pool
        self.probe = probe
        self._clock = clock  # the clock PoolHealth's other callers pass as `now`
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not a secret
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: list[asyncio.Task[None]] = []

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        if self._tasks or not self.config.path:
            return
        interval = self.config.interval
        self._tasks = [
            self.loop.create_task(
                self._run(i, self._rng.uniform(0.0, interval)), name=f"health:{self.pool.upstream}:{i}"
            )
            for i in range(len(self.pool))
        ]

    def stop(self) -> None:
        """Cancel the probes; `wait_stopped()` waits for them to be gone."""
        for task in self._tasks:
            task.cancel()
        self._stopping += self._tasks
        self._tasks = []

    async def wait_stopped(self) -> None:
        tasks, self._stopping = self._stopping, []
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, i: int, delay: float) -> None:
        clock = self._clock
        interval = self.config.interval
        await asyncio.sleep(delay)
        due = clock()
        while True:
            passed = await self._probe(i)
            now = clock()
            self.pool.record_probe(i, passed, now)
            due += interval
            due = max(due, now)  # overran: start again from now rather than probing in a burst to catch up
            await asyncio.sleep(due - now)

    async def _probe(self, i: int) -> bool:
        try:
            status = await asyncio.wait_for(self.probe(i), self.config.timeout)
        except asyncio.CancelledError:
            raise
        except Exception:  # any failure of the probe, timeouts included, is a failed probe
            return False
        return status in self.config.expect_status

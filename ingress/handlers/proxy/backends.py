"""A worker's backend side: its upstream pools and its shared cache, kept across reloads.

A reload rebuilds the sites but must not cut a WebSocket or a download
that is streaming through an upstream connection, nor throw away warm
keep-alive connections and health state for a pool whose config did not
change. So `Backends.refresh` keeps every upstream whose config is
unchanged (and the cache, if its bounds are), and retires the rest:
a retired pool stops probing and closes its idle connections, while
exchanges in flight finish on the connections they hold.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ingress.config.model import Config
from ingress.config.upstream import Upstream
from ingress.handlers.cache import Flights, SharedCache
from ingress.handlers.freshness import Targeting
from ingress.handlers.proxy.balancer import Balancer, build_balancer
from ingress.handlers.proxy.headers import HeaderRules
from ingress.handlers.proxy.health import ActiveChecker, PoolHealth
from ingress.handlers.proxy.pool import OriginPool
from ingress.handlers.proxy.upstream import Origin
from ingress.policy.network import AddressSet
from ingress.tls.origin import origin_context

if TYPE_CHECKING:
    from ingress.telemetry.metrics import Registry

log = logging.getLogger("edgeward.upstream")

# Why a proxied request got an error answer (edgeward_upstream_errors_total{reason}).
ERROR_KINDS = (
    "connect",
    "connect_timeout",
    "tls",
    "reset",
    "first_byte_timeout",
    "write_timeout",
    "read_timeout",
    "protocol",
    "request_body",
    "pool_full",
    "no_origin",
    "closed",
    "aborted",
)


@dataclass
class UpstreamStats:
    requests: int = 0
    retries: int = 0
    retries_refused: int = 0  # retries the budget did not allow
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))


class UpstreamRuntime:
    """One `[[upstreams]]` pool in one worker: its origins' connection pools, balancer and health."""

    def __init__(self, config: Upstream, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.origins = [Origin.parse(text) for text in config.origins]
        context: ssl.SSLContext | None = None
        if any(origin.scheme == "https" for origin in self.origins):
            context = origin_context(config)
        self.pools = [OriginPool(origin, config, loop, context) for origin in self.origins]
        self.balancer: Balancer = build_balancer(config)
        self.health = PoolHealth(config.name, [str(o) for o in self.origins], config.outlier, config.health)
        self.checker = ActiveChecker(loop, config.health, self.health, self._probe, clock=time.monotonic)
        self.stats = UpstreamStats()
        # Requests and retries in flight, for the retry budget.
        self.active = 0
        self.retrying = 0

    def start(self) -> None:
        self.checker.start()

    async def _probe(self, i: int) -> int:
        check = self.config.health
        return await self.pools[i].probe(check.path, check.host, check.timeout)

    def in_flight(self) -> list[int]:
        return [pool.in_flight for pool in self.pools]

    def retry_allowed(self) -> bool:
        """Retries in flight stay within `retry_budget` of requests in flight (at least one may always run).

        Without a budget, an origin that fails every request has each one sent
        `retries + 1` times, which multiplies an outage instead of riding it out.
        """
        return self.retrying < max(1.0, self.config.retry_budget * self.active)

    def retire(self) -> None:
        """No new requests will come: stop probing and close idle connections; in-flight ones finish."""
        self.checker.stop()
        for pool in self.pools:
            pool.close()


class Backends:
    """Everything proxy routes of one worker share: upstreams by name, the cache, and the header rules."""

    def __init__(
        self,
        upstreams: dict[str, UpstreamRuntime],
        cache: SharedCache | None,
        cache_bounds: tuple[int, int],
        rules: HeaderRules,
    ) -> None:
        self.upstreams = upstreams
        self.cache = cache
        self.cache_bounds = cache_bounds
        self.rules = rules
        # One origin fetch per cache key at a time, across every route sharing the cache.
        self.flights: Flights[None] = Flights()

    @classmethod
    def build(cls, config: Config, loop: asyncio.AbstractEventLoop, previous: Backends | None = None) -> Backends:
        """The backends for `config`, keeping what `previous` has that did not change."""
        old = previous.upstreams if previous is not None else {}
        upstreams: dict[str, UpstreamRuntime] = {}
        for upstream in config.upstreams:
            kept = old.get(upstream.name)
            if kept is not None and kept.config == upstream:
                upstreams[upstream.name] = kept
            else:
                upstreams[upstream.name] = UpstreamRuntime(upstream, loop)
        bounds = (config.cache.max_bytes, config.cache.max_object_bytes)
        targeting = Targeting.of(config.cache.targeted_fields, config.cache.surrogate_token)
        cache: SharedCache | None = None
        if any(route.proxy is not None and route.proxy.cache for route in config.routes) and bounds[0] > 0:
            if (
                previous is not None
                and previous.cache is not None
                and previous.cache_bounds == bounds
                and previous.cache.targeting == targeting
            ):
                cache = previous.cache
            else:
                cache = SharedCache(*bounds, targeting)
        rules = HeaderRules(config.proxy, AddressSet(config.policy.network.trusted_proxies))
        return cls(upstreams, cache, bounds, rules)

    def start(self, previous: Backends | None = None) -> None:
        """Start probing new pools and retire the ones `previous` had that this config dropped or changed."""
        for runtime in self.upstreams.values():
            runtime.start()
        if previous is None:
            return
        for name, runtime in previous.upstreams.items():
            if self.upstreams.get(name) is not runtime:
                runtime.retire()

    def stop(self) -> None:
        for runtime in self.upstreams.values():
            runtime.retire()

    def add_metrics(self, into: Registry, worker: int) -> None:
        """The upstreams (traffic, retries, errors, each origin's health and connections) and the cache."""
        const = (("worker", str(worker)),)
        if self.upstreams:
            self._upstream_metrics(into, const)
        cache = self.cache
        if cache is None:
            return
        lookups = into.counter("edgeward_cache_lookups_total", "Cache lookups by result.", ("result",), const=const)
        lookups.set(("hit",), cache.hits)
        lookups.set(("miss",), cache.misses)
        into.counter("edgeward_cache_stores_total", "Answers stored in the cache.", const=const).set((), cache.stores)
        into.counter(
            "edgeward_cache_evictions_total", "Entries evicted to stay within the cache's size.", const=const
        ).set((), cache.evictions)
        into.gauge("edgeward_cache_bytes", "Bytes held by the cache.", unit="By", const=const).set((), cache.bytes)
        into.gauge("edgeward_cache_entries", "Entries in the cache.", const=const).set((), len(cache))

    def _upstream_metrics(self, into: Registry, const: tuple[tuple[str, str], ...]) -> None:
        pool, origin = ("upstream",), ("upstream", "origin")
        requests = into.counter("edgeward_upstream_requests_total", "Requests proxied.", pool, const=const)
        retries = into.counter("edgeward_upstream_retries_total", "Retries sent to another try.", pool, const=const)
        refused = into.counter(
            "edgeward_upstream_retries_refused_total", "Retries the retry budget did not allow.", pool, const=const
        )
        errors = into.counter(
            "edgeward_upstream_errors_total",
            "Proxied requests answered with an error, by reason.",
            ("upstream", "reason"),
            const=const,
        )
        healthy = into.gauge(
            "edgeward_upstream_origins_healthy",
            "Origins of a pool that may take requests (neither failing probes nor ejected).",
            pool,
            const=const,
        )
        up = into.gauge(
            "edgeward_upstream_origin_up",
            "1 if the origin may take requests, 0 if down or ejected.",
            origin,
            const=const,
        )
        ejections = into.counter(
            "edgeward_upstream_ejections_total",
            "Times the origin was ejected by outlier detection.",
            origin,
            const=const,
        )
        active = into.gauge(
            "edgeward_upstream_connections_active", "Connections to the origin carrying a request.", origin, const=const
        )
        idle = into.gauge(
            "edgeward_upstream_connections_idle", "Keep-alive connections to the origin at rest.", origin, const=const
        )
        opened = into.counter(
            "edgeward_upstream_connections_opened_total", "Connections opened to the origin.", origin, const=const
        )
        pending = into.gauge(
            "edgeward_upstream_pending", "Requests waiting for a connection to the origin.", origin, const=const
        )
        for name, runtime in sorted(self.upstreams.items()):
            stats = runtime.stats
            requests.set((name,), stats.requests)
            retries.set((name,), stats.retries)
            refused.set((name,), stats.retries_refused)
            for kind, n in stats.errors.items():
                if n:
                    errors.set((name, kind), n)
            health = runtime.health
            totals = health.ejections_total
            healthy.set((name,), len(runtime.origins) - len(health.down))
            for i, address in enumerate(runtime.origins):
                conns = runtime.pools[i]
                key = (name, str(address))
                up.set(key, 0 if i in health.down else 1)
                ejections.set(key, totals[i])
                active.set(key, conns.active)
                idle.set(key, conns.idle)
                opened.set(key, conns.opened_total)
                pending.set(key, conns.pending)

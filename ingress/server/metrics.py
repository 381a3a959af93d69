"""What one worker reports: its counters gathered into metric families for a scrape or an OTLP export.

The families and their renderers live in telemetry; this reads the
server's own state (connections, listeners, QUIC endpoints, stats), so it
sits with the server.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import TYPE_CHECKING, Protocol

from ingress.telemetry.metrics import (
    AnyFamily,
    ConstLabels,
    Registry,
    Source,
    folded_family,
    prometheus_text,
)
from ingress.tls.failures import counts as handshake_failures

if TYPE_CHECKING:
    from ingress.server.h3connection import HTTP3Connection
    from ingress.server.runtime import ListenerRuntime, WorkerContext
    from ingress.tls.sni import CertStore


class QuicCount(Protocol):
    """What the collector needs of a QUIC endpoint (not imported: aioquic is worker 0's cost only)."""

    @property
    def connections(self) -> Sized: ...


class WorkerCollector:
    """Everything one worker reports, gathered into families when asked: a scrape, an OTLP export.

    `listeners` and `quic` are read at each collection, so listeners bound
    or replaced by a reload are seen without rebuilding the collector.
    `sources` add families kept elsewhere (request histograms, exporter and
    audit counters); each is called with the registry being filled.
    """

    def __init__(
        self,
        worker: int,
        ctx: WorkerContext,
        listeners: Callable[[], Iterable[ListenerRuntime]],
        quic: Mapping[str, QuicCount],
        sources: Iterable[Source] = (),
    ) -> None:
        self.worker = worker
        self.ctx = ctx
        self.listeners = listeners
        self.quic = quic
        self.sources: list[Source] = list(sources)
        self.const: ConstLabels = (("worker", str(worker)),)

    def collect(self) -> list[AnyFamily]:
        registry = Registry()
        self._connections(registry)
        self._tls(registry)
        self._http(registry)
        self._policy(registry)
        ctx = self.ctx
        if ctx.backends is not None:
            ctx.backends.add_metrics(registry, self.worker)
        self._refusals(registry)
        self._collector(registry)
        observer = ctx.observer
        if observer is not None:
            observer.add_metrics(registry)
            if observer.access_log is not None:
                registry.counter(
                    "edgeward_access_log_dropped_total", "Access-log records dropped because the writer fell behind."
                ).set((), observer.access_log.dropped)
        for source in self.sources:
            source(registry)
        families = list(registry)
        families.append(folded_family(families, self.const))
        return families

    def prometheus(self) -> str:
        return prometheus_text(self.collect())

    def _connections(self, registry: Registry) -> None:
        ctx, const = self.ctx, self.const
        stats = ctx.stats
        registry.gauge("edgeward_connections_open", "Connections open in this worker.", const=const).set(
            (), len(ctx.connections)
        )
        registry.counter("edgeward_connections_total", "Connections accepted since start.", const=const).set(
            (), stats.connections_total
        )
        active = registry.gauge(
            "edgeward_http_server_active_requests",
            "Requests received and not yet fully answered (HTTP/2 and HTTP/3: open streams).",
            ("protocol",),
            unit="{request}",
            const=const,
            otlp_name="http.server.active_requests",
        )
        for protocol, n in active_requests(ctx.connections, bool(self.quic)).items():
            active.set((protocol,), n)

    def _collector(self, registry: Registry) -> None:
        """The collector's passes and what start-up froze (see Supervisor.start): a full pass stalls the loop."""
        passes = registry.counter(
            "edgeward_gc_collections_total",
            "Garbage-collector passes in this worker, by generation (2 is a full pass).",
            ("generation",),
            const=self.const,
        )
        for generation, stats in enumerate(gc.get_stats()):
            passes.set((str(generation),), stats["collections"])
        registry.gauge(
            "edgeward_gc_frozen_objects",
            "Objects from start-up that the garbage collector never walks.",
            const=self.const,
        ).set((), gc.get_freeze_count())

    def _tls(self, registry: Registry) -> None:
        for runtime in self.listeners():
            if runtime.certs is not None:
                _certificates(registry, runtime.certs)
        failures = registry.counter(
            "edgeward_tls_handshake_failures_total",
            "TLS handshakes refused or failed, by reason (TCP and QUIC).",
            ("reason",),
            const=self.const,
        )
        for reason, n in handshake_failures.items():  # every reason, zeros too, so alerts see the series
            failures.set((reason,), n)
        registry.counter(
            "edgeward_tls_handshakes_total",
            "TLS handshakes completed on TCP listeners (QUIC's are in edgeward_quic_events_total).",
            const=self.const,
        ).set((), self.ctx.stats.tls_handshakes)
        if self.quic:
            opened = registry.gauge(
                "edgeward_quic_connections_open", "QUIC connections open, closing ones included.", ("listener",)
            )
            for name, endpoint in self.quic.items():
                opened.set((name,), len(endpoint.connections))

    def _http(self, registry: Registry) -> None:
        stats, const = self.ctx.stats, self.const
        registry.counter("edgeward_protocol_errors_total", "Requests or frames refused as malformed.", const=const).set(
            (), stats.protocol_errors
        )
        responses = registry.counter(
            "edgeward_responses_total", "Responses sent, by status class.", ("class",), const=const
        )
        for cls, n in enumerate(stats.by_class):
            if 1 <= cls <= 5 or n:
                responses.set((f"{cls}xx",), n)
        floods = registry.counter(
            "edgeward_http2_floods_total", "HTTP/2 abuse detected and stopped, by kind.", ("kind",), const=const
        )
        for kind, n in sorted(stats.floods.items()):
            floods.set((kind,), n)
        if self.quic:
            quic = registry.counter(
                "edgeward_quic_events_total", "QUIC handshakes and what they used, by kind.", ("kind",), const=const
            )
            for kind, n in sorted(stats.quic.items()):
                quic.set((kind,), n)

    def _policy(self, registry: Registry) -> None:
        stats, const = self.ctx.stats, self.const
        if stats.auth:
            auth = registry.counter(
                "edgeward_auth_decisions_total", "Access-policy decisions, by outcome.", ("outcome",), const=const
            )
            for outcome, n in sorted(stats.auth.items()):
                auth.set((outcome,), n)
        if self.ctx.firewall is not None or stats.waf:
            # Labels from config (profile) and fixed sets (action, category): bounded whatever the traffic.
            matches = registry.counter(
                "edgeward_waf_matches_total",
                "Request firewall matches, blocked or reported in shadow mode, by profile, action and category.",
                ("profile", "action", "category"),
                const=const,
            )
            for labels, n in sorted(stats.waf.items()):
                matches.set(labels, n)
        gate = self.ctx.gate
        if gate is None or not gate.verifiers:
            return
        checks = registry.counter(
            "edgeward_jwt_verifications_total",
            "JWTs accepted from the verified-token cache or checked anew, by provider.",
            ("provider", "result"),
            const=const,
        )
        fetches = failures = None
        for name, verifier in sorted(gate.verifiers.items()):
            checks.set((name, "cached"), verifier.cache_hits)
            checks.set((name, "checked"), verifier.cache_misses)
            remote = verifier.remote
            if remote is not None:
                if fetches is None or failures is None:
                    fetches = registry.counter(
                        "edgeward_jwks_fetches_total", "JWKS fetches, by provider.", ("provider",), const=const
                    )
                    failures = registry.counter(
                        "edgeward_jwks_fetch_failures_total", "JWKS fetches that failed.", ("provider",), const=const
                    )
                fetches.set((name,), remote.fetches)
                failures.set((name,), remote.failures)

    def _refusals(self, registry: Registry) -> None:
        stats, const = self.ctx.stats, self.const
        refused = registry.counter(
            "edgeward_connections_refused_total",
            "Connections closed before any request, by reason.",
            ("reason",),
            const=const,
        )
        for reason, n in stats.refused.items():
            refused.set((reason,), n)
        if any(runtime.config.proxy_protocol != "off" for runtime in self.listeners()):
            errors = registry.counter(
                "edgeward_proxy_protocol_errors_total",
                "PROXY protocol headers refused, by reason.",
                ("reason",),
                const=const,
            )
            for reason, n in stats.proxy_errors.items():
                errors.set((reason,), n)


def active_requests(connections: Iterable[object], quic: bool) -> dict[str, int]:
    """Requests in flight by protocol version, summed over open connections (read at a scrape, not kept).

    HTTP/1.1: the request being answered (a deferred answer, a streamed or
    sent body, a tunnel) plus those pipelined behind it. HTTP/2 and HTTP/3:
    every stream with a request whose answer is not finished, whether its
    body is still arriving, its answer is awaited, or the answer is being sent.
    """
    from ingress.server.connection import HTTP1Connection
    from ingress.server.h2connection import HTTP2Connection

    h3: type[HTTP3Connection] | None = None
    if quic:  # aioquic is loaded already when there is a QUIC endpoint, and only then
        from ingress.server.h3connection import HTTP3Connection

        h3 = HTTP3Connection
    h1 = h2 = n3 = 0
    for conn in connections:
        if isinstance(conn, HTTP1Connection):
            busy = (
                conn.waiting is not None
                or conn.streaming is not None
                or conn.sender is not None
                or conn.tunnel is not None
            )
            h1 += busy + len(conn.queue)
        elif isinstance(conn, HTTP2Connection):
            h2 += len(conn.session.inbound.keys() | conn.pending.keys() | conn.outbound.keys())
        elif h3 is not None and isinstance(conn, h3):
            n3 += len(conn.incoming.keys() | conn.pending.keys() | conn.outgoing.keys())
    counts = {"1.1": h1, "2": h2}
    if quic:
        counts["3"] = n3
    return counts


def _certificates(into: Registry, certs: CertStore) -> None:
    """A listener's certificate reloads, and its client CAs and CRLs when it has client_auth."""
    key = (certs.listener,)
    into.counter("edgeward_cert_reloads_total", "Certificates reloaded after their files changed.", ("listener",)).set(
        key, certs.reloads
    )
    into.counter(
        "edgeward_cert_refusals_total",
        "Changed certificate files refused (the previous certificate stays in force).",
        ("listener",),
    ).set(key, certs.refusals)
    if certs.client_trust is None:
        return
    into.counter("edgeward_client_trust_reloads_total", "Client CA and CRL sets reloaded.", ("listener",)).set(
        key, certs.trust_reloads
    )
    into.counter(
        "edgeward_client_trust_refusals_total",
        "Changed client CA or CRL files refused (the previous set stays in force).",
        ("listener",),
    ).set(key, certs.trust_refusals)
    revocations = certs.client_trust.revocations
    if revocations is not None and revocations.next_update is not None:
        # The earliest nextUpdate of the CRLs in force: alert well before it, every client of its CA depends on it.
        into.gauge(
            "edgeward_client_crl_next_update_timestamp_seconds",
            "Earliest nextUpdate of the client CRLs in force, Unix seconds.",
            ("listener",),
            unit="s",
        ).set(key, int(revocations.next_update.timestamp()))

"""What a worker serves, built from a Config and swappable on reload.

Connections hold a ListenerRuntime and read `listener.site` per request,
so a reload that swaps `site` takes effect on the next request of every
open connection, with no connection closed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from ingress.clock import Clock
from ingress.config.model import Config, Limits, Listener
from ingress.handlers.proxy.backends import Backends
from ingress.pipeline import Site, build_site
from ingress.policy.gate import Gate, build_gate
from ingress.policy.waf.firewall import Firewall
from ingress.telemetry.context import Tracer
from ingress.telemetry.observer import Observer
from ingress.tls.sni import CertStore

# Why a connection was closed before it could send a request (edgeward_connections_refused_total).
REFUSALS = ("per_ip_cap", "proxy_from")
# Why a PROXY protocol header was not accepted (edgeward_proxy_protocol_errors_total).
PROXY_ERRORS = ("malformed", "timeout", "truncated")


@dataclass
class Stats:
    """Per-worker counters; plain ints, bumped on the request path without locks."""

    connections_total: int = 0
    tls_handshakes: int = 0  # completed on TCP listeners; failures are counted by tls.failures
    protocol_errors: int = 0
    # Responses by status class, indexed by status // 100; 6-9 catch what an origin may send beyond 599.
    by_class: list[int] = field(default_factory=lambda: [0] * 10)
    floods: dict[str, int] = field(default_factory=dict)
    quic: dict[str, int] = field(default_factory=dict)  # handshakes, resumed, early_data, too_early, retry
    auth: dict[str, int] = field(default_factory=dict)  # access decisions by outcome (policy.gate.OUTCOMES)
    waf: dict[tuple[str, str, str], int] = field(default_factory=dict)  # firewall matches: profile, action, category
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSALS, 0))  # connections, by reason
    proxy_errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROXY_ERRORS, 0))  # by reason


class Connection(Protocol):
    """What a worker needs of an open connection, whatever protocol it speaks."""

    listener: ListenerRuntime

    def sweep(self, now: float) -> None:
        """Once a second: enforce the connection's deadline."""

    def drain(self, grace: float) -> None:
        """Finish what is in flight, then close."""

    def abort(self) -> None:
        """Close now: the drain deadline has passed."""


@dataclass
class ListenerRuntime:
    config: Listener
    site: Site
    tls: bool
    certs: CertStore | None = None
    # Subject to policy.network.max_connections_per_ip; the admin listener is not, so that a
    # client at the cap (or a balancer carrying many) cannot lock monitoring and health checks out.
    capped: bool = True
    # Whether its requests are recorded (spans, access log, request metrics): not the admin
    # listener's, so a scraper polling /metrics does not count as traffic of the site.
    observed: bool = True


class WorkerContext:
    """State shared by every connection of one worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config, worker: int = 0) -> None:
        self.loop = loop
        self.worker = worker
        self.connections: set[Connection] = set()
        self.stats = Stats()
        self.draining = False
        # Told about every answered request (access log, metrics, spans, audit); None when nothing
        # would use it, and then the connections skip even the timing.
        self.observer: Observer | None = None
        self.clock = Clock(config.server.server_header)
        self.gate: Gate | None = None
        self.firewall: Firewall | None = None
        self.backends: Backends | None = None
        # Open connections per client address, for policy.network.max_connections_per_ip.
        # An entry exists only while its count is above zero, so this is bounded by open connections.
        self.per_ip: dict[str, int] = {}
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Adopt the process-wide parts of a (re)loaded config.

        The gate is built first: it reads key files, and if that fails
        (raising EdgewardError) nothing has changed yet.
        """
        previous = self.gate
        gate = build_gate(config.policy, self.stats.auth, previous)
        old_backends = self.backends
        backends = Backends.build(config, self.loop, old_backends)
        if gate is not None:
            gate.start(self.loop, previous)
        elif previous is not None:
            previous.stop()
        self.gate = gate
        routes = tuple(route.waf for route in config.routes)
        stats = self.stats
        self.firewall = (
            Firewall(config.waf, routes, stats.auth, stats.waf) if Firewall.needed(config.waf, routes) else None
        )
        backends.start(old_backends)
        self.backends = backends
        self.config = config
        self.limits: Limits = config.limits
        # 0: no cap, and connections skip the counting entirely. A reload that sets a cap
        # counts only connections opened after it; one that lifts it still releases the counted.
        self.ip_cap = config.policy.network.max_connections_per_ip
        self.clock.set_server(config.server.server_header)
        self.tracer = Tracer(config.telemetry.tracing)
        if observed(config):
            if self.observer is None:
                self.observer = Observer(self.loop, config, self.worker, self.tracer)
            else:
                self.observer.apply(config, self.tracer)
        elif self.observer is not None:
            self.loop.create_task(self.observer.close())
            self.observer = None

    def admit(self, listener: ListenerRuntime, client: str) -> bool | None:
        """Count a new connection against policy.network.max_connections_per_ip.

        True: counted (release it when it closes); False: no cap applies, nothing counted;
        None: refused, `client` already holds the cap.
        """
        if listener.tls:
            self.stats.tls_handshakes += 1  # a connection is admitted once its handshake is done
        if not (self.ip_cap and listener.capped):
            return False
        per_ip = self.per_ip
        held = per_ip.get(client, 0)
        if held >= self.ip_cap:
            self.stats.refused["per_ip_cap"] += 1
            return None
        per_ip[client] = held + 1
        return True

    def release(self, client: str) -> None:
        """A counted connection closed; the entry goes at zero, so idle addresses cost no memory."""
        per_ip = self.per_ip
        held = per_ip.get(client, 0)
        if held > 1:
            per_ip[client] = held - 1
        else:
            per_ip.pop(client, None)


def observed(config: Config) -> bool:
    """Whether requests are recorded at all: `telemetry.tracing.enabled = false` with the access log,
    the audit file and the collector off is the one way to skip it, request metrics included."""
    telemetry = config.telemetry
    return (
        config.access_log.enabled
        or telemetry.tracing.enabled
        or bool(config.audit.file)
        or bool(telemetry.otlp.endpoint)
    )


def build_listener(
    config: Config,
    listener: Listener,
    clock: Clock,
    quic_port: int = 0,
    gate: Gate | None = None,
    backends: Backends | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    tracer: Tracer | None = None,
    firewall: Firewall | None = None,
) -> ListenerRuntime:
    """`quic_port`: the UDP port serving HTTP/3 for this listener, 0 when none does."""
    tls = listener.tls is not None
    certs = CertStore(listener.name, listener.tls) if listener.tls is not None else None
    alt_svc = b""
    if quic_port and tls and listener.quic.enabled:
        alt_svc = b'h3=":%d"; ma=%d' % (quic_port, listener.quic.alt_svc_max_age)
    site = build_site(config, listener.name, tls, clock, alt_svc, gate, backends, loop, tracer, firewall)
    return ListenerRuntime(listener, site, tls, certs)

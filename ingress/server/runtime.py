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
from ingress.pipeline import Site, build_site
from ingress.telemetry.accesslog import AccessLog
from ingress.tls.sni import CertStore


@dataclass
class Stats:
    """Per-worker counters; plain ints, bumped on the request path without locks."""

    connections_total: int = 0
    protocol_errors: int = 0
    by_class: list[int] = field(default_factory=lambda: [0] * 6)
    floods: dict[str, int] = field(default_factory=dict)
    quic: dict[str, int] = field(default_factory=dict)  # handshakes, resumed, early_data, too_early, retry


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


class WorkerContext:
    """State shared by every connection of one worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config) -> None:
        self.loop = loop
        self.connections: set[Connection] = set()
        self.stats = Stats()
        self.draining = False
        self.access_log: AccessLog | None = None
        self.clock = Clock(config.server.server_header)
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Adopt the process-wide parts of a (re)loaded config."""
        self.config = config
        self.limits: Limits = config.limits
        self.clock.set_server(config.server.server_header)
        old = self.access_log
        self.access_log = AccessLog(config.access_log.path) if config.access_log.enabled else None
        if old is not None:
            old.close()


def build_listener(config: Config, listener: Listener, clock: Clock, quic_port: int = 0) -> ListenerRuntime:
    """`quic_port`: the UDP port serving HTTP/3 for this listener, 0 when none does."""
    tls = listener.tls is not None
    certs = CertStore(listener.name, listener.tls) if listener.tls is not None else None
    alt_svc = b""
    if quic_port and tls and listener.quic.enabled:
        alt_svc = b'h3=":%d"; ma=%d' % (quic_port, listener.quic.alt_svc_max_age)
    return ListenerRuntime(listener, build_site(config, listener.name, tls, clock, alt_svc), tls, certs)

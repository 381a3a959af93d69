"""Typed, frozen configuration of the backend side: upstream pools, proxy routes and the shared cache.

`[[upstreams]]` name pools of origins with their balancing, health and
limits; a route's `[routes.proxy]` sends requests to one of them; `[cache]`
bounds the one RFC 9111 shared cache a worker keeps for routes that use it.
Every default is the safe one: TLS to origins is verified, retries are
for idempotent requests only and within a budget, and identity headers
are always stripped from client input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ingress.config.meta import doc


@dataclass(frozen=True)
class HealthCheck:
    path: str = field(default="", metadata=doc("Path probed with GET on each origin; empty turns active checks off."))
    interval: float = field(default=5.0, metadata=doc("Seconds between probes of one origin.", minimum=0.1))
    timeout: float = field(default=2.0, metadata=doc("Seconds one probe may take.", minimum=0.05))
    healthy_threshold: int = field(
        default=2, metadata=doc("Consecutive passing probes that bring an unhealthy origin back.", minimum=1)
    )
    unhealthy_threshold: int = field(
        default=3, metadata=doc("Consecutive failing probes that take an origin out of rotation.", minimum=1)
    )
    expect_status: tuple[int, ...] = field(default=(200, 204), metadata=doc("Statuses that count as a passing probe."))
    host: str = field(default="", metadata=doc("Host header of probes; empty uses the origin's host."))


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx: int = field(
        default=5, metadata=doc("Consecutive 5xx answers that eject an origin; 0 turns it off.", minimum=0)
    )
    consecutive_failures: int = field(
        default=3,
        metadata=doc(
            "Consecutive connect failures, resets and timeouts that eject an origin; 0 turns it off.", minimum=0
        ),
    )
    ejection_time: float = field(
        default=30.0, metadata=doc("Seconds an ejected origin stays out of rotation.", minimum=0.1)
    )
    max_ejected_percent: int = field(
        default=50,
        metadata=doc("Most origins of a pool ejected at once; the rest keep serving.", minimum=0, maximum=100),
    )


@dataclass(frozen=True)
class Upstream:
    name: str = field(metadata=doc("Name proxy routes use in `upstream`.", pattern=r"^[a-z][a-z0-9_-]*$"))
    origins: tuple[str, ...] = field(
        metadata=doc("Origins as `http://host:port` or `https://host:port`; the host is an IP or `localhost`.")
    )
    balance: Literal["round_robin", "least_requests", "hash"] = field(
        default="round_robin",
        metadata=doc("How an origin is chosen: in turn, the one with fewest requests in flight, or by `hash_on`."),
    )
    hash_on: str = field(
        default="client_ip",
        metadata=doc(
            'With `balance = "hash"`: `client_ip`, `header:NAME` or `cookie:NAME`; one key always lands on'
            " the same healthy origin (consistent hashing, so a change moves few keys)."
        ),
    )
    ca: str = field(
        default="",
        metadata=doc("PEM CA bundle that https origins must chain to; empty uses the system store."),
    )
    client_cert: str = field(default="", metadata=doc("PEM certificate presented to https origins (mutual TLS)."))
    client_key: str = field(default="", metadata=doc("PEM private key of `client_cert`."))
    server_name: str = field(
        default="", metadata=doc("Name sent in SNI and checked in https origins' certificates; empty: the origin host.")
    )
    insecure_skip_verify: bool = field(
        default=False,
        metadata=doc("Unsafe: accept any certificate from https origins. For lab origins only, never production."),
    )
    max_connections: int = field(
        default=256, metadata=doc("Connections open to one origin, busy or idle.", minimum=1, maximum=65536)
    )
    max_idle: int = field(default=64, metadata=doc("Idle keep-alive connections kept per origin.", minimum=0))
    idle_timeout: float = field(
        default=30.0, metadata=doc("Seconds an idle upstream connection is kept before it is closed.", minimum=0.1)
    )
    max_pending: int = field(
        default=1024,
        metadata=doc(
            "Requests that may wait for a connection to this pool; beyond it the circuit is open and"
            " requests get 503 at once.",
            minimum=0,
        ),
    )
    connect_timeout: float = field(
        default=5.0, metadata=doc("Seconds to connect (and TLS) to an origin.", minimum=0.05)
    )
    first_byte_timeout: float = field(
        default=60.0,
        metadata=doc("Seconds from the request being sent to the first byte of the answer; then 504.", minimum=0.05),
    )
    read_timeout: float = field(
        default=60.0,
        metadata=doc("Seconds an upstream body may make no progress before the exchange is aborted.", minimum=0.05),
    )
    retries: int = field(
        default=2,
        metadata=doc(
            "Further attempts, on another origin, for idempotent requests that failed before any answer byte.",
            minimum=0,
            maximum=10,
        ),
    )
    retry_budget: float = field(
        default=0.2,
        metadata=doc(
            "Retries allowed as a share of requests in flight, so an outage is not multiplied by retries.",
            minimum=0.0,
            maximum=1.0,
        ),
    )
    health: HealthCheck = field(default_factory=HealthCheck, metadata=doc("Active health checks."))
    outlier: OutlierDetection = field(
        default_factory=OutlierDetection, metadata=doc("Passive ejection of origins that fail real requests.")
    )


@dataclass(frozen=True)
class ProxyRoute:
    upstream: str = field(metadata=doc("Name of the `[[upstreams]]` pool requests go to."))
    cache: bool = field(default=False, metadata=doc("Serve and store answers through the shared cache (`[cache]`)."))
    websocket: bool = field(
        default=False,
        metadata=doc("Pass WebSocket upgrades (HTTP/1.1 Upgrade and HTTP/2 extended CONNECT) to the origin."),
    )
    host: str = field(default="", metadata=doc("Host header sent upstream; empty passes the client's."))
    strip_prefix: str = field(
        default="", metadata=doc("Removed from the start of the path before it is sent upstream.", pattern=r"^$|^/")
    )


@dataclass(frozen=True)
class ProxySettings:
    via: str = field(default="edgeward", metadata=doc("Pseudonym in the Via header added each way; empty omits Via."))
    forwarded: Literal["rfc7239", "x-forwarded", "both", "off"] = field(
        default="both",
        metadata=doc(
            "Which forwarding headers are sent upstream. What clients sent is kept only from"
            " `policy.network.trusted_proxies`; from anyone else it is replaced."
        ),
    )
    request_id_header: str = field(
        default="X-Request-ID",
        metadata=doc(
            "Header carrying a request id upstream and back; a trusted proxy's is kept, others get a new one."
        ),
    )
    cert_subject_header: str = field(default="X-Client-Cert-Subject", metadata=doc("Client certificate subject DN."))
    cert_fingerprint_header: str = field(
        default="X-Client-Cert-Fingerprint", metadata=doc("Client certificate SHA-256, hex.")
    )
    auth_subject_header: str = field(default="X-Auth-Subject", metadata=doc("The JWT `sub` of an allowed request."))
    auth_roles_header: str = field(default="X-Auth-Roles", metadata=doc("The roles an allowed request was granted."))


@dataclass(frozen=True)
class CacheSettings:
    max_bytes: int = field(
        default=256 << 20,
        metadata=doc("Memory for cached answers per worker; least recently used go first.", minimum=0),
    )
    max_object_bytes: int = field(
        default=8 << 20, metadata=doc("Largest body stored; larger answers pass through uncached.", minimum=0)
    )
    purge: bool = field(default=True, metadata=doc("Offer `PURGE /cache?host=H&path=P` on the admin listener."))
    targeted_fields: tuple[str, ...] = field(
        default=("CDN-Cache-Control", "Surrogate-Control"),
        metadata=doc(
            "Targeted cache-control fields this cache follows, most applicable first (RFC 9213): the first one an"
            " answer carries with a valid value replaces its Cache-Control and Expires here, except that"
            " Cache-Control `private` still keeps it out. `Surrogate-Control` (W3C Edge Architecture) is consumed:"
            " its members for this cache are removed from answers; others, such as `CDN-Cache-Control`, are passed"
            " on. Empty: Cache-Control alone decides."
        ),
    )
    surrogate_token: str = field(
        default="edgeward",
        metadata=doc(
            'Device token this cache announces upstream (`Surrogate-Capability: TOKEN="Surrogate/1.0"`) and answers'
            " to in Surrogate-Control members targeted with `;TOKEN`; empty: announced to no origin, and only"
            " untargeted members apply.",
            pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]*$",
        ),
    )

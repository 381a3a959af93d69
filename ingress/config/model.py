"""Typed, frozen configuration.

Every field is documented here once; the JSON Schema (`ingress schema`) and
the loader's error messages are derived from these definitions, so docs and
validation cannot drift apart. Sizes are bytes, durations are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ingress.config.cors import Cors
from ingress.config.meta import doc
from ingress.config.policy import Policy
from ingress.config.telemetry import Audit, Telemetry
from ingress.config.upstream import CacheSettings, ProxyRoute, ProxySettings, Upstream
from ingress.config.waf import RouteWaf, Waf


@dataclass(frozen=True)
class ServerSettings:
    workers: int = field(default=0, metadata=doc("Worker processes; 0 means one per CPU.", minimum=0, maximum=256))
    server_header: str = field(default="edgeward", metadata=doc("Value of the Server header; empty omits it."))
    drain_timeout: float = field(
        default=10.0,
        metadata=doc("Seconds a draining worker waits for requests in flight.", minimum=0.1),
    )
    drain_idle_grace: float = field(
        default=0.5,
        metadata=doc(
            "Seconds an idle keep-alive connection is given, once draining starts, to send"
            " one last request before it is closed.",
            minimum=0.0,
        ),
    )
    cert_poll_interval: float = field(
        default=0.5,
        metadata=doc("Seconds between checks of certificate files for changes.", minimum=0.05),
    )
    unknown_host_status: Literal[421, 404] = field(
        default=421,
        metadata=doc(
            "Status for a request whose Host (or :authority) matches no route host of its listener: 421"
            " Misdirected Request tells a client that reused a connection for another name to open a new"
            " one; 404 suits clients that do not know 421. A malformed Host always gets 400."
        ),
    )
    healthz_path: str = field(
        default="/healthz",
        metadata=doc(
            "Path answered `200 ok` to GET and HEAD on every listener (the admin listener keeps its own),"
            " before access policy and routing (still logged, traced and counted under its path);"
            " a route may not claim it. Empty turns it off."
        ),
    )


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = field(
        default=16384,
        metadata=doc("Request line plus headers; more gets 431.", minimum=256, maximum=1 << 20),
    )
    max_header_count: int = field(default=100, metadata=doc("Header fields per request; more gets 431.", minimum=1))
    max_uri_bytes: int = field(default=8192, metadata=doc("Request target length; longer gets 414.", minimum=16))
    max_body_bytes: int = field(default=1 << 20, metadata=doc("Request body size; larger gets 413.", minimum=0))
    header_timeout: float = field(
        default=10.0,
        metadata=doc("Seconds to receive a whole request head; slower gets 408.", minimum=0.1),
    )
    body_timeout: float = field(
        default=30.0,
        metadata=doc("Seconds to receive a whole request body; slower gets 408.", minimum=0.1),
    )
    idle_timeout: float = field(
        default=60.0,
        metadata=doc("Seconds a keep-alive connection may sit idle.", minimum=0.1),
    )
    send_timeout: float = field(
        default=60.0,
        metadata=doc(
            "Seconds a response may make no progress (peer not reading) before the connection is closed.",
            minimum=0.1,
        ),
    )
    handshake_timeout: float = field(default=10.0, metadata=doc("Seconds to complete a TLS handshake.", minimum=0.1))
    max_requests_per_connection: int = field(
        default=10000,
        metadata=doc("Requests on one connection before it is closed.", minimum=1),
    )


@dataclass(frozen=True)
class HTTP2Settings:
    max_concurrent_streams: int = field(
        default=128, metadata=doc("Streams a client may have open at once.", minimum=1, maximum=10000)
    )
    initial_window_size: int = field(
        default=1 << 20,
        metadata=doc("Flow-control window granted per request stream.", minimum=65535, maximum=(1 << 31) - 1),
    )
    max_frame_size: int = field(
        default=16384, metadata=doc("Largest frame payload accepted.", minimum=16384, maximum=(1 << 24) - 1)
    )
    max_resets_per_second: int = field(
        default=200,
        metadata=doc("Streams a client may cancel per second (rapid reset, CVE-2023-44487).", minimum=1),
    )
    max_continuation_frames: int = field(
        default=32,
        metadata=doc("CONTINUATION frames in one header block (CVE-2024-27316).", minimum=1, maximum=1024),
    )
    max_settings_per_second: int = field(default=20, metadata=doc("SETTINGS frames per second.", minimum=1))
    max_pings_per_second: int = field(default=20, metadata=doc("PING frames per second.", minimum=1))
    max_empty_frames_per_second: int = field(
        default=100,
        metadata=doc("DATA, HEADERS and CONTINUATION frames with no payload and no END_STREAM, per second.", minimum=1),
    )
    window_stall_timeout: float = field(
        default=30.0,
        metadata=doc(
            "Seconds a response may wait on a zero flow-control window before the connection closes.", minimum=0.5
        ),
    )


@dataclass(frozen=True)
class CertPair:
    cert: str = field(metadata=doc("PEM certificate chain, leaf first."))
    key: str = field(metadata=doc("PEM private key (RSA or ECDSA) matching `cert`."))
    names: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Server names (exact or `*.example.com`) this pair answers for; empty takes the"
            " DNS names of the certificate's subjectAltName."
        ),
    )


@dataclass(frozen=True)
class TLSSettings:
    certs: tuple[CertPair, ...] = field(
        metadata=doc("Certificates chosen by SNI; the first one answers unknown names.")
    )
    min_version: Literal["1.2", "1.3"] = field(default="1.2", metadata=doc("Lowest TLS version accepted."))
    alpn: tuple[Literal["h2", "http/1.1"], ...] = field(
        default=("h2", "http/1.1"),
        metadata=doc("ALPN protocols offered, in preference order; a client offering none gets HTTP/1.1."),
    )
    session_tickets: bool = field(default=True, metadata=doc("Offer TLS session tickets for resumption."))
    client_auth: Literal["off", "optional", "required"] = field(
        default="off",
        metadata=doc(
            "Request a client certificate in the handshake (mutual TLS, TCP and QUIC alike): `required`"
            " refuses handshakes without a valid one, `optional` verifies one if sent. While it is on,"
            " HTTP/3 issues no session tickets (no resumption, no 0-RTT)."
        ),
    )
    client_ca: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "PEM CA bundles that client certificates must chain to; needed when `client_auth` is on."
            " Reloaded when the files change, like certificates."
        ),
    )
    client_crl: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "CRL files (PEM or DER) checked for every client certificate; with any set, each CA that issues"
            " client certificates needs a current CRL. Reloaded when the files change."
        ),
    )


@dataclass(frozen=True)
class QuicSettings:
    enabled: bool = field(
        default=True,
        metadata=doc("Serve HTTP/3 over QUIC on the listener's port (UDP) and advertise it with Alt-Svc."),
    )
    retry: bool = field(
        default=False,
        metadata=doc(
            "Validate client addresses with a Retry before any handshake work; costs one round trip,"
            " defeats spoofed-source floods."
        ),
    )
    early_data: bool = field(
        default=True,
        metadata=doc("Accept 0-RTT data on resumption; only GET, HEAD and OPTIONS run early, others get 425."),
    )
    max_streams: int = field(
        default=100, metadata=doc("Concurrent request streams per connection.", minimum=1, maximum=10000)
    )
    idle_timeout: float = field(default=30.0, metadata=doc("Seconds a QUIC connection may sit idle.", minimum=1.0))
    alt_svc_max_age: int = field(
        default=86400, metadata=doc("Seconds clients may remember the Alt-Svc advertisement.", minimum=0)
    )


@dataclass(frozen=True)
class SocketOptions:
    backlog: int = field(
        default=4096,
        metadata=doc(
            "Accept queue of each worker's listening socket; the kernel caps it at net.core.somaxconn.",
            minimum=1,
            maximum=65535,
        ),
    )
    nodelay: bool = field(
        default=True,
        metadata=doc(
            "TCP_NODELAY on accepted connections, so an answer's last segment never waits for Nagle's"
            " algorithm and a delayed ACK (a 40 ms stall)."
        ),
    )
    defer_accept: int = field(
        default=0,
        metadata=doc(
            "TCP_DEFER_ACCEPT (Linux), in seconds: the kernel hands a connection over only once its first"
            " bytes (request, ClientHello or PROXY header) arrive, so a silent one costs no worker time;"
            " it then waits in the kernel, which passes it on after about this long (rounded up to SYN-ACK"
            " retransmissions), and only then do header_timeout and handshake_timeout start. 0 is off.",
            minimum=0,
            maximum=3600,
        ),
    )
    fastopen: int = field(
        default=0,
        metadata=doc(
            "TCP_FASTOPEN queue length: connections whose SYN may carry the first request, saving a round"
            " trip for returning clients; 0 is off. The network may replay data sent in a SYN, so keep it"
            " off where a plain-HTTP request could change state. Needs net.ipv4.tcp_fastopen to include 2.",
            minimum=0,
            maximum=65535,
        ),
    )


@dataclass(frozen=True)
class Listener:
    name: str = field(metadata=doc("Unique name, used by routes and logs.", pattern=r"^[a-z][a-z0-9_-]*$"))
    address: str = field(metadata=doc("host:port to bind; port 0 picks a free port."))
    tls: TLSSettings | None = field(default=None, metadata=doc("TLS termination; absent means plain HTTP."))
    h2c: bool = field(
        default=False,
        metadata=doc("Also accept cleartext HTTP/2 with prior knowledge; plain listeners only."),
    )
    quic: QuicSettings = field(
        default_factory=QuicSettings, metadata=doc("HTTP/3 on the same port; TLS listeners only.")
    )
    proxy_protocol: Literal["off", "v1", "v2", "any"] = field(
        default="off",
        metadata=doc(
            "Expect a PROXY protocol header (HAProxy v1 text, v2 binary, or either) before anything else on"
            " each connection, and use the client address it carries everywhere after."
        ),
    )
    proxy_from: tuple[str, ...] = field(
        default=(),
        metadata=doc("CIDRs of the L4 balancers allowed to send PROXY headers; needed with `proxy_protocol`."),
    )
    socket: SocketOptions = field(
        default_factory=SocketOptions,
        metadata=doc("TCP options of the listening socket; options the OS lacks are skipped with a log line."),
    )


@dataclass(frozen=True)
class SecurityHeaders:
    hsts: str = field(
        default="max-age=63072000; includeSubDomains",
        metadata=doc("Strict-Transport-Security, sent on TLS only; empty omits it."),
    )
    content_type_options: str = field(default="nosniff", metadata=doc("X-Content-Type-Options; empty omits it."))
    frame_options: str = field(default="DENY", metadata=doc("X-Frame-Options; empty omits it."))
    referrer_policy: str = field(
        default="strict-origin-when-cross-origin", metadata=doc("Referrer-Policy; empty omits it.")
    )
    content_security_policy: str = field(default="", metadata=doc("Content-Security-Policy; empty omits it."))


@dataclass(frozen=True)
class StaticSite:
    root: str = field(metadata=doc("Directory served; nothing outside it is ever read."))
    index: str = field(default="index.html", metadata=doc("File served for a directory."))
    precompressed: bool = field(
        default=True,
        metadata=doc("Serve `.br`, `.zst`, `.gz` sidecars when the client accepts them."),
    )
    dotfiles: bool = field(
        default=False,
        metadata=doc("Serve names starting with `.` (other than `.well-known`). Unsafe: exposes `.git`, `.env`."),
    )
    inline_max_bytes: int = field(
        default=256 * 1024,
        metadata=doc(
            "Files up to this size are held in memory as pre-serialised responses;"
            " larger ones are streamed (sendfile or mmap).",
            minimum=0,
            maximum=64 << 20,
        ),
    )
    cache_control: str = field(default="", metadata=doc("Cache-Control sent with files; empty omits it."))


@dataclass(frozen=True)
class Redirect:
    scheme: Literal["https", "http"] = field(default="https", metadata=doc("Scheme of the target."))
    port: int = field(
        default=0,
        metadata=doc("Port of the target; 0 keeps the scheme's default.", minimum=0, maximum=65535),
    )
    host: str = field(default="", metadata=doc("Target host; empty keeps the request's host."))
    status: Literal[301, 302, 307, 308] = field(default=308, metadata=doc("Redirect status."))


@dataclass(frozen=True)
class Route:
    path: str = field(default="/", metadata=doc("Path prefix, starting with `/`.", pattern=r"^/"))
    host: str = field(default="*", metadata=doc("Host: exact, `*.example.com`, or `*` for any host."))
    listeners: tuple[str, ...] = field(
        default=(), metadata=doc("Listener names this route is served on; empty means all.")
    )
    methods: tuple[str, ...] = field(
        default=("GET", "HEAD"),
        metadata=doc("Methods allowed; others get 405 with Allow. OPTIONS is always answered."),
    )
    static: StaticSite | None = field(default=None, metadata=doc("Serve files from a directory."))
    redirect: Redirect | None = field(default=None, metadata=doc("Redirect every request."))
    proxy: ProxyRoute | None = field(default=None, metadata=doc("Pass requests to an upstream pool."))
    headers: SecurityHeaders = field(
        default_factory=SecurityHeaders, metadata=doc("Security headers added to responses.")
    )
    cors: Cors | None = field(
        default=None,
        metadata=doc("Cross-origin access (CORS): preflights answered at the edge, Access-Control-* on answers."),
    )
    waf: RouteWaf = field(
        default_factory=RouteWaf, metadata=doc("The request firewall on this route: on, off, or another profile.")
    )


@dataclass(frozen=True)
class AccessLog:
    enabled: bool = field(default=True, metadata=doc("Write one JSON line per request."))
    path: str = field(default="-", metadata=doc("File to append to; `-` is standard error."))
    flush_interval: float = field(default=1.0, metadata=doc("Seconds between buffered writes.", minimum=0.05))


@dataclass(frozen=True)
class Admin:
    enabled: bool = field(default=True, metadata=doc("Serve /healthz, /readyz and /metrics."))
    address: str = field(default="127.0.0.1:9901", metadata=doc("host:port of the admin listener."))


@dataclass(frozen=True)
class Config:
    listeners: tuple[Listener, ...] = field(metadata=doc("Sockets to accept on."))
    routes: tuple[Route, ...] = field(default=(), metadata=doc("Host and path prefix to handler."))
    server: ServerSettings = field(default_factory=ServerSettings, metadata=doc("Process settings."))
    limits: Limits = field(default_factory=Limits, metadata=doc("Request limits and timeouts."))
    http2: HTTP2Settings = field(
        default_factory=HTTP2Settings, metadata=doc("HTTP/2 stream limits and flood protection.")
    )
    access_log: AccessLog = field(default_factory=AccessLog, metadata=doc("Access log."))
    admin: Admin = field(default_factory=Admin, metadata=doc("Admin listener."))
    policy: Policy = field(
        default_factory=Policy, metadata=doc("Access policy: network rules, mTLS, JWT, roles and rate limits.")
    )
    upstreams: tuple[Upstream, ...] = field(default=(), metadata=doc("Origin pools that proxy routes send to."))
    proxy: ProxySettings = field(
        default_factory=ProxySettings, metadata=doc("Headers the edge sets on proxied requests.")
    )
    cache: CacheSettings = field(default_factory=CacheSettings, metadata=doc("The shared response cache."))
    telemetry: Telemetry = field(
        default_factory=Telemetry, metadata=doc("Traces and metrics: OTLP export and JSON Lines files.")
    )
    audit: Audit = field(default_factory=Audit, metadata=doc("The hash-chained audit file of security events."))
    waf: Waf = field(
        default_factory=Waf,
        metadata=doc("The request firewall: pattern sets over decoded paths, queries, headers, cookies and bodies."),
    )
    source: str = field(default="", metadata=doc("Where this config came from (set by the loader).", internal=True))

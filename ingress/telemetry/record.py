"""What the request path hands to telemetry: one flat tuple per answered request.

The connection appends a `Pending` tuple of references it already holds;
nothing is formatted, hashed or encoded while the request is in flight.
The loop's telemetry timer turns batches of them into `Exchange` records
(ids, wall-clock times, text) only when something needs the record: the
access log, spans that will be exported or written, an audit event for a
denial. Metrics read the `Pending` tuples themselves, so an edge whose
spans all go nowhere (collector down, no files) never builds a record.

Ids are raw bytes (16 for a trace, 8 for a span), as OTLP's protobuf
encoding carries them; text forms (`traceparent`, the access log, OTLP
JSON) are lower-case hex of the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeAlias

from ingress.protocol.events import Decision
from ingress.protocol.trace import Attempt

if TYPE_CHECKING:
    from ingress.protocol.events import Peer
    from ingress.protocol.trace import TraceContext

# What the request path keeps of an answered request until the next tick, in this order (the
# observer builds it as a tuple display: a NamedTuple's constructor is Python code):
# trace, method, path, route, status, protocol, peer, host, user agent (b"" without one), decision,
# cache, upstream, attempts, body bytes, scheme, error, t0, t1 (`time.time_ns()` at the first byte
# and at the answer: a span's times are wall-clock times, as the OpenTelemetry SDK takes them).
# `trace` is None only for a trace that this edge starts with ids of its own choosing.
Pending = tuple[
    "TraceContext | None",
    str,
    bytes,
    str,
    int,
    str,
    "Peer",
    str,
    bytes,
    "Decision | None",
    str,
    str,
    "list[Attempt] | None",
    int,
    str,
    str,
    int,
    int,
]
# A tick's `Pending` tuples transposed: one tuple per field, in the same order (see `columns`).
Columns: TypeAlias = list[tuple[Any, ...]]
P_TRACE: Final = 0
P_ROUTE: Final = 3
P_STATUS: Final = 4
P_PROTOCOL: Final = 5
P_DECISION: Final = 9
P_CACHE: Final = 10
P_ATTEMPTS: Final = 12
P_START: Final = 16
P_END: Final = 17


def columns(pending: Sequence[Pending]) -> Columns:
    """`pending` field by field, so that per-request work can run in C (`map`, `zip`) over whole columns.

    Metrics and span encoding both read them; one transposition serves both.
    """
    return list(zip(*pending, strict=True))


class Exchange(NamedTuple):
    """One answered request (or a request refused before it became one), as telemetry sees it."""

    trace_id: bytes  # 16 bytes, never all zero
    span_id: bytes  # 8 bytes: this request's SERVER span
    parent_id: bytes  # 8 bytes from a trusted traceparent, b"" when this edge started the trace
    trace_state: str  # a trusted tracestate, passed through as received; "" without one
    sampled: bool  # whether the span is exported; the access log and metrics see every request
    start_ns: int  # wall clock, Unix nanoseconds
    end_ns: int
    method: str  # "" when the request could not be parsed
    path: str  # url.path as received (before normalisation), "" when unparsed
    route: str  # the matched route's path prefix (http.route), "" when nothing matched
    status: int
    protocol: str  # network.protocol.version: "1.0", "1.1", "2" or "3"
    tls: str  # the TLS version as OpenSSL names it ("TLSv1.3"), "" on plain TCP
    host: str  # server.address: the request's Host / :authority, lower-case
    client: str  # client.address
    user_agent: str
    decision: Decision | None  # the access policy's outcome, None when no policy ran
    cache: str  # edge.cache.status: "hit", "stale", "revalidated", "miss", "bypass"; "" off the cache
    upstream: str  # edge.upstream: the upstream pool's name, "" when not proxied
    attempts: tuple[Attempt, ...]
    body_bytes: int  # response body bytes sent
    scheme: str  # "https" or "http"
    sni: str
    client_cert: str  # SHA-256 fingerprint (hex) of a verified client certificate, "" without one
    error: str  # for a 5xx the edge made itself, why ("upstream_timeout", ...); "" otherwise

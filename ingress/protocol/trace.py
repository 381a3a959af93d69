"""What a request carries about its trace: its W3C trace context, and the tries made at origins for it.

Set on the Request as it goes (by the tracer, by the proxy) and read by
telemetry once it is answered; kept here, below both, so that neither the
protocol vocabulary nor the handlers depend on telemetry.
"""

from __future__ import annotations

from binascii import hexlify
from typing import NamedTuple


class TraceContext:
    """One request's place in a trace: ids as raw bytes, as OTLP carries them."""

    __slots__ = ("parent_id", "sampled", "span_id", "state", "trace_id")

    def __init__(self, trace_id: bytes, span_id: bytes, parent_id: bytes, state: str, sampled: bool) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.state = state
        self.sampled = sampled

    def traceparent(self, span_id: bytes) -> bytes:
        """The header value a next hop sees, with `span_id` (this edge's span for that hop) as its parent."""
        return b"00-%s-%s-%s" % (hexlify(self.trace_id), hexlify(span_id), b"01" if self.sampled else b"00")


class Attempt(NamedTuple):
    """One try at an origin, a CLIENT span under the request's SERVER span."""

    span_id: bytes
    start_ns: int
    end_ns: int
    origin: str  # "host:port" of the origin tried
    status: int  # the origin's status; 0 when no response head arrived
    error: str  # "" on a response; otherwise why it failed ("connect_refused", "timeout", ...)
    resend: int  # 0 for the first try, 1 for the first retry, ...

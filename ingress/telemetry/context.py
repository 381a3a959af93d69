"""W3C trace context: whose trace a request joins, and whether its spans are kept.

A `traceparent` is continued only from sources the operator trusts
(`telemetry.tracing.trusted_sources`); from anyone else it is replaced by
a new trace, so a client cannot file its requests under a trace of its
choosing, nor force sampling on or off. The sampling decision follows
OpenTelemetry's TraceIdRatioBased rule (the low 64 bits of the trace id
against a bound), so collectors and other tracers agree on it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from ingress.config.telemetry import Tracing
from ingress.policy.network import AddressSet
from ingress.telemetry.ids import ENTROPY

if TYPE_CHECKING:
    from ingress.protocol.events import Request

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
# RFC-free but W3C trace-context §3.3: at most 32 list members of at most 256 characters; 512 is
# the length a vendor may truncate to. Printable ASCII only, so it can never split a header.
_TRACESTATE = re.compile(rb"[\x20-\x7e]{1,512}")


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(trace-id, parent-id, flags) in hex of a valid W3C traceparent; None starts a new trace.

    Lower-case hex only, version ff and all-zero ids refused. A later
    version is read as version 00 when its first 55 characters are
    (followed by the end or "-"), as the spec asks of a version-00 parser,
    and propagated as version 00.
    """
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    if version == b"00":
        if len(value) != 55:
            return None
    elif version == b"ff" or (len(value) > 55 and value[55] != 0x2D):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


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
        return b"00-%s-%s-%s" % (
            self.trace_id.hex().encode("ascii"),
            span_id.hex().encode("ascii"),
            b"01" if self.sampled else b"00",
        )


def new_span_id() -> bytes:
    span_id = ENTROPY.raw(8)
    return span_id if span_id != b"\0" * 8 else b"\0" * 7 + b"\1"


class Tracer:
    """Starts or continues the trace of each request; one per config, shared by a worker's listeners."""

    __slots__ = ("_all", "_bound", "enabled", "trusted")

    def __init__(self, settings: Tracing) -> None:
        """Raises ValueError naming a bad `trusted_sources` entry (config checks report it first)."""
        self.enabled = settings.enabled
        self.trusted = AddressSet(settings.trusted_sources) if settings.trusted_sources else None
        self._all = settings.sample_ratio >= 1.0
        self._bound = TraceIdRatioBased.get_bound_for_rate(settings.sample_ratio)

    def context(self, request: Request) -> TraceContext:
        """The request's trace context, made on first use and kept on the request."""
        trace = request.trace
        if trace is not None:
            return trace
        parent = None
        trusted = self.trusted
        if trusted is not None:
            peer = request.peer
            if (peer.remote or peer.client) in trusted:
                value = request.headers.get(b"traceparent")
                if value is not None:
                    parent = parse_traceparent(value)
        if parent is not None:
            trace_hex, parent_hex, flags = parent
            state = request.headers.get(b"tracestate", b"")
            trace = TraceContext(
                bytes.fromhex(trace_hex.decode("ascii")),
                new_span_id(),
                bytes.fromhex(parent_hex.decode("ascii")),
                state.decode("ascii") if state and _TRACESTATE.fullmatch(state) else "",
                self.enabled and bool(int(flags, 16) & 1),
            )
        else:
            ids = ENTROPY.raw(24)
            trace_id = ids[:16] if ids[:16] != b"\0" * 16 else b"\0" * 15 + b"\1"
            span_id = ids[16:] if ids[16:] != b"\0" * 8 else b"\0" * 7 + b"\1"
            sampled = self.enabled and (self._all or int.from_bytes(trace_id[8:], "big") < self._bound)
            trace = TraceContext(trace_id, span_id, b"", "", sampled)
        request.trace = trace
        return trace

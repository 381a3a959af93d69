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
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from ingress.config.telemetry import Tracing
from ingress.policy.network import AddressSet
from ingress.protocol.trace import TraceContext
from ingress.telemetry.ids import ENTROPY

if TYPE_CHECKING:
    from ingress.protocol.events import Peer, Request

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


_ZERO_ID = b"\0" * 8
_ONE_ID = b"\0" * 7 + b"\1"  # any non-zero id will do, for a 2**-64 chance
_ZERO_TRACE_ID = _ZERO_ID * 2


def new_span_id() -> bytes:
    span_id = ENTROPY.raw(8)
    return span_id if span_id != _ZERO_ID else _ONE_ID


class Tracer:
    """Starts or continues the trace of each request; one per config, shared by a worker's listeners."""

    __slots__ = ("_all", "_bound", "always", "enabled", "trusted")

    def __init__(self, settings: Tracing) -> None:
        """Raises ValueError naming a bad `trusted_sources` entry (config checks report it first)."""
        self.enabled = settings.enabled
        self.trusted = AddressSet(settings.trusted_sources) if settings.trusted_sources else None
        self._all = settings.sample_ratio >= 1.0
        self._bound = TraceIdRatioBased.get_bound_for_rate(settings.sample_ratio)
        # Every new trace is sampled, and no client's context is ever continued: the common case,
        # which `Observer` serves from one block of random bytes per batch.
        self.always = self.enabled and self._all and self.trusted is None

    def context(self, request: Request) -> TraceContext:
        """The request's trace context, made on first use and kept on the request (a proxy needs it early)."""
        trace = request.trace
        if trace is None:
            trace = request.trace = TraceContext(*self.start(request.peer, request.headers))
        return trace

    def sampled(self, trace_id: bytes) -> bool:
        """Whether a new trace with this id is sampled (TraceIdRatioBased: its low 64 bits against the bound)."""
        return self.enabled and (self._all or int.from_bytes(trace_id[8:], "big") < self._bound)

    def start(self, peer: Peer, headers: Mapping[bytes, bytes]) -> tuple[bytes, bytes, bytes, str, bool]:
        """(trace id, span id, parent id, tracestate, sampled) of a request that has no context yet.

        Most requests never need a TraceContext object: telemetry asks for
        these values when it records the request, after it was answered.
        """
        trusted = self.trusted
        if trusted is not None and (peer.remote or peer.client) in trusted:
            value = headers.get(b"traceparent")
            parent = parse_traceparent(value) if value is not None else None
            if parent is not None:
                trace_hex, parent_hex, flags = parent
                state = headers.get(b"tracestate", b"")
                return (
                    bytes.fromhex(trace_hex.decode("ascii")),
                    new_span_id(),
                    bytes.fromhex(parent_hex.decode("ascii")),
                    state.decode("ascii") if state and _TRACESTATE.fullmatch(state) else "",
                    self.enabled and bool(int(flags, 16) & 1),
                )
        ids = ENTROPY.raw(24)
        trace_id = ids[:16] if ids[:16] != _ZERO_TRACE_ID else _ONE_ID * 2
        span_id = ids[16:] if ids[16:] != _ZERO_ID else _ONE_ID
        return trace_id, span_id, b"", "", self.sampled(trace_id)

"""Typed, frozen configuration of what the edge reports: traces, metrics and the audit trail.

`[telemetry]` names the service; `[telemetry.tracing]` says which requests
become spans and whose trace context is continued; `[telemetry.otlp]` is
the collector they go to; `[telemetry.files]` the OTLP JSON Lines file of
spans kept on disk; `[audit]` the hash-chained audit file of security
events. Defaults record every request and continue nobody's trace context:
a client cannot choose the trace its requests are filed under unless the
operator trusts it.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ingress.config.meta import doc


@dataclass(frozen=True)
class Tracing:
    enabled: bool = field(
        default=True, metadata=doc("Make a SERVER span for each request (and a CLIENT span per upstream try).")
    )
    sample_ratio: float = field(
        default=1.0,
        metadata=doc(
            "Share of new traces whose spans are exported, decided on the trace id (OpenTelemetry's"
            " TraceIdRatioBased); a trusted parent's sampled flag is followed. 1.0 records every request.",
            minimum=0.0,
            maximum=1.0,
        ),
    )
    trusted_sources: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Client networks (CIDR) whose `traceparent`/`tracestate` are continued; from anyone else they are"
            " replaced by a new trace. Empty trusts nobody."
        ),
    )


@dataclass(frozen=True)
class OTLP:
    endpoint: str = field(
        default="",
        metadata=doc(
            "Collector base URL: `http://host:4318` or `https://...` for OTLP/HTTP (protobuf; /v1/traces etc."
            " are appended), or `grpc://host:4317` / `grpcs://...` for OTLP/gRPC. Empty exports nothing."
        ),
    )
    headers: Mapping[str, str] = field(
        default_factory=lambda: types.MappingProxyType({}),
        repr=False,
        metadata=doc("Extra request headers (e.g. an API key); values never appear in logs.", secret=True),
    )
    ca: str = field(
        default="", metadata=doc("PEM CA bundle to verify an https/grpcs collector; empty uses the system's.")
    )
    cert: str = field(default="", metadata=doc("PEM client certificate for mTLS to the collector."))
    key: str = field(default="", metadata=doc("PEM private key of `cert`."))
    timeout: float = field(default=5.0, metadata=doc("Seconds one export may take.", minimum=0.1))
    traces: bool = field(default=True, metadata=doc("Export spans."))
    metrics: bool = field(default=True, metadata=doc("Export metrics."))
    logs: bool = field(default=True, metadata=doc("Export audit events as OTLP logs."))
    queue_spans: int = field(
        default=16384,
        metadata=doc("Spans held for export at most; beyond it spans are dropped and counted.", minimum=64),
    )
    batch_spans: int = field(default=2048, metadata=doc("Spans per export request at most.", minimum=1))
    interval: float = field(default=1.0, metadata=doc("Seconds between span exports.", minimum=0.05))
    metrics_interval: float = field(default=30.0, metadata=doc("Seconds between metric exports.", minimum=1.0))


@dataclass(frozen=True)
class Files:
    traces: str = field(default="", metadata=doc("OTLP JSON Lines file for spans; empty writes none."))
    rotate_bytes: int = field(
        default=256 * 1024 * 1024, metadata=doc("Rotate a file when it reaches this size; 0 never.", minimum=0)
    )
    rotate_interval: float = field(
        default=0.0, metadata=doc("Rotate a file when it is this many seconds old; 0 never.", minimum=0.0)
    )
    keep: int = field(default=10, metadata=doc("Rotated files kept; older ones are deleted. 0 keeps all.", minimum=0))


@dataclass(frozen=True)
class Telemetry:
    service_name: str = field(default="edgeward", metadata=doc("OTel `service.name`."))
    resource: Mapping[str, str] = field(
        default_factory=lambda: types.MappingProxyType({}),
        metadata=doc("Extra resource attributes, e.g. `deployment.environment.name`."),
    )
    tracing: Tracing = field(default_factory=Tracing, metadata=doc("Which requests become spans."))
    otlp: OTLP = field(default_factory=OTLP, metadata=doc("The OTLP collector."))
    files: Files = field(default_factory=Files, metadata=doc("OTLP JSON Lines files."))
    interval: float = field(
        default=0.025,
        metadata=doc(
            "Seconds between turning recorded requests into log lines, spans and metrics; short, so that each"
            " batch holds up the loop for little time.",
            minimum=0.005,
        ),
    )


@dataclass(frozen=True)
class Audit:
    file: str = field(
        default="",
        metadata=doc(
            "Append-only, hash-chained audit file (OTLP JSON Lines logs) for security events; empty keeps none."
        ),
    )
    rotate_bytes: int = field(
        default=64 * 1024 * 1024, metadata=doc("Rotate when the file reaches this size; 0 never.", minimum=0)
    )
    keep: int = field(
        default=0, metadata=doc("Rotated files kept; 0 keeps all (an audit trail is not pruned).", minimum=0)
    )
    denials: Literal["all", "off"] = field(
        default="all", metadata=doc("Record every refused request (`all`) or none (`off`) as an audit event.")
    )
    max_pending: int = field(
        default=65536,
        metadata=doc(
            "Events held before the next write at most; beyond it they are counted and the count audited.", minimum=16
        ),
    )

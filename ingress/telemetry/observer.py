"""The one thing the request path tells about an answered request.

Each protocol's connection calls `request` (or `refused`, for bytes that
never became a request) once per answer. That call only appends a flat
tuple; every few tens of milliseconds `tick` turns the batch into access
log lines, metric samples, audit events for refusals and OTLP spans. Spans
are encoded each tick, so the work is spread evenly instead of stalling
the loop once per export, and the encoded pieces are concatenated into one
export request per interval: concatenated `ExportTraceServiceRequest`
messages are a valid message whose `resource_spans` are all the pieces'.

When the collector is down or behind, spans are counted as dropped before
they are encoded, so a dead collector costs the edge almost nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ingress.config.model import Config
from ingress.telemetry.accesslog import AccessLog
from ingress.telemetry.audit import AuditTrail, audit_handler
from ingress.telemetry.context import Tracer
from ingress.telemetry.export import Exporter, transport_for
from ingress.telemetry.metrics import Registry, RequestMetrics
from ingress.telemetry.otlp.resource import resource_attributes
from ingress.telemetry.otlp.spans import SpanEncoder, fitting, fresh_heads, head_ids
from ingress.telemetry.record import P_ATTEMPTS, P_DECISION, P_TRACE, Columns, Exchange, Pending, columns
from ingress.telemetry.rotating import RotatingFile

if TYPE_CHECKING:
    from ingress.protocol.events import Decision, Peer, Request

log = logging.getLogger("edgeward.telemetry")

_new_exchange = tuple.__new__  # NamedTuple's __new__ is Python code; tuple's makes the same object faster
time_ns = time.time_ns
_ALLOWED = "allowed"
CHUNK = 256  # records turned into log lines, metrics and spans per loop iteration


class Observer:
    """Per worker: the tracer, the access log, request metrics, the audit trail and the span exporters."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config, worker: int, tracer: Tracer) -> None:
        self.loop = loop
        self.worker = worker
        self.pending: list[Pending] = []
        self.max_pending = 65536
        self.overflow = 0  # requests not recorded at all because `pending` was full
        self._resumed = False  # a tick's leftover chunk is scheduled
        self.metrics = RequestMetrics(worker)
        # Exporters are replaced when their settings change; their counts live on here, so the
        # counters an operator graphs never go backwards on a reload.
        self.retired: dict[str, tuple[int, dict[str, int]]] = {}
        self.access_log: AccessLog | None = None
        self.audit: AuditTrail | None = None
        self.span_exporter: Exporter | None = None
        self.log_exporter: Exporter | None = None
        self.metric_exporter: Exporter | None = None
        self.traces_file: RotatingFile | None = None
        self.encoder: SpanEncoder | None = None
        self._encoded: list[bytes] = []
        self._encoded_spans = 0
        self._last_export = time.monotonic()
        self.config: Config | None = None
        self.apply(config, tracer)

    # configuration ----------------------------------------------------------------------------
    def apply(self, config: Config, tracer: Tracer) -> None:
        """Adopt a (re)loaded config; exporters and files are kept when their settings did not change.

        `tracer` is the worker's, shared with the proxy routes so a request has one trace context.
        """
        old = self.config
        telemetry = config.telemetry
        self.tracer = tracer
        self._fresh_ids = tracer.always  # every trace this edge starts takes its ids from `fresh_heads`
        self.resource = resource_attributes(telemetry.service_name, telemetry.resource)
        previous_log = self.access_log
        self.access_log = AccessLog(config.access_log.path) if config.access_log.enabled else None
        if previous_log is not None:
            previous_log.close()
        if (
            old is None
            or old.telemetry.otlp != telemetry.otlp
            or old.telemetry.resource != telemetry.resource
            or old.telemetry.tracing.enabled != telemetry.tracing.enabled
        ):
            self._close_exporters()
            otlp = telemetry.otlp
            if otlp.endpoint:
                transport = transport_for(otlp, config.source)
                if otlp.traces and telemetry.tracing.enabled:
                    self.span_exporter = Exporter(self.loop, transport, "traces", otlp.queue_spans)
                if otlp.logs:
                    self.log_exporter = Exporter(self.loop, transport_for(otlp, config.source), "logs", 65536)
                if otlp.metrics:
                    self.metric_exporter = Exporter(self.loop, transport_for(otlp, config.source), "metrics", 65536)
        files = telemetry.files
        if old is None or old.telemetry.files != files:
            if self.traces_file is not None:
                self.traces_file.close()
            self.traces_file = (
                RotatingFile(files.traces, files.rotate_bytes, files.rotate_interval, files.keep)
                if files.traces
                else None
            )
        if old is None or old.audit != config.audit or old.telemetry.service_name != telemetry.service_name:
            if self.audit is not None:
                self.audit.close()
            self.audit = AuditTrail(config.audit, self.resource) if config.audit.file else None
        # Security events logged anywhere in this worker (reloads, certificates, ejections, drain).
        handler = audit_handler()
        handler.trail = self.audit
        handler.immediate = False
        wants_spans = telemetry.tracing.enabled and (self.span_exporter is not None or self.traces_file is not None)
        self.encoder = SpanEncoder(self.resource) if wants_spans else None
        self.config = config

    # the request path ---------------------------------------------------------------------------
    def request(self, request: Request, status: int, nbytes: int, t0: int, protocol: str) -> None:
        """An answered request; `t0` is its start (`time.time_ns`). Only references are kept here.

        Nothing that holds the whole request (its header dict, its body) is kept: a tick's worth of
        those would push the request path's own memory out of the CPU caches. A tracer that may
        continue a client's trace or samples by ratio decides here, while the headers are at hand;
        the common one (`Tracer.always`) needs nothing from them but the User-Agent.
        """
        pending = self.pending
        if len(pending) < self.max_pending:
            trace = request.trace
            if trace is None and not self._fresh_ids:
                trace = self.tracer.context(request)
            pending.append(
                (
                    trace,
                    request.method,
                    request.path,
                    request.route,
                    status,
                    protocol,
                    request.peer,
                    request.host,
                    request.headers.get(b"user-agent", b""),
                    request.decision,
                    request.cache,
                    request.upstream,
                    request.attempts,
                    nbytes,
                    request.scheme,
                    request.error,
                    t0,
                    time_ns(),
                )
            )
        else:
            self.overflow += 1

    def refused(self, peer: Peer, status: int, t0: int, protocol: str, scheme: str = "") -> None:
        """Bytes that never became a request (malformed, too large) and the status the edge answered."""
        if len(self.pending) >= self.max_pending:
            self.overflow += 1
            return
        from ingress.protocol.events import Request

        request = Request("", b"", b"", {}, "", protocol, False, scheme)
        request.peer = peer
        self.request(request, status, 0, t0, protocol)

    # batches ----------------------------------------------------------------------------------
    def tick(self) -> None:
        """Turn the requests recorded since the last tick into everything derived from them.

        At most CHUNK at a time: the rest follows in a later loop iteration,
        after the sockets that became ready meanwhile have been served, so a
        busy tick delays no answer by more than one chunk's work.
        """
        self._resumed = False
        pending = self.pending
        if pending:
            if len(pending) > CHUNK:
                # The rest stays in place: `del` moves pointers, where slicing off the rest would copy
                # (and count a reference to) every waiting tuple once per chunk.
                chunk = pending[:CHUNK]
                del pending[:CHUNK]
                pending = chunk
                self._resumed = True
                self.loop.call_soon(self._resume)
            else:
                self.pending = []
            batch = columns(pending)
            self.metrics.observe(batch)
            spans = self.encoder is not None and self._spans_wanted(pending)
            if spans and self.access_log is None and self.traces_file is None and self.tracer.always:
                self._spans_direct(pending, batch)
            elif spans or self.access_log is not None:
                records = self._exchanges(pending, fresh_heads(len(pending)))
                if self.access_log is not None:
                    self.access_log.add(records)
                self._audit(records)
                if spans:
                    self._spans(records)
            elif self.audit is not None:
                # Only the denials become records: nothing else would read one.
                self._audit_denials(pending, b"")
        if self._encoded_spans and time.monotonic() - self._last_export >= self._interval():
            self._export_spans()
        if self.audit is not None:
            written = self.audit.flush()
            if written and self.log_exporter is not None:
                self._offer(self.log_exporter, self.audit.encode_logs(written), len(written))

    def _audit(self, batch: list[Exchange]) -> None:
        audit = self.audit
        if audit is not None:
            for exchange in batch:
                if _audited(exchange.decision):
                    audit.denied(exchange)

    def _audit_denials(self, pending: list[Pending], heads: bytes) -> None:
        """Audit events for the denials in `pending`, whose fresh ids (if given) are `heads` by position."""
        denials = [i for i, p in enumerate(pending) if _audited(p[P_DECISION])]
        if denials:
            heads = b"".join(heads[i * 28 : i * 28 + 28] for i in denials) if heads else fresh_heads(len(denials))
            self._audit(self._exchanges([pending[i] for i in denials], heads))

    def _spans_wanted(self, pending: list[Pending]) -> bool:
        """False when every span of `pending` could only be dropped; those are then counted as dropped.

        With no traces file and an exporter that has no room (collector down and backing off,
        or its queue full), building records to encode nothing would cost the edge more than
        the rest of its telemetry together. Ratio sampling decides per record, so it always
        takes the general path.
        """
        exporter = self.span_exporter
        if self.traces_file is not None or exporter is None or not self.tracer.always:
            return True
        if exporter.room() - self._encoded_spans > 0:
            return True
        count = sum(_span_counts(pending))
        if count:
            exporter.drop(count)
        return False

    def _resume(self) -> None:
        if self._resumed:
            self.tick()

    def _spans_direct(self, pending: list[Pending], batch: Columns) -> None:
        """Spans encoded from the request path's tuples, with no record in between (see `encode_pending`)."""
        encoder, exporter = self.encoder, self.span_exporter
        assert encoder is not None and exporter is not None
        heads = fresh_heads(len(pending))
        if self.audit is not None:
            self._audit_denials(pending, heads)
        room = exporter.room() - self._encoded_spans
        payload, taken, used = encoder.encode_pending(batch, heads, room)
        if used < len(pending):
            exporter.drop(sum(_span_counts(pending[used:])))
        if taken:
            self._encoded += payload
            self._encoded_spans += taken
            self._export_if_full()

    def _exchanges(self, pending: list[Pending], heads: bytes) -> list[Exchange]:
        """The recorded requests as Exchanges: trace ids, wall-clock times and text made here, in one loop.

        A request without a trace context (see `request`) takes its ids from `heads` by position
        (see `fresh_heads`).
        """
        out: list[Exchange] = []
        append = out.append
        for i, (
            trace,
            method,
            path,
            route,
            status,
            protocol,
            peer,
            host,
            agent,
            decision,
            cache,
            upstream,
            attempts,
            nbytes,
            scheme,
            error,
            t0,
            t1,
        ) in enumerate(pending):
            if trace is None:
                trace_id, span_id = head_ids(heads, i)
                parent_id, state, sampled = b"", "", True
            else:
                trace_id, span_id, parent_id = trace.trace_id, trace.span_id, trace.parent_id
                state, sampled = trace.state, trace.sampled
            identity = peer.identity
            append(
                _new_exchange(
                    Exchange,
                    (
                        trace_id,
                        span_id,
                        parent_id,
                        state,
                        sampled,
                        t0,
                        t1,
                        method,
                        path.decode("latin-1"),
                        route,
                        status,
                        protocol,
                        peer.tls,
                        host,
                        peer.client,
                        agent.decode("latin-1"),
                        decision,
                        cache,
                        upstream,
                        tuple(attempts) if attempts else (),
                        nbytes,
                        scheme,
                        peer.sni,
                        identity.sha256 if identity is not None else "",
                        error,
                    ),
                )
            )
        return out

    def _interval(self) -> float:
        assert self.config is not None
        return self.config.telemetry.otlp.interval

    def _spans(self, batch: Sequence[Exchange]) -> None:
        encoder = self.encoder
        assert encoder is not None
        sampled = [exchange for exchange in batch if exchange.sampled]
        if not sampled:
            return
        if self.traces_file is not None:
            self.traces_file.write(encoder.json_line(sampled))
        exporter = self.span_exporter
        if exporter is None:
            return
        counts = [1 + len(exchange.attempts) for exchange in sampled]
        fits, taken = fitting(counts, exporter.room() - self._encoded_spans)
        left = sum(counts) - taken
        if left:
            exporter.drop(left)
        if taken:
            self._encoded.append(encoder.encode(sampled[:fits]))
            self._encoded_spans += taken
            self._export_if_full()

    def _export_if_full(self) -> None:
        assert self.config is not None
        if self._encoded_spans >= self.config.telemetry.otlp.batch_spans:
            self._export_spans()

    def _export_spans(self) -> None:
        exporter = self.span_exporter
        self._last_export = time.monotonic()
        if exporter is None or not self._encoded:
            return
        payload, count = b"".join(self._encoded), self._encoded_spans
        self._encoded, self._encoded_spans = [], 0
        self._offer(exporter, payload, count)

    @staticmethod
    def _offer(exporter: Exporter, payload: bytes, items: int) -> None:
        exporter.offer(payload, items)  # refusals are counted by the exporter

    def export_metrics(self, families: Callable[[], bytes]) -> None:
        """Hand the worker's metrics (already encoded as OTLP) to the collector, if one is configured."""
        if self.metric_exporter is not None and self.metric_exporter.room() > 0:
            self.metric_exporter.offer(families(), 1)

    # shutdown -----------------------------------------------------------------------------------
    def _close_exporters(self) -> None:
        for exporter in (self.span_exporter, self.log_exporter, self.metric_exporter):
            if exporter is not None:
                exported, dropped = self.retired.get(exporter.signal, (0, {}))
                self.retired[exporter.signal] = (
                    exported + exporter.exported_items,
                    _sum(dropped, exporter.dropped_items),
                )
                self.loop.create_task(exporter.close(2.0))
        self.span_exporter = self.log_exporter = self.metric_exporter = None

    async def close(self) -> None:
        """Record and send what is left, within a couple of seconds; then let the files go."""
        self.tick()
        while self.pending:
            self.tick()
        self._export_spans()
        for exporter in (self.span_exporter, self.log_exporter, self.metric_exporter):
            if exporter is not None:
                await exporter.close(2.0)
        if self.access_log is not None:
            self.access_log.close()
        if self.audit is not None:
            self.audit.close()
        if self.traces_file is not None:
            self.traces_file.close()

    # metrics ------------------------------------------------------------------------------------
    def add_metrics(self, into: Registry) -> None:
        """Request histograms, and what telemetry itself exported and lost, for /metrics and OTLP."""
        self.metrics.collect(into)
        const = (("worker", str(self.worker)),)
        exported = into.counter(
            "edgeward_telemetry_exported_total", "Items the collector accepted, by signal.", ("signal",), const=const
        )
        dropped = into.counter(
            "edgeward_telemetry_dropped_total",
            "Items not exported, by signal and reason (collector down, queue full, rejected, ...).",
            ("signal", "reason"),
            const=const,
        )
        live = {e.signal: e for e in (self.span_exporter, self.log_exporter, self.metric_exporter) if e is not None}
        for signal in ("traces", "logs", "metrics"):
            done, lost = self.retired.get(signal, (0, {}))
            exporter = live.get(signal)
            if exporter is not None:
                done, lost = done + exporter.exported_items, _sum(lost, exporter.dropped_items)
            if exporter is not None or signal in self.retired:
                exported.set((signal,), done)
                for reason, n in sorted(lost.items()):
                    dropped.set((signal, reason), n)
        if self.overflow:
            dropped.set(("records", "pending_full"), self.overflow)
        if self.audit is not None:
            into.counter(
                "edgeward_audit_events_dropped_total", "Audit events lost (each loss is itself audited).", const=const
            ).set((), self.audit.dropped)
            into.counter("edgeward_audit_events_total", "Audit events written.", const=const).set(
                (), self.audit.written
            )
        if self.traces_file is not None:
            into.counter(
                "edgeward_telemetry_file_errors_total", "Failed writes to the traces JSON Lines file.", const=const
            ).set((), self.traces_file.errors)


def _audited(decision: Decision | None) -> bool:
    """Whether an answer is an audit event: a denial, or a firewall match (shadow included)."""
    return decision is not None and (decision.outcome != _ALLOWED or decision.waf is not None)


def _span_counts(pending: list[Pending]) -> list[int]:
    """Spans per request: its SERVER span and a CLIENT span per attempt, none for an unsampled context."""
    return [1 + len(p[P_ATTEMPTS] or ()) if p[P_TRACE] is None or p[P_TRACE].sampled else 0 for p in pending]


def _sum(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for key, n in b.items():
        out[key] = out.get(key, 0) + n
    return out

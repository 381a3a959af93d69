"""The audit trail: security events as hash-chained OTLP log records in an append-only file.

Refused requests, certificate and config reloads, upstream ejections and
drains become records that say what happened and link to the record
before them (see `auditchain` for the chain and what it can prove). The
request path and the loggers only append a small tuple to a bounded list;
`flush`, run from the worker's telemetry timer, formats the batch, chains
it to the last record on disk and appends it, all under the file's lock,
so the chain stays one sequence across worker processes, restarts and
rotation. When the list is full, events are counted instead of kept, and
the count is itself written as an `edge.audit.dropped` record, so the
trail shows its own gaps.

`flush` returns the records it wrote; the caller exports them as OTLP logs
(`encode_logs`), carrying the same `audit.seq` and `audit.prev_sha256`, so a
collector holds anchors the file must agree with.

Records never hold a secret: no header values, no tokens, no query
strings. A denial names the token's subject and the client certificate's
fingerprint, which is what an auditor needs and already in the policy's
decision.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Final, NamedTuple

from ingress.config.telemetry import Audit
from ingress.telemetry.auditchain import PREV, SEQ, ZERO_SHA256, read_link
from ingress.telemetry.otlp.logs import ERROR, INFO, WARN, LogEvent, LogsJSON, export_request
from ingress.telemetry.otlp.spans import split_origin, waf_attributes
from ingress.telemetry.otlp.wire import AttributeValue
from ingress.telemetry.record import Exchange
from ingress.telemetry.rotating import RotatingFile

log = logging.getLogger("edgeward.audit")

DENIED: Final = "edge.auth.denied"
WAF_SHADOW: Final = "edge.waf.shadow"  # a firewall match let through because its profile only reports
DROPPED: Final = "edge.audit.dropped"

# Operational log events (the `event` extra of an "edgeward.*" log record) that are audit events, and their names.
LOG_EVENTS: Final[Mapping[str, str]] = {
    # ingress/tls/sni.py
    "tls.cert_reloaded": "edge.cert.reloaded",
    "tls.cert_refused": "edge.cert.refused",
    "tls.client_trust_reloaded": "edge.client_trust.reloaded",
    "tls.client_trust_refused": "edge.client_trust.refused",
    "tls.client_crl_expired": "edge.client_trust.crl_expired",
    # ingress/server/supervisor.py (vetted) and worker.py (applied); reload.py and worker.py (refused)
    "config.reload": "edge.config.accepted",
    "config.reloaded": "edge.config.reloaded",
    "config.reload_refused": "edge.config.refused",
    "config.bind_failed": "edge.config.bind_failed",
    # ingress/handlers/proxy/health.py
    "upstream.ejected": "edge.upstream.ejected",
    "upstream.readmitted": "edge.upstream.readmitted",
    "upstream.unhealthy": "edge.upstream.unhealthy",
    "upstream.healthy": "edge.upstream.healthy",
    # ingress/server/worker.py and supervisor.py
    "worker.drain": "edge.drain",
    "worker.drain_deadline": "edge.drain.deadline",
    "supervisor.stop": "edge.stop",
    # ingress/policy/keys.py: the keys tokens are verified with changed, or one was refused
    "jwks_keys_changed": "edge.jwks.changed",
    "jwks_key_refused": "edge.jwks.key_refused",
}

_BODY_MAX = 4096
# Defence in depth for log extras: a key that names a credential never becomes an attribute.
_SECRET_KEY = re.compile(r"secret|token|passw|authorization|cookie|credential|private", re.IGNORECASE)


class _Event(NamedTuple):
    time_ns: int
    name: str
    severity: int
    body: str
    attributes: Mapping[str, AttributeValue]
    trace_id: bytes
    span_id: bytes


class AuditTrail:
    """One process's writer of the shared audit file (`settings.file`)."""

    def __init__(self, settings: Audit, resource: Mapping[str, AttributeValue], max_batch: int = 256) -> None:
        if not settings.file:
            raise ValueError("an audit trail needs [audit] file")
        self.settings = settings
        self.resource = dict(resource)
        self.file = RotatingFile(settings.file, settings.rotate_bytes, 0.0, settings.keep)
        self.max_pending = settings.max_pending
        # Records formatted per flush at most (some 20 µs each): bounds the loop's pause under a flood of
        # refusals; the rest wait for the next tick, and beyond max_pending they are counted as dropped.
        self.max_batch = max_batch
        self.denials = settings.denials == "all"
        self.written = 0  # records appended by this process
        self.dropped = 0  # events lost: pending list full, or the write failed
        self._unreported = 0  # of `dropped`, not yet written as an edge.audit.dropped record
        self._pending: list[_Event | Exchange] = []
        self._json = LogsJSON(self.resource)
        # (device, inode, size) of the file after this process's last write, with that record's seq and hash:
        # unchanged under the lock means nobody wrote since, so the last line need not be read again.
        self._tail: tuple[tuple[int, int, int], int, str] | None = None
        self._failing = False
        os.register_at_fork(after_in_child=_after_fork(weakref.ref(self)))

    def _forked(self) -> None:
        """In a forked child: what is queued is the parent's to write, and the tail it knew is not ours."""
        self._pending, self._tail, self._unreported = [], None, 0

    # the hot path: append only ----------------------------------------------------------------
    def record(
        self,
        event_name: str,
        severity: int,
        body: str,
        attributes: Mapping[str, AttributeValue],
        trace_id: bytes = b"",
        span_id: bytes = b"",
        *,
        time_ns: int = 0,
    ) -> None:
        """Queue one event; `severity` is an OTel SeverityNumber (otlp.logs.INFO, WARN, ERROR)."""
        if len(self._pending) < self.max_pending:
            event = _Event(time_ns or time.time_ns(), event_name, severity, body, attributes, trace_id, span_id)
            self._pending.append(event)
        else:
            self.dropped += 1
            self._unreported += 1

    def denied(self, exchange: Exchange) -> None:
        """Queue an `edge.auth.denied` event for a request the access policy or the firewall did not allow
        (`denials = "all"`), or an `edge.waf.shadow` event for a firewall match let through."""
        decision = exchange.decision
        if not self.denials or decision is None or (decision.outcome == "allowed" and decision.waf is None):
            return
        if len(self._pending) < self.max_pending:
            self._pending.append(exchange)
        else:
            self.dropped += 1
            self._unreported += 1

    # the timer: format, chain, write -------------------------------------------------------
    def flush(self) -> list[LogEvent]:
        """Write what was queued as one chained batch; returns the records written (for OTLP export)."""
        if not self._pending and not self._unreported:
            return []
        pending = self._pending
        if len(pending) > self.max_batch:
            queued, self._pending = pending[: self.max_batch], pending[self.max_batch :]
        else:
            queued, self._pending = pending, []
        events = [_denial(item) if isinstance(item, Exchange) else _event(item) for item in queued]
        lost, self._unreported = self._unreported, 0
        if lost:
            events.append(_dropped(lost))
        try:
            written = self._write(events)
        except OSError as exc:
            self.dropped += len(queued)
            self._unreported += lost + len(queued)
            self._tail = None
            if not self._failing:
                self._failing = True
                log.error(
                    "cannot write the audit trail %s: %s; events are counted as dropped until it works again",
                    self.file.path,
                    exc,
                    extra={"event": "audit.write_failed", "file": self.file.path},
                )
            return []
        self._failing = False
        self.written += len(written)
        return written

    def _write(self, events: list[LogEvent]) -> list[LogEvent]:
        with self.file.locked() as batch:
            identity = batch.identity
            if self._tail is not None and self._tail[0] == identity:
                seq, prev = self._tail[1], self._tail[2]
            else:
                seq, prev = self._last(batch.last_line())
            chained: list[LogEvent] = []
            lines: list[bytes] = []
            for event in events:
                seq += 1
                linked = event._replace(attributes=(*event.attributes, (SEQ, seq), (PREV, prev)))
                line = self._json.line(linked).encode()
                prev = hashlib.sha256(line).hexdigest()
                chained.append(linked)
                lines.append(line)
            batch.write(b"\n".join(lines) + b"\n")
            self._tail = (batch.identity, seq, prev)
        return chained

    def _last(self, line: bytes | None) -> tuple[int, str]:
        """seq and hash of the record the batch follows; a damaged last line is linked to but not trusted for seq."""
        if line is None:
            return 0, ZERO_SHA256
        try:
            seq, _ = read_link(line)
        except ValueError:
            seq = self._tail[1] if self._tail is not None else 0
        return seq, hashlib.sha256(line).hexdigest()

    def encode_logs(self, events: list[LogEvent]) -> bytes:
        """The records `flush` returned as an ExportLogsServiceRequest (protobuf) for the collector."""
        return export_request(events, self.resource)

    def close(self) -> None:
        """Write everything still queued (blocking, in as many batches as it takes) and let the file go."""
        while self._pending or self._unreported:
            if not self.flush():
                break  # the write failed: what is left is counted as dropped
        self.file.close()


def _after_fork(ref: weakref.ref[AuditTrail]) -> Callable[[], None]:
    def forked() -> None:
        trail = ref()
        if trail is not None:
            trail._forked()

    return forked


def _event(item: _Event) -> LogEvent:
    attributes = tuple((key, value) for key, value in item.attributes.items() if key not in (SEQ, PREV))
    return LogEvent(
        item.time_ns,
        item.severity,
        item.body,
        item.name,
        (("event.name", item.name), *attributes),
        item.trace_id,
        item.span_id,
    )


def _denial(exchange: Exchange) -> LogEvent:
    decision = exchange.decision
    assert decision is not None  # only denials are queued
    # Spelt as the request's span spells them, so a denial can be matched across the two signals.
    host, port = split_origin(exchange.host)
    name = DENIED if decision.outcome != "allowed" else WAF_SHADOW
    candidates: tuple[tuple[str, AttributeValue], ...] = (
        ("event.name", name),
        ("edge.auth.outcome", decision.outcome),
        ("edge.auth.reason", decision.reason),
        ("edge.auth.rule", decision.rule),
        ("edge.auth.subject", decision.subject),
        ("client.address", exchange.client),
        ("tls.client.hash.sha256", exchange.client_cert.upper()),
        ("server.address", host),
        ("server.port", port or 0),
        ("http.request.method", exchange.method),
        ("url.path", exchange.path),
        ("http.route", exchange.route),
        ("http.response.status_code", exchange.status),
        ("network.protocol.version", exchange.protocol),
        *(waf_attributes(decision.waf) if decision.waf is not None else ()),
    )
    attributes = tuple((key, value) for key, value in candidates if value not in ("", 0))
    what = f"{exchange.method} {exchange.path}" if exchange.method else "request"
    if name == WAF_SHADOW:
        waf = decision.waf
        assert waf is not None
        body = f"{what} let through with a firewall match: {waf.category} {waf.pattern_id} in {waf.location}"
    else:
        body = f"{what} refused: {decision.outcome}" + (f" ({decision.reason})" if decision.reason else "")
    return LogEvent(
        exchange.end_ns,
        WARN,
        body,
        name,
        attributes,
        exchange.trace_id,
        exchange.span_id,
        1 if exchange.sampled else 0,
    )


def _dropped(count: int) -> LogEvent:
    return LogEvent(
        time.time_ns(),
        WARN,
        f"{count} audit events were lost before this record (queue full or write failed)",
        DROPPED,
        (("event.name", DROPPED), ("audit.dropped", count)),
    )


class AuditLogHandler(logging.Handler):
    """Turns the "edgeward" logger tree's security events (`LOG_EVENTS`) into audit events.

    Attach it to the "edgeward" logger. `trail` may be replaced when the
    config is reloaded, or None while there is no audit file. A process
    without the telemetry timer (the supervisor) passes `immediate=True` so
    each event is written when logged; those events are rare.
    """

    def __init__(
        self, trail: AuditTrail | None = None, *, immediate: bool = False, events: Mapping[str, str] = LOG_EVENTS
    ) -> None:
        super().__init__()
        self.trail = trail
        self.immediate = immediate
        self.events = events
        # In immediate mode, where the records just written go next (the supervisor's OTLP export).
        self.forward: Callable[[list[LogEvent]], None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        trail = self.trail
        event = getattr(record, "event", None)
        name = self.events.get(event) if isinstance(event, str) else None
        if trail is None or name is None:
            return
        attributes: dict[str, AttributeValue] = {"log.event": str(event)}
        for key, value in vars(record).items():
            if key in _STANDARD or key == "event" or _SECRET_KEY.search(key):
                continue
            attribute = _attribute(value)
            if attribute is not None:
                attributes[key if "." in key else f"edge.{key}"] = attribute
        body = record.getMessage()
        if len(body) > _BODY_MAX:
            body = body[:_BODY_MAX] + "…"
        trail.record(name, _severity(record.levelno), body, attributes, time_ns=int(record.created * 1e9))
        if self.immediate:
            written = trail.flush()
            if written and self.forward is not None:
                self.forward(written)


_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _attribute(value: object) -> AttributeValue | None:
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        items = [v for v in value if isinstance(v, str)]
        if len(items) == len(value):
            return tuple(sorted(items) if isinstance(value, set | frozenset) else items)
    return None


def _severity(levelno: int) -> int:
    if levelno >= logging.ERROR:
        return ERROR
    if levelno >= logging.WARNING:
        return WARN
    return INFO


def audit_handler() -> AuditLogHandler:
    """The one AuditLogHandler on the "edgeward" logger, installed on first use.

    The supervisor points it at its own trail (writing each event at once);
    a forked worker inherits it and points it at its observer's trail.
    """
    root = logging.getLogger("edgeward")
    for handler in root.handlers:
        if isinstance(handler, AuditLogHandler):
            return handler
    handler = AuditLogHandler()
    root.addHandler(handler)
    return handler

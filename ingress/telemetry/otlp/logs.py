"""Audit events as OTLP log records: one OTLP JSON line each for the file, protobuf for the collector.

Both encodings carry the same record, attribute for attribute, so the
`audit.seq` and `audit.prev_sha256` a collector receives are anchors for
the chain kept on disk: a record rewritten on disk no longer matches its
exported copy. Both are built for speed, as a flood of refused requests
makes an audit record each: the JSON form as text from memoised pieces and
the C string escaper, the protobuf form with the generated
`opentelemetry-proto` classes filled in place.

A file line is a whole `LogsData` object with one record, as the
OpenTelemetry file exporter writes it, so each line parses on its own and
its exact bytes are what the next record's hash covers.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from json.encoder import encode_basestring_ascii
from typing import Final, NamedTuple, Protocol

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

import ingress
from ingress.telemetry.otlp.wire import AttributeValue, any_value_json, resource_json, scope_json

SCOPE: Final = "edgeward"

# SeverityNumber: the first of each band, the only ones the edge uses.
DEBUG: Final = 5
INFO: Final = 9
WARN: Final = 13
ERROR: Final = 17
FATAL: Final = 21
_TEXT = {DEBUG: "DEBUG", INFO: "INFO", WARN: "WARN", ERROR: "ERROR", FATAL: "FATAL"}


def severity_text(number: int) -> str:
    """OTel's short name for a severity number (`WARN` for 13..16)."""
    return _TEXT.get(number - (number - 1) % 4, "") if 1 <= number <= 24 else ""


class LogEvent(NamedTuple):
    """One log record, ready to encode; ids are raw bytes (16 and 8), b"" when the event has no request."""

    time_ns: int
    severity: int  # SeverityNumber
    body: str
    event_name: str
    attributes: tuple[tuple[str, AttributeValue], ...]
    trace_id: bytes = b""
    span_id: bytes = b""
    flags: int = 0  # W3C trace flags of the request's trace (0x01: sampled)


class LogsJSON:
    """Formats `LogEvent`s as OTLP JSON lines (one `LogsData` each) for one resource.

    The resource and scope prefix is formatted once; `process.pid` is added
    to the resource when it has none, because several workers share one file.
    """

    def __init__(self, resource: Mapping[str, AttributeValue]) -> None:
        self._resource = dict(resource)
        self._pid = 0
        self._prefix = ""

    def line(self, event: LogEvent) -> str:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            attrs = with_pid(self._resource, self._pid)
            self._prefix = (
                '{"resourceLogs":[{"resource":'
                + resource_json(attrs)
                + ',"scopeLogs":[{"scope":'
                + scope_json(SCOPE, ingress.__version__)
                + ',"logRecords":['
            )
        return self._prefix + record_json(event) + "]}]}]}"


def with_pid(resource: Mapping[str, AttributeValue], pid: int) -> dict[str, AttributeValue]:
    attrs = dict(resource)
    attrs.setdefault("process.pid", pid)
    return attrs


def record_json(event: LogEvent) -> str:
    """One LogRecord object in OTLP JSON: int64 as strings, ids as hex, the severity as its number."""
    when = event.time_ns
    parts = [
        f'{{"timeUnixNano":"{when}","observedTimeUnixNano":"{when}","severityNumber":{event.severity}',
    ]
    text = severity_text(event.severity)
    if text:
        parts.append(f'"severityText":"{text}"')
    parts.append(f'"body":{{"stringValue":{_string(event.body)}}}')
    if event.attributes:
        parts.append('"attributes":[' + ",".join([_key(key) + _value(value) for key, value in event.attributes]) + "]")
    if event.flags:
        parts.append(f'"flags":{event.flags}')
    if event.trace_id:
        parts.append(f'"traceId":"{event.trace_id.hex()}"')
    if event.span_id:
        parts.append(f'"spanId":"{event.span_id.hex()}"')
    if event.event_name:
        parts.append(f'"eventName":{_string(event.event_name)}')
    return ",".join(parts) + "}"


def _string(text: str) -> str:
    """A JSON string literal, ASCII only; the same text as `wire.json_string`, without `json.dumps`' overhead."""
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return encode_basestring_ascii(text)


@functools.lru_cache(maxsize=1024)
def _key(key: str) -> str:
    """`{"key":...,"value":` of a KeyValue; attribute keys are few and repeat in every record."""
    return f'{{"key":{_string(key)},"value":'


def _value(value: AttributeValue) -> str:
    """The AnyValue of a KeyValue, and the KeyValue's closing brace."""
    if isinstance(value, str):
        return f'{{"stringValue":{_string(value)}}}}}'
    if isinstance(value, bool) or not isinstance(value, int):
        return any_value_json(value) + "}"
    return f'{{"intValue":"{value}"}}}}'


def export_request(events: Sequence[LogEvent], resource: Mapping[str, AttributeValue]) -> bytes:
    """An ExportLogsServiceRequest (protobuf) holding `events` under one resource and the edge's scope.

    Built with `add()` and field assignment, which is about three times
    faster than keyword construction of every nested message.
    """
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    _fill(resource_logs.resource.attributes, with_pid(resource, os.getpid()).items())
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = SCOPE
    scope_logs.scope.version = ingress.__version__
    add = scope_logs.log_records.add
    for event in events:
        record = add()
        record.time_unix_nano = record.observed_time_unix_nano = event.time_ns
        record.severity_number = event.severity
        record.severity_text = severity_text(event.severity)
        record.body.string_value = _text(event.body)
        _fill(record.attributes, event.attributes)
        if event.flags:
            record.flags = event.flags
        if event.trace_id:
            record.trace_id = event.trace_id
        if event.span_id:
            record.span_id = event.span_id
        record.event_name = event.event_name
    return bytes(request.SerializeToString())


class _KeyValues(Protocol):
    def add(self) -> KeyValue: ...


def _fill(target: _KeyValues, items: Iterable[tuple[str, AttributeValue]]) -> None:
    add = target.add
    for key, value in items:
        kv = add()
        kv.key = key
        _set(kv.value, value)


def _set(target: AnyValue, value: AttributeValue) -> None:
    # bool before int: bool is a subclass of int.
    if isinstance(value, str):
        target.string_value = _text(value)
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    else:
        add = target.array_value.values.add
        for item in value:
            _set(add(), item)


def _text(value: str) -> str:
    """Protobuf strings must be valid UTF-8; a lone surrogate is replaced, as the JSON form does."""
    return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")

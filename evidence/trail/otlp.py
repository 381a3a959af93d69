"""One line of the server's files to plain tuples: OTLP JSON TracesData to spans, LogsData to audit records.

Sans-IO: bytes in, tuples out; reading files is `inputs`, counting is
`aggregate`. The shapes are those the server writes (ingress/telemetry/otlp/
spans.py `SpanEncoder.json_line`, ingress/telemetry/audit.py) and the OTLP
file-exporter spec allows: lowerCamelCase fields, int64 values as decimal
strings, enums as integers (their names are accepted too). A line is
decoded whole before anything is counted, so a damaged line is refused
entirely, never counted in part.

Attribute names, as the server spells them: `http.response.status_code`,
`network.protocol.version`, `tls.protocol.name`/`tls.protocol.version`,
`http.route`, `server.address`, `client.address`, `error.type`,
`edge.auth.outcome`/`reason`/`rule`/`subject`, `tls.client.hash.sha256`,
`edge.cache.status`, `edge.upstream`; `geo.country.iso_code` where a
collector has enriched the spans (the server itself knows no geography).
"""

from __future__ import annotations

import json
from typing import Any, Final, NamedTuple

SERVER: Final = 2
CLIENT: Final = 3
_KINDS: Final = {"SPAN_KIND_SERVER": SERVER, "SPAN_KIND_CLIENT": CLIENT}
_ERROR: Final = 2


class DecodeError(ValueError):
    """A line that is not what the server writes; the message says what is wrong with it."""


class ServerSpan(NamedTuple):
    """A SERVER span: one request the edge answered (or refused)."""

    start_ns: int
    end_ns: int
    status: int  # 0 when the span has no http.response.status_code
    protocol: str  # network.protocol.version: "1.0", "1.1", "2", "3"
    tls: str  # "TLS 1.3", or "" on plain TCP
    route: str
    host: str
    client: str
    outcome: str  # edge.auth.outcome; "" when no access policy ran
    reason: str
    rule: str  # edge.auth.rule: the policy rule that decided (a refused request never reaches routing)
    subject: str
    cert: str  # tls.client.hash.sha256
    cache: str
    upstream: str
    error: bool  # status ERROR
    country: str  # geo.country.iso_code, "" unless a collector added it


class ClientSpan(NamedTuple):
    """A CLIENT span: one try at an upstream origin."""

    start_ns: int
    end_ns: int
    upstream: str
    error_type: str
    error: bool


class AuditRecord(NamedTuple):
    time_ns: int
    name: str  # event.name
    severity: str
    body: str
    attributes: dict[str, str | int | float | bool]


def _value(value: dict[str, Any]) -> str | int | float | bool:
    for kind, item in value.items():
        if kind == "stringValue":
            return str(item)
        if kind == "intValue":
            return int(item)
        if kind in ("doubleValue", "boolValue"):
            return item  # type: ignore[no-any-return]
        return json.dumps(item, sort_keys=True)  # arrays, maps, bytes: kept as their JSON text
    return ""


def _loads(line: bytes, what: str) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"not a JSON line ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:  # not UTF-8
        raise DecodeError(f"not a JSON line ({exc})") from None
    if not isinstance(item, dict):
        raise DecodeError(f"not an OTLP {what} object")
    return item


# The compact reading of a line (see `_compact`): KeyValue objects with a string or int value become [key, value].
_OPEN: Final = b'{"key":'
_CLOSE: Final = b'"}}'
_REWRITES: Final = (
    (_OPEN, b"["),
    (b',"value":{"stringValue":', b","),
    (b',"value":{"intValue":', b","),
    (_CLOSE, b'"]'),
)


def _compact(line: bytes) -> Any:
    """The line parsed with every KeyValue as a [key, text] pair, or None when that reading is not safe.

    Most of json.loads' time on a span line goes to the two objects per
    attribute, so the server's spelling of them is rewritten to a 2-element
    array first (about 40 % faster, and `dict(pairs)` then runs in C). This is
    sound because an unescaped quote is always structural in valid JSON, so
    `{"key":`, `,"value":{"stringValue":` and `,"value":{"intValue":` occur
    only as tokens, and `"}}` only as the end of such a value, except when a
    string starts with "}}" (its opening quote); then `"}}` is counted more
    often than `{"key":` and the line takes the generic path. Any other shape
    (double, bool, array values, another producer's key order) leaves a
    half-rewritten object, which is not valid JSON, and takes the generic
    path too.
    """
    if line.count(_OPEN) != line.count(_CLOSE):
        return None
    for old, new in _REWRITES:
        line = line.replace(old, new)
    try:
        return json.loads(line)
    except ValueError:
        return None


def decode_spans(line: bytes) -> tuple[dict[str, str], list[ServerSpan | ClientSpan]]:
    """The resource attributes of the line's first ResourceSpans (for the edge's location) and its spans.

    Span kinds other than SERVER and CLIENT (an INTERNAL span from another producer) are skipped.
    """
    data = _compact(line)
    compact = data is not None
    if not compact:
        data = _loads(line, "TracesData")
    attributes = dict if compact else _attributes
    out: list[ServerSpan | ClientSpan] = []
    append = out.append
    resource: dict[str, str] = {}
    try:
        for number, resource_spans in enumerate(data["resourceSpans"]):
            if number == 0:
                resource = attributes(resource_spans.get("resource", {}).get("attributes", ()))
            for scope_spans in resource_spans.get("scopeSpans", ()):
                for span in scope_spans.get("spans", ()):
                    decoded = _span(span, attributes(span.get("attributes", ())))
                    if decoded is not None:
                        append(decoded)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DecodeError(f"not OTLP TracesData JSON ({type(exc).__name__}: {exc})") from None
    return resource, out


def _attributes(items: list[dict[str, Any]]) -> dict[str, str]:
    """KeyValue objects as {key: text}: the generic twin of dict(pairs) on the compact reading."""
    return {kv["key"]: str(_value(kv["value"])) for kv in items}


def _span(span: dict[str, Any], attrs: dict[str, str]) -> ServerSpan | ClientSpan | None:
    kind = span.get("kind", 0)
    if isinstance(kind, str):
        kind = _KINDS.get(kind, 0)
    if kind != SERVER and kind != CLIENT:  # noqa: PLR1714 - the hot path: two compares beat a tuple
        return None
    start = int(span["startTimeUnixNano"])
    end = int(span["endTimeUnixNano"])
    status = span.get("status") or {}
    error = status.get("code", 0) in (_ERROR, "STATUS_CODE_ERROR")
    get = attrs.get
    if kind == CLIENT:
        return ClientSpan(start, end, get("edge.upstream", ""), get("error.type", ""), error)
    tls_version = get("tls.protocol.version", "")
    code = get("http.response.status_code")
    return ServerSpan(
        start,
        end,
        int(code) if code else 0,
        get("network.protocol.version", ""),
        f"{get('tls.protocol.name', 'tls').upper()} {tls_version}" if tls_version else "",
        get("http.route", ""),
        get("server.address", ""),
        get("client.address", ""),
        get("edge.auth.outcome", ""),
        get("edge.auth.reason", ""),
        get("edge.auth.rule", ""),
        get("edge.auth.subject", ""),
        get("tls.client.hash.sha256", ""),
        get("edge.cache.status", ""),
        get("edge.upstream", ""),
        error,
        get("geo.country.iso_code", ""),
    )


def decode_audit(line: bytes) -> AuditRecord:
    """One audit record (one LogsData line with one log record, as ingress/telemetry/audit.py writes it)."""
    data = _loads(line, "LogsData")
    try:
        (resource_logs,) = data["resourceLogs"]
        (scope_logs,) = resource_logs["scopeLogs"]
        (record,) = scope_logs["logRecords"]
        attributes = {kv["key"]: _value(kv["value"]) for kv in record.get("attributes", ())}
        body = record.get("body", {})
        name = record.get("eventName") or attributes.get("event.name", "")
        return AuditRecord(
            int(record.get("timeUnixNano") or record.get("observedTimeUnixNano") or 0),
            str(name),
            str(record.get("severityText", "")),
            str(_value(body)) if body else "",
            attributes,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DecodeError(f"not an audit record: not one OTLP log record ({type(exc).__name__}: {exc})") from None

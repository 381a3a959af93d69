"""The hand-written OTLP span encoder, checked against the reference decoders.

Protobuf output is parsed with opentelemetry-proto's generated classes and
OTLP JSON with opentelemetry-proto-json and plain `json`, so a mistake in a
tag, a length or an escape fails here rather than at a collector.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.proto_json.trace.v1.trace import TracesData

import ingress
from ingress.protocol.events import Decision, Peer
from ingress.protocol.trace import Attempt, TraceContext
from ingress.telemetry.observer import _span_counts
from ingress.telemetry.otlp import wire
from ingress.telemetry.otlp.resource import resource_attributes
from ingress.telemetry.otlp.spans import (
    MEMO_LIMIT,
    MEMO_MAX_CHARS,
    SpanEncoder,
    fresh_heads,
    head_ids,
    split_origin,
)
from ingress.telemetry.record import Exchange, Pending, columns
from ingress.tls.identity import ClientIdentity

TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
SPAN = bytes.fromhex("00f067aa0ba902b7")
PARENT = bytes.fromhex("b7ad6b7169203331")
T0 = 1_700_000_000_123_456_789
RESOURCE = {"service.name": "edge-test", "service.version": ingress.__version__, "host.cores": 2}


def exchange(**changes: Any) -> Exchange:
    base = Exchange(
        trace_id=TRACE,
        span_id=SPAN,
        parent_id=b"",
        trace_state="",
        sampled=True,
        start_ns=T0,
        end_ns=T0 + 48_000,
        method="GET",
        path="/index.html",
        route="/",
        status=200,
        protocol="1.1",
        tls="TLSv1.3",
        host="example.test",
        client="192.0.2.7",
        user_agent="curl/8.5.0",
        decision=Decision("allowed", "no authentication required", "public"),
        cache="hit",
        upstream="",
        attempts=(),
        body_bytes=1024,
        scheme="https",
        sni="example.test",
        client_cert="",
        error="",
    )
    return base._replace(**changes)


def attempt(n: int, **changes: Any) -> Attempt:
    base = Attempt(
        span_id=bytes([0xA0 + n]) * 8,
        start_ns=T0 + 1_000 * (n + 1),
        end_ns=T0 + 1_000 * (n + 1) + 500,
        origin="10.0.0.5:8080",
        status=200,
        error="",
        resend=n,
    )
    return base._replace(**changes)


def value_of(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value_of(item) for item in any_value.array_value.values)
    assert kind is not None, "an AnyValue with nothing set"
    return getattr(any_value, kind)


def attrs_of(message: Span | Resource) -> dict[str, Any]:
    keys = [kv.key for kv in message.attributes]
    assert len(keys) == len(set(keys)), f"duplicate attribute keys: {keys}"
    return {kv.key: value_of(kv.value) for kv in message.attributes}


def decode(payload: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(payload)
    return request


def spans_of(payload: bytes, resource: dict[str, Any] = RESOURCE) -> list[Span]:
    """The spans of an export request, after checking the envelope around them."""
    request = decode(payload)
    assert len(request.resource_spans) == 1
    resource_spans = request.resource_spans[0]
    assert attrs_of(resource_spans.resource) == resource
    assert len(resource_spans.scope_spans) == 1
    scope_spans = resource_spans.scope_spans[0]
    assert scope_spans.scope.name == "edgeward"
    assert scope_spans.scope.version == ingress.__version__
    return list(scope_spans.spans)


def only(exchanges: list[Exchange]) -> list[Span]:
    encoder = SpanEncoder(RESOURCE)
    spans = spans_of(encoder.encode(exchanges))
    assert len(spans) == SpanEncoder.span_count(exchanges)
    # The JSON form must describe exactly the same spans (checked field by field in the JSON tests below).
    assert json_as_proto_dict(encoder.json_line(exchanges)) == proto_as_dict(encoder.encode(exchanges))
    return spans


def fields(span: Span) -> dict[str, Any]:
    """Every span field the encoder may set, so an unexpected extra one fails too."""
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "trace_state": span.trace_state,
        "flags": span.flags,
        "name": span.name,
        "kind": span.kind,
        "start": span.start_time_unix_nano,
        "end": span.end_time_unix_nano,
        "status": (span.status.code, span.status.message) if span.HasField("status") else None,
        "events": len(span.events),
        "links": len(span.links),
        "dropped": (span.dropped_attributes_count, span.dropped_events_count, span.dropped_links_count),
    }


def server_fields(**changes: Any) -> dict[str, Any]:
    expected = {
        "trace_id": TRACE,
        "span_id": SPAN,
        "parent_span_id": b"",
        "trace_state": "",
        "flags": 0x101,
        "name": "GET /",
        "kind": Span.SPAN_KIND_SERVER,
        "start": T0,
        "end": T0 + 48_000,
        "status": None,
        "events": 0,
        "links": 0,
        "dropped": (0, 0, 0),
    }
    expected.update(changes)
    return expected


def client_fields(n: int, **changes: Any) -> dict[str, Any]:
    expected = {
        "trace_id": TRACE,
        "span_id": bytes([0xA0 + n]) * 8,
        "parent_span_id": SPAN,
        "trace_state": "",
        "flags": 0x101,
        "name": "GET",
        "kind": Span.SPAN_KIND_CLIENT,
        "start": T0 + 1_000 * (n + 1),
        "end": T0 + 1_000 * (n + 1) + 500,
        "status": None,
        "events": 0,
        "links": 0,
        "dropped": (0, 0, 0),
    }
    expected.update(changes)
    return expected


ERROR = (Status.STATUS_CODE_ERROR, "")


# --- SERVER and CLIENT spans -------------------------------------------------------------------------------------


def test_allowed_static_request_over_h1_tls() -> None:
    (span,) = only([exchange()])
    assert fields(span) == server_fields()
    assert attrs_of(span) == {
        "http.request.method": "GET",
        "url.scheme": "https",
        "http.route": "/",
        "network.protocol.name": "http",
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
        "tls.protocol.name": "tls",
        "tls.protocol.version": "1.3",
        "url.path": "/index.html",
        "server.address": "example.test",
        "client.address": "192.0.2.7",
        "user_agent.original": "curl/8.5.0",
        "http.response.body.size": 1024,
        "tls.client.server_name": "example.test",
        "edge.auth.outcome": "allowed",
        "edge.auth.reason": "no authentication required",
        "edge.auth.rule": "public",
        "edge.cache.status": "hit",
    }


def test_denied_request_carries_the_decision_and_client_certificate() -> None:
    denied = exchange(
        method="DELETE",
        path="/api/items/7",
        route="/api",
        status=403,
        protocol="2",
        tls="TLSv1.2",
        decision=Decision("denied_rbac", "no grant for DELETE", "api", "alice", ("reader",)),
        cache="",
        body_bytes=0,
        client_cert="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    )
    (span,) = only([denied])
    assert fields(span) == server_fields(name="DELETE /api")
    assert attrs_of(span) == {
        "http.request.method": "DELETE",
        "url.scheme": "https",
        "http.route": "/api",
        "network.protocol.name": "http",
        "http.response.status_code": 403,
        "network.protocol.version": "2",
        "tls.protocol.name": "tls",
        "tls.protocol.version": "1.2",
        "url.path": "/api/items/7",
        "server.address": "example.test",
        "client.address": "192.0.2.7",
        "user_agent.original": "curl/8.5.0",
        "http.response.body.size": 0,
        "tls.client.server_name": "example.test",
        # Upper case, as the semantic conventions ask of hash values.
        "tls.client.hash.sha256": "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
        "edge.auth.outcome": "denied_rbac",
        "edge.auth.reason": "no grant for DELETE",
        "edge.auth.rule": "api",
        "edge.auth.subject": "alice",
    }


def test_proxied_request_with_a_refused_connect_and_a_503_retry() -> None:
    proxied = exchange(
        path="/api/items",
        route="/api",
        status=503,
        protocol="2",
        cache="miss",
        upstream="api-pool",
        body_bytes=19,
        attempts=(
            attempt(0, origin="10.0.0.5:8080", status=0, error="connect_refused"),
            attempt(1, origin="10.0.0.6:8081", status=503),
        ),
    )
    server, first, retry = only([proxied])
    assert fields(server) == server_fields(name="GET /api", status=ERROR)
    assert attrs_of(server) == {
        "http.request.method": "GET",
        "url.scheme": "https",
        "http.route": "/api",
        "network.protocol.name": "http",
        "http.response.status_code": 503,
        "network.protocol.version": "2",
        "tls.protocol.name": "tls",
        "tls.protocol.version": "1.3",
        "error.type": "503",
        "url.path": "/api/items",
        "server.address": "example.test",
        "client.address": "192.0.2.7",
        "user_agent.original": "curl/8.5.0",
        "http.response.body.size": 19,
        "tls.client.server_name": "example.test",
        "edge.auth.outcome": "allowed",
        "edge.auth.reason": "no authentication required",
        "edge.auth.rule": "public",
        "edge.cache.status": "miss",
        "edge.upstream": "api-pool",
    }
    assert fields(first) == client_fields(0, status=ERROR)
    assert attrs_of(first) == {
        "http.request.method": "GET",
        "server.address": "10.0.0.5",
        "server.port": 8080,
        "error.type": "connect_refused",
        "edge.upstream": "api-pool",
    }
    assert fields(retry) == client_fields(1, status=ERROR)
    assert attrs_of(retry) == {
        "http.request.method": "GET",
        "server.address": "10.0.0.6",
        "server.port": 8081,
        "http.response.status_code": 503,
        "http.request.resend_count": 1,
        "error.type": "503",
        "edge.upstream": "api-pool",
    }


def test_a_5xx_the_edge_made_itself_names_its_cause() -> None:
    timed_out = exchange(status=504, error="upstream_timeout", upstream="api-pool", cache="", decision=None)
    (span,) = only([timed_out])
    assert fields(span) == server_fields(status=ERROR)
    attrs = attrs_of(span)
    assert attrs["error.type"] == "upstream_timeout"
    assert attrs["http.response.status_code"] == 504
    assert not any(key.startswith("edge.auth.") for key in attrs)
    # An error string on a non-5xx is the edge's note, not an OTel error.
    (span,) = only([exchange(status=404, error="not_found")])
    assert "error.type" not in attrs_of(span)
    assert fields(span)["status"] is None


def test_remote_parent_and_trace_state_are_carried_to_every_span() -> None:
    continued = exchange(
        parent_id=PARENT,
        trace_state="rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        upstream="api-pool",
        attempts=(attempt(0),),
    )
    server, child = only([continued])
    assert fields(server) == server_fields(
        parent_span_id=PARENT, trace_state="rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", flags=0x301
    )
    # The CLIENT span's parent is the local SERVER span: is_remote known and false.
    assert fields(child) == client_fields(0, trace_state="rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", flags=0x101)
    assert attrs_of(child) == {
        "http.request.method": "GET",
        "server.address": "10.0.0.5",
        "server.port": 8080,
        "http.response.status_code": 200,
        "edge.upstream": "api-pool",
    }


def test_unsampled_exchange_clears_the_sampled_flag() -> None:
    server, child = only([exchange(sampled=False, parent_id=PARENT, attempts=(attempt(0),))])
    assert server.flags == 0x300
    assert child.flags == 0x100


def test_unparsed_request_is_named_http_and_omits_empty_strings() -> None:
    unparsed = exchange(
        method="",
        path="",
        route="",
        status=400,
        protocol="1.1",
        tls="",
        host="",
        user_agent="",
        decision=None,
        cache="",
        body_bytes=11,
        scheme="http",
        sni="",
    )
    (span,) = only([unparsed])
    assert fields(span) == server_fields(name="HTTP")
    assert attrs_of(span) == {
        "url.scheme": "http",
        "network.protocol.name": "http",
        "http.response.status_code": 400,
        "network.protocol.version": "1.1",
        "client.address": "192.0.2.7",
        "http.response.body.size": 11,
    }


@pytest.mark.parametrize("method", ["PURGE", "get", "BREW"])
def test_non_standard_method_is_other_with_the_original_kept(method: str) -> None:
    span, child = only([exchange(method=method, route="/static", upstream="cdn", attempts=(attempt(0),))])
    assert span.name == "HTTP /static"
    attrs = attrs_of(span)
    assert attrs["http.request.method"] == "_OTHER"
    assert attrs["http.request.method_original"] == method
    assert child.name == "HTTP"
    assert attrs_of(child)["http.request.method"] == "_OTHER"
    assert attrs_of(child)["http.request.method_original"] == method


def test_ipv6_origin_loses_its_brackets_and_keeps_its_port() -> None:
    _, child = only([exchange(upstream="v6", attempts=(attempt(0, origin="[2001:db8::1]:8443"),))])
    assert attrs_of(child) == {
        "http.request.method": "GET",
        "server.address": "2001:db8::1",
        "server.port": 8443,
        "http.response.status_code": 200,
        "edge.upstream": "v6",
    }


@pytest.mark.parametrize(
    ("host", "address", "port"),
    [("bank.example:8443", "bank.example", 8443), ("[::1]:443", "::1", 443), ("bank.example", "bank.example", None)],
)
def test_a_host_with_a_port_is_split_into_address_and_port(host: str, address: str, port: int | None) -> None:
    encoder = SpanEncoder(RESOURCE)
    for payload in (encoder.encode([exchange(host=host)]), encoder.encode([exchange(host=host)])):  # memo miss, hit
        (span,) = spans_of(payload)
        attrs = attrs_of(span)
        assert attrs["server.address"] == address
        assert attrs.get("server.port") == port
    line = json.loads(encoder.json_line([exchange(host=host)]))
    (span_json,) = line["resourceSpans"][0]["scopeSpans"][0]["spans"]
    shown = {kv["key"]: kv["value"] for kv in span_json["attributes"]}
    assert shown["server.address"] == {"stringValue": address}
    assert shown.get("server.port") == ({"intValue": str(port)} if port is not None else None)


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("10.0.0.5:8080", ("10.0.0.5", 8080)),
        ("backend.internal:443", ("backend.internal", 443)),
        ("[::1]:80", ("::1", 80)),
        ("[::1]", ("::1", None)),
        ("::1", ("::1", None)),
        ("backend.internal", ("backend.internal", None)),
        ("host:http", ("host", None)),
    ],
)
def test_split_origin(origin: str, expected: tuple[str, int | None]) -> None:
    assert split_origin(origin) == expected


def test_latin1_text_becomes_utf8_and_odd_strings_survive() -> None:
    raw_path = '/caf\xe9/\xff\x00?q="x"\\'
    raw_agent = "Mozilla/5.0 (\xe9t\xe9)\r\n\t\x7f"
    lone = "bad\udcffsurrogate"
    exchanges = [
        exchange(path=raw_path, user_agent=raw_agent, trace_state="k=v"),
        exchange(span_id=b"\x01" * 8, path=lone, host="h\u2603st"),
    ]
    first, second = only(exchanges)
    assert attrs_of(first)["url.path"] == raw_path
    assert attrs_of(first)["user_agent.original"] == raw_agent
    assert attrs_of(second)["url.path"] == "bad?surrogate"
    assert attrs_of(second)["server.address"] == "h\u2603st"
    line = SpanEncoder(RESOURCE).json_line(exchanges)
    assert line.isascii()
    assert line.count(b"\n") == 1


def test_span_count_and_empty_batches() -> None:
    exchanges = [exchange(), exchange(attempts=(attempt(0), attempt(1)))]
    assert SpanEncoder.span_count(exchanges) == 4
    assert SpanEncoder.span_count([]) == 0
    encoder = SpanEncoder(RESOURCE)
    assert encoder.encode([]) == b""
    assert encoder.json_line([]) == b""


def test_large_batch_round_trips_in_order() -> None:
    exchanges = [
        exchange(
            span_id=i.to_bytes(8, "big"),
            start_ns=T0 + i,
            end_ns=T0 + i + 2**40,
            path=f"/p/{i}" + "x" * (i % 300),
            body_bytes=i * 1_000_003,
            status=(200, 304, 404, 500)[i % 4],
            attempts=(attempt(0, span_id=(i + 10**6).to_bytes(8, "big")),) if i % 3 == 0 else (),
        )
        for i in range(2048)
    ]
    encoder = SpanEncoder(RESOURCE)
    spans = spans_of(encoder.encode(exchanges))
    assert len(spans) == SpanEncoder.span_count(exchanges)
    servers = [span for span in spans if span.kind == Span.SPAN_KIND_SERVER]
    assert [span.span_id for span in servers] == [i.to_bytes(8, "big") for i in range(2048)]
    for i, span in enumerate(servers):
        attrs = attrs_of(span)
        assert attrs["url.path"] == f"/p/{i}" + "x" * (i % 300)
        assert attrs["http.response.body.size"] == i * 1_000_003
        assert span.end_time_unix_nano == T0 + i + 2**40
        assert (span.status.code == Status.STATUS_CODE_ERROR) == (i % 4 == 3)
    assert json_as_proto_dict(encoder.json_line(exchanges)) == proto_as_dict(encoder.encode(exchanges))


def test_memos_stay_bounded_and_output_stays_right() -> None:
    encoder = SpanEncoder(RESOURCE)
    total = MEMO_LIMIT + 1500
    for batch in range(0, total, 500):
        exchanges = [
            exchange(user_agent=f"agent/{i}", client=f"198.51.100.{i % 250}", body_bytes=i)
            for i in range(batch, min(batch + 500, total))
        ]
        spans = spans_of(encoder.encode(exchanges))
        assert [attrs_of(span)["user_agent.original"] for span in spans] == [ex.user_agent for ex in exchanges]
        assert [attrs_of(span)["http.response.body.size"] for span in spans] == [ex.body_bytes for ex in exchanges]
        lines = json.loads(encoder.json_line(exchanges))
        agents = [
            next(kv["value"]["stringValue"] for kv in span["attributes"] if kv["key"] == "user_agent.original")
            for span in lines["resourceSpans"][0]["scopeSpans"][0]["spans"]
        ]
        assert agents == [ex.user_agent for ex in exchanges]
        sizes = encoder.memo_sizes()
        assert max(sizes.values()) <= MEMO_LIMIT
    sizes = encoder.memo_sizes()
    assert sizes["user_agent.original"] < total  # it was emptied on the way
    assert sizes["user_agent.original_json"] < total


def test_long_strings_are_encoded_but_not_memoised() -> None:
    encoder = SpanEncoder(RESOURCE)
    long_path = "/" + "\xe9x" * (MEMO_MAX_CHARS + 1)
    exchanges = [exchange(path=long_path, span_id=bytes([i]) * 8) for i in range(3)]
    before = encoder.memo_sizes()["url.path"]
    spans = only(exchanges)
    assert [attrs_of(span)["url.path"] for span in spans] == [long_path] * 3
    encoder.encode(exchanges)
    encoder.json_line(exchanges)
    assert encoder.memo_sizes()["url.path"] == before
    assert encoder.memo_sizes()["url.path_json"] == 0


# --- OTLP JSON ---------------------------------------------------------------------------------------------------

HEX_ID = re.compile(r"^[0-9a-f]+$")


def proto_as_dict(payload: bytes) -> dict[str, Any]:
    """The protobuf payload in the OTLP JSON mapping (ids as hex, as OTLP/JSON differs from proto3 JSON there)."""
    mapped = MessageToDict(decode(payload), use_integers_for_enums=True)
    for resource_spans in mapped["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return mapped


def json_as_proto_dict(line: bytes) -> dict[str, Any]:
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def batch_of_everything() -> list[Exchange]:
    return [
        exchange(),
        exchange(
            span_id=b"\x02" * 8,
            method="POST",
            status=401,
            decision=Decision("denied_jwt", "expired", "api", "bob"),
            client_cert="ab" * 32,
        ),
        exchange(
            span_id=b"\x03" * 8,
            parent_id=PARENT,
            trace_state="a=1",
            status=503,
            upstream="pool",
            attempts=(attempt(0, status=0, error="timeout"), attempt(1, origin="[::1]:9000", status=503)),
        ),
        exchange(span_id=b"\x04" * 8, method="", path="", route="", status=400, decision=None, tls="", scheme="http"),
        exchange(span_id=b"\x05" * 8, method="PURGE", user_agent='quote " backslash \\ \x01 \xe9'),
    ]


def test_json_line_matches_the_protobuf_payload() -> None:
    encoder = SpanEncoder(RESOURCE)
    exchanges = batch_of_everything()
    line = encoder.json_line(exchanges)
    parsed = json_as_proto_dict(line)
    assert parsed == proto_as_dict(encoder.encode(exchanges))
    spans = parsed["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert len(spans) == SpanEncoder.span_count(exchanges)
    for span in spans:
        assert HEX_ID.match(span["traceId"]) and len(span["traceId"]) == 32
        assert HEX_ID.match(span["spanId"]) and len(span["spanId"]) == 16
        if "parentSpanId" in span:
            assert HEX_ID.match(span["parentSpanId"]) and len(span["parentSpanId"]) == 16
        assert isinstance(span["startTimeUnixNano"], str) and span["startTimeUnixNano"].isdigit()
        assert isinstance(span["endTimeUnixNano"], str) and span["endTimeUnixNano"].isdigit()
        assert isinstance(span["flags"], int)
        assert span["kind"] in (2, 3)
        for kv in span["attributes"]:
            if "intValue" in kv["value"]:
                assert isinstance(kv["value"]["intValue"], str)
    assert spans[0]["traceId"] == TRACE.hex()
    assert spans[0]["startTimeUnixNano"] == str(T0)
    assert {"key": "http.response.status_code", "value": {"intValue": "200"}} in spans[0]["attributes"]
    assert spans[2]["parentSpanId"] == PARENT.hex()
    assert spans[2]["traceState"] == "a=1"
    assert spans[2]["flags"] == 0x301
    assert spans[2]["status"] == {"code": 2}
    resource = parsed["resourceSpans"][0]["resource"]["attributes"]
    assert {"key": "host.cores", "value": {"intValue": "2"}} in resource


def test_json_line_parses_as_otlp_traces_data() -> None:
    encoder = SpanEncoder(RESOURCE)
    exchanges = batch_of_everything()
    data = TracesData.from_json(encoder.json_line(exchanges))
    (resource_spans,) = data.resource_spans
    assert {kv.key for kv in resource_spans.resource.attributes} == set(RESOURCE)
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "edgeward"
    assert scope_spans.scope.version == ingress.__version__
    reference = spans_of(encoder.encode(exchanges))
    assert len(scope_spans.spans) == len(reference)
    for span, proto in zip(scope_spans.spans, reference, strict=True):
        assert span.trace_id == proto.trace_id
        assert span.span_id == proto.span_id
        assert (span.parent_span_id or b"") == proto.parent_span_id
        assert (span.trace_state or "") == proto.trace_state
        assert span.flags == proto.flags
        assert span.name == proto.name
        assert span.kind == proto.kind
        assert span.start_time_unix_nano == proto.start_time_unix_nano
        assert span.end_time_unix_nano == proto.end_time_unix_nano
        assert [(kv.key, kv.value.to_dict()) for kv in span.attributes] == [
            (kv.key, MessageToDict(kv.value)) for kv in proto.attributes
        ]
        assert (span.status.code if span.status else 0) == proto.status.code
    # And back out again: the reference codec writes what we wrote.
    assert data.to_dict() == json.loads(encoder.json_line(exchanges))


# --- Resource and wire helpers -----------------------------------------------------------------------------------


def test_resource_attributes_follow_the_sdk_with_config_winning(monkeypatch: pytest.MonkeyPatch) -> None:
    env = "service.name=from-env,deployment.environment.name=env,k8s.pod.name=p1"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", env)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env-name")
    attrs = resource_attributes("edge", {"deployment.environment.name": "prod"})
    assert attrs["service.name"] == "edge"
    assert attrs["deployment.environment.name"] == "prod"
    assert attrs["k8s.pod.name"] == "p1"
    assert attrs["service.version"] == ingress.__version__
    assert attrs["telemetry.sdk.language"] == "python"
    # An empty configured name hands service.name back to the environment.
    assert resource_attributes("", {})["service.name"] == "from-env-name"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    assert resource_attributes("", {})["service.name"] == "from-env"
    # The configured resource may pin the version.
    assert resource_attributes("edge", {"service.version": "9"})["service.version"] == "9"


def test_encode_resource_round_trips_every_value_type() -> None:
    attrs: dict[str, wire.AttributeValue] = {
        "s": "text \xe9",
        "empty": "",
        "i": 7,
        "zero": 0,
        "neg": -5,
        "big": 2**63 - 1,
        "t": True,
        "f": False,
        "d": 0.25,
        "arr": ("a", "b"),
        "ints": (1, -2),
    }
    resource = Resource()
    resource.ParseFromString(wire.encode_resource(attrs))
    assert attrs_of(resource) == attrs
    assert json.loads(wire.resource_json(attrs)) == MessageToDict(resource)
    assert wire.resource_json({}) == "{}"


def test_varint_matches_protobuf() -> None:
    assert wire.varint(0) == b"\x00"
    assert wire.varint(127) == b"\x7f"
    assert wire.varint(128) == b"\x80\x01"
    assert wire.varint(300) == b"\xac\x02"
    assert wire.varint(-1) == b"\xff" * 9 + b"\x01"
    assert wire.tag(16, wire.I32) == b"\x85\x01"


def test_special_doubles_in_json() -> None:
    text = wire.attributes_json([("nan", float("nan")), ("inf", float("inf")), ("ninf", float("-inf"))])
    assert json.loads("[" + text + "]") == [
        {"key": "nan", "value": {"doubleValue": "NaN"}},
        {"key": "inf", "value": {"doubleValue": "Infinity"}},
        {"key": "ninf", "value": {"doubleValue": "-Infinity"}},
    ]


# -- spans straight from the request path's tuples ---------------------------------------------------------------


def pending_of(record: Exchange, trace: TraceContext | None, peer: Peer, t1: int) -> Pending:
    """The request-path tuple that `record` was made from (see `record.Pending`)."""
    return (
        trace,
        record.method,
        record.path.encode("latin-1"),
        record.route,
        record.status,
        record.protocol,
        peer,
        record.host,
        record.user_agent.encode("latin-1"),
        record.decision,
        record.cache,
        record.upstream,
        list(record.attempts) or None,
        record.body_bytes,
        record.scheme,
        record.error,
        t1 - (record.end_ns - record.start_ns),
        t1,
    )


PEERS = [
    Peer("192.0.2.7", "TLSv1.3", "example.test"),
    Peer("192.0.2.8", "TLSv1.2", "", ClientIdentity("CN=payments", "CN=Bank CA", "01", "ab" * 32)),
    Peer("2001:db8::1", "", ""),
]


def as_pending(
    records: list[Exchange], traces: list[TraceContext | None], heads: bytes
) -> tuple[list[Pending], list[Exchange]]:
    """The request-path tuples for `records`, and the records `encode` must be given to get the same spans:
    fresh ids from `heads` by position, the peer's connection facts, the times the tuples carry."""
    pending: list[Pending] = []
    expected: list[Exchange] = []
    for i, (record, trace) in enumerate(zip(records, traces, strict=True)):
        peer = PEERS[i % len(PEERS)]
        pending.append(pending_of(record, trace, peer, T0 + (i + 1) * 10**6))
        trace_id, span_id = (trace.trace_id, trace.span_id) if trace else head_ids(heads, i)
        expected.append(
            record._replace(
                trace_id=trace_id,
                span_id=span_id,
                start_ns=pending[-1][16],
                end_ns=pending[-1][17],
                tls=peer.tls,
                client=peer.client,
                sni=peer.sni,
                client_cert=peer.client_cert,
            )
        )
    return pending, expected


def test_spans_from_request_tuples_are_byte_for_byte_the_spans_from_records() -> None:
    """`encode_pending` skips the record but must not change a byte of what a collector gets.

    Fresh ids come from the heads buffer by position; a proxied request's context (sampled, with a
    remote parent and tracestate) is used as it is; an unsampled context gives no span at all.
    """
    heads = fresh_heads(6)  # one for each of the five requests and the unsampled one
    traces: list[TraceContext | None] = [None, None, TraceContext(TRACE, b"\x03" * 8, PARENT, "a=1", True), None, None]
    records = batch_of_everything()
    pending, expected = as_pending(records, traces, heads)
    unsampled = TraceContext(TRACE, b"\x09" * 8, PARENT, "", False)
    pending.append(pending_of(records[0], unsampled, PEERS[0], T0))
    encoder = SpanEncoder(RESOURCE)
    for _ in range(2):  # memo misses, then hits
        direct, taken, used = encoder.encode_pending(columns(pending), heads, 100)
        assert b"".join(direct) == SpanEncoder(RESOURCE).encode(expected)
        assert (taken, used) == (7, 6)
    spans = spans_of(b"".join(direct))
    assert len(spans) == 7  # five SERVER spans, two CLIENT spans, none for the unsampled context
    assert [s.span_id for s in spans if s.kind == Span.SPAN_KIND_SERVER] == [e.span_id for e in expected]
    assert attrs_of(spans[1])["tls.client.hash.sha256"] == "AB" * 32
    assert attrs_of(spans[0])["user_agent.original"] == "curl/8.5.0"
    assert encoder.encode_pending(columns([pending[-1]]), fresh_heads(1), 100) == ([], 0, 1)
    # Room for four spans: the first three requests (the third has two attempts, so three spans) do not fit.
    partial, taken, used = encoder.encode_pending(columns(pending), heads, 4)
    assert (taken, used) == (2, 2)
    assert b"".join(partial) == SpanEncoder(RESOURCE).encode(expected[:2])


def test_spans_counted_as_dropped_are_the_spans_the_encoder_would_have_written() -> None:
    """A batch dropped for want of room is counted span for span, by the rule the encoder writes by.

    A SERVER span per request, a CLIENT span per upstream attempt, none for an unsampled context.
    """
    heads = fresh_heads(6)
    traces: list[TraceContext | None] = [None, None, TraceContext(TRACE, b"\x03" * 8, PARENT, "a=1", True), None, None]
    records = batch_of_everything()
    pending, _ = as_pending(records, traces, heads)
    pending.append(pending_of(records[0], TraceContext(TRACE, b"\x09" * 8, PARENT, "", False), PEERS[0], T0))
    counts = _span_counts(pending)
    assert counts == [1 + len(r.attempts) for r in records] + [0]
    _, taken, used = SpanEncoder(RESOURCE).encode_pending(columns(pending), heads, 100)
    assert (sum(counts), used) == (taken, len(pending))


def test_a_batch_of_fresh_roots_takes_the_columns_and_gives_the_same_bytes() -> None:
    """Without proxied requests, every span is a fresh root: the batch is encoded column by column.

    Decided and undecided requests mix (a denial names its subject); room for fewer spans than
    requests encodes the leading ones only.
    """
    records = [r for r in batch_of_everything() if not r.attempts and not r.parent_id] * 3
    assert any(r.decision is not None for r in records) and any(r.decision is None for r in records)
    heads = fresh_heads(len(records))
    pending, expected = as_pending(records, [None] * len(records), heads)
    encoder = SpanEncoder(RESOURCE)
    for _ in range(2):  # memo misses, then hits
        direct, taken, used = encoder.encode_pending(columns(pending), heads, 100)
        assert b"".join(direct) == SpanEncoder(RESOURCE).encode(expected)
        assert taken == used == len(records)
    assert attrs_of(spans_of(b"".join(direct))[1])["edge.auth.subject"] == "bob"
    partial, taken, used = encoder.encode_pending(columns(pending), heads, 5)
    assert (taken, used) == (5, 5)
    assert b"".join(partial) == SpanEncoder(RESOURCE).encode(expected[:5])


def test_fresh_heads_are_span_id_fields_with_random_nonzero_ids() -> None:
    heads = fresh_heads(1000)
    assert len(heads) == 28 * 1000
    ids = [head_ids(heads, i) for i in range(1000)]
    for i, (trace_id, span_id) in enumerate(ids):
        assert heads[28 * i : 28 * i + 28] == b"\x0a\x10" + trace_id + b"\x12\x08" + span_id
        assert trace_id.count(0) < 16 and span_id.count(0) < 8
    assert len({trace_id for trace_id, _ in ids}) == 1000 and len({span_id for _, span_id in ids}) == 1000

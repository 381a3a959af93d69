"""The few protobuf wire-format pieces OTLP needs, and their OTLP JSON twins.

The SDK's protobuf encoder costs tens of microseconds a span, more than
serving a static request. OTLP messages are simple enough to write by hand:
varints, length-delimited fields and two fixed-width types. The encoders here
build whole fields (tag included), so callers can memoise a fragment once and
splice it into any number of messages with `b"".join`; protobuf lets a repeated
field's entries appear anywhere in a message, which is what makes splicing
pre-encoded attributes correct.

The JSON forms follow OTLP/JSON (and so the file exporter): lowerCamelCase
names, 64-bit integers as decimal strings, ids as lower-case hex (left to the
callers, which hold the ids), enums as numbers, and fields at their default
value left out.

Strings are written as UTF-8. Text taken off the wire as latin-1 always
encodes; a lone surrogate (never produced by latin-1, but possible from other
decoders) is replaced rather than allowed to make the whole batch invalid.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from json.encoder import encode_basestring_ascii as _json_ascii  # json.dumps's own C escaper, minus its overhead
from typing import Final, TypeAlias

Scalar: TypeAlias = str | bool | int | float
AttributeValue: TypeAlias = Scalar | Sequence[Scalar]
"""What an attribute may hold: OTel's primitive types and homogeneous arrays of them."""

# Wire types (the low three bits of a tag).
VARINT: Final = 0
I64: Final = 1
LEN: Final = 2
I32: Final = 5

# AnyValue's oneof fields (opentelemetry/proto/common/v1/common.proto).
_ANY_STRING = b"\x0a"  # 1: string_value
_ANY_BOOL = b"\x10"  # 2: bool_value
_ANY_INT = b"\x18"  # 3: int_value (int64, varint)
_ANY_DOUBLE = b"\x21"  # 4: double_value (fixed64)
_ANY_ARRAY = 5  # array_value: ArrayValue { repeated AnyValue values = 1; }

_DOUBLE = struct.Struct("<d").pack


def varint(value: int) -> bytes:
    """Base-128 varint; a negative int64 is written as its 64-bit two's complement (ten bytes), as protobuf does."""
    if value < 0:
        value &= 0xFFFF_FFFF_FFFF_FFFF
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def length_delimited(field: int, payload: bytes) -> bytes:
    """A LEN field: an embedded message, bytes or a string already encoded."""
    return tag(field, LEN) + varint(len(payload)) + payload


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "replace")


def string_field(field: int, text: str) -> bytes:
    return length_delimited(field, utf8(text))


def any_value(value: AttributeValue) -> bytes:
    """AnyValue message body.

    A oneof member is written even at its default (0, False, ""): in a oneof, presence is the value.
    """
    # bool before int: bool is a subclass of int.
    if isinstance(value, bool):
        return _ANY_BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return _ANY_INT + varint(value)
    if isinstance(value, float):
        return _ANY_DOUBLE + _DOUBLE(value)
    if isinstance(value, str):
        return _ANY_STRING + varint(len(encoded := utf8(value))) + encoded
    values = b"".join(length_delimited(1, any_value(item)) for item in value)
    return length_delimited(_ANY_ARRAY, values)


def key_value(key: str, value: AttributeValue) -> bytes:
    """KeyValue message body."""
    return string_field(1, key) + length_delimited(2, any_value(value))


def attribute(field: int, key: str, value: AttributeValue) -> bytes:
    """One entry of a `repeated KeyValue` field (`attributes` is field 9 of a Span, 1 of a Resource)."""
    return length_delimited(field, key_value(key, value))


def attributes(field: int, items: Iterable[tuple[str, AttributeValue]]) -> bytes:
    return b"".join(attribute(field, key, value) for key, value in items)


# --- OTLP JSON -------------------------------------------------------------------------------------------------


def json_string(text: str) -> str:
    """A JSON string literal, ASCII-only (everything else escaped), so a line stays one valid line whatever the
    input held, even for tools that also split lines on U+0085 or U+2028."""
    if not text.isascii():  # only non-ASCII text can hold a lone surrogate, which UTF-8 cannot carry
        text = text.encode("utf-8", "replace").decode("utf-8")
    return _json_ascii(text)


def _json_double(value: float) -> str:
    if math.isnan(value):
        return '"NaN"'
    if math.isinf(value):
        return '"Infinity"' if value > 0 else '"-Infinity"'
    return repr(value)


def any_value_json(value: AttributeValue) -> str:
    if isinstance(value, bool):
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if isinstance(value, int):
        return f'{{"intValue":"{value}"}}'
    if isinstance(value, float):
        return f'{{"doubleValue":{_json_double(value)}}}'
    if isinstance(value, str):
        return f'{{"stringValue":{json_string(value)}}}'
    return '{"arrayValue":{"values":[' + ",".join(any_value_json(item) for item in value) + "]}}"


def key_value_json(key: str, value: AttributeValue) -> str:
    return f'{{"key":{json_string(key)},"value":{any_value_json(value)}}}'


def attributes_json(items: Iterable[tuple[str, AttributeValue]]) -> str:
    """The members of an `attributes` array, comma-separated, without the brackets."""
    return ",".join(key_value_json(key, value) for key, value in items)


# --- Resource and InstrumentationScope, shared by traces, metrics and logs -------------------------------------


def encode_resource(attrs: Mapping[str, AttributeValue]) -> bytes:
    """Resource message body (`repeated KeyValue attributes = 1`).

    Embed it as field 1 of ResourceSpans, ResourceMetrics or ResourceLogs (`length_delimited(1, ...)`).
    """
    return attributes(1, attrs.items())


def resource_json(attrs: Mapping[str, AttributeValue]) -> str:
    """The `resource` object of Resource{Spans,Metrics,Logs} in OTLP JSON."""
    return '{"attributes":[' + attributes_json(attrs.items()) + "]}" if attrs else "{}"


def encode_scope(name: str, version: str = "") -> bytes:
    """InstrumentationScope message body; embed it as field 1 of Scope{Spans,Metrics,Logs}."""
    return (string_field(1, name) if name else b"") + (string_field(2, version) if version else b"")


def scope_json(name: str, version: str = "") -> str:
    members = []
    if name:
        members.append(f'"name":{json_string(name)}')
    if version:
        members.append(f'"version":{json_string(version)}')
    return "{" + ",".join(members) + "}"

"""Exchanges to OTLP spans, written as protobuf wire bytes and as OTLP JSON lines.

Exporting every request's span must cost a few microseconds, a fraction of
serving the request, which rules out the SDK (span objects plus its protobuf
encoder cost over 90 µs a span here). Almost everything in a span repeats from
request to request (method, route, status, protocol, host, client, user
agent, policy outcome), so each repeating value is encoded once into the
exact bytes it contributes to a span and kept in a bounded memo; a span is
then its ids, two timestamps and seven memo lookups, joined. Only the ids
and times are encoded per span. From the request path's own tuples
(`encode_pending`) the lookups and joins run column by column in C.

Values are grouped so that each memo's working set stays small whatever the
traffic: what the edge decided shares one key (method, route, scheme,
status, protocol, error, cache, upstream and the policy decision: the span's
"shape"), the connection another (TLS version, client address, SNI,
certificate), while values that a client chooses on every request (path,
host, user agent, subject) and the body size each get their own. Every
memo is emptied when it reaches `MEMO_LIMIT` keys, so hostile variety costs
encoding time, never unbounded memory.

Span shape: one ResourceSpans / ScopeSpans per batch; a SERVER span per
exchange, named "{method} {route}" (or "{method}"; "HTTP" for a method the
semantic conventions do not name), with HTTP, TLS and `edge.*` attributes; a
CLIENT span per upstream attempt under it. String attributes are left out
when empty. A 5xx (and a failed attempt) sets status ERROR and `error.type`.
Flags carry the sampled bit and whether the parent is remote: only a SERVER
span continuing a trusted `traceparent` has a remote parent.

The loops unpack `Exchange` and `Attempt` positionally for speed; the check
at the bottom of this module refuses to import if their fields change.
"""

from __future__ import annotations

import binascii
import functools
import os
import struct
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence, Sized
from itertools import chain, repeat
from typing import TYPE_CHECKING, Final, TypeAlias, TypeVar, cast

import ingress
from ingress.protocol.trace import Attempt
from ingress.telemetry.otlp.wire import (
    AttributeValue,
    attribute,
    attributes,
    attributes_json,
    encode_resource,
    encode_scope,
    json_string,
    length_delimited,
    resource_json,
    scope_json,
    string_field,
    utf8,
    varint,
)
from ingress.telemetry.record import Columns, Exchange

if TYPE_CHECKING:
    from ingress.policy.waf.verdict import Verdict
    from ingress.protocol.events import Decision, Peer
    from ingress.protocol.trace import TraceContext

MEMO_LIMIT: Final = 4096
"""Keys a memo holds at most; reaching it empties the memo (cheaper per span than LRU bookkeeping)."""

MEMO_MAX_CHARS: Final = 256
"""Longer request strings (paths, user agents) are encoded every time, not kept, so a flood of long unique
values costs some encoding time but never more than MEMO_LIMIT short entries of memory per memo."""

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
S = TypeVar("S", str, bytes)


class _Memo(dict[K, V]):
    """A dict that renders a missing key on lookup, so the hot path is one subscript per value."""

    __slots__ = ("_render",)

    def __init__(self, render: Callable[[K], V]) -> None:
        super().__init__()
        self._render = render

    def __missing__(self, key: K) -> V:
        if len(self) >= MEMO_LIMIT:
            self.clear()
        value = self[key] = self._render(key)
        return value


class _TextMemo(_Memo[S, V]):
    """A memo for strings a client chooses, which keeps only the short ones."""

    __slots__ = ()

    def __missing__(self, key: S) -> V:
        value = self._render(key)
        if len(key) <= MEMO_MAX_CHARS:
            if len(self) >= MEMO_LIMIT:
                self.clear()
            self[key] = value
        return value


# Methods with a name in the HTTP semantic conventions; others become "_OTHER" (and a span named "HTTP").
_KNOWN_METHODS: Final = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})

SERVER: Final = 2
CLIENT: Final = 3
_STATUS_ERROR: Final = 2

# SpanFlags: the W3C trace flags in the low byte, then "is_remote is known" and "the parent is remote".
_SAMPLED: Final = 0x01
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200

_FLAGS = struct.Struct("<I").pack
_TIMES = struct.Struct("<BQBQ").pack  # start_time_unix_nano (7) and end_time_unix_nano (8), both fixed64
_START: Final = (7 << 3) | 1
_END: Final = (8 << 3) | 1

# Span fields written straight into the loop (opentelemetry/proto/trace/v1/trace.proto).
_TRACE_ID: Final = b"\x0a\x10"  # 1: trace_id, 16 bytes
_SPAN_ID: Final = b"\x12\x08"  # 2: span_id, 8 bytes
_PARENT_ID: Final = b"\x22\x08"  # 4: parent_span_id, 8 bytes
_FLAGS_TAG: Final = b"\x85\x01"  # 16: flags, fixed32
_STATUS_FIELD: Final = length_delimited(15, b"\x18" + varint(_STATUS_ERROR))  # 15: status, Status.code (3) = ERROR
_SPAN_ATTR: Final = 9  # 9: attributes
_ZERO_RUN: Final = b"\0" * 8
_START_TAG: Final = bytes([_START])
_END_TAG: Final = bytes([_END])

Attrs: TypeAlias = list[tuple[str, AttributeValue]]
# method, route, scheme, status, protocol, error, cache, upstream; then, when a policy decided, its
# outcome, reason, rule and what the request firewall found (None: nothing)
ShapeKey: TypeAlias = (
    "tuple[str, str, str, int, str, str, str, str]"
    " | tuple[str, str, str, int, str, str, str, str, str, str, str, Verdict | None]"
)
ConnectionKey: TypeAlias = tuple[str, str, str, str]  # tls, client address, SNI, client certificate SHA-256
ClientKey: TypeAlias = tuple[str, str, int, str, int, str]  # method, origin, status, error, resend, upstream


def _flags(sampled: bool, parent_remote: bool) -> int:
    return (_SAMPLED if sampled else 0) | _HAS_IS_REMOTE | (_IS_REMOTE if parent_remote else 0)


def _method(method: str) -> tuple[str, Attrs]:
    """The span-name verb and the method attributes, per the HTTP semantic conventions."""
    if method in _KNOWN_METHODS:
        return method, [("http.request.method", method)]
    if not method:  # the request could not be parsed: there is no method to report
        return "HTTP", []
    return "HTTP", [("http.request.method", "_OTHER"), ("http.request.method_original", method)]


def _tls(version: str) -> Attrs:
    """OpenSSL's "TLSv1.3" as tls.protocol.name "tls" and tls.protocol.version "1.3"."""
    if not version:
        return []
    for prefix, name in (("TLSv", "tls"), ("SSLv", "ssl")):
        if version.startswith(prefix):
            return [("tls.protocol.name", name), ("tls.protocol.version", version[len(prefix) :])]
    return [("tls.protocol.name", "tls"), ("tls.protocol.version", version)]


def split_origin(origin: str) -> tuple[str, int | None]:
    """Split "host:port" or "[v6]:port" into (server.address, server.port); the address loses IPv6 brackets."""
    if origin.startswith("["):
        host, _, rest = origin[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = origin.rpartition(":")
        if not sep or ":" in host:  # no port, or a bare IPv6 address
            host, port = origin, ""
    return host, int(port) if port.isascii() and port.isdigit() else None


def _present(attrs: Attrs) -> Attrs:
    """String attributes are left out when empty; numbers and booleans always count."""
    return [(key, value) for key, value in attrs if value != ""]


def _decided(key: ShapeKey, decision: Decision) -> ShapeKey:
    """A shape key (see `ShapeKey`) with what the policy decided: outcome, reason, rule, what the firewall found."""
    return (*key[:8], decision.outcome, decision.reason, decision.rule, decision.waf)


def _server_shape(key: ShapeKey) -> tuple[str, Attrs, bool]:
    """A SERVER span's name, the attributes that the edge's handling decides, and whether it failed."""
    method, route, scheme, status, protocol, error, cache, upstream = key[:8]
    outcome, reason, rule, waf = key[8:] if len(key) > 8 else ("", "", "", None)
    verb, attrs = _method(method)
    attrs += [("url.scheme", scheme), ("http.route", route), ("network.protocol.name", "http")]
    if status:
        attrs.append(("http.response.status_code", status))
    attrs.append(("network.protocol.version", protocol))
    failed = status >= 500
    if failed:
        attrs.append(("error.type", error or str(status)))
    attrs += [
        ("edge.auth.outcome", outcome),
        ("edge.auth.reason", reason),
        ("edge.auth.rule", rule),
        ("edge.cache.status", cache),
        ("edge.upstream", upstream),
    ]
    if waf is not None:
        attrs += waf_attributes(waf)
    return (f"{verb} {route}" if route else verb), _present(attrs), failed


def waf_attributes(waf: Verdict) -> Attrs:
    """A firewall match as span and audit attributes: what and where, never the matched bytes."""
    return [
        ("edge.waf.action", "block" if waf.block else "shadow"),
        ("edge.waf.category", waf.category),
        ("edge.waf.pattern_id", waf.pattern_id),
        ("edge.waf.location", waf.location),
        ("edge.waf.profile", waf.profile),
        ("edge.waf.decode_passes", waf.passes),
    ]


def _client(key: ClientKey) -> tuple[str, Attrs, bool]:
    method, origin, status, error, resend, upstream = key
    verb, attrs = _method(method)
    address, port = split_origin(origin)
    attrs.append(("server.address", address))
    if port is not None:
        attrs.append(("server.port", port))
    if status:
        attrs.append(("http.response.status_code", status))
    if resend > 0:
        attrs.append(("http.request.resend_count", resend))
    error_type = error or (str(status) if status >= 500 else "")
    attrs += [("error.type", error_type), ("edge.upstream", upstream)]
    return verb, _present(attrs), bool(error_type)


def _head(name: str, kind: int) -> bytes:
    return string_field(5, name) + b"\x30" + varint(kind)  # 5: name, 6: kind


def _head_json(name: str, kind: int) -> bytes:
    return f',"name":{json_string(name)},"kind":{kind}'.encode()


def _string_attr(key: str, transform: Callable[[str], str] | None = None) -> Callable[[str], bytes]:
    """Renders one string attribute as a whole Span.attributes entry; "" renders as nothing."""
    prefix = string_field(1, key) + b"\x12"  # KeyValue.key, then the tag of KeyValue.value
    # Up to this many bytes of text, every length below fits one varint byte (the common case, done in one step).
    short = 127 - len(prefix) - 3

    def render(value: str) -> bytes:
        if not value:
            return b""
        text = utf8(transform(value) if transform else value)
        size = len(text)
        if size <= short:
            # Span.attributes, KeyValue length, key, KeyValue.value length, AnyValue.string_value, its length.
            return b"\x4a%c%b%c\x0a%c%b" % (len(prefix) + 3 + size, prefix, size + 2, size, text)
        any_value = b"\x0a" + varint(size) + text
        kv = prefix + varint(len(any_value)) + any_value
        return b"\x4a" + varint(len(kv)) + kv

    return render


def _string_attr_json(key: str, transform: Callable[[str], str] | None = None) -> Callable[[str], bytes]:
    """The JSON twin of `_string_attr`, with a leading comma so fragments concatenate."""
    prefix = f',{{"key":{json_string(key)},"value":{{"stringValue":'

    def render(value: str) -> bytes:
        return f"{prefix}{json_string(transform(value) if transform else value)}}}}}".encode() if value else b""

    return render


def _host_attrs(*, json: bool) -> Callable[[str], bytes]:
    """The request's Host as server.address and, when it names one, server.port."""
    address = _string_attr_json("server.address") if json else _string_attr("server.address")

    def render(value: str) -> bytes:
        host, port = split_origin(value)
        if port is None:
            return address(value)
        return address(host) + (
            _attrs_json([("server.port", port)]) if json else attribute(_SPAN_ATTR, "server.port", port)
        )

    return render


def _attrs_json(attrs: Attrs) -> bytes:
    return ("," + attributes_json(attrs)).encode() if attrs else b""


def _upper(value: str) -> str:
    return value.upper()


# The per-request strings memoised one by one: (attribute key, how the value is shown).
_STRING_ATTRS: Final[tuple[tuple[str, Callable[[str], str] | None], ...]] = (
    ("url.path", None),
    ("server.address", None),
    ("user_agent.original", None),
    ("edge.auth.subject", None),
)


_Unpack: TypeAlias = Callable[[bytes | bytearray], tuple[bytes, ...]]


@functools.lru_cache(maxsize=512)
def _batch_structs(n: int) -> tuple[_Unpack, Callable[..., bytes], _Unpack]:
    """For `n` spans: split `fresh_heads` into heads; pack each head with root flags and two times (their
    tags left as pad bytes for `_fresh_leads` to write); split those into leads."""
    return (
        struct.Struct("28s" * n).unpack_from,  # the heads may run on (a batch cut short by room)
        struct.Struct("<" + "28s6sxQxQ" * n).pack,
        struct.Struct("52s" * n).unpack,
    )


def _fresh_leads(heads: bytes, starts: Sequence[int], ends: Sequence[int]) -> tuple[bytes, ...]:
    """The first 52 bytes of each fresh root span: its ids (see `fresh_heads`), the flags of a sampled root,
    its start and end time. One `struct` call packs the batch."""
    n = len(starts)
    unpack_heads, pack_leads, unpack_leads = _batch_structs(n)
    fields = zip(unpack_heads(heads), repeat(_ROOT_FLAGS[True]), starts, ends, strict=False)  # an endless repeat
    leads = bytearray(pack_leads(*chain.from_iterable(fields)))
    leads[34::52], leads[43::52] = _START_TAG * n, _END_TAG * n
    return unpack_leads(leads)


def fitting(counts: list[int], room: int) -> tuple[int, int]:
    """How many leading items (with these span counts) fit in `room` spans, and their spans.

    When the collector is down, backing off or behind, what does not fit is counted as dropped and
    nothing is spent encoding it; what fits still goes.
    """
    taken = 0
    for i, count in enumerate(counts):
        if taken + count > room:
            return i, taken
        taken += count
    return len(counts), taken


def fresh_heads(n: int) -> bytes:
    """Fresh ids for `n` spans from one read of the CSPRNG, each already written as the span's first 28 bytes.

    A head is Span.trace_id (field 1, 16 bytes) then Span.span_id (field 2, 8 bytes), so one `struct`
    call splits a batch's heads into span fields. No id may be all zero: a buffer holding eight zero bytes in a
    row anywhere is drawn again, which covers every id and happens with a chance of about n * 2**-58.
    """
    while True:
        heads = bytearray(os.urandom(28 * n))
        heads[0::28], heads[1::28] = _TRACE_ID[:1] * n, _TRACE_ID[1:] * n
        heads[18::28], heads[19::28] = _SPAN_ID[:1] * n, _SPAN_ID[1:] * n
        if _ZERO_RUN not in heads:
            return bytes(heads)


def head_ids(heads: bytes, index: int) -> tuple[bytes, bytes]:
    """The trace id and span id of the `index`th head of `fresh_heads`.

    Every span this encoder writes begins with the same 28 bytes (Span.trace_id, then Span.span_id), so
    `head_ids(span, 0)` reads a span's own ids.
    """
    at = 28 * index
    return heads[at + 2 : at + 18], heads[at + 20 : at + 28]


class SpanEncoder:
    """Turns batches of exchanges into OTLP trace payloads; one per worker, reused for every batch."""

    def __init__(
        self,
        resource: Mapping[str, AttributeValue],
        scope_name: str = "edgeward",
        scope_version: str = ingress.__version__,
    ) -> None:
        # Everything above the spans is the same in every batch: ResourceSpans.resource (1), ScopeSpans.scope (1).
        self._resource = length_delimited(1, encode_resource(resource))
        self._scope = length_delimited(1, encode_scope(scope_name, scope_version))
        self._json_prefix = (
            f'{{"resourceSpans":[{{"resource":{resource_json(resource)},'
            f'"scopeSpans":[{{"scope":{scope_json(scope_name, scope_version)},"spans":['
        ).encode()

        self._span_head = _Memo[int, bytes](lambda size: b"\x12" + varint(size))  # ScopeSpans.spans (2)
        self._trace_state = _TextMemo[str, bytes](lambda state: string_field(3, state) if state else b"")
        self._shape = _Memo[ShapeKey, bytes](self._render_shape)
        self._connection = _Memo[ConnectionKey, bytes](self._connection_renderer(json=False))
        self._client = _Memo[ClientKey, bytes](self._render_client)
        self._body_size = _Memo[int, bytes](lambda size: attribute(_SPAN_ATTR, "http.response.body.size", size))
        self._strings = tuple(
            _TextMemo[str, bytes](_host_attrs(json=False) if key == "server.address" else _string_attr(key, transform))
            for key, transform in _STRING_ATTRS
        )
        # The request path's own forms, for `encode_pending`: the raw path and User-Agent bytes, and the
        # connection's Peer (its fragment found by one lookup of the Peer's id).
        self._raw_paths = _TextMemo[bytes, bytes](self._from_latin1(self._strings[0]))
        self._raw_agents = _TextMemo[bytes, bytes](self._from_latin1(self._strings[2]))
        self._peers: dict[int, bytes] = {}
        self._peers_held: list[Peer] = []  # keeps each Peer in `_peers` alive, so its id stays its own

        # OTLP JSON is built as bytes too: joining ASCII bytes is several times cheaper than joining str.
        self._trace_state_json = _TextMemo[str, bytes](
            lambda state: f',"traceState":{json_string(state)}'.encode() if state else b""
        )
        self._shape_json = _Memo[ShapeKey, tuple[bytes, bytes, bytes]](self._render_shape_json)
        self._connection_json = _Memo[ConnectionKey, bytes](self._connection_renderer(json=True))
        self._client_json = _Memo[ClientKey, bytes](self._render_client_json)
        self._body_size_json = _Memo[int, bytes](lambda size: _attrs_json([("http.response.body.size", size)]))
        self._strings_json = tuple(
            _TextMemo[str, bytes](
                _host_attrs(json=True) if key == "server.address" else _string_attr_json(key, transform)
            )
            for key, transform in _STRING_ATTRS
        )

    @staticmethod
    def span_count(exchanges: Sequence[Exchange]) -> int:
        return len(exchanges) + sum(len(exchange.attempts) for exchange in exchanges)

    def memo_sizes(self) -> dict[str, int]:
        """Keys held per memo, to show (and test) that they stay bounded."""
        memos: dict[str, Sized] = {
            "span_head": self._span_head,
            "trace_state": self._trace_state,
            "shape": self._shape,
            "connection": self._connection,
            "client": self._client,
            "body_size": self._body_size,
            "trace_state_json": self._trace_state_json,
            "shape_json": self._shape_json,
            "connection_json": self._connection_json,
            "client_json": self._client_json,
            "body_size_json": self._body_size_json,
            "raw_path": self._raw_paths,
            "raw_user_agent": self._raw_agents,
            "peer": self._peers,
        }
        for (key, _), proto, text in zip(_STRING_ATTRS, self._strings, self._strings_json, strict=True):
            memos[key] = proto
            memos[key + "_json"] = text
        return {name: len(memo) for name, memo in memos.items()}

    # --- protobuf ---------------------------------------------------------------------------------------------

    def encode(self, exchanges: Sequence[Exchange]) -> bytes:
        """ExportTraceServiceRequest protobuf bytes: one ResourceSpans, one ScopeSpans, a SERVER span per exchange
        plus a CLIENT span per Attempt. The caller passes only sampled exchanges. No exchanges give b"" (an empty,
        valid request that there is no point in sending)."""
        out: list[bytes] = [b""]  # out[0]: the envelope, written once the spans' length is known
        append = out.append
        join = b"".join
        times = _TIMES
        span_head = self._span_head
        trace_states = self._trace_state
        shapes, connections, sizes = self._shape, self._connection, self._body_size
        paths, hosts, agents, subjects = self._strings
        root_flags, remote_flags = _ROOT_FLAGS, _REMOTE_FLAGS
        for (
            trace_id,
            span_id,
            parent_id,
            trace_state,
            sampled,
            start_ns,
            end_ns,
            method,
            path,
            route,
            status,
            protocol,
            tls,
            host,
            client,
            user_agent,
            decision,
            cache,
            upstream,
            attempts,
            body_bytes,
            scheme,
            sni,
            client_cert,
            error,
        ) in exchanges:
            key: ShapeKey = (method, route, scheme, status, protocol, error, cache, upstream)
            if decision is None:
                subject = b""
            else:
                key = _decided(key, decision)
                subject = subjects[decision.subject]
            shape = shapes[key]
            state = trace_states[trace_state]
            span = join(
                (
                    _TRACE_ID,
                    trace_id,
                    _SPAN_ID,
                    span_id,
                    _PARENT_ID + parent_id + remote_flags[sampled] if parent_id else root_flags[sampled],
                    state,
                    times(_START, start_ns, _END, end_ns),
                    shape,
                    sizes[body_bytes],
                    paths[path],
                    hosts[host],
                    connections[(tls, client, sni, client_cert)],
                    agents[user_agent],
                    subject,
                )
            )
            append(span_head[len(span)])
            append(span)
            if attempts:
                self._attempts(append, trace_id, span_id, state, sampled, method, upstream, attempts)
        return b"".join(self._envelope(out))

    def encode_pending(self, batch: Columns, heads: bytes, room: int) -> tuple[list[bytes], int, int]:
        """`encode` straight from the request path's tuples, for an edge that samples every request and trusts
        no client's trace context (`Tracer.always`) and has nothing else that reads a record.

        Skipping the `Exchange` step, and working column by column so that the per-span steps run in C
        (`map` over the memos, one `struct` call for the whole batch's ids, flags and times), takes the
        encoding from about 17,400 to 8,000 instructions per span. Requests without a trace context take
        their ids from `heads` (see `fresh_heads`) by position. A context that is not sampled gives no
        span. The bytes are those `encode` gives for the same requests as records.

        Requests are taken in order while their spans fit in `room`; returns the payload (as pieces to
        join: the exporter joins a whole interval's pieces at once), the spans in it and how many
        requests it covers (the caller counts the rest as dropped).
        """
        if not batch:
            return [], 0, 0
        (
            traces,
            methods,
            paths,
            routes,
            statuses,
            protocols,
            peers,
            hosts,
            agents,
            decisions,
            caches,
            upstreams,
            attempts,
            sizes,
            schemes,
            errors,
            starts,
            ends,
        ) = batch
        n = len(traces)
        proxied, fresh = attempts.count(None) != n, traces.count(None) == n
        used = n
        if proxied or n > room:
            counts = [
                (1 + len(a) if a else 1) if t is None or t.sampled else 0 for t, a in zip(traces, attempts, strict=True)
            ]
            used = fitting(counts, room)[0]
            if used < n:  # encode only what fits
                payload, taken, _ = self.encode_pending([column[:used] for column in batch], heads, room)
                return payload, taken, used
        leads = _fresh_leads(heads, starts, ends)
        subjects: Iterable[bytes] = repeat(b"", n)
        keys: Iterable[ShapeKey] = zip(
            methods, routes, schemes, statuses, protocols, errors, caches, upstreams, strict=True
        )
        if decisions.count(None) != n:
            decided: list[ShapeKey] = list(keys)
            named, subject_memo = [b""] * n, self._strings[3]
            for i, decision in enumerate(decisions):
                if decision is not None:
                    decided[i] = _decided(decided[i], decision)
                    named[i] = subject_memo[decision.subject]
            keys, subjects = decided, named
        connections = self._connections_of(peers)
        spans = list(
            map(
                b"".join,
                zip(
                    leads if fresh else self._leads(leads, traces, starts, ends),
                    map(self._shape.__getitem__, keys),
                    map(self._body_size.__getitem__, sizes),
                    map(self._raw_paths.__getitem__, paths),
                    map(self._strings[1].__getitem__, hosts),
                    connections,
                    map(self._raw_agents.__getitem__, agents),
                    subjects,
                    strict=False,  # `subjects` may be an endless repeat
                ),
            )
        )
        out: list[bytes] = [b""]
        span_head = self._span_head
        if fresh and not proxied and used == n:
            out += chain.from_iterable(zip(map(span_head.__getitem__, map(len, spans)), spans, strict=True))
            return self._envelope(out), n, n
        # Spans that are not fresh roots: leave out the unsampled ones, add a CLIENT span per attempt.
        append = out.append
        taken = 0
        for i in range(used):
            trace = traces[i]
            if trace is not None and not trace.sampled:
                continue
            span = spans[i]
            append(span_head[len(span)])
            append(span)
            taken += 1
            tries = attempts[i]
            if tries:
                taken += len(tries)
                state = self._trace_state[trace.state] if trace is not None else b""
                trace_id, span_id = head_ids(span, 0)
                self._attempts(append, trace_id, span_id, state, True, methods[i], upstreams[i], tries)
        return self._envelope(out), taken, used

    def _leads(
        self, fresh: Sequence[bytes], traces: Sequence[TraceContext | None], starts: Sequence[int], ends: Sequence[int]
    ) -> list[bytes]:
        """Leads for a batch where some requests continue a context (a proxied request's): theirs are built here."""
        leads = list(fresh)
        trace_states, times, remote_flags, root_flags = (
            self._trace_state,
            _TIMES,
            _REMOTE_FLAGS[True],
            _ROOT_FLAGS[True],
        )
        for i, trace in enumerate(traces):
            if trace is not None:
                parent_id = trace.parent_id
                leads[i] = b"".join(
                    (
                        _TRACE_ID,
                        trace.trace_id,
                        _SPAN_ID,
                        trace.span_id,
                        _PARENT_ID + parent_id + remote_flags if parent_id else root_flags,
                        trace_states[trace.state],
                        times(_START, starts[i], _END, ends[i]),
                    )
                )
        return leads

    def _connections_of(self, peers: Sequence[Peer]) -> list[bytes]:
        """Each request's connection fragment, found by its Peer's id (see `_peer`)."""
        fragments = list(map(self._peers.get, map(id, peers)))
        if None in fragments:
            for i, fragment in enumerate(fragments):
                if fragment is None:
                    fragments[i] = self._peer(peers[i])
        return cast("list[bytes]", fragments)

    def _attempts(
        self,
        append: Callable[[bytes], None],
        trace_id: bytes,
        span_id: bytes,
        state: bytes,
        sampled: bool,
        method: str,
        upstream: str,
        attempts: Sequence[Attempt],
    ) -> None:
        """A CLIENT span per origin attempt, under the request's SERVER span `span_id`."""
        clients, span_head, join, times = self._client, self._span_head, b"".join, _TIMES
        flags = _CHILD_FLAGS[sampled]
        for attempt_id, attempt_start, attempt_end, origin, attempt_status, attempt_error, resend in attempts:
            span = join(
                (
                    _TRACE_ID,
                    trace_id,
                    _SPAN_ID,
                    attempt_id,
                    state,
                    _PARENT_ID,
                    span_id,
                    flags,
                    clients[(method, origin, attempt_status, attempt_error, resend, upstream)],
                    times(_START, attempt_start, _END, attempt_end),
                )
            )
            append(span_head[len(span)])
            append(span)

    def _envelope(self, out: list[bytes]) -> list[bytes]:
        """`out` with its first item set to what encloses the spans after it; nothing without spans."""
        if len(out) == 1:
            return []
        join = b"".join
        scope_spans = len(self._scope) + sum(map(len, out))
        scope_head = varint(scope_spans)
        resource_spans = len(self._resource) + 1 + len(scope_head) + scope_spans
        # ExportTraceServiceRequest.resource_spans (1) { resource, ResourceSpans.scope_spans (2) { scope, spans } }
        out[0] = join((b"\x0a", varint(resource_spans), self._resource, b"\x12", scope_head, self._scope))
        return out

    def _peer(self, peer: Peer) -> bytes:
        """A connection's fragment (see `_connection_renderer`), kept by the Peer's id.

        `_peers_held` holds every Peer with an entry, so no other object can have its id while the
        entry lives: a hit is always this Peer (hashing the Peer instead would cost more than the
        lookups saved).
        """
        peers = self._peers
        if len(peers) >= MEMO_LIMIT:
            peers.clear()
            self._peers_held.clear()
        fragment = peers[id(peer)] = self._connection[(peer.tls, peer.client, peer.sni, peer.client_cert)]
        self._peers_held.append(peer)
        return fragment

    @staticmethod
    def _from_latin1(memo: Mapping[str, bytes]) -> Callable[[bytes], bytes]:
        def render(raw: bytes) -> bytes:
            return memo[raw.decode("latin-1")]

        return render

    @staticmethod
    def _render_shape(key: ShapeKey) -> bytes:
        name, attrs, failed = _server_shape(key)
        return _head(name, SERVER) + attributes(_SPAN_ATTR, attrs) + (_STATUS_FIELD if failed else b"")

    @staticmethod
    def _connection_renderer(*, json: bool) -> Callable[[ConnectionKey], bytes]:
        """The connection's attributes as one fragment: TLS version, client address, SNI, client certificate."""
        string = _string_attr_json if json else _string_attr
        address, sni = string("client.address"), string("tls.client.server_name")
        # The semantic conventions ask for certificate hashes in upper case, like other hash values.
        cert = string("tls.client.hash.sha256", _upper)

        def render(key: ConnectionKey) -> bytes:
            tls, client, server_name, fingerprint = key
            tls_attrs = _tls(tls)
            head = _attrs_json(tls_attrs) if json else attributes(_SPAN_ATTR, tls_attrs)
            return head + address(client) + sni(server_name) + cert(fingerprint)

        return render

    @staticmethod
    def _render_client(key: ClientKey) -> bytes:
        name, attrs, failed = _client(key)
        return _head(name, CLIENT) + attributes(_SPAN_ATTR, attrs) + (_STATUS_FIELD if failed else b"")

    # --- OTLP JSON --------------------------------------------------------------------------------------------

    def json_line(self, exchanges: Sequence[Exchange]) -> bytes:
        """One OTLP JSON TracesData object for the batch, followed by b"\\n", per the OpenTelemetry file-exporter
        spec: lowerCamelCase field names, trace/span ids as lower-case hex, enums as integers, 64-bit integers
        (timestamps, intValue) as decimal strings, flags as a number. No exchanges give b"" (no line)."""
        if not exchanges:
            return b""
        # One list, one join: the line is several MB for a full batch, so every extra copy shows per span.
        # Each span leads with its separating comma; the first one's is cut off at the end.
        spans: list[bytes] = [self._json_prefix]
        append = spans.append
        join = b"".join
        hexlify = binascii.hexlify
        trace_states = self._trace_state_json
        shapes, connections, clients = self._shape_json, self._connection_json, self._client_json
        sizes = self._body_size_json
        paths, hosts, agents, subjects = self._strings_json
        root_flags, remote_flags, child_flags = _ROOT_FLAGS_JSON, _REMOTE_FLAGS_JSON, _CHILD_FLAGS_JSON
        for (
            trace_id,
            span_id,
            parent_id,
            trace_state,
            sampled,
            start_ns,
            end_ns,
            method,
            path,
            route,
            status,
            protocol,
            tls,
            host,
            client,
            user_agent,
            decision,
            cache,
            upstream,
            attempts,
            body_bytes,
            scheme,
            sni,
            client_cert,
            error,
        ) in exchanges:
            key: ShapeKey = (method, route, scheme, status, protocol, error, cache, upstream)
            if decision is None:
                subject = b""
            else:
                key = _decided(key, decision)
                subject = subjects[decision.subject]
            head, shape_attrs, status_json = shapes[key]
            trace_hex = hexlify(trace_id)
            span_hex = hexlify(span_id)
            state = trace_states[trace_state]
            append(
                join(
                    (
                        b',{"traceId":"',
                        trace_hex,
                        b'","spanId":"',
                        span_hex,
                        b'"',
                        state,
                        b',"parentSpanId":"' + hexlify(parent_id) + remote_flags[sampled]
                        if parent_id
                        else root_flags[sampled],
                        head,
                        b',"startTimeUnixNano":"',
                        b"%d" % start_ns,
                        b'","endTimeUnixNano":"',
                        b"%d" % end_ns,
                        b'","attributes":[',
                        shape_attrs,  # never empty (network.protocol.name), so the only fragment without a comma
                        sizes[body_bytes],
                        paths[path],
                        hosts[host],
                        connections[(tls, client, sni, client_cert)],
                        agents[user_agent],
                        subject,
                        b"]",
                        status_json,
                        b"}",
                    )
                )
            )
            for attempt_id, attempt_start, attempt_end, origin, attempt_status, attempt_error, resend in attempts:
                append(
                    join(
                        (
                            b',{"traceId":"',
                            trace_hex,
                            b'","spanId":"',
                            hexlify(attempt_id),
                            b'"',
                            state,
                            b',"parentSpanId":"',
                            span_hex,
                            child_flags[sampled],
                            b',"startTimeUnixNano":"',
                            b"%d" % attempt_start,
                            b'","endTimeUnixNano":"',
                            b"%d" % attempt_end,
                            b'"',
                            clients[(method, origin, attempt_status, attempt_error, resend, upstream)],
                            b"}",
                        )
                    )
                )
        spans[1] = spans[1][1:]
        append(b"]}]}]}\n")
        return join(spans)

    @staticmethod
    def _render_shape_json(key: ShapeKey) -> tuple[bytes, bytes, bytes]:
        name, attrs, failed = _server_shape(key)
        return _head_json(name, SERVER), attributes_json(attrs).encode(), (_STATUS_JSON if failed else b"")

    @staticmethod
    def _render_client_json(key: ClientKey) -> bytes:
        name, attrs, failed = _client(key)
        body = _head_json(name, CLIENT)
        if attrs:
            body += b',"attributes":[' + attributes_json(attrs).encode() + b"]"
        return body + (_STATUS_JSON if failed else b"")


_STATUS_JSON: Final = b',"status":{"code":%d}' % _STATUS_ERROR

# Indexed by `sampled`: a root SERVER span, a SERVER span under a remote parent, a CLIENT span under its SERVER span.
_ROOT_FLAGS: Final = tuple(_FLAGS_TAG + _FLAGS(_flags(sampled, False)) for sampled in (False, True))
_REMOTE_FLAGS: Final = tuple(_FLAGS_TAG + _FLAGS(_flags(sampled, True)) for sampled in (False, True))
_CHILD_FLAGS: Final = _ROOT_FLAGS
_ROOT_FLAGS_JSON: Final = tuple(b',"flags":%d' % _flags(sampled, False) for sampled in (False, True))
_REMOTE_FLAGS_JSON: Final = tuple(b'","flags":%d' % _flags(sampled, True) for sampled in (False, True))
_CHILD_FLAGS_JSON: Final = tuple(b'","flags":%d' % _flags(sampled, False) for sampled in (False, True))

# The hot loops unpack these tuples by position; a reordered or added field must be noticed, not mis-encoded.
_EXCHANGE_FIELDS: Final = (
    "trace_id",
    "span_id",
    "parent_id",
    "trace_state",
    "sampled",
    "start_ns",
    "end_ns",
    "method",
    "path",
    "route",
    "status",
    "protocol",
    "tls",
    "host",
    "client",
    "user_agent",
    "decision",
    "cache",
    "upstream",
    "attempts",
    "body_bytes",
    "scheme",
    "sni",
    "client_cert",
    "error",
)
_ATTEMPT_FIELDS: Final = ("span_id", "start_ns", "end_ns", "origin", "status", "error", "resend")
if Exchange._fields != _EXCHANGE_FIELDS or Attempt._fields != _ATTEMPT_FIELDS:
    raise ImportError("ingress.telemetry.record changed shape: update the unpacking in SpanEncoder.encode/json_line")

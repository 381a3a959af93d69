"""The header rules of each proxied hop: what goes to the origin, and what comes back to the client.

A reverse proxy is where identity is asserted to the applications behind
it, so the rules fail closed: whatever a client sends under an identity
header's name is dropped and the header is set only from what this edge
verified (the client certificate of the handshake, the access gate's
Decision). Forwarding chains (Forwarded, X-Forwarded-*) and request ids
are kept only from `policy.network.trusted_proxies`; from anyone else
they are replaced, since an origin reads them as the edge's word.

Everything is pure and runs per proxied request, so the work per config
(lower-cased name sets, the Via element per protocol version) is done
once in `HeaderRules`, values that repeat (Connection tokens, client
addresses, certificate subjects) are memoised, and random ids are cut
from a buffer of CSPRNG output instead of a system call each.

Framing is the caller's: the client's Content-Length and
Transfer-Encoding never pass (the body may be re-framed, or arrive de-
chunked), and `request_framing(method, declared_length(request))` says
which of the two to add for the body actually sent.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from ingress.config.upstream import ProxySettings
from ingress.policy.gate import ALLOWED
from ingress.policy.network import AddressSet
from ingress.protocol.events import Request
from ingress.protocol.trace import TraceContext
from ingress.telemetry.ids import ENTROPY

Fields = list[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1, plus Proxy-Authorization: a credential for this edge (which asks for
# none) must not travel on to an origin. TE goes too: the origin is spoken to in HTTP/1.1 and
# trailers are not relayed, so `TE: trailers` would promise what this hop does not do.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
    }
)
# Client fields the edge replaces by its own: Host and framing are set by the caller; Expect was
# answered by the client connection itself (an origin's 100 Continue would only be noise).
_SET_BY_EDGE = frozenset(
    {
        b"host",
        b"content-length",
        b"expect",
        b"via",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"traceparent",
        b"tracestate",
    }
)
# Connection tokens that are not names of fields to remove (or are removed anyway).
_NOT_NAMES = HOP_BY_HOP | {b"close", b""}
# An origin's answer loses the same hop fields; Proxy-Authenticate asks for a credential this edge
# would not pass on. Content-Length goes unless the body passes with its length (see below).
# The edge writes its own Date and Server; the origin's Date is handed back separately, for the cache.
_RESPONSE_DROP = (HOP_BY_HOP - {b"proxy-authorization"}) | {
    b"proxy-authenticate",
    b"content-length",
    b"date",
    b"server",
}

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._~:+/=@-]{1,128}")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_CONTENT_LENGTH_0 = (b"content-length", b"0")
_CHUNKED = (b"transfer-encoding", b"chunked")
_CONNECTION_UPGRADE = (b"connection", b"upgrade")
MEMO_SIZE = 1024


class Outgoing(NamedTuple):
    """The fields sent upstream, and the ids telemetry and the response need (lower-case hex, ASCII)."""

    fields: bytes  # serialised, `name: value\r\n` each
    request_id: bytes
    traceparent: bytes  # as sent, b"" without one; a retry swaps in its own span id


# NamedTuple's generated __new__ is Python code; tuple's own makes the same object in a third of the time.
_outgoing = tuple.__new__


class HeaderRules:
    """The request rules of one config, with every name set built once."""

    __slots__ = (
        "_auth_roles",
        "_auth_subject",
        "_cert_fingerprint",
        "_cert_subject",
        "_drop",
        "_memo",
        "_pseudonym",
        "_request_id",
        "_rfc7239",
        "_trusted",
        "_via",
        "_xf",
    )

    def __init__(self, settings: ProxySettings, trusted: AddressSet) -> None:
        self._cert_subject = _name(settings.cert_subject_header)
        self._cert_fingerprint = _name(settings.cert_fingerprint_header)
        self._auth_subject = _name(settings.auth_subject_header)
        self._auth_roles = _name(settings.auth_roles_header)
        self._request_id = _name(settings.request_id_header)
        identity = {self._cert_subject, self._cert_fingerprint, self._auth_subject, self._auth_roles}
        self._drop = HOP_BY_HOP | _SET_BY_EDGE | identity | {self._request_id}
        self._pseudonym = _clean(settings.via.encode("utf-8"))
        self._via: dict[str, bytes] = {}
        # Forwarding fields by (Via element, client, host, scheme), for clients that send no chain.
        self._memo: dict[tuple[bytes, str, str, str], bytes] = {}
        self._rfc7239 = settings.forwarded in ("rfc7239", "both")
        self._xf = settings.forwarded in ("x-forwarded", "both")
        self._trusted = trusted

    def via(self, version: str) -> bytes:
        """This edge's Via element for a message received over HTTP `version` ("1.1", "2"); b"" when Via is off."""
        element = self._via.get(version)
        if element is None:
            element = _clean(version.encode("latin-1")) + b" " + self._pseudonym if self._pseudonym else b""
            if len(self._via) < 16:
                self._via[version] = element
        return element

    def request_headers(
        self,
        request: Request,
        host: bytes | None = None,
        peer: str | None = None,
        websocket: bool = False,
        trace: TraceContext | None = None,
        span_id: bytes = b"",
        without: frozenset[bytes] = frozenset(),
    ) -> Outgoing:
        """The fields sent to the origin, serialised (`name: value\r\n` each), Host first, without framing.

        `host` overrides the client's Host (a route's `host`). `peer` is
        the address of the node that connected to this edge; it defaults
        to `request.peer.client`, which is only right while nothing has
        replaced that by the client behind a trusted proxy. `websocket`
        sends `Connection: upgrade` and `Upgrade: websocket`, the only
        upgrade this edge passes. `trace` and `span_id` (this hop's CLIENT
        span) make the `traceparent`; without a trace none is sent.
        `without` names more client fields to leave out, for a caller that
        sends its own (the cache's validators, say). Framing (see
        `request_framing`) and the request line are the caller's.
        """
        headers = request.headers
        connection = headers.get(b"connection")
        if connection is not None:
            named = _connection_names(connection)
            if named:
                headers = {name: value for name, value in headers.items() if name not in named}
        drop = self._drop | without if without else self._drop
        lines = [b"host: ", host if host is not None else request.host.encode("latin-1"), b"\r\n"]
        for name, value in headers.items():
            # Names with "_" are dropped (nginx's underscores_in_headers off): CGI, WSGI and PHP origins read
            # X_Auth_Subject as the X-Auth-Subject the edge sets, so they could pass for identity headers.
            # (`find`, not `in`: see routing.normalize_path.)
            if name not in drop and name.find(b"_") < 0:
                lines += (name, b": ", value, b"\r\n")

        client = peer if peer is not None else request.peer.client
        trusted = client in self._trusted
        via = self._via.get(request.version)
        if via is None:
            via = self.via(request.version)
        prior_via = headers.get(b"via")
        if trusted or prior_via is not None:
            lines.append(self._forwarding(via, prior_via, client, request.host, request.scheme, headers, trusted))
        else:
            # The common case depends on nothing the client sent: one block per client address and host.
            key = (via, client, request.host, request.scheme)
            block = self._memo.get(key)
            if block is None:
                block = self._forwarding(via, None, client, request.host, request.scheme, headers, False)
                if len(self._memo) >= MEMO_SIZE:
                    self._memo.clear()
                self._memo[key] = block
            lines.append(block)

        request_id = headers.get(self._request_id) if trusted else None
        if request_id is None or _REQUEST_ID.fullmatch(request_id) is None:
            request_id = ENTROPY.hex(32)
        if self._request_id:
            lines += (self._request_id, b": ", request_id, b"\r\n")

        # The client's own traceparent and tracestate were dropped above; the tracer decided whether to
        # continue them (a trusted source) or start a new trace, and this hop's span is the parent.
        traceparent = b""
        if trace is not None:
            traceparent = trace.traceparent(span_id)
            lines += (b"traceparent: ", traceparent, b"\r\n")
            if trace.state:
                lines += (b"tracestate: ", trace.state.encode("ascii"), b"\r\n")

        identity = request.peer.identity
        if identity is not None:
            if identity.subject and self._cert_subject:
                lines += (self._cert_subject, b": ", dn_value(identity.subject), b"\r\n")
            if identity.sha256 and self._cert_fingerprint:
                lines += (self._cert_fingerprint, b": ", text_value(identity.sha256), b"\r\n")
        decision = request.decision
        if decision is not None and decision.outcome == ALLOWED:
            if decision.subject and self._auth_subject:
                lines += (self._auth_subject, b": ", text_value(decision.subject), b"\r\n")
            # Not on Decision yet: read when the gate records the roles it granted (a sorted tuple).
            roles: Iterable[str] | None = getattr(decision, "roles", None)
            if roles and self._auth_roles:
                lines += (self._auth_roles, b": ", roles_value(roles), b"\r\n")

        if websocket:
            lines.append(b"connection: upgrade\r\nupgrade: websocket\r\n")
        return _outgoing(Outgoing, (b"".join(lines), request_id, traceparent))

    def passed_on(self, request: Request, name: bytes) -> bytes | None:
        """The client's field `name` (lower case) as `request_headers` passes it on; None when it does not."""
        if name in self._drop or name.find(b"_") >= 0:
            return None
        headers = request.headers
        connection = headers.get(b"connection")
        if connection is not None and name in _connection_names(connection):
            return None
        return headers.get(name)

    def _forwarding(
        self,
        via: bytes,
        prior_via: bytes | None,
        client: str,
        host: str,
        scheme: str,
        headers: Mapping[bytes, bytes],
        trusted: bool,
    ) -> bytes:
        """Via and the forwarding fields, serialised; the chains a client sent are kept only from a trusted one."""
        lines: list[bytes] = []
        if via:
            lines += (b"via: ", prior_via + b", " + via if prior_via else via, b"\r\n")
        elif prior_via:
            lines += (b"via: ", prior_via, b"\r\n")
        if self._rfc7239:
            element = _forwarded_element(client, host, scheme)
            prior = headers.get(b"forwarded") if trusted else None
            lines += (b"forwarded: ", prior + b", " + element if prior else element, b"\r\n")
        if self._xf:
            address = _xff_node(client)
            prior = headers.get(b"x-forwarded-for") if trusted else None
            lines += (b"x-forwarded-for: ", prior + b", " + address if prior else address, b"\r\n")
            prior = headers.get(b"x-forwarded-proto") if trusted else None
            lines += (b"x-forwarded-proto: ", prior or (b"https" if scheme == "https" else b"http"), b"\r\n")
            prior = headers.get(b"x-forwarded-host") if trusted else None
            lines += (b"x-forwarded-host: ", prior or host.encode("latin-1"), b"\r\n")
        return b"".join(lines)


def response_headers(
    upstream_headers: Sequence[tuple[bytes, bytes]],
    via: bytes,
    *,
    keep_length: bool = False,
    upgrade: bool = False,
    request_id: tuple[bytes, bytes] | None = None,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> tuple[Fields, bytes | None]:
    """An origin's answer as this edge passes it on, and the origin's Date (for the cache's Age).

    Hop fields go, and so do Date and Server, which the edge writes itself;
    Via (`HeaderRules.via`) is appended. Content-Length stays only with
    `keep_length`, when the caller passes the body through unchanged and
    unframed; otherwise the client side frames it. `upgrade` (a 101 to a
    WebSocket the caller accepted) keeps the origin's Upgrade and answers
    `Connection: upgrade`. `request_id` (lower-case name, value) replaces
    any the origin sent, so the client sees the id this edge logged.
    `extra` (the route's security headers) are added where the origin did
    not set its own. One pass over the fields: this runs per proxied answer.
    """
    out: Fields = []
    connection: bytes | None = None
    date: bytes | None = None
    own_id = request_id[0] if request_id is not None else None
    upgrading = False
    seen: set[bytes] | None = set() if extra else None
    for name, value in upstream_headers:
        lower = name.lower()
        if lower in _RESPONSE_DROP:
            if lower == b"connection":
                connection = value if connection is None else connection + b"," + value
            elif lower == b"date":
                date = value
            elif (lower == b"content-length" and keep_length) or (lower == b"upgrade" and upgrade):
                upgrading = upgrading or lower == b"upgrade"
                out.append((name, value))
        elif lower != own_id:
            out.append((name, value))
            if seen is not None:
                seen.add(lower)
    if connection is not None:
        named = _connection_names(connection)
        if named:
            out = [(name, value) for name, value in out if name.lower() not in named]
    if upgrading:
        out.append(_CONNECTION_UPGRADE)
    if via:
        out.append((b"via", via))
    if seen is not None:
        for pair in extra:
            if pair[0].lower() not in seen:
                out.append(pair)
    if request_id is not None:
        out.append(request_id)
    return out, date


# framing ------------------------------------------------------------------------------------
def declared_length(request: Request) -> int | None:
    """The length of the body the client is sending; None when it is streamed without one (chunked).

    A body that arrived whole has its length whatever framing carried it,
    so a chunked upload that fitted in the head goes upstream with a length.
    """
    body = request.body
    if isinstance(body, bytes):
        return len(body)
    headers = request.headers
    if b"transfer-encoding" in headers:
        return None  # RFC 9112 section 6.3: chunked overrides any Content-Length
    length = headers.get(b"content-length")
    return int(length) if length is not None and length.isdigit() else None


def request_framing(method: str, length: int | None) -> tuple[bytes, bytes] | None:
    """The framing field for a body of `length` bytes (None: unknown, so chunked).

    No field for an empty body of a method that carries none (RFC 9110
    section 8.6: GET without content has no Content-Length); `0` for an
    empty POST, PUT or PATCH, which some origins refuse without one.
    """
    if length is None:
        return _CHUNKED
    if length:
        return (b"content-length", b"%d" % length)
    return _CONTENT_LENGTH_0 if method in _BODY_METHODS else None


# trace context --------------------------------------------------------------------------------
# values ---------------------------------------------------------------------------------------
def _name(header: str) -> bytes:
    return header.strip().lower().encode("latin-1")


def _clean(value: bytes) -> bytes:
    """Config and address text with any control character dropped; it never has one in practice."""
    return value if value.isascii() and value.decode("ascii").isprintable() else _CONTROLS.sub(b"", value)


_CONTROLS = re.compile(rb"[\x00-\x1f\x7f]")


@functools.lru_cache(maxsize=MEMO_SIZE)
def _forwarded_element(client: str, host: str, scheme: str) -> bytes:
    """This hop's RFC 7239 element; one per client address and host, so memoised."""
    return b"for=" + _for_node(client) + b";host=" + _host_node(host) + b";proto=" + _scheme_token(scheme)


def _for_node(client: str) -> bytes:
    """RFC 7239 section 6: an IPv6 node in brackets and quotes; a peer without an address is `unknown`."""
    if not client:
        return b"unknown"
    node = _clean(client.encode("latin-1"))
    if node.find(b":") >= 0:
        return b'"[' + node.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b']"'
    return node if _TOKEN.fullmatch(node) else _quoted(node)


def _host_node(host: str) -> bytes:
    """A host with a port (`example.com:8443`) is no token, so it is quoted."""
    node = _clean(host.encode("latin-1"))
    return node if _TOKEN.fullmatch(node) else _quoted(node)


def _scheme_token(scheme: str) -> bytes:
    return b"https" if scheme == "https" else b"http"


@functools.lru_cache(maxsize=MEMO_SIZE)
def _xff_node(client: str) -> bytes:
    """X-Forwarded-For takes bare addresses, IPv6 included (no brackets, by convention)."""
    return _clean(client.encode("latin-1")) if client else b"unknown"


def _quoted(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


@functools.lru_cache(maxsize=256)
def _connection_names(value: bytes) -> frozenset[bytes]:
    """The field names a Connection header lists (RFC 9110 section 7.6.1), less those removed anyway."""
    return frozenset(token.strip(b" \t").lower() for token in value.split(b",")) - _NOT_NAMES


@functools.lru_cache(maxsize=MEMO_SIZE)
def dn_value(subject: str) -> bytes:
    """An RFC 4514 subject as a field value: control and non-ASCII characters become `\\XX` escapes of their UTF-8.

    That is RFC 4514's own hexpair escape, so the value still parses to
    the same DN, stays ASCII, and two subjects never share a value
    (`rfc4514_string` already escapes the backslash itself).
    """
    if subject.isascii() and subject.isprintable():
        return subject.encode("ascii")
    return "".join(
        ch if ch.isascii() and ch.isprintable() else "".join(f"\\{b:02X}" for b in ch.encode("utf-8")) for ch in subject
    ).encode("ascii")


@functools.lru_cache(maxsize=MEMO_SIZE)
def text_value(text: str, unsafe: str = "%") -> bytes:
    """A verified string (a token subject, a role) as a field value that cannot break the head.

    Printable ASCII passes as is; otherwise controls, non-ASCII, spaces,
    `%` and the characters in `unsafe` are percent-encoded (UTF-8). `%` is
    always encoded when anything is, so the encoding is one-to-one and no
    two subjects can be made to look alike.
    """
    if text.isascii() and text.isprintable() and not any(ch in text for ch in unsafe) and text.strip(" ") == text:
        return text.encode("ascii")
    plain = frozenset(range(0x21, 0x7F)) - frozenset(unsafe.encode("ascii")) - {0x25}
    return "".join(chr(b) if b in plain else f"%{b:02X}" for b in text.encode("utf-8")).encode("ascii")


@functools.lru_cache(maxsize=MEMO_SIZE)
def _roles_tuple(roles: tuple[str, ...]) -> bytes:
    return b",".join(text_value(role, "%,") for role in roles)


def roles_value(roles: Iterable[str]) -> bytes:
    """Roles comma-joined, in order if a sequence, sorted if a set; a comma inside a role is encoded."""
    ordered = roles if isinstance(roles, tuple) else tuple(sorted(roles))
    return _roles_tuple(ordered)

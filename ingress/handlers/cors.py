"""A route's CORS policy at the edge: preflights answered here, Access-Control-* on every answer.

Only routes with `[routes.cors]` get a CorsPolicy; it wraps their handler
when the site is built, so a route without one runs exactly as before.

The edge's policy is the only one a client sees: whatever Access-Control-*
fields a handler or an origin sent are dropped and the policy's are
written, and `Vary: Origin` is merged into the answer's own Vary on every
answer whose headers depend on Origin (those to a listed origin, to any
other origin, and to requests without one), so a cache never hands one
origin's answer to another. With `origins = ["*"]` nothing depends on
Origin: every answer carries `Access-Control-Allow-Origin: *` and no Vary.

Answers a handler reuses (pre-serialised static files, cache hits: those
with `wire`) are decorated once per Date tick and origin and memoised, new
wire bytes included, so the HTTP/1.1 fast path stays one `transport.write`
of bytes that already exist and HTTP/2 keeps its encoded-header memo.

A preflight that asks for an origin, method or header the policy does not
list gets 403. Browsers fail a preflight the same way whether it answers
403 or 204 without Access-Control-* (Fetch requires an ok status and a
matching origin), but 403 says what happened to everyone else: developer
tools, access logs and status metrics.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Iterable

from ingress.clock import Clock
from ingress.config.cors import Cors
from ingress.protocol.errorpages import error_response
from ingress.protocol.events import Request, Response
from ingress.protocol.pipe import drop_outcome
from ingress.routing import Handler, Outcome

Fields = list[tuple[bytes, bytes]]

ALLOW_ORIGIN = b"Access-Control-Allow-Origin"
ALLOW_CREDENTIALS = b"Access-Control-Allow-Credentials"
ALLOW_METHODS = b"Access-Control-Allow-Methods"
ALLOW_HEADERS = b"Access-Control-Allow-Headers"
EXPOSE_HEADERS = b"Access-Control-Expose-Headers"
MAX_AGE = b"Access-Control-Max-Age"
_PREFIX = b"access-control-"
_PREFLIGHT_VARY = b"Access-Control-Request-Method, Access-Control-Request-Headers"

# Memo of decorated reusable answers: cleared when the tick moves (their Date is stale) or when it holds this much.
MEMO_ENTRIES = 1024
MEMO_BYTES = 32 << 20
# Spellings of listed origins in other letter cases that are remembered (browsers send lower case).
SPELLINGS = 256


def merge_vary(vary: bytes | None, token: bytes) -> bytes:
    """`vary` with `token` added unless it (or `*`) is already there."""
    if vary is None or not vary.strip():
        return token
    lowered = token.lower()
    for item in vary.split(b","):
        if item.strip().lower() in (lowered, b"*"):
            return vary
    return vary + b", " + token


def is_preflight(request: Request) -> bool:
    """An OPTIONS request a browser sends before a cross-origin one (the caller has checked the method)."""
    headers = request.headers
    return b"origin" in headers and b"access-control-request-method" in headers


class CorsPolicy:
    __slots__ = (
        "_approved",
        "_canonical",
        "_clock",
        "_extra",
        "_header_names",
        "_memo",
        "_memo_bytes",
        "_methods",
        "_refused",
        "_spellings",
        "_tick",
        "any_origin",
        "forwards_options",
    )

    def __init__(
        self,
        cors: Cors,
        route_methods: Iterable[str],
        clock: Clock,
        forwards_options: bool = False,
        exposes: tuple[str, ...] = (),
    ) -> None:
        """`exposes`: headers the edge itself adds that a page should be able to read (the firewall's reference)."""
        """`forwards_options`: the route lists OPTIONS, so an OPTIONS that is no preflight goes to its handler."""
        self._clock = clock
        self.forwards_options = forwards_options
        self.any_origin = cors.origins == ("*",)
        canonical = [origin.lower().encode("ascii") for origin in cors.origins if origin != "*"]
        self._canonical = frozenset(canonical)
        self._spellings: dict[bytes, bytes] = {origin: origin for origin in canonical}
        methods = tuple(cors.methods) or tuple(route_methods)
        allowed = set(methods) | ({"HEAD"} if "GET" in methods else set())
        self._methods = frozenset(method.encode("ascii") for method in allowed)
        self._header_names = frozenset(name.lower().encode("ascii") for name in cors.headers)
        # What an answer gets, by origin key: b"*", a listed origin (lower case), or None for anything else.
        common: Fields = []
        if cors.credentials:
            common.append((ALLOW_CREDENTIALS, b"true"))
        listed = _lowered(cors.expose_headers)
        expose = [*cors.expose_headers, *(name for name in exposes if name.lower() not in listed)]
        exposed = [(EXPOSE_HEADERS, ", ".join(expose).encode("ascii"))] if expose else []
        keys = [b"*"] if self.any_origin else canonical
        self._extra: dict[bytes | None, Fields] = {key: [(ALLOW_ORIGIN, key), *common, *exposed] for key in keys}
        self._extra[None] = []
        preflight: Fields = [(ALLOW_METHODS, ", ".join(methods).encode("ascii"))]
        if cors.headers:
            preflight.append((ALLOW_HEADERS, ", ".join(cors.headers).encode("ascii")))
        if cors.max_age:
            preflight.append((MAX_AGE, b"%d" % cors.max_age))
        vary = _PREFLIGHT_VARY if self.any_origin else b"Origin, " + _PREFLIGHT_VARY
        self._approved = {
            key: Response(204, [(ALLOW_ORIGIN, key), *common, *preflight, (b"Vary", vary)]) for key in keys
        }
        self._refused = error_response(403, [(b"Vary", vary)])
        # Decorated reusable answers: answer object -> origin key -> decorated answer.
        self._memo: dict[Response, dict[bytes | None, Response]] = {}
        self._memo_bytes = 0
        self._tick = -1

    # origins ---------------------------------------------------------------------------------
    def origin_key(self, origin: bytes | None) -> bytes | None:
        """b"*", the listed origin (lower case) that `origin` names, or None."""
        if self.any_origin:
            return b"*"
        if origin is None:
            return None
        key = self._spellings.get(origin)
        if key is None:
            lower = origin.lower()
            if lower not in self._canonical:
                return None
            key = lower
            if len(self._spellings) < SPELLINGS:
                self._spellings[origin] = key
        return key

    # preflights --------------------------------------------------------------------------------
    def preflight(self, request: Request) -> Response:
        """204 with the policy's Access-Control-Allow-* when everything asked for is listed, else 403."""
        headers = request.headers
        key = self.origin_key(headers.get(b"origin"))
        if key is None:
            return self._refused
        if headers.get(b"access-control-request-method", b"").strip(b" \t") not in self._methods:
            return self._refused
        wanted = headers.get(b"access-control-request-headers")
        if wanted is not None:
            names = self._header_names
            for item in wanted.split(b","):
                name = item.strip(b" \t").lower()
                if name and name not in names:
                    return self._refused
        return self._approved[key]

    # answers -------------------------------------------------------------------------------------
    def wrap(self, handle: Handler) -> Handler:
        """`handle`, with its answers (now or later) decorated."""

        decorate = self.decorate

        def decorated(request: Request, path: str) -> Outcome:
            outcome = handle(request, path)
            if outcome.__class__ is Response:
                return decorate(request, outcome)
            return self._later(request, typing.cast("asyncio.Future[Response]", outcome))

        return decorated

    def decorate(self, request: Request, response: Response) -> Response:
        """`response` with this policy's fields for the request's Origin; never changes `response` itself."""
        key = self.origin_key(request.headers.get(b"origin"))
        if response.wire is None:
            return self._apply(response, key)
        decorated = self._memo.get(response)
        if decorated is not None:
            done = decorated.get(key)
            if done is not None:
                return done
        done = self._apply(response, key)
        self._remember(response, key, done)
        return done

    def _later(self, request: Request, inner: asyncio.Future[Response]) -> asyncio.Future[Response]:
        """A Future of the decorated answer; cancelling it cancels the handler's."""
        outer: asyncio.Future[Response] = inner.get_loop().create_future()

        def settle(done: asyncio.Future[Response]) -> None:
            if outer.done():  # the client left meanwhile: the answer has nobody to go to
                drop_outcome(done)
            elif done.cancelled():
                outer.cancel()
            elif (exc := done.exception()) is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(self.decorate(request, done.result()))

        def cancel(gone: asyncio.Future[Response]) -> None:
            if gone.cancelled():
                inner.cancel()

        inner.add_done_callback(settle)
        outer.add_done_callback(cancel)
        return outer

    def _apply(self, response: Response, key: bytes | None) -> Response:
        vary: bytes | None = None
        headers: Fields = []
        for pair in response.headers:
            lower = pair[0].lower()
            if lower == b"vary":
                vary = pair[1] if vary is None else vary + b", " + pair[1]
            elif not lower.startswith(_PREFIX):
                headers.append(pair)
        if not self.any_origin:
            vary = merge_vary(vary, b"Origin")
        added = self._extra[key]
        if vary is not None:
            added = [(b"Vary", vary), *added]
        headers += added
        out = Response(response.status, headers, response.body)
        if response.wire is not None:
            out.wire = _respliced(response.wire, added)
        return out

    def _remember(self, response: Response, key: bytes | None, decorated: Response) -> None:
        tick = self._clock.tick
        if tick != self._tick or len(self._memo) >= MEMO_ENTRIES or self._memo_bytes >= MEMO_BYTES:
            self._memo.clear()
            self._memo_bytes = 0
            self._tick = tick
        self._memo.setdefault(response, {})[key] = decorated
        self._memo_bytes += len(decorated.wire or b"")


def _respliced(wire: bytes, added: Fields) -> bytes:
    """Pre-serialised HTTP/1.1 bytes without their Vary and Access-Control-* lines, plus `added`.

    `wire` is the head (status line, Date and Server, fields, blank line) and,
    when the body is bytes, the body; only the head is rewritten.
    """
    end = wire.find(b"\r\n\r\n") + 2
    lines = wire[:end].split(b"\r\n")[:-1]
    kept = [lines[0]]
    for line in lines[1:]:
        name = line.partition(b":")[0].strip().lower()
        if name != b"vary" and not name.startswith(_PREFIX):
            kept.append(line)
    kept += [name + b": " + value for name, value in added]
    return b"\r\n".join(kept) + b"\r\n" + wire[end:]


def _lowered(names: Iterable[str]) -> set[str]:
    return {name.lower() for name in names}

"""The one place a request goes from protocol event to response.

Order: the health check (a GET or HEAD of exactly `server.healthz_path`,
answered before anything else); the Host, which must be well formed (400)
and served by some route of the listener (`server.unknown_host_status`);
a CORS preflight to a route with a CORS policy, answered by that policy
since preflights carry no credentials; the access gate (policy); then
normalise the path, route by host and path, check the method, run the
request firewall (on routes that have it; it wraps the handler, inside
CORS), run the handler. Every protocol version gets all of it by calling `Site.handle`,
and a request the gate refuses reaches no handler: the route is looked up
beforehand (a dict lookup once seen) only to know its CORS policy, so that
a refusal on a CORS route is still readable by the page that asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ingress.clock import Clock
from ingress.config.model import Config, Route
from ingress.errors import ProtocolError
from ingress.handlers.cors import CorsPolicy, is_preflight
from ingress.handlers.healthz import PROBES, HealthCheck
from ingress.handlers.proxy.backends import Backends
from ingress.handlers.proxy.handler import ProxyHandler
from ingress.handlers.redirect import RedirectHandler
from ingress.handlers.static import StaticHandler
from ingress.policy.gate import Gate
from ingress.policy.waf.firewall import Firewall
from ingress.policy.waf.stage import REFERENCE_HEADER
from ingress.protocol.errorpages import error_response
from ingress.protocol.events import Request, Response
from ingress.routing import Handler, Outcome, RouteEntry, RouteGroup, Router, normalize_path
from ingress.telemetry.context import Tracer
from ingress.telemetry.ids import ENTROPY


def _security_headers(route: Route, tls: bool) -> list[tuple[bytes, bytes]]:
    h = route.headers
    pairs = [
        (b"Strict-Transport-Security", h.hsts if tls else ""),
        (b"X-Content-Type-Options", h.content_type_options),
        (b"X-Frame-Options", h.frame_options),
        (b"Referrer-Policy", h.referrer_policy),
        (b"Content-Security-Policy", h.content_security_policy),
    ]
    return [(name, value.encode("latin-1")) for name, value in pairs if value]


def _allow(methods: tuple[str, ...]) -> bytes:
    allowed = list(dict.fromkeys([*methods, "OPTIONS"]))
    return ", ".join(allowed).encode("ascii")


class Site:
    """Everything one listener serves."""

    def __init__(
        self, router: Router, gate: Gate | None = None, streaming: bool = False, health: HealthCheck | None = None
    ) -> None:
        self.router = router
        self.gate = gate
        self.streaming = streaming
        # b"" never equals a request path (the protocols refuse an empty one), so it turns the check off.
        self.health_path = health.path if health is not None else b""
        self._health = health
        self._refusals = {status: error_response(status) for status in {router.unknown.refusal, 400}}

    def streams(self, request: Request) -> bool:
        """Whether the request's body should reach its handler as it arrives rather than whole.

        Asked by the protocols when a head announces a body. Only a proxied route
        streams; everything else keeps the body gathered (and its framing fully
        checked) before the request is dispatched. (A proxied route's firewall
        reads a streamed body whole before the proxy sees it: see WafStage.)
        """
        if not self.streaming:
            return False
        group = self.router.group(request.host)
        hit = group.paths.get(request.path)
        if hit is not None:
            return hit[0].streams
        try:
            path = normalize_path(request.path)
        except ProtocolError:
            return False
        entry = group.match(path)
        return entry is not None and entry.streams

    def handle(self, request: Request) -> Outcome:
        if request.path == self.health_path and request.method in PROBES:
            return self._healthy(request)
        group = self.router.group(request.host)
        hit = group.paths.get(request.path)
        if hit is None:
            return self._first_sight(request, group)
        entry, path = hit
        if request.method not in entry.methods:
            return self._other_method(request, entry, path)
        gate = self.gate
        if gate is not None:
            refused = gate.check(request)
            if refused is not None:
                return refused if entry.cors is None else entry.cors.decorate(request, refused)
        request.route = entry.prefix
        return entry.handle(request, path)

    def _healthy(self, request: Request) -> Response:
        health = self._health
        assert health is not None  # the path matched, so the check is on
        return health.answer(request)

    def _refused(self, request: Request) -> Response | None:
        gate = self.gate
        return gate.check(request) if gate is not None else None

    def _first_sight(self, request: Request, group: RouteGroup) -> Outcome:
        """A path not seen before on this host, or a host no route serves: normalise, match, remember."""
        if group.refusal:
            if request.host or request.version != "1.0":
                return self._refusals[group.refusal]
            group = self.router.nameless()  # HTTP/1.0 may name no host; only `*` routes serve it
            if group.refusal:
                return self._refusals[group.refusal]
        if request.path == b"*":
            refused = self._refused(request)
            if refused is not None:
                return refused
            if request.method == "OPTIONS":
                return Response(204, [(b"Allow", b"GET, HEAD, OPTIONS")])
            return error_response(400)
        try:
            path = normalize_path(request.path)
        except ProtocolError as exc:
            return self._refused(request) or error_response(exc.status_hint)
        entry = group.match(path)
        if entry is None:
            return self._refused(request) or error_response(404)
        group.remember(request.path, entry, path)
        if request.method not in entry.methods:
            return self._other_method(request, entry, path)
        refused = self._refused(request)
        if refused is not None:
            return refused if entry.cors is None else entry.cors.decorate(request, refused)
        request.route = entry.prefix
        return entry.handle(request, path)

    def _other_method(self, request: Request, entry: RouteEntry, path: str) -> Outcome:
        """A method the route's handler does not take: a CORS preflight, another OPTIONS, or 405."""
        cors = entry.cors
        if cors is not None and request.method == "OPTIONS" and is_preflight(request):
            return cors.preflight(request)
        refused = self._refused(request)
        if refused is None:
            request.route = entry.prefix
            if cors is not None and cors.forwards_options and request.method == "OPTIONS":
                return entry.handle(request, path)  # decorated by the policy's wrapper
            refused = _method_not_allowed(request, entry)
        return refused if cors is None else cors.decorate(request, refused)


def _method_not_allowed(request: Request, entry: RouteEntry) -> Response:
    if request.method == "OPTIONS":
        return Response(204, [(b"Allow", entry.allow)])
    return error_response(405, [(b"Allow", entry.allow)])


def build_site(
    config: Config,
    listener: str,
    tls: bool,
    clock: Clock,
    alt_svc: bytes = b"",
    gate: Gate | None = None,
    backends: Backends | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    tracer: Tracer | None = None,
    firewall: Firewall | None = None,
) -> Site:
    """`alt_svc` advertises HTTP/3; it rides with the security headers, so pre-serialised responses carry it free.

    `gate` is the worker's access policy, shared by its listeners so rate limits count across them;
    `backends` its upstream pools and cache, needed (with `loop`) by proxy routes; `tracer` gives
    proxied requests the trace context they carry upstream; `firewall` the worker's request firewall,
    which goes in front of the handler of every route it inspects.
    """
    router = Router(config.server.unknown_host_status)
    span_id = _span_id_of(tracer)
    streaming = False
    for route in config.routes:
        if route.listeners and listener not in route.listeners:
            continue
        handle: Handler
        extra = _security_headers(route, tls)
        if alt_svc:
            extra.append((b"Alt-Svc", alt_svc))
        if route.static is not None:
            handle = StaticHandler(route.static, extra, clock, tls).handle
        elif route.redirect is not None:
            handle = RedirectHandler(route.redirect).handle
        elif route.proxy is not None and backends is not None and loop is not None:
            handle = ProxyHandler(route, backends, clock, extra, loop, config.proxy.request_id_header, tracer).handle
        else:  # rejected by config semantics; kept total for the type checker
            continue
        methods = frozenset(route.methods) | ({"HEAD"} if "GET" in route.methods else set())
        streams = route.proxy is not None
        if streams and route.proxy is not None and route.proxy.websocket:
            methods |= {"CONNECT"}  # RFC 8441: a WebSocket over HTTP/2 arrives as extended CONNECT
        stage = firewall.stage(route.waf, handle, span_id) if firewall is not None else None
        if stage is not None:
            # After the gate (Site.handle runs it first), before the handler; inside CORS, so a refusal is readable.
            handle = stage
        cors = None
        if route.cors is not None:
            # OPTIONS leaves the handler's methods so that every OPTIONS meets the policy first.
            exposes = (REFERENCE_HEADER.decode("ascii"),) if stage is not None else ()
            cors = CorsPolicy(route.cors, route.methods, clock, forwards_options="OPTIONS" in methods, exposes=exposes)
            methods -= {"OPTIONS"}
            handle = cors.wrap(handle)
        streaming = streaming or streams
        router.add(route.host, RouteEntry(route.path, methods, _allow(route.methods), handle, streams, cors))
    health = HealthCheck(config.server.healthz_path, clock) if config.server.healthz_path else None
    return Site(router, gate, streaming, health)


def _span_id_of(tracer: Tracer | None) -> Callable[[Request], bytes]:
    """How a refusal learns the id of its request's span, to give the client as a reference."""
    if tracer is None:
        return lambda request: ENTROPY.raw(8)
    context = tracer.context
    return lambda request: context(request).span_id

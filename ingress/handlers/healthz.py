"""The health check of the main listeners: a constant `200 ok`, answered before anything else.

Load balancers probe it many times a second per edge node, so it costs what
a cached static file costs: the response is pre-serialised once per Date
tick, and the request skips the access gate and routing. It is still
observed like any request (access log, span, metrics under the route
`/healthz`): every request the edge answers leaves a trace. A draining worker closes
its listening sockets, so a balancer sees the node go as its connects fail.
"""

from __future__ import annotations

from ingress.clock import Clock
from ingress.protocol.events import Request, Response
from ingress.protocol.http1 import status_line

_BODY = b"ok\n"
_HEADERS = [
    (b"Content-Type", b"text/plain; charset=utf-8"),
    (b"Content-Length", b"%d" % len(_BODY)),
    (b"Cache-Control", b"no-store"),
]
PROBES = frozenset({"GET", "HEAD"})


class HealthCheck:
    __slots__ = ("_clock", "_full", "_head", "_preamble", "path", "route")

    def __init__(self, path: str, clock: Clock) -> None:
        self.path = path.encode("ascii")
        self.route = path
        self._clock = clock
        self._preamble = b""
        self._full = self._head = Response(200, _HEADERS, _BODY)

    def answer(self, request: Request) -> Response:
        preamble = self._clock.preamble
        if preamble is not self._preamble:
            head = status_line(200) + preamble + b"".join(n + b": " + v + b"\r\n" for n, v in _HEADERS) + b"\r\n"
            self._full = Response(200, _HEADERS, _BODY, head + _BODY)
            self._head = Response(200, _HEADERS, b"", head)
            self._preamble = preamble
        request.route = self.route
        return self._head if request.method == "HEAD" else self._full

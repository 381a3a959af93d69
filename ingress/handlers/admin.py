"""The admin listener: liveness, readiness and counters for the operator."""

from __future__ import annotations

from collections.abc import Callable

from ingress.protocol.events import Request, Response

_TEXT = b"text/plain; charset=utf-8"


def _plain(status: int, body: bytes, ctype: bytes = _TEXT) -> Response:
    return Response(
        status,
        [
            (b"Content-Type", ctype),
            (b"Content-Length", b"%d" % len(body)),
            (b"Cache-Control", b"no-store"),
        ],
        body,
    )


class AdminHandler:
    def __init__(self, ready: Callable[[], bool], metrics: Callable[[], str]) -> None:
        self.ready = ready
        self.metrics = metrics

    def handle(self, request: Request, path: str) -> Response:
        if path == "/healthz":
            return _plain(200, b"ok\n")
        if path == "/readyz":
            return _plain(200, b"ready\n") if self.ready() else _plain(503, b"draining\n")
        if path == "/metrics":
            return _plain(200, self.metrics().encode(), b"text/plain; version=0.0.4; charset=utf-8")
        return _plain(404, b"404 Not Found\n")

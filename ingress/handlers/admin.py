"""The admin listener: liveness, readiness and counters for the operator."""

from __future__ import annotations

import json
import urllib.parse
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


# (host, path, prefix) -> entries removed, or None when there is no cache to purge.
PurgeFn = Callable[[str, str, bool], "int | None"]


class AdminHandler:
    def __init__(self, ready: Callable[[], bool], metrics: Callable[[], str], purge: PurgeFn | None = None) -> None:
        self.ready = ready
        self.metrics = metrics
        self.purge = purge

    def handle(self, request: Request, path: str) -> Response:
        if path == "/cache" and request.method == "PURGE" and self.purge is not None:
            return self._purge(request)
        if path == "/healthz":
            return _plain(200, b"ok\n")
        if path == "/readyz":
            return _plain(200, b"ready\n") if self.ready() else _plain(503, b"draining\n")
        if path == "/metrics":
            return _plain(200, self.metrics().encode(), b"text/plain; version=0.0.4; charset=utf-8")
        return _plain(404, b"404 Not Found\n")

    def _purge(self, request: Request) -> Response:
        """`PURGE /cache?host=H&path=P[&prefix=1]`: drop cached answers, in every worker within a second."""
        assert self.purge is not None
        try:
            query = urllib.parse.parse_qs(request.query.decode("ascii"), strict_parsing=False)
        except UnicodeDecodeError:
            return _plain(400, b"query must be ASCII\n")
        path = query.get("path", [""])[0]
        if not path.startswith("/"):
            return _plain(400, b"path= is required and must start with /, e.g. PURGE /cache?path=/api/&prefix=1\n")
        host = query.get("host", ["*"])[0].lower()
        prefix = query.get("prefix", ["0"])[0] in ("1", "true", "yes")
        removed = self.purge(host, path, prefix)
        if removed is None:
            return _plain(404, b"no proxy route uses the cache\n")
        body = json.dumps({"purged": removed, "host": host, "path": path, "prefix": prefix}).encode() + b"\n"
        return _plain(200, body, b"application/json")

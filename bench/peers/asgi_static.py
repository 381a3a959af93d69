"""Minimal in-memory static-file ASGI app used for the Python peers.

granian, uvicorn and hypercorn are ASGI *servers*, not static file servers,
so to compare them with edgeward/nginx/caddy they need an application that
serves the same files. This app is deliberately the fairest minimal one we
can write: every regular file under the root (``BENCH_STATIC_ROOT``) is read
into memory **once at import time**, and each request is answered with a
single ``http.response.start`` + ``http.response.body`` carrying the
precomputed ``content-type`` and ``content-length``. There is no per-request
disk I/O, stat, path normalisation or header computation, so the numbers
measure the server (HTTP parsing, TLS, event loop, ASGI bridging), not the
application. That favours the peers slightly relative to a real static-file
server that checks the filesystem on every request; keep that in mind when
reading the results.

``/`` maps to ``/index.html``; anything not preloaded gets a 404; only GET and
HEAD are served (others get 405).
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

Response = tuple[list[tuple[bytes, bytes]], bytes]


def _load(root: Path) -> dict[str, Response]:
    """Read every regular file below *root* into ``{url_path: (headers, body)}``."""
    files: dict[str, Response] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        body = path.read_bytes()
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = [
            (b"content-type", ctype.encode("latin-1")),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        files["/" + path.relative_to(root).as_posix()] = (headers, body)
    if "/index.html" in files:
        files["/"] = files["/index.html"]
    return files


FILES: dict[str, Response] = _load(Path(os.environ.get("BENCH_STATIC_ROOT", ".")))
_NOT_FOUND: Response = (
    [(b"content-type", b"text/plain"), (b"content-length", b"10")],
    b"not found\n",
)
_NOT_ALLOWED: Response = (
    [(b"content-type", b"text/plain"), (b"content-length", b"19")],
    b"method not allowed\n",
)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI entry point."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    method = scope["method"]
    if method not in ("GET", "HEAD"):
        status, (headers, body) = 405, _NOT_ALLOWED
    else:
        found = FILES.get(scope["path"])
        if found is None:
            status, (headers, body) = 404, _NOT_FOUND
        else:
            status, (headers, body) = 200, found
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

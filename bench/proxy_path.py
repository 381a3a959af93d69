"""The proxy's own Python work per request, in process: no sockets, no TLS, no kernel.

    .venv/bin/python bench/proxy_path.py --requests 50000       # µs per request (median of 3 runs)
    valgrind --tool=callgrind .venv/bin/python bench/proxy_path.py --requests 4000 --runs 1

A request goes from `Site.handle` through the proxy route to an origin connection whose transport
is fake: writing the request head schedules the origin's answer (nginx's head for a 1 KiB file and
the file) as that connection's next read, on the same uvloop loop the server uses. The client's
head is then serialised as the HTTP/1.1 connection would. What is left out is exactly what the
relay floor (`bench/relay.py`) and the static path measure: the client's parse, TLS, the four
system calls and the loop's polling. Instruction counts per request: run it under callgrind
with two request counts and divide the difference by theirs (start-up cancels out).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingress.clock import Clock
from ingress.config.loader import parse_config
from ingress.handlers.proxy.backends import Backends
from ingress.handlers.proxy.upstream import UpstreamConnection
from ingress.pipeline import build_site
from ingress.protocol.events import Peer, Request, Response
from ingress.protocol.http1 import serialize_head
from ingress.protocol.pipe import Pipe
from ingress.telemetry.context import Tracer

ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 24 Nov 2026 09:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Mon, 24 Nov 2026 08:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6742e9c0-400"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 1024
)
CONFIG = {
    "server": {"workers": 1},
    "access_log": {"enabled": False},
    "admin": {"enabled": False},
    "listeners": [{"name": "web", "address": "127.0.0.1:8443"}],
    "upstreams": [{"name": "app", "origins": ["http://127.0.0.1:9"], "max_idle": 64}],
    "routes": [{"path": "/", "methods": ["GET", "HEAD"], "proxy": {"upstream": "app", "cache": False}}],
}
CLIENT_FIELDS = {b"host": b"127.0.0.1:8443", b"user-agent": b"h2load nghttp2/1.52.0", b"accept": b"*/*"}


class Origin(asyncio.Transport):
    """The origin's side of one kept-alive connection: every request written is answered on the next loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: UpstreamConnection) -> None:
        super().__init__()
        self.loop = loop
        self.conn = conn

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.loop.call_soon(self.conn.data_received, ANSWER)

    def writelines(self, parts: object) -> None:
        self.loop.call_soon(self.conn.data_received, ANSWER)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def measure(requests: int) -> float:
    loop = asyncio.get_running_loop()
    config = parse_config(CONFIG, "bench/proxy_path.py")
    clock = Clock("edgeward")
    backends = Backends.build(config, loop)
    site = build_site(config, "web", True, clock, backends=backends, loop=loop, tracer=Tracer(config.telemetry.tracing))
    upstream = backends.upstreams["app"]
    pool = upstream.pools[0]
    conn = UpstreamConnection(loop, upstream.config, pool)
    conn.connection_made(Origin(loop, conn))
    pool._idle.append(conn)  # a kept-alive connection, as the pool holds one between requests
    peer = Peer(client="127.0.0.1", tls="TLSv1.3")

    async def one() -> bytes:
        request = Request("GET", b"/1k.bin", b"", dict(CLIENT_FIELDS), "127.0.0.1:8443", "1.1", True, "https")
        request.peer = peer
        outcome = site.handle(request)
        response = outcome if isinstance(outcome, Response) else await outcome
        if response.status != 200:
            raise SystemExit(f"the proxied request was answered {response.status}")
        body = response.body
        data = bytes(body.read()) if isinstance(body, Pipe) else body
        assert isinstance(data, bytes) and len(data) == 1024
        return serialize_head(response.status, response.headers, clock.preamble, False) + data

    for _ in range(2000):
        await one()
    started = time.perf_counter()
    for _ in range(requests):
        await one()
    return (time.perf_counter() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    times = [uvloop.run(measure(args.requests)) for _ in range(args.runs)]
    print(f"{statistics.median(times):.2f} µs per request (runs: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()

"""The floor under any proxy written on this stack: a TLS front that relays bytes and does nothing else.

    .venv/bin/python bench/relay.py --listen 127.0.0.1:8443 --origin 127.0.0.1:8080 --cert C --key K

Each client connection gets its own connection to the origin, opened when the client connects,
and bytes are copied both ways as they arrive, with backpressure, on uvloop with the same TLS
settings as edgeward's bench front (edgeward's own context: TLS 1.2+, the Mozilla intermediate
suites, server preference, ALPN http/1.1).
Nothing is parsed: no request line, no headers, no pool, no policy, no telemetry. A real proxy
cannot be faster than this on the same interpreter and event loop, so `bench/proxy.py` runs it as
the `relay_floor` cell (reported, not judged) to show how much of nginx's rate this stack leaves.
It is only correct for what the bench sends (keep-alive GETs whose answers carry a length).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from pathlib import Path
from typing import cast

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingress.config.model import CertPair, TLSSettings
from ingress.tls.contexts import leaf_context


class _Side(asyncio.Protocol):
    """One end of a relayed pair; whatever it reads goes to the other end's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.held: list[bytes] = []  # what arrived before the other end was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's TLS transport is not a subclass

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.held.append(data)
            return
        peer.transport.write(data)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()


class _Client(_Side):
    def __init__(self, origin: tuple[str, int]) -> None:
        super().__init__()
        self.origin = origin

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        upstream = _Side()
        upstream.peer = self
        try:
            await loop.create_connection(lambda: upstream, *self.origin)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        assert upstream.transport is not None
        if self.transport is None or self.transport.is_closing():
            upstream.transport.close()  # the client left while the origin was being dialled
            return
        self.peer = upstream
        for data in self.held:
            upstream.transport.write(data)
        self.held = []


def _context(cert: str, key: str) -> ssl.SSLContext:
    """edgeward's own server context for one certificate, as the bench's edgeward front configures it."""
    pair = CertPair(cert, key)
    return leaf_context(TLSSettings(certs=(pair,), alpn=("http/1.1",)), pair)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    origin = _address(args.origin)
    host, port = _address(args.listen)
    server = await loop.create_server(lambda: _Client(origin), host, port, ssl=_context(args.cert, args.key))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="HOST:PORT of the TLS front")
    p.add_argument("--origin", required=True, help="HOST:PORT of the plain HTTP/1.1 origin")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    uvloop.run(_serve(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

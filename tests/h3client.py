"""An httpx transport that speaks HTTP/3 through aioquic's client.

With it, a test written against `httpx.Client` runs unchanged over HTTP/3:
the behaviour suite parametrises its client over h1, h2 and h3. Each request
is one short QUIC connection on its own event loop, which keeps the
transport synchronous and free of shared state between tests. Plain
`http://` URLs have no HTTP/3 and go over HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import httpx
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection, H3Stream
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamReset


class _H3(H3Connection):
    """aioquic checks content-length against DATA even for HEAD responses; RFC 9114 section 4.1.2 exempts them."""

    head_streams: set[int]

    def _check_content_length(self, stream: H3Stream) -> None:
        if stream.stream_id not in self.head_streams:
            super()._check_content_length(stream)


class _Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = _H3(self._quic)
        self.h3.head_streams = set()
        self.waiting: dict[int, asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]]] = {}
        self.heads: dict[int, tuple[int, list[tuple[bytes, bytes]]]] = {}
        self.bodies: dict[int, list[bytes]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"QUIC connection closed: {event.reason_phrase}"))
        if isinstance(event, StreamReset):
            fut = self.waiting.get(event.stream_id)
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionResetError(f"stream reset with error {event.error_code:#x}"))
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            fields = list(event.headers)
            status = int(dict(fields)[b":status"])
            self.heads[event.stream_id] = (status, [(k, v) for k, v in fields if not k.startswith(b":")])
            self.bodies.setdefault(event.stream_id, [])
        elif isinstance(event, DataReceived):
            self.bodies.setdefault(event.stream_id, []).append(event.data)
        else:
            return
        if event.stream_ended:
            fut = self.waiting.get(event.stream_id)
            if fut is not None and not fut.done():
                status, headers = self.heads[event.stream_id]
                fut.set_result((status, headers, b"".join(self.bodies[event.stream_id])))

    async def request(
        self, method: bytes, authority: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        stream_id = self._quic.get_next_available_stream_id()
        if method == b"HEAD":
            self.h3.head_streams.add(stream_id)
        fields = [(b":method", method), (b":scheme", b"https"), (b":authority", authority), (b":path", target)]
        self.h3.send_headers(stream_id, fields + headers, end_stream=not body)
        if body:
            self.h3.send_data(stream_id, body, end_stream=True)
        fut: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] = asyncio.get_running_loop().create_future()
        self.waiting[stream_id] = fut
        self.transmit()
        return await asyncio.wait_for(fut, 15)


def h3_configuration(
    cafile: str, server_name: str = "localhost", cert: str | None = None, key: str | None = None
) -> QuicConfiguration:
    """A client configuration trusting `cafile`; `cert`/`key` are presented when the server asks (mutual TLS)."""
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=server_name)
    config.verify_mode = ssl.CERT_REQUIRED
    config.load_verify_locations(cafile)
    if cert is not None:
        config.load_cert_chain(cert, key)
    return config


async def h3_request(
    host: str,
    port: int,
    config: QuicConfiguration,
    method: bytes,
    authority: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    async with connect(host, port, configuration=config, create_protocol=_Client) as client:
        assert isinstance(client, _Client)
        return await client.request(method, authority, target, headers, body)


class H3Transport(httpx.BaseTransport):
    def __init__(self, cafile: str, cert: str | None = None, key: str | None = None) -> None:
        self.cafile = cafile
        self.cert, self.key = cert, key
        self.plain = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "https":
            return self.plain.handle_request(request)
        host = url.host
        port = url.port or 443
        config = h3_configuration(self.cafile, host, self.cert, self.key)
        headers = [
            (k.lower(), v)
            for k, v in request.headers.raw
            if k.lower() not in (b"host", b"connection", b"transfer-encoding", b"keep-alive")
        ]
        authority = request.headers.get("host", url.netloc.decode()).encode()
        try:
            status, fields, body = asyncio.run(
                h3_request(
                    host, port, config, request.method.encode(), authority, url.raw_path, headers, request.read()
                )
            )
        except ConnectionError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        return httpx.Response(
            status, headers=fields, stream=httpx.ByteStream(body), extensions={"http_version": b"HTTP/3"}
        )

    def close(self) -> None:
        self.plain.close()

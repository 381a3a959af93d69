"""The Peer of a TCP connection (HTTP/1.1 or HTTP/2), read once from its transport.

The client certificate was verified by OpenSSL in the handshake; it is
parsed here only when the listener asks for client certificates. The
address is always read: access policy (network rules, rate limits) needs it
even when nothing is logged, and it costs one getpeername per connection.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ingress.protocol.events import Peer
from ingress.server.listeners import keep_nagle
from ingress.tls.identity import identity_from_der

if TYPE_CHECKING:
    from ingress.server.runtime import ListenerRuntime


def tcp_peer(transport: asyncio.BaseTransport, listener: ListenerRuntime, logging: bool, client: str = "") -> Peer:
    """`client` overrides the socket's address (the PROXY protocol names the real client)."""
    certs = listener.certs
    mtls = certs is not None and certs.client_auth != "off"
    sslobj = transport.get_extra_info("ssl_object") if listener.tls else None
    identity = None
    if mtls and sslobj is not None:
        der = sslobj.getpeercert(binary_form=True)
        if der:  # None: client_auth is optional and the client sent none
            identity = identity_from_der(der)
    if not listener.config.socket.nodelay:
        keep_nagle(transport.get_extra_info("socket"))
    if not client:
        address = transport.get_extra_info("peername")
        client = address[0] if address else ""
    if not logging:
        return Peer(client=client, identity=identity)
    return Peer(
        client=client,
        tls=(sslobj.version() or "") if sslobj is not None else "",
        sni=(getattr(sslobj, "edge_sni", None) or "") if sslobj is not None else "",
        identity=identity,
    )
